"""No persisted state executes code on load (DESIGN principle 10).

Planted files, each built to write a marker file when unpickled (or rebuilt by skops), are put
where AutoAttack's state file and LiRA's / RMIA's saved reference models are expected: loading
raises a clear bastion error and the marker is never written. A control shows each payload does
write the marker when loaded naively. Saved state that is data but does not belong to the
evaluation (other settings, another model, tampered records) is refused too; round trips give
the results of an uninterrupted run.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.linear_model import LogisticRegression

from bastion.attacks.evasion._auto_attack_state import FORMAT
from bastion.attacks.evasion.auto_attack import AutoAttack
from bastion.attacks.inference.lira import LiRA
from bastion.attacks.inference.rmia import RMIA
from bastion.estimators import BlackBoxClassifier, SklearnClassifier, TorchClassifier
from bastion.estimators.persistence import load_estimator, save_estimator
from bastion.exceptions import BastionError, EstimatorError, InputError


class _Exploit:
    """Unpickling it writes ``marker``: the classic pickle attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code ran")


class _Planted:
    """Rebuilding it (skops calls ``__setstate__``) writes the marker it carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __getstate__(self):
        return {"marker": self.marker}

    def __setstate__(self, state):
        Path(state["marker"]).write_text("code ran")
        self.__dict__.update(state)


def _payloads(folder: Path, marker: Path) -> dict[str, bytes]:
    """Malicious files, as bytes: a raw pickle, and a torch zip file that looks like data."""
    torch_file = folder / "payload.pt"
    torch.save({"format": FORMAT, "version": 2, "settings": _Exploit(marker)}, torch_file)
    return {
        "pickle": pickle.dumps(_Exploit(marker)),
        "torch-zip": torch_file.read_bytes(),
    }


def test_the_payloads_are_live(tmp_path):
    """Control: each payload runs its code when loaded without protection."""
    marker = tmp_path / "marker"
    payloads = _payloads(tmp_path, marker)
    pickle.loads(payloads["pickle"])
    assert marker.exists()
    marker.unlink()
    (tmp_path / "payload.pt").write_bytes(payloads["torch-zip"])
    torch.load(tmp_path / "payload.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    planted = tmp_path / "planted.skops"
    sio.dump(_Planted(marker), planted)
    sio.load(planted, trusted=sio.get_untrusted_types(file=planted))
    assert marker.exists()


# ---------------------------------------------------------------------- AutoAttack


@pytest.fixture(scope="module")
def linear():
    """A linear model on 8x8 inputs and a few samples with labels."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(10, 64, generator=g))
    clf = TorchClassifier(net, input_shape=(1, 8, 8), nb_classes=10)
    x = torch.rand(12, 1, 8, 8, generator=g)
    y = clf.predict(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean mistakes
    return clf, x, y


def _aa(clf, path, **kw):
    params = dict(eps=0.05, version="custom", attacks=["apgd-ce"], max_iter=3, random_state=0)
    return AutoAttack(clf, state_path=path, **{**params, **kw})


# torch.load warns about the protocol of a raw pickle before refusing it
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", ["pickle", "torch-zip"])
def test_a_planted_autoattack_state_does_not_run(linear, tmp_path, payload):
    clf, x, y = linear
    marker, path = tmp_path / "marker", tmp_path / "state.pt"
    path.write_bytes(_payloads(tmp_path, marker)[payload])
    with pytest.raises(InputError, match=r"state_path.*(read as data|not an AutoAttack state)"):
        _aa(clf, path).evaluate(x, y)
    assert not marker.exists()


def test_an_old_pickled_autoattack_state_is_refused(linear, tmp_path):
    """What bastion wrote before: a pickle of dicts and a NumPy object array."""
    clf, x, y = linear
    path = tmp_path / "state.pt"
    state = {"x_adv": x, "robust": y == y, "broken_by": np.array([""] * len(y), dtype=object)}
    torch.save({"fingerprint": "0" * 64, "state": state}, path)
    with pytest.raises(InputError, match="earlier versions of bastion wrote pickles"):
        _aa(clf, path).evaluate(x, y)


def test_a_saved_state_of_another_evaluation_is_refused(linear, tmp_path):
    clf, x, y = linear
    path = tmp_path / "state.pt"
    first = _aa(clf, path).evaluate(x, y)
    assert path.exists() and first.accuracy_after
    with pytest.raises(InputError, match=r"different evaluation \(eps: saved 0.05, now 0.1\)"):
        _aa(clf, path, eps=0.1).evaluate(x, y)
    with pytest.raises(InputError, match="inputs: saved"):
        _aa(clf, path).evaluate(x, (y + 1) % 10)
    with pytest.raises(InputError, match="attacks: saved"):
        _aa(clf, path, attacks=["apgd-dlr"]).evaluate(x, y)
    # NumPy scalars are stored as Python numbers: a file written with them reads back as data.
    other = tmp_path / "numpy.pt"
    a = _aa(clf, other, eps=np.float32(0.05), max_iter=np.int64(3)).evaluate(x, y)
    b = _aa(clf, other, eps=np.float32(0.05), max_iter=np.int64(3)).evaluate(x, y)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)


