"""Tests of ``bastion audit privacy|backdoor|extraction`` and the audit API, on the digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bastion.cli import main
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.evaluation import (
    AuditResult,
    audit_backdoor,
    audit_extraction,
    audit_privacy,
    audit_schema,
)
from bastion.exceptions import EstimatorError, InvalidParameterError
from bastion.zoo import MLP, train_classifier

ARCH = "bastion.zoo:MLP"
TARGET = 3  # the class a backdoor trigger leads to


def _no_nan(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in results.json")

    return json.loads(text, parse_constant=refuse)


def _save_model(path, hidden, x, y, epochs, seed=0):
    net = train_classifier(
        MLP(64, 10, hidden=hidden, random_state=seed), x, y, epochs=epochs, random_state=seed
    )
    torch.save(net.state_dict(), path)
    kwargs = json.dumps({"in_features": 64, "nb_classes": 10, "hidden": list(hidden)})
    return net, ["--model", str(path), "--arch", ARCH, "--arch-kwargs", kwargs]


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _report(out):
    results = _no_nan((out / "results.json").read_text())
    import jsonschema  # a dev dependency: the schema check must run, never skip

    jsonschema.validate(results, audit_schema())
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "<script" not in page
    assert AuditResult.from_json(out / "results.json").to_dict() == results
    return results, page


@pytest.fixture(scope="module")
def digits():
    return load_digits(size=8)


@pytest.fixture(scope="module")
def privacy_case(digits, tmp_path_factory):
    """An MLP that overfits 150 training digits (members); 150 test digits are non-members."""
    (x_train, y_train), (x_test, y_test) = digits
    root = tmp_path_factory.mktemp("privacy")
    xm, ym, xn, yn = x_train[:150], y_train[:150], x_test[:150], y_test[:150]
    np.savez(root / "train.npz", x=xm, y=ym)
    np.savez(root / "test.npz", x=xn, y=yn)
    net, model = _save_model(root / "m.pt", (128,), xm, ym, epochs=100)
    return root, model, net, (xm, ym, xn, yn)


@pytest.fixture(scope="module")
def backdoor_case(digits, tmp_path_factory):
    """BadNets (Gu et al. 2017): a 3x3 white corner on ~10% as many other-class digits as
    class TARGET holds, relabelled TARGET; an MLP trained on the poisoned set."""
    (x_train, y_train), _ = digits
    rng = np.random.default_rng(0)
    x, y = x_train.copy(), y_train.copy()
    n_poison = round(0.12 * np.sum(y == TARGET))
    poison = rng.choice(np.flatnonzero(y != TARGET), n_poison, replace=False)
    x[poison, :, -3:, -3:] = 1.0
    y[poison] = TARGET
    root = tmp_path_factory.mktemp("backdoor")
    np.savez(root / "train.npz", x=x, y=y)
    net, model = _save_model(root / "m.pt", (64, 32), x, y, epochs=30)
    return root, model, net, poison


@pytest.fixture(scope="module")
def victim_case(digits, tmp_path_factory):
    """A victim trained on the digits' training split, saved as TorchScript; the test split
    is the attacker's pool (its labels only score the held-out part)."""
    (x_train, y_train), (x_test, y_test) = digits
    root = tmp_path_factory.mktemp("extraction")
    net = train_classifier(
        MLP(64, 10, hidden=(64,), random_state=0), x_train, y_train, epochs=20, random_state=0
    )
    torch.jit.save(torch.jit.script(net), root / "victim.pt")
    np.savez(root / "pool.npz", x=x_test, y=y_test)
    return root, net


# ----------------------------------------------------------------------------- privacy


