"""bastion.evaluation.evaluate: suites, numbers against the direct API, results.json."""

import json

import jsonschema
import numpy as np
import pytest
import torch

from bastion.attacks.evasion import PGD, AutoAttack
from bastion.estimators import BlackBoxClassifier
from bastion.evaluation import (
    SUITES,
    EvaluationResult,
    evaluate,
    results_schema,
)
from bastion.evaluation._suites import resolve_suite
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError

PGD_SUITE = {"name": "pgd10", "attacks": [{"name": "PGD", "params": {"max_iter": 10}}]}


@pytest.fixture(scope="module")
def data(digits_test):
    x, y = digits_test
    return x[:30], y[:30]


@pytest.fixture(scope="module")
def quick(digits_cnn, data):
    return evaluate(digits_cnn, *data, eps=[0.1, 0.05], suite="quick", random_state=0)


def _correct(clf, x, y):
    return np.asarray(clf.predict(x)).argmax(1) == y


def test_custom_pgd_equals_direct_api(digits_cnn, data):
    x, y = data
    eps = 0.1
    r = evaluate(
        digits_cnn,
        x,
        y,
        eps=eps,
        suite=PGD_SUITE,
        random_state=3,
        batch_size=64,
        health_checks=False,
    )
    ok = _correct(digits_cnn, x, y)
    pgd = PGD(
        digits_cnn, eps=eps, eps_step=2.5 * eps / 10, max_iter=10, random_state=3, batch_size=64
    )
    x_adv = pgd.generate(x[ok], y[ok])
    robust = np.zeros(len(y), bool)
    robust[ok] = np.asarray(digits_cnn.predict(x_adv)).argmax(1) == y[ok]
    assert r.robust_accuracy[eps] == pytest.approx(robust.mean())
    np.testing.assert_array_equal(r.results[0].robust, robust)
    assert r.clean_accuracy == pytest.approx(ok.mean())
    assert r.config["random_state"] == 3


def test_standard_equals_autoattack(digits_cnn, data):
    x, y = data[0][:10], data[1][:10]
    eps = 0.3
    r = evaluate(
        digits_cnn,
        x,
        y,
        eps=eps,
        suite="standard",
        random_state=0,
        batch_size=64,
        health_checks=False,
    )
    aa = AutoAttack(digits_cnn, eps=eps, version="standard", random_state=0, batch_size=64)
    direct = aa.evaluate(x, y)
    assert r.robust_accuracy[eps] == pytest.approx(direct.robust_accuracy)
    np.testing.assert_array_equal(r.results[0].robust, direct.robust)
    assert r.attacks == [
        {"label": "AutoAttack", "name": "AutoAttack", "params": {"version": "standard"}}
    ]
    broken = r.results[0].broken_by[~r.results[0].robust & r.clean_correct]
    assert all(b.startswith("AutoAttack/") for b in broken)


def test_quick_per_sample_record(quick, data):
    _, y = data
    assert quick.eps == [0.05, 0.1]  # sorted
    assert quick.robust_accuracy[0.1] <= quick.robust_accuracy[0.05] <= quick.clean_accuracy
    for res in quick.results:
        broken = ~res.robust & quick.clean_correct
        assert set(res.broken_by[broken]) <= {"FGSM", "PGD"}
        assert (res.broken_by[~quick.clean_correct] == "clean").all()
        assert (res.linf[broken] <= res.eps + 1e-6).all()
        assert np.isnan(res.linf[res.robust]).all()
        assert (res.adv_prediction[broken] != y[broken]).all()
        assert set(res.per_class) == set(np.unique(y).tolist())
        assert len(res.gallery) == res.gallery_x_adv.shape[0] <= 8
        assert set(res.seconds) <= {"FGSM", "PGD"}
    assert quick.versions.keys() == {"bastion", "torch", "numpy", "python"}
    assert "health" in quick.seconds and "total" in quick.seconds
    assert "clean accuracy" in quick.summary()


