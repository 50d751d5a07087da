"""Label-consistent backdoor (Turner et al. 2019): labels untouched, PGD then trigger, and a
clear attack success after training on the poisoned digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import PatchTrigger
from bastion.attacks.poisoning.clean_label import CleanLabelBackdoor
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.zoo import SmallCNN, train_classifier

TARGET = 0
PATTERN = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)


def _train(x, y, seed):
    model = train_classifier(
        SmallCNN(input_size=8, random_state=seed), x, y, epochs=15, random_state=seed
    )
    return TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10)


@pytest.fixture(scope="module")
def digits8():
    return load_digits(size=8, random_state=0)


@pytest.fixture(scope="module")
def proxy(digits8):
    (x_tr, y_tr), _ = digits8
    return _train(x_tr, y_tr, 100)


def _attack(proxy, **kw):
    params = dict(target=TARGET, fraction=1.0, eps=0.3, eps_step=0.075, max_iter=20, random_state=0)
    params.update(kw)
    return CleanLabelBackdoor(proxy, PatchTrigger(size=3, value=PATTERN), **params)


def _asr(clf, attack, x, y):
    keep = y != TARGET
    return float(np.mean(clf.predict(attack.apply_trigger(x[keep])).argmax(1) == TARGET))


def test_poisons_are_perturbed_target_images_with_the_trigger(proxy, digits8):
    (x_tr, y_tr), _ = digits8
    attack = _attack(proxy, fraction=0.5)
    x_p, y_p, mask = attack.poison(x_tr, y_tr)
    assert mask.dtype == np.bool_ and mask.shape == y_tr.shape
    assert np.all(y_tr[mask] == TARGET) and mask.sum() == int(0.5 * np.sum(y_tr == TARGET) + 0.5)
    np.testing.assert_array_equal(y_p, y_tr)  # labels unchanged
    np.testing.assert_array_equal(x_p[~mask], x_tr[~mask])
    np.testing.assert_array_equal(
        x_p[mask][:, 0, 5:, 5:], np.broadcast_to(PATTERN, (mask.sum(), 3, 3))
    )
    diff = np.abs(x_p[mask] - x_tr[mask])[:, :, :5]  # outside the trigger: the PGD budget
    assert diff.max() <= 0.3 + 1e-6 and diff.mean() > 0.05
    # PGD made them hard: the proxy misclassifies most of the perturbed images.
    assert np.mean(proxy.predict(x_p[mask]).argmax(1) != TARGET) > 0.8


def test_trigger_success_after_training_on_poisoned_set(proxy, digits8):
    """Measured: ASR 0.46 (eps=0.3) vs 0.02 (eps=0: trigger alone) vs 0.01 (clean model)."""
    (x_tr, y_tr), (x_te, y_te) = digits8
    attack = _attack(proxy)
    x_p, y_p, _ = attack.poison(x_tr, y_tr)
    poisoned = _train(x_p, y_p, 0)
    asr = _asr(poisoned, attack, x_te, y_te)
    x_plain, _, _ = _attack(proxy, eps=1e-9, max_iter=0).poison(x_tr, y_tr)
    asr_plain = _asr(_train(x_plain, y_tr, 0), attack, x_te, y_te)
    asr_clean = _asr(_train(x_tr, y_tr, 0), attack, x_te, y_te)
    acc = float(np.mean(poisoned.predict(x_te).argmax(1) == y_te))
    assert asr > 0.3 and asr > asr_clean + 0.25 and asr > asr_plain + 0.2, (
        asr,
        asr_plain,
        asr_clean,
    )
    assert acc > 0.85


def test_seeded_reproducibility_and_types(proxy, digits8):
    (x_tr, y_tr), _ = digits8
    x, y = x_tr[:200], y_tr[:200]
    a = _attack(proxy, max_iter=3).poison(x, y)
    b = _attack(proxy, max_iter=3).poison(x, y)
    c = _attack(proxy, max_iter=3, fraction=0.5, random_state=1).poison(x, y)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    xt, yt = torch.from_numpy(x), torch.nn.functional.one_hot(torch.from_numpy(y), 10)
    x_p, y_p, mask = _attack(proxy, max_iter=2).poison(xt, yt)
    assert isinstance(x_p, torch.Tensor) and x_p.dtype == torch.float32
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    assert torch.equal(y_p, yt)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"target": -1}, "target"),
        ({"target": 10}, "target"),
        ({"fraction": 0.0}, "fraction"),
        ({"eps": -0.1}, "eps"),
        ({"max_iter": -1}, "max_iter"),
        ({"norm": 3}, "norm"),
        ({"random_state": -2}, "random_state"),
    ],
)
def test_bad_parameters_name_the_parameter(proxy, digits8, params, name):
    (x_tr, y_tr), _ = digits8
    with pytest.raises(InvalidParameterError, match=f"'{name}'"):
        _attack(proxy, **params).poison(x_tr[:20], y_tr[:20])


def test_bad_trigger_estimator_and_inputs(proxy, digits8):
    (x_tr, y_tr), _ = digits8
    with pytest.raises(InvalidParameterError, match="'trigger'"):
        CleanLabelBackdoor(proxy, "patch", target=0).poison(x_tr[:20], y_tr[:20])
    with pytest.raises(EstimatorError):
        CleanLabelBackdoor(torch.nn.Linear(2, 2), PatchTrigger(), target=0).poison(
            x_tr[:20], y_tr[:20]
        )
    with pytest.raises(InputError):
        _attack(proxy).poison(x_tr[:20, 0], y_tr[:20])
    with pytest.raises(InputError):
        _attack(proxy).poison(x_tr[:20], y_tr[:10])
    with pytest.warns(UserWarning, match="no sample"):
        _attack(proxy, fraction=0.01).poison(x_tr[:20], y_tr[:20])