def test_audit_privacy_lira_end_to_end(privacy_case, capsys):
    root, model, _, _ = privacy_case
    out = root / "out"
    argv = [
        "audit", "privacy", *model,
        "--train", str(root / "train.npz"), "--test", str(root / "test.npz"),
        "--reference-models", "4", "--epochs", "100", "--batch-size", "64",
        "--out", str(out),
    ]  # fmt: skip
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    assert "membership AUC" in stdout
    results, page = _report(out)
    n = results["numbers"]
    assert results["audit"] == "privacy" and results["schema_version"] == 1
    assert n["attack"] == "lira" and n["nb_reference_models"] == 4
    assert n["nb_members"] == 150 and n["nb_non_members"] == 150
    assert n["train_accuracy"] > n["test_accuracy"]
    assert 0.5 < n["auc"] <= 1.0
    for key in ("tpr_at_0.1%_fpr", "tpr_at_1%_fpr", "advantage"):
        assert 0.0 <= n[key] <= 1.0
    assert n["tpr_at_1%_fpr"] >= n["tpr_at_0.1%_fpr"]
    fpr, tpr = n["roc"]["fpr"], n["roc"]["tpr"]
    assert fpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert "TPR at 0.1% FPR" in page and "Membership inference" in page
    assert set(results["versions"]) >= {"bastion", "torch", "numpy", "python"}
    print(f"privacy lira: AUC {n['auc']:.3f}, TPR@1%FPR {n['tpr_at_1%_fpr']:.3f}")


def test_audit_privacy_api_loss_attack(privacy_case, tmp_path):
    _, _, net, (xm, ym, xn, yn) = privacy_case
    clf = TorchClassifier(net, input_shape=(1, 8, 8), nb_classes=10)
    result = audit_privacy(clf, xm, ym, xn, yn, attack="loss")
    assert result.kind == "privacy" and result.numbers["nb_reference_models"] == 0
    assert 0.5 < result.numbers["auc"] <= 1.0
    path = result.to_json(tmp_path / "r.json")
    again = AuditResult.from_json(path)
    assert again.numbers == _no_nan(path.read_text())["numbers"]
    assert "membership AUC" in again.summary()
    with pytest.raises(InvalidParameterError, match="reference"):
        audit_privacy(clf, xm, ym, xn, yn, attack="loss", reference_models=4)
    with pytest.raises(InvalidParameterError, match="attack"):
        audit_privacy(clf, xm, ym, xn, yn, attack="shadow")


# ----------------------------------------------------------------------------- backdoor


def test_audit_backdoor_end_to_end_flags_poisoned_class(backdoor_case, capsys):
    root, model, _, poison = backdoor_case
    out = root / "out"
    argv = ["audit", "backdoor", *model, "--train", str(root / "train.npz"), "--out", str(out)]
    code, stdout, err = _run([*argv, "--quiet"], capsys)
    assert code == 0, err
    assert stdout == ""
    results, page = _report(out)
    n = results["numbers"]
    ac = n["methods"]["activation-clustering"]
    assert TARGET in ac["flagged_classes"] and TARGET in n["flagged_classes"]
    assert len(ac["flagged_classes"]) <= 2
    entry = ac["classes"][str(TARGET)]
    assert entry["silhouette"] > 0.2 and sum(entry["cluster_sizes"]) == entry["size"]
    found = set(ac["suspicious_indices"]) & set(poison.tolist())
    assert len(found) >= len(poison) // 3
    assert str(TARGET) in ac["projections"]
    assert "spectral-signatures" in n["methods"]
    assert "Backdoor poison" in page and "cluster sizes per class" in page
    print(
        f"backdoor: flagged {n['flagged_classes']}, AC recall {len(found)}/{len(poison)}, "
        f"silhouette {entry['silhouette']:.3f}"
    )


def test_audit_backdoor_api_needs_activations(backdoor_case):
    _, _, net, _ = backdoor_case

    class PredictOnly:
        capabilities = frozenset({"predict"})
        nb_classes = 10

    with pytest.raises(EstimatorError, match="activations"):
        audit_backdoor(PredictOnly(), np.zeros((4, 1, 8, 8)), np.zeros(4))
    clf = TorchClassifier(net, input_shape=(1, 8, 8), nb_classes=10)
    with pytest.raises(InvalidParameterError, match="method"):
        audit_backdoor(clf, np.zeros((4, 1, 8, 8)), np.zeros(4), method="strip")


# ----------------------------------------------------------------------------- extraction