def test_json_validates_and_round_trips(quick, tmp_path):
    path = quick.to_json(tmp_path / "results.json")
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, results_schema())
    back = EvaluationResult.from_json(path)
    assert back.to_dict() == doc
    assert back.robust_accuracy == quick.robust_accuracy
    np.testing.assert_array_equal(back.results[1].robust, quick.results[1].robust)
    np.testing.assert_array_equal(back.results[1].linf, quick.results[1].linf)
    assert [h.status for h in back.health] == [h.status for h in quick.health]
    npz = quick.save_gallery(tmp_path / "gallery.npz")
    with np.load(npz, allow_pickle=False) as g:
        assert g["x"].shape[0] == len(g["indices"])
        assert g["x_adv_1"].shape[1:] == (1, 28, 28)
    with pytest.raises(InputError):
        back.save_gallery(tmp_path / "g2.npz")


def test_from_json_refuses_other_documents(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema_version": "0"}))
    with pytest.raises(InputError, match="schema version"):
        EvaluationResult.from_json(p)
    p.write_text("not json")
    with pytest.raises(InputError):
        EvaluationResult.from_json(p)


def test_custom_yaml_suite_with_defence(digits_cnn, data, tmp_path):
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "name: squeezed\n"
        "attacks:\n"
        "  - FGSM\n"
        "  - name: PGD\n"
        "    label: pgd-5\n"
        "    params: {max_iter: 5, num_random_init: 1}\n"
        "defences:\n"
        "  - name: FeatureSqueezing\n"
        "    params: {bit_depth: 4}\n"
        "gradients: bpda\n"
    )
    x, y = data
    r = evaluate(digits_cnn, x[:20], y[:20], eps=[0.1], suite=suite, health_checks=False)
    assert r.suite == "squeezed"
    assert [a["label"] for a in r.attacks] == ["FGSM", "pgd-5"]
    assert r.defences["gradients"] == "bpda"
    assert r.defences["preprocessors"][0]["name"] == "FeatureSqueezing"
    assert r.config["estimator"] == "DefendedEstimator"
    assert r.robust_accuracy[0.1] <= r.clean_accuracy


def test_l2_threat_and_minimal_distances(digits_cnn, data, tmp_path):
    x, y = data
    suite = {
        "attacks": [
            {"name": "PGD", "params": {"max_iter": 5}},
            {"name": "FMN", "params": {"max_iter": 20}},
        ]
    }
    r = evaluate(digits_cnn, x[:20], y[:20], threat="l2", eps=[0.5, 1.5], suite=suite)
    assert r.norm == "2" and r.threat == "l2"
    md = r.min_distance
    assert md is not None and (md[~r.clean_correct] == 0).all()
    for res in r.results:
        broken = ~res.robust & r.clean_correct
        assert (res.l2[broken] <= res.eps + 1e-5).all()
        # robust at eps only where the minimal distance found exceeds eps
        assert (md[res.robust] > res.eps).all()
    curve = r.curve
    assert curve is not None
    for e, acc in zip(r.eps, [res.robust_accuracy for res in r.results], strict=True):
        assert curve["robust_accuracy"][curve["eps"].index(e)] == pytest.approx(acc)
    assert np.all(np.diff(curve["robust_accuracy"]) <= 0)
    jsonschema.validate(json.loads(r.to_json(tmp_path / "r.json").read_text()), results_schema())


def test_builtin_suites_settings():
    assert set(SUITES) == {"quick", "standard", "thorough", "blackbox"}
    thorough = resolve_suite("thorough")
    assert [a.name for a in thorough.attacks] == ["AutoAttack", "FMN", "FAB"]
    assert thorough.attacks[0].params == {"version": "standard"}  # never weakened
    quick = resolve_suite("quick")
    assert [a.name for a in quick.attacks] == ["FGSM", "PGD"]
    bb = resolve_suite("blackbox")
    assert [(a.name, a.params["max_queries"]) for a in bb.attacks] == [
        ("SquareAttack", 5000),
        ("HopSkipJump", 5000),
    ]