def _tamper(path: Path, **changes):
    record = torch.load(path, weights_only=True)
    for key, change in changes.items():
        record[key] = change(record[key])
    torch.save(record, path)


def test_a_tampered_or_stale_state_is_refused(linear, tmp_path):
    clf, x, y = linear
    path = tmp_path / "state.pt"
    res = _aa(clf, path, eps=0.3).evaluate(x, y)
    broken = np.flatnonzero(res.broken_by == "apgd-ce")
    assert len(broken) > 0
    original = path.read_bytes()

    def refused(match, **changes):
        path.write_bytes(original)
        _tamper(path, **changes)
        with pytest.raises(InputError, match=match):
            _aa(clf, path, eps=0.3).evaluate(x, y)

    def unbreak(x_adv):  # a "found" example that is the clean input: not misclassified
        x_adv[broken] = x[broken]
        return x_adv

    refused("not \\(any longer\\) misclassified", x_adv=unbreak)
    refused("modified inputs", x_adv=lambda t: t + 0.01 * (t < 0.5))
    refused("malformed 'x_adv'", x_adv=lambda t: t.double())
    refused("malformed 'robust'", robust=lambda t: t[:-1])
    refused("attacks that have not run", broken_by=lambda t: t + 5 * (t == 2))
    refused("contradict each other", robust=lambda t: ~t)
    refused("accuracies", accuracy_after=lambda d: {k: 0.5 * v + 0.01 for k, v in d.items()})
    refused("not a prefix", done=lambda d: ["fab-t"])
    # the same settings but another model: its clean predictions differ
    path.write_bytes(original)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    other = TorchClassifier(net, input_shape=(1, 8, 8), nb_classes=10)
    with pytest.raises(InputError, match="clean predictions differ"):
        _aa(other, path, eps=0.3).evaluate(x, y)
    # untouched, it resumes to the same result
    path.write_bytes(original)
    again = _aa(clf, path, eps=0.3).evaluate(x, y)
    np.testing.assert_array_equal(again.x_adv, res.x_adv)
    assert again.accuracy_after == res.accuracy_after


def test_a_missing_state_folder_is_refused_before_any_attack(linear, tmp_path):
    clf, x, y = linear
    with pytest.raises(InputError, match="does not exist"):
        _aa(clf, tmp_path / "no" / "state.pt").evaluate(x, y)


# ---------------------------------------------------------------------- reference models


def _problem(n=60, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * g.normal(size=n) > 0).astype(np.int64)
    return x, y


def _mlp(random_state=0):
    torch_gen = torch.Generator().manual_seed(int(random_state))
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=torch_gen))
    return TorchClassifier(net, input_shape=(6,), nb_classes=2, clip_values=None)


def _train_torch(calls):
    def train(x, y, random_state):
        calls.append(random_state)
        return _mlp(random_state).fit(
            x, y, epochs=30, batch_size=16, learning_rate=0.02, random_state=0
        )

    return train