def test_audit_extraction_end_to_end_fidelity_grows(victim_case, capsys):
    root, _ = victim_case
    out = root / "out"
    argv = [
        "audit", "extraction", "--model", str(root / "victim.pt"),
        "--data", str(root / "pool.npz"), "--budget", "300", "--budgets", "20,300",
        "--epochs", "30", "--out", str(out), "--quiet",
    ]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    results, page = _report(out)
    n = results["numbers"]
    # TorchScript cannot be re-initialised: the thief falls back to an MLP
    assert n["architecture"] == "mlp" and n["attack"] == "copycat"
    assert n["budgets"] == [20, 300] and n["queries"] == [20, 300]
    assert n["nb_eval"] == 90 and n["nb_pool"] == 360
    assert all(0.0 <= f <= 1.0 for f in n["fidelity"])
    assert n["fidelity"][-1] > n["fidelity"][0] + 0.2
    assert n["fidelity"][-1] > 0.7 and n["accuracy"][-1] > 0.6
    assert 0.8 < n["victim_accuracy"] <= 1.0
    assert "fidelity versus queries" in page
    print(f"extraction: queries {n['queries']}, fidelity {n['fidelity']}")


def test_audit_extraction_api_default_budgets(victim_case, digits):
    _, net = victim_case
    (_, _), (x_test, y_test) = digits
    clf = TorchClassifier(net, input_shape=(1, 8, 8), nb_classes=10)
    result = audit_extraction(
        clf, x_test[:200], budget=80, x_test=x_test[200:], y_test=y_test[200:], epochs=2
    )
    n = result.numbers
    assert n["budgets"][-1] == 80 and n["budgets"] == sorted(n["budgets"])
    assert len(n["budgets"]) >= 3 and n["architecture"] == "same"
    assert len(n["fidelity"]) == len(n["accuracy"]) == len(n["budgets"])
    assert all(a is not None and not math.isnan(a) for a in n["accuracy"])
    assert "queries: fidelity" in result.summary()


# ----------------------------------------------------------------------------- bad inputs


def _one_line_error(capsys, argv, *needles):
    code, _, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_inputs_give_one_line_and_exit_2(privacy_case, victim_case, tmp_path, capsys):
    root, model, _, _ = privacy_case
    train, test = str(root / "train.npz"), str(root / "test.npz")
    out = str(tmp_path / "out")
    privacy = ["audit", "privacy", "--train", train, "--test", test, "--out", out]
    # a missing model file
    _one_line_error(capsys, [*privacy, "--model", str(tmp_path / "nope.pt")], "nope.pt")
    # a state dict without its architecture
    _one_line_error(capsys, [*privacy, "--model", model[1], "--attack", "loss"], "--arch")
    # a missing required flag, and a bad number
    _one_line_error(capsys, ["audit", "privacy", *model, "--train", train, "--out", out], "--test")
    _one_line_error(
        capsys,
        [*privacy, *model, "--reference-models", "many"],
        "--reference-models",
    )
    # labels out of the model's range
    (x, y) = np.load(root / "test.npz")["x"], np.load(root / "test.npz")["y"]
    np.savez(tmp_path / "bad.npz", x=x, y=y + 10)
    bad = ["audit", "privacy", *model, "--train", train, "--test", str(tmp_path / "bad.npz")]
    _one_line_error(capsys, [*bad, "--out", out, "--attack", "loss"], "bad.npz")
    # the loss attack with reference models
    _one_line_error(capsys, [*privacy, *model, "--attack", "loss", "--reference-models", "2"])
    # a TorchScript model cannot train reference models
    vroot, _ = victim_case
    ts = ["--model", str(vroot / "victim.pt")]
    _one_line_error(capsys, [*privacy, *ts, "--reference-models", "2"], "attack='loss'")
    # a TorchScript model does not show its layers to a backdoor audit
    backdoor = ["audit", "backdoor", *ts, "--train", train, "--out", out]
    _one_line_error(capsys, backdoor, "--arch")
    _one_line_error(
        capsys,
        ["audit", "backdoor", *model, "--train", train, "--out", out, "--layer", "fc9"],
        "fc9",
    )
    # extraction: a bad budget; a model that does not accept the data's shape
    pool = str(vroot / "pool.npz")
    extraction = ["audit", "extraction", *ts, "--data", pool, "--out", out]
    _one_line_error(capsys, [*extraction, "--budget", "0"], "--budget")
    np.savez(tmp_path / "wide.npz", x=np.zeros((8, 1, 5, 5), np.float32), y=np.zeros(8, int))
    _one_line_error(
        capsys, ["audit", "extraction", *ts, "--data", str(tmp_path / "wide.npz"), "--out", out]
    )
    # no audit named
    _one_line_error(capsys, ["audit"], "audit")
    assert not (tmp_path / "out" / "results.json").exists()