@pytest.fixture(scope="module")
def linear_blackbox():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, generator=gen)
    x = torch.rand(60, 8, generator=gen)
    y = (x @ w).argmax(1).numpy()

    def predict(a):
        return torch.softmax(torch.as_tensor(a) @ w * 5, 1).numpy()

    bb = BlackBoxClassifier(predict, input_shape=(8,), nb_classes=3, clip_values=(0.0, 1.0))
    return bb, x.numpy(), y


def test_blackbox_suite_on_predict_only_model(linear_blackbox, tmp_path):
    bb, x, y = linear_blackbox
    r = evaluate(bb, x[:10], y[:10], eps=[0.05, 0.2], suite="blackbox", random_state=0)
    assert r.robust_accuracy[0.2] <= r.robust_accuracy[0.05] <= r.clean_accuracy
    assert r.min_distance is not None  # HopSkipJump gives minimal distances
    broken = set(np.concatenate([res.broken_by for res in r.results]))
    assert broken <= {"", "clean", "SquareAttack", "HopSkipJump"}
    assert not r.check("gradients").applicable
    assert r.check("gradients").status == "pass"
    jsonschema.validate(json.loads(r.to_json(tmp_path / "r.json").read_text()), results_schema())


def test_white_box_suite_on_predict_only_model(linear_blackbox):
    bb, x, y = linear_blackbox
    for suite in ("quick", "standard", "thorough", {"attacks": ["PGD"]}):
        with pytest.raises(EstimatorError, match="blackbox"):
            evaluate(bb, x, y, eps=0.1, suite=suite)


def test_limit_is_stratified(digits_cnn, digits_test):
    x, y = digits_test
    r = evaluate(
        digits_cnn, x, y, eps=0.05, suite={"attacks": ["FGSM"]}, limit=20, health_checks=False
    )
    assert len(r.labels) == 20
    np.testing.assert_array_equal(r.labels, y[r.indices])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": "8/255"}, InvalidParameterError, "eps"),
        ({"eps": -0.1}, InvalidParameterError, "eps"),
        ({"eps": []}, InvalidParameterError, "eps"),
        ({"eps": [0.1, float("nan")]}, InvalidParameterError, "eps"),
        ({"suite": "fastest"}, InvalidParameterError, "suite"),
        ({"threat": "l1"}, InvalidParameterError, "threat"),
        ({"suite": {"attacks": ["NoSuchAttack"]}}, InvalidParameterError, "NoSuchAttack"),
        (
            {"suite": {"attacks": [{"name": "PGD", "params": {"eps": 0.3}}]}},
            InvalidParameterError,
            "budget",
        ),
        (
            {"suite": {"attacks": [{"name": "PGD", "params": {"bogus": 1}}]}},
            InvalidParameterError,
            "bogus",
        ),
        (
            {"suite": {"attacks": ["PGD"], "defences": ["NoSuchDefence"]}},
            InvalidParameterError,
            "NoSuchDefence",
        ),
        ({"suite": {"attacks": []}}, InvalidParameterError, "attacks"),
        ({"suite": "missing.yaml"}, InputError, "does not exist"),
    ],
)
def test_bad_parameters(digits_cnn, data, kwargs, error, match):
    x, y = data
    kw = {"eps": 0.1, "suite": {"attacks": ["FGSM"]}, **kwargs}
    with pytest.raises(error, match=match):
        evaluate(digits_cnn, x, y, **kw)


def test_bad_labels_and_inputs(digits_cnn, data):
    x, y = data
    bad = y.copy()
    bad[3] = 10
    with pytest.raises(InputError, match="outside the model's 10 classes"):
        evaluate(digits_cnn, x, bad, eps=0.1, suite="quick")
    with pytest.raises(InputError):
        evaluate(digits_cnn, x, y[:5], eps=0.1, suite="quick")
    with pytest.raises(InputError):
        evaluate(digits_cnn, x[:, :, :10], y, eps=0.1, suite="quick")
    with pytest.raises(InputError):
        evaluate(digits_cnn, x, None, eps=0.1, suite="quick")