def _train_logistic(calls):
    def train(x, y, random_state):
        calls.append(random_state)
        return SklearnClassifier(LogisticRegression(C=10.0, max_iter=500).fit(x, y))

    return train


@pytest.mark.parametrize("cls", [LiRA, RMIA])
def test_torch_reference_models_reload_as_weights_with_the_same_scores(cls, tmp_path):
    x, y = _problem()
    target = _train_torch([])(x[:30], y[:30], 99)
    calls: list[int] = []
    kw = dict(reference_trainer=_train_torch(calls), nb_reference_models=2, save_path=tmp_path)
    scores = cls(target, random_state=0, **kw).fit(x, y).infer(x, y)
    assert sorted(p.name for p in tmp_path.glob("model_*")) == ["model_000.pt", "model_001.pt"]
    reloaded = cls(target, random_state=5, **kw).fit(x, y)
    assert len(calls) == 2  # nothing trained again
    np.testing.assert_array_equal(reloaded.infer(x, y), scores)
    # the loaded models are clones of the target with the saved weights, not the user's module
    assert all(m.model is not target.model for m in reloaded.reference_models_)


def test_torch_reference_models_need_a_template_of_their_architecture(tmp_path):
    x, y = _problem()
    target = _train_torch([])(x[:30], y[:30], 99)
    kw = dict(reference_trainer=_train_torch([]), nb_reference_models=2, save_path=tmp_path)
    scores = LiRA(target, **kw).fit(x, y).infer(x, y)
    # a black-box target cannot host the weights: reference_template must
    api = BlackBoxClassifier(lambda a: target.predict(a), input_shape=(6,), nb_classes=2)
    with pytest.raises(EstimatorError, match="reference_template"):
        LiRA(api, **kw).fit(x, y)
    # (the same up to float32 rounding: the API gives probabilities, the target logits)
    np.testing.assert_allclose(
        LiRA(api, reference_template=_mlp(), **kw).fit(x, y).infer(x, y),
        scores,
        rtol=1e-4,
        atol=1e-5,
    )
    # another architecture, or another preprocessing, is refused rather than mis-scored
    wide = TorchClassifier(
        torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)),
        input_shape=(6,),
        nb_classes=2,
        clip_values=None,
    )
    with pytest.raises(InputError, match="do not fit the template"):
        LiRA(api, reference_template=wide, **kw).fit(x, y)
    shifted = TorchClassifier(
        _mlp().model, input_shape=(6,), nb_classes=2, clip_values=None, preprocessing=(0.5, 2.0)
    )
    with pytest.raises(InputError, match="other probabilities on its probe"):
        LiRA(api, reference_template=shifted, **kw).fit(x, y)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", ["pickle", "torch-zip"])
def test_a_planted_torch_reference_model_does_not_run(tmp_path, payload):
    x, y = _problem()
    target = _train_torch([])(x[:30], y[:30], 99)
    folder, marker = tmp_path / "models", tmp_path / "marker"
    kw = dict(reference_trainer=_train_torch([]), nb_reference_models=2, save_path=folder)
    LiRA(target, **kw).fit(x, y)
    (folder / "model_001.pt").write_bytes(_payloads(tmp_path, marker)[payload])
    with pytest.raises(InputError, match=r"model_001.pt.*(read as data|not a TorchClassifier)"):
        LiRA(target, **kw).fit(x, y)
    assert not marker.exists()


def test_sklearn_reference_models_reload_with_the_same_scores(tmp_path):
    x, y = _problem()
    target = _train_logistic([])(x[:30], y[:30], 0)
    calls: list[int] = []
    kw = dict(reference_trainer=_train_logistic(calls), nb_reference_models=2, save_path=tmp_path)
    scores = RMIA(target, **kw).fit(x, y).infer(x, y)
    assert sorted(p.name for p in tmp_path.glob("model_*")) == [
        "model_000.skops",
        "model_001.skops",
    ]
    np.testing.assert_array_equal(RMIA(target, **kw).fit(x, y).infer(x, y), scores)
    assert len(calls) == 2


