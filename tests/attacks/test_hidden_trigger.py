"""Hidden-trigger backdoor (Saha et al. 2020): poisons stay close to target-class images, carry
no trigger and correct labels, collide in feature space with triggered source images, and
fine-tuning the last layer on them makes the trigger work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import PatchTrigger
from bastion.attacks.poisoning.hidden_trigger import HiddenTriggerBackdoor
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InvalidParameterError
from bastion.zoo import SmallCNN, train_classifier

TARGET, SOURCE = 0, 3
PATTERN = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)


@pytest.fixture(scope="module")
def setup():
    (x_tr, y_tr), (x_te, y_te) = load_digits(size=8, random_state=0)
    model = train_classifier(
        SmallCNN(input_size=8, random_state=0), x_tr, y_tr, epochs=15, random_state=0
    )
    clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10)
    return clf, (x_tr, y_tr), (x_te, y_te)


def _features(clf, x):
    return torch.as_tensor(clf.get_activations(x, "relu3"))


def _finetune_last_layer(clf, feats, labels):
    lin = torch.nn.Linear(128, 10)
    with torch.no_grad():
        lin.weight.copy_(clf.model.fc2.weight)
        lin.bias.copy_(clf.model.fc2.bias)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(feats), labels).backward()
        opt.step()
    return lin


def _attack(clf, **kw):
    params = dict(
        target=TARGET,
        source=SOURCE,
        layer="relu3",
        fraction=1.0,
        eps=0.5,
        learning_rate=0.01,
        max_iter=300,
        random_state=0,
    )
    params.update(kw)
    return HiddenTriggerBackdoor(clf, PatchTrigger(size=3, value=PATTERN), **params)


def test_hidden_trigger_poisons_and_attack_success(setup):
    """Measured: mean squared feature distance 483 -> 6; attack success on triggered source
    test images after last-layer fine-tuning 0.41 vs 0.00 with clean fine-tuning; clean
    accuracy 0.92 (eps=0.5 on 8x8 digits; eps=0.3 gives 0.02, eps=0.4 0.15)."""
    clf, (x_tr, y_tr), (x_te, y_te) = setup
    attack = _attack(clf)
    x_p, y_p, mask = attack.poison(x_tr, y_tr)
    np.testing.assert_array_equal(y_p, y_tr)
    assert np.all(y_tr[mask] == TARGET) and mask.sum() == np.sum(y_tr == TARGET)
    np.testing.assert_array_equal(x_p[~mask], x_tr[~mask])
    assert np.abs(x_p - x_tr).max() <= 0.5 + 1e-6
    hist = attack.loss_history_
    assert hist[-1] < 0.1 * hist[0], (hist[0], hist[-1])
    # the trigger is hidden: no poison carries the pattern
    patch = x_p[mask][:, 0, 5:, 5:]
    assert np.abs(patch - PATTERN).reshape(len(patch), -1).max(axis=1).min() > 0.3
    f_p = _features(clf, x_p)
    trig_src = attack.apply_trigger(x_te[y_te == SOURCE])
    f_s = _features(clf, trig_src)
    labels = torch.as_tensor(y_tr)
    lin = _finetune_last_layer(clf, f_p, labels)
    lin0 = _finetune_last_layer(clf, _features(clf, x_tr), labels)
    with torch.no_grad():
        asr = float((lin(f_s).argmax(1) == TARGET).float().mean())
        asr0 = float((lin0(f_s).argmax(1) == TARGET).float().mean())
        acc = float((lin(_features(clf, x_te)).argmax(1).numpy() == y_te).mean())
    assert asr > asr0 + 0.25 and acc > 0.85, (asr, asr0, acc)


def test_seeded_and_types(setup):
    clf, (x_tr, y_tr), _ = setup
    x, y = x_tr[:300], y_tr[:300]
    a = _attack(clf, max_iter=5).poison(x, y)
    b = _attack(clf, max_iter=5).poison(x, y)
    c = _attack(clf, max_iter=5, fraction=0.5, random_state=1).poison(x, y)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[2], c[2])
    out = _attack(clf, max_iter=2).poison(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(out[0], torch.Tensor) and out[0].dtype == torch.float32
    assert isinstance(out[2], torch.Tensor) and torch.equal(out[1], torch.from_numpy(y))


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"target": -1}, "target"),
        ({"target": 10}, "target"),
        ({"source": 0}, "source"),
        ({"fraction": 0.0}, "fraction"),
        ({"eps": 0.0}, "eps"),
        ({"decay": 0.0}, "decay"),
        ({"reassign_every": 0}, "reassign_every"),
        ({"layer": "nope"}, "layer"),
        ({"random_state": -1}, "random_state"),
    ],
)
def test_bad_parameters_name_the_parameter(setup, params, name):
    clf, (x_tr, y_tr), _ = setup
    with pytest.raises(InvalidParameterError, match=f"'{name}'"):
        _attack(clf, max_iter=1, **params).poison(x_tr[:100], y_tr[:100])


def test_bad_trigger_and_estimator(setup):
    clf, (x_tr, y_tr), _ = setup
    with pytest.raises(InvalidParameterError, match="'trigger'"):
        HiddenTriggerBackdoor(clf, "patch", target=0, source=1).poison(x_tr[:50], y_tr[:50])
    with pytest.raises(EstimatorError):
        HiddenTriggerBackdoor(object(), PatchTrigger(), target=0, source=1).poison(
            x_tr[:50], y_tr[:50]
        )
