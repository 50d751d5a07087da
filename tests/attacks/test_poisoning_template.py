"""The ``poison`` template: an attack written as ``_poison`` alone gets the checks, conversions
and the aligned result; and every model-based poisoning attack runs on an estimator that offers
exactly the capabilities the attack declares, nothing more (no ``model``, no logits to
differentiate), with the same result as on the full estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import (
    CleanLabelBackdoor,
    FeatureCollision,
    GradientMatching,
    HiddenTriggerBackdoor,
    PatchTrigger,
    PoisoningAttack,
)
from bastion.estimators import TorchClassifier
from bastion.estimators.base import EstimatorWrapper
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.zoo import SmallCNN

# --------------------------------------------------------------------------- the template


class ZeroFirst(PoisoningAttack):
    """A toy attack: the first sample of class ``source`` becomes all zeros, labelled
    ``target``. Only its core is written here."""

    _class_parameters = ("source", "target")

    def __init__(self, *, source: int = 0, target: int = 1) -> None:
        self.source = source
        self.target = target

    def _bounds(self):
        return None, (0.0, 1.0)

    def _nb_classes(self, y):
        return 3

    def _poison(self, x, y, generator):
        idx = torch.nonzero(y == self.source).flatten()[:1]
        return idx, torch.zeros_like(x[idx.to(x.device)]), torch.full_like(idx, self.target)


def _toy():
    x = np.random.default_rng(0).uniform(0.2, 0.8, (6, 1, 3, 3)).astype(np.float32)
    return x, np.array([2, 0, 1, 0, 2, 1])


def test_an_attack_written_as_its_core_gets_types_alignment_and_labels():
    x, y = _toy()
    attack = ZeroFirst()
    x_p, y_p, mask = attack.poison(x, y)
    assert isinstance(x_p, np.ndarray) and x_p.dtype == np.float32 and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [False, True, False, False, False, False])
    np.testing.assert_array_equal(y_p, [2, 1, 1, 0, 2, 1])
    assert float(np.abs(x_p[1]).max()) == 0.0
    np.testing.assert_array_equal(x_p[~mask], x[~mask])  # bit for bit
    np.testing.assert_array_equal(attack.poison_indices_, [1])
    assert attack.nb_classes_ == 3
    # tensors (float64, one-hot float labels) come back as tensors of the same kind
    xt, yt = torch.from_numpy(x).double(), torch.eye(3)[y]
    xt_p, yt_p, mt = attack.poison(xt, yt)
    assert xt_p.dtype == torch.float64 and yt_p.dtype == torch.float32 and yt_p.shape == (6, 3)
    assert mt.dtype == torch.bool and torch.equal(yt_p.argmax(1), torch.tensor([2, 1, 1, 0, 2, 1]))
    assert torch.equal(xt_p[~mt], xt[~mt]) and torch.equal(xt, torch.from_numpy(x).double())
    # integer labels of another dtype keep it
    assert attack.poison(x, y.astype(np.int16))[1].dtype == np.int16


def test_the_template_checks_data_classes_and_warns_when_nothing_is_poisoned():
    x, y = _toy()
    with pytest.raises(InputError, match=r"ZeroFirst: x has values .* outside clip_values"):
        ZeroFirst().poison(x + 1, y)
    with pytest.raises(InputError, match=r"ZeroFirst: y has labels in \[0, 3\], outside"):
        ZeroFirst().poison(x, np.array([3, 0, 1, 0, 2, 1]))
    with pytest.raises(InvalidParameterError, match=r"'target' parameter of ZeroFirst .* Got 3"):
        ZeroFirst(target=3).poison(x, y)
    with pytest.warns(UserWarning, match="ZeroFirst: no sample was poisoned"):
        _, y_p, mask = ZeroFirst(source=0).poison(x[[0, 2]], y[[0, 2]])
    assert not mask.any() and np.array_equal(y_p, y[[0, 2]])


# --------------------------------------------------------------------------- capabilities


class Only(EstimatorWrapper):
    """Offers exactly the capabilities it is given, each forwarded to the wrapped estimator's
    public kernel: an attack that reached for anything else (the model, logits to
    differentiate, a private method) would fail on it."""

    def __init__(self, estimator, capabilities):
        self.forwarded = frozenset(capabilities)
        super().__init__(estimator)

    def _parameter_gradient(self, x, y, create_graph):
        return self.estimator.parameter_gradient_tensor(x, y, create_graph=create_graph)


def _estimator():
    return TorchClassifier(
        SmallCNN(input_size=8, random_state=0), input_shape=(1, 8, 8), nb_classes=10
    )


def _data():
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(20) % 4


ATTACKS = {
    "CleanLabelBackdoor": lambda est, x: CleanLabelBackdoor(
        est, PatchTrigger(size=2), target=1, eps=0.1, max_iter=3, random_state=0
    ),
    "FeatureCollision": lambda est, x: FeatureCollision(
        est, x[0], layer="relu3", beta=0.5, learning_rate=0.1, max_iter=3
    ),
    "GradientMatching": lambda est, x: GradientMatching(
        est, x[0], target_label=1, budget=0.2, eps=0.05, max_iter=3, random_state=0
    ),
    "HiddenTriggerBackdoor": lambda est, x: HiddenTriggerBackdoor(
        est,
        PatchTrigger(size=2),
        target=1,
        source=2,
        layer=-2,
        eps=0.1,
        max_iter=4,
        reassign_every=2,
        random_state=0,
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_runs_on_an_estimator_with_only_the_declared_capabilities(name):
    full, (x, y) = _estimator(), _data()
    declared = ATTACKS[name](full, x)._estimator_requirements
    restricted = Only(full, declared)
    assert restricted.capabilities == frozenset(declared) and not hasattr(restricted, "model")
    expected = ATTACKS[name](full, x).poison(x, y)
    got = ATTACKS[name](restricted, x).poison(x, y)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    assert bool(got[2].any()) and restricted.gradient_count > 0
    # every declared capability is needed, and a missing one is named
    for cap in declared:
        lacking = Only(full, set(declared) - {cap})
        with pytest.raises(EstimatorError, match=repr(cap)):
            ATTACKS[name](lacking, x).poison(x, y)


CLASS_PARAMETER = {
    "CleanLabelBackdoor": "target",
    "FeatureCollision": None,
    "GradientMatching": "target_label",
    "HiddenTriggerBackdoor": "source",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_bad_data_and_classes_are_clear_errors_before_any_work(name):
    est, (x, y) = _estimator(), _data()
    nan = x.clone()
    nan[2, 0, 3, 3] = float("nan")
    beyond = y.clone()
    beyond[0] = 10
    cases = {
        "NaN": (nan, y),
        "empty": (x[:0], y[:0]),
        r"shape \('N', 1, 8, 8\)": (x[..., :-1], y),
        "outside clip_values": (x * 2, y),
        r"labels in \[0, 10\], outside the 10 classes": (x, beyond),
        "20 samples": (x, y[:-1]),
    }
    for match, (xb, yb) in cases.items():
        with pytest.raises(InputError, match=match):
            ATTACKS[name](est, x).poison(xb, yb)
    if CLASS_PARAMETER[name]:
        attack = ATTACKS[name](est, x).set_params(**{CLASS_PARAMETER[name]: 10})
        with pytest.raises(InvalidParameterError, match=rf"'{CLASS_PARAMETER[name]}'.*\[0, 9\]"):
            attack.poison(x, y)
    assert est.gradient_count == 0 and est.query_count == 0  # rejected before any model call