def test_unknown_yaml_attack(digits_cnn, data, tmp_path):
    p = tmp_path / "s.yml"
    p.write_text("attacks:\n  - name: Fgsm\n")
    with pytest.raises(InvalidParameterError, match="Unknown attack 'Fgsm'"):
        evaluate(digits_cnn, *data, eps=0.1, suite=p)


def test_numpy_and_tensor_inputs_agree(digits_cnn, data):
    x, y = data
    kw = {"eps": 0.05, "suite": {"attacks": ["FGSM"]}, "health_checks": False}
    a = evaluate(digits_cnn, x[:10], y[:10], **kw)
    b = evaluate(digits_cnn, torch.as_tensor(x[:10]), torch.as_tensor(y[:10]), **kw)
    assert a.robust_accuracy == b.robust_accuracy


def _same(a, b):
    def strip(doc):  # timings and library versions aside
        if isinstance(doc, dict):
            return {k: strip(v) for k, v in doc.items() if k not in ("seconds", "versions")}
        if isinstance(doc, list):
            return [strip(v) for v in doc]
        return doc

    da, db = strip(a.to_dict()), strip(b.to_dict())
    assert json.dumps(da, sort_keys=True) == json.dumps(db, sort_keys=True)


def test_checkpoint_dir_resumes_to_the_uninterrupted_result(
    digits_cnn, data, tmp_path, monkeypatch
):
    """Units finished before an interruption are read back (weights_only) and not rerun; the
    result equals an uninterrupted run, minimum-norm distances and AutoAttack-style flags
    included; a folder of another evaluation is refused."""
    from bastion.evaluation._evaluate import ChunkTask

    x, y = data
    suite = {
        "name": "mixed",
        "attacks": [
            {"name": "PGD", "params": {"max_iter": 3}},
            {"name": "FMN", "params": {"max_iter": 5}},
        ],
    }
    kwargs = dict(eps=[0.05, 0.1], suite=suite, random_state=1, batch_size=16)
    whole = evaluate(digits_cnn, x, y, **kwargs)

    real = ChunkTask.run
    calls = []

    def stop_at_the_fourth(self, *args, **kw):
        calls.append(args[4])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(ChunkTask, "run", stop_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        evaluate(digits_cnn, x, y, checkpoint_dir=tmp_path, **kwargs)
    assert len(list(tmp_path.glob("unit-*.pt"))) == 3  # two chunks' FMN, one PGD unit

    rerun = []
    monkeypatch.setattr(
        ChunkTask, "run", lambda self, *a, **k: rerun.append(a[4]) or real(self, *a, **k)
    )
    resumed = evaluate(digits_cnn, x, y, checkpoint_dir=tmp_path, **kwargs)
    assert len(rerun) == 3  # 2 chunks x 2 budgets of PGD, one of them already done
    _same(whole, resumed)

    with pytest.raises(InputError, match=r"another evaluation.*random_state"):
        evaluate(digits_cnn, x, y, checkpoint_dir=tmp_path, **{**kwargs, "random_state": 2})
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        evaluate(digits_cnn, x, y, checkpoint_dir=3, **kwargs)


def test_checkpoint_keeps_autoattack_flags(tmp_path):
    """A unit's warning flags survive the round trip through the checkpoint."""
    from bastion.attacks.evasion.auto_attack import EvaluationFlag
    from bastion.evaluation._checkpoint import UnitStore
    from bastion.evaluation._evaluate import ChunkPart

    store = UnitStore(tmp_path, {"a": 1})
    part = ChunkPart(
        seconds={"apgd-ce": 1.5},
        changed=torch.tensor([0, 2]),
        x_rows=torch.zeros(2, 3),
        robust=torch.tensor([False, True, False]),
        broken_by=np.asarray(["apgd-ce", "", "square"], dtype=object),
        flags=[EvaluationFlag("zero-gradients", "no gradient")],
    )
    store.save(0, 0.1, part)
    back = UnitStore(tmp_path, {"a": 1}).load(0, 0.1)
    assert back.flags == part.flags and list(back.broken_by) == list(part.broken_by)
    assert torch.equal(back.robust, part.robust) and back.dist is None