def test_planted_sklearn_reference_models_do_not_run(tmp_path):
    x, y = _problem()
    target = _train_logistic([])(x[:30], y[:30], 0)
    folder, marker = tmp_path / "models", tmp_path / "marker"
    kw = dict(reference_trainer=_train_logistic([]), nb_reference_models=2, save_path=folder)
    LiRA(target, **kw).fit(x, y)
    saved = folder / "model_000.skops"
    # a pickle in a skops file's place
    saved.write_bytes(_payloads(tmp_path, marker)["pickle"])
    with pytest.raises(InputError, match=r"model_000.skops.*is not a skops file"):
        LiRA(target, **kw).fit(x, y)
    # a skops file whose object runs code when rebuilt: its type is not trusted
    sio.dump(
        {"format": "bastion.SklearnClassifier", "version": 1, "model": _Planted(marker)}, saved
    )
    with pytest.raises(InputError, match=r"does not trust by default: \[.*_Planted'\]"):
        LiRA(target, **kw).fit(x, y)
    assert not marker.exists()


def test_old_pickled_reference_models_are_refused(tmp_path):
    x, y = _problem()
    target = _train_logistic([])(x[:30], y[:30], 0)
    marker = tmp_path / "marker"
    (tmp_path / "model_000.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    calls: list[int] = []
    with pytest.raises(InputError, match=r"pickled by an earlier version.*never loaded"):
        LiRA(
            target,
            reference_trainer=_train_logistic(calls),
            nb_reference_models=2,
            save_path=tmp_path,
        ).fit(x, y)
    assert not marker.exists() and calls == []


def test_tampered_reference_model_directories_are_refused(tmp_path):
    x, y = _problem()
    target = _train_logistic([])(x[:30], y[:30], 0)
    kw = dict(reference_trainer=_train_logistic([]), nb_reference_models=2, save_path=tmp_path)
    LiRA(target, **kw).fit(x, y)
    keep = tmp_path / "keep.npy"
    original = keep.read_bytes()
    np.save(keep, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"keep.npy.*cannot be read"):
        LiRA(target, **kw).fit(x, y)
    np.save(keep, np.ones((2, 5), dtype=bool))
    with pytest.raises(InputError, match="bool array of shape \\(2, 60\\)"):
        LiRA(target, **kw).fit(x, y)
    keep.write_bytes(original)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match=r"meta.json cannot be read"):
        LiRA(target, **kw).fit(x, y)


def test_reference_models_without_a_data_format_cannot_be_saved(tmp_path):
    x, y = _problem()
    target = _train_logistic([])(x[:30], y[:30], 0)

    def train_api(xs, ys, random_state):
        model = LogisticRegression().fit(xs, ys)
        return BlackBoxClassifier(model.predict_proba, input_shape=(6,), nb_classes=2)

    attack = LiRA(target, reference_trainer=train_api, nb_reference_models=2, save_path=tmp_path)
    with pytest.raises(EstimatorError, match=r"no data format.*save_path=None"):
        attack.fit(x, y)
    assert list(tmp_path.glob("model_*")) == []


# ---------------------------------------------------------------------- the persistence module


def test_save_and_load_estimator_round_trips(tmp_path):
    x, y = _problem()
    torch_clf = _train_torch([])(x, y, 1)
    file = save_estimator(torch_clf, tmp_path / "torch", probe=x[:4])
    loaded = load_estimator(file, template=_mlp(7))
    assert file.name == "torch.pt" and loaded.model is not torch_clf.model
    np.testing.assert_array_equal(loaded.predict(x), torch_clf.predict(x))
    sk = _train_logistic([])(x, y, 0)
    file = save_estimator(sk, tmp_path / "sk.skops", probe=x[:4])
    assert file.name == "sk.skops"
    np.testing.assert_array_equal(load_estimator(file).predict(x), sk.predict(x))
    with pytest.raises(EstimatorError, match="template=a TorchClassifier"):
        load_estimator(tmp_path / "torch.pt")
    with pytest.raises(InputError, match="pickles included, are not loaded"):
        load_estimator(tmp_path / "model.pkl")
    with pytest.raises(BastionError, match="trusted_types"):
        load_estimator(file, trusted_types="sklearn.tree._tree.Tree")
