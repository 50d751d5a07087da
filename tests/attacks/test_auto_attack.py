"""AutoAttack: sequential ensemble on still-robust points, per-sample outcomes, flags, resume."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion import APGD, FGSM
from bastion.attacks.evasion.auto_attack import AutoAttack
from bastion.estimators import TorchClassifier
from bastion.exceptions import InputError, InvalidParameterError, ModelError
from bastion.testing import check_attack
from conftest import accuracy


class _Spy(FGSM):
    """FGSM that records how many points it was asked to attack (and can fail on demand)."""

    calls: list[int] = []  # noqa: RUF012 (test-local bookkeeping)
    fail = False

    def generate(self, x, y=None, *, mask=None):
        if _Spy.fail:
            raise KeyboardInterrupt("simulated interruption")
        _Spy.calls.append(len(x))
        return super().generate(x, y, mask=mask)


@pytest.fixture
def subset(digits_test):
    x, y = digits_test
    return x[:60], y[:60]


def test_ensemble_is_at_least_as_strong_as_its_first_attack(digits_cnn, subset):
    x, y = subset
    eps = 0.1
    apgd = APGD(digits_cnn, eps=eps, max_iter=20, random_state=0).generate(x, y)
    aa = AutoAttack(
        digits_cnn,
        eps=eps,
        version="custom",
        attacks=["apgd-ce", "apgd-t", "fab-t"],
        max_iter=20,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy model raises no flag
        res = aa.evaluate(x, y)
    assert res.robust_accuracy <= accuracy(digits_cnn, apgd, y)
    assert res.robust_accuracy == pytest.approx(accuracy(digits_cnn, res.x_adv, y))
    assert res.clean_accuracy == pytest.approx(accuracy(digits_cnn, x, y))
    assert res.robust_accuracy < 0.5 * res.clean_accuracy
    # accuracy only goes down, one entry per attack, in order
    after = list(res.accuracy_after.values())
    assert list(res.accuracy_after) == ["apgd-ce", "apgd-t", "fab-t"]
    assert after == sorted(after, reverse=True)
    # per-sample bookkeeping agrees with the predictions
    pred = digits_cnn.predict(res.x_adv).argmax(1)
    np.testing.assert_array_equal(res.robust, pred == y)
    assert np.all(res.broken_by[res.robust] == "")
    assert set(res.broken_by[~res.robust]) <= {"clean", "apgd-ce", "apgd-t", "fab-t"}
    assert (res.broken_by == "clean").sum() == round((1 - res.clean_accuracy) * len(x))
    assert perturbation_norms(x, res.x_adv, "inf").max() <= eps + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert "robust accuracy" in res.summary() and res.to_dict()["n"] == len(x)
    assert aa.result_ is res


def test_later_attacks_see_only_robust_points(digits_cnn, subset):
    x, y = subset
    _Spy.calls, _Spy.fail = [], False
    first = APGD(digits_cnn, eps=0.1, max_iter=10, random_state=0)
    spy = _Spy(digits_cnn, eps=0.1)
    res = AutoAttack(digits_cnn, eps=0.1, version="custom", attacks=[first, spy]).evaluate(x, y)
    robust_after_first = round(res.accuracy_after["AutoProjectedGradientDescent"] * len(x))
    assert _Spy.calls == [robust_after_first]
    assert robust_after_first < round(res.clean_accuracy * len(x))
    assert first.eps == 0.1 and spy.eps == 0.1  # the caller's instances are not modified


def test_per_sample_budgets_are_respected(digits_cnn, subset):
    x, y = subset
    eps = np.linspace(0.0, 0.2, len(x))
    res = AutoAttack(
        digits_cnn,
        eps=eps,
        version="custom",
        attacks=["apgd-ce", "fab-t"],
        max_iter=10,
        random_state=0,
    ).evaluate(x, y)
    assert np.all(perturbation_norms(x, res.x_adv, "inf") <= eps + 1e-6)
    assert res.robust[0] == (digits_cnn.predict(x[:1]).argmax(1)[0] == y[0])  # eps 0: untouched


@pytest.mark.parametrize("norm, eps", [(2, 1.5), (1, 8.0)])
def test_other_norms(digits_cnn, subset, norm, eps):
    x, y = subset
    x, y = x[:30], y[:30]
    res = AutoAttack(
        digits_cnn,
        eps=eps,
        norm=norm,
        version="custom",
        attacks=["apgd-ce", "fab-t"],
        max_iter=10,
        random_state=0,
    ).evaluate(x, y)
    assert res.robust_accuracy < res.clean_accuracy
    assert perturbation_norms(x, res.x_adv, norm).max() <= eps + 1e-5


def test_resumes_after_an_interruption(digits_cnn, subset, tmp_path):
    x, y = subset
    path = tmp_path / "aa_state.pt"
    _Spy.calls, _Spy.fail = [], True

    def make():
        return AutoAttack(
            digits_cnn,
            eps=0.1,
            version="custom",
            random_state=0,
            state_path=path,
            attacks=[
                APGD(digits_cnn, eps=0.1, max_iter=10, random_state=0),
                _Spy(digits_cnn, eps=0.1),
            ],
        )

    with pytest.raises(KeyboardInterrupt):
        make().evaluate(x, y)
    assert path.exists()
    _Spy.fail = False
    gradients_before = digits_cnn.gradient_count
    res = make().evaluate(x, y)
    # APGD was not run again: the health check's gradient per point, then only the spy's single
    # FGSM gradient per remaining point
    assert digits_cnn.gradient_count - gradients_before == len(x) + _Spy.calls[0]
    assert list(res.accuracy_after) == ["AutoProjectedGradientDescent", "_Spy"]
    with pytest.raises(InputError, match="different evaluation"):
        make().evaluate(x[:10], y[:10])


def test_flags_randomized_and_probability_outputs(subset):
    x, y = subset
    x, y = x[:20], y[:20]

    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = torch.Generator().manual_seed(0)
            self.lin = torch.nn.Linear(28 * 28, 10)

        def forward(self, z):
            z = z.flatten(1) + 0.1 * torch.randn(z.flatten(1).shape, generator=self.g)
            return torch.softmax(self.lin(z), dim=1)

    clf = TorchClassifier(Noisy(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1))
    with pytest.warns(UserWarning) as record:
        res = AutoAttack(
            clf, eps=0.1, version="custom", attacks=["apgd-ce"], max_iter=3, random_state=0
        ).evaluate(x, y)
    assert {f.code for f in res.flags} >= {"randomized", "probability-outputs"}
    assert any("randomized" in str(w.message) for w in record)


def test_flags_zero_gradients(subset):
    x, y = subset
    x, y = x[:20], y[:20]

    class Quantised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(28 * 28, 10)

        def forward(self, z):
            return self.lin(torch.round(z.flatten(1) * 4) / 4)  # gradient exactly zero

    clf = TorchClassifier(Quantised(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1))
    with pytest.warns(UserWarning, match="zero-gradients"):
        res = AutoAttack(
            clf, eps=0.1, version="custom", attacks=["apgd-ce"], max_iter=3, random_state=0
        ).evaluate(x, y)
    assert "zero-gradients" in {f.code for f in res.flags}


def test_standard_version_runs_the_four_attacks_in_order(digits_cnn, subset):
    x, y = subset
    x, y = x[:20], y[:20]
    res = AutoAttack(digits_cnn, eps=0.08, max_iter=5, max_queries=50, random_state=0).evaluate(
        x, y
    )
    assert list(res.accuracy_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert res.robust_accuracy < res.clean_accuracy
    assert perturbation_norms(x, res.x_adv, "inf").max() <= 0.08 + 1e-6


def test_flags_black_box_beating_white_box(subset):
    """Input quantisation zeroes the gradients: APGD is blind, Square is not."""
    x, _ = subset
    x = x[:16]

    class Quantised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w = torch.nn.Parameter(torch.randn(28 * 28, 10, generator=g))

        def forward(self, z):
            return (torch.round(z.flatten(1) * 4) / 4) @ self.w

    clf = TorchClassifier(Quantised(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1))
    predicted = clf.predict(x).argmax(1)  # the explicit way to measure prediction stability
    with pytest.warns(UserWarning):
        res = AutoAttack(
            clf,
            eps=0.3,
            version="custom",
            attacks=["apgd-ce", "square"],
            max_iter=5,
            max_queries=100,
            random_state=0,
        ).evaluate(x, predicted)
    # APGD only wins through its random start; Square breaks what it left
    assert res.robust_accuracy < res.accuracy_after["apgd-ce"] - 0.2
    assert {"zero-gradients", "black-box-stronger"} <= {f.code for f in res.flags}
    assert "square" in set(res.broken_by[~res.robust])


def test_rand_version_uses_expectation_over_the_randomness(digits_cnn, subset):
    x, y = subset
    x, y = x[:10], y[:10]
    before = digits_cnn.gradient_count
    AutoAttack(digits_cnn, eps=0.1, version="rand", max_iter=2, random_state=0).evaluate(x, y)
    # 2 attacks x 2 iterations (+ the initial gradient) x 20 draws per robust point
    assert digits_cnn.gradient_count - before >= 20 * 2 * len(x) * 0.5


def test_parameter_errors(digits_cnn, subset):
    x, y = subset
    with pytest.raises(InvalidParameterError, match="'attacks'"):
        AutoAttack(digits_cnn, version="custom").evaluate(x, y)
    with pytest.raises(InvalidParameterError, match="'attacks'"):
        AutoAttack(digits_cnn, attacks=["apgd-ce"]).evaluate(x, y)
    with pytest.raises(InvalidParameterError, match="'attacks'"):
        AutoAttack(digits_cnn, version="custom", attacks=["pgd"]).evaluate(x, y)
    with pytest.raises(InvalidParameterError, match="'version'"):
        AutoAttack(digits_cnn, version="fast").evaluate(x, y)


def test_evaluate_requires_labels_and_generate_says_it_used_predictions(digits_cnn, subset):
    x, y = subset
    x, y = x[:12], y[:12]
    aa = AutoAttack(digits_cnn, eps=0.1, version="custom", attacks=["apgd-ce"], max_iter=3)
    with pytest.raises(InputError, match="needs the true labels y"):
        aa.evaluate(x)
    x_adv = aa.generate(x)  # the evasion-attack convention: predictions as labels
    res = aa.result_
    assert res.labels == "predicted" and np.isnan(res.clean_accuracy)
    assert "predicted-labels" in {f.code for f in res.flags}
    assert "unknown" in res.summary() and res.to_dict()["clean_accuracy"] is None
    np.testing.assert_array_equal(x_adv, res.x_adv)
    # robust = predictions no attack changed
    pred, pred_adv = digits_cnn.predict(x).argmax(1), digits_cnn.predict(x_adv).argmax(1)
    np.testing.assert_array_equal(res.robust, pred == pred_adv)
    assert aa.evaluate(x, y).labels == "given"


def _count_apgd_runs(monkeypatch, interrupt_at):
    """Count APGD's runs, raising KeyboardInterrupt at run number ``interrupt_at``."""
    record = {"runs": 0, "interrupt_at": interrupt_at}
    original = APGD.generate

    def generate(self, *args, **kwargs):
        record["runs"] += 1
        if record["runs"] == record["interrupt_at"]:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(APGD, "generate", generate)
    return record


def test_resumed_evaluation_equals_an_uninterrupted_one(digits_cnn, subset, tmp_path, monkeypatch):
    x, y = subset
    x, y = x[:30], y[:30]
    path = tmp_path / "state.pt"

    def make(state_path=path):
        return AutoAttack(
            digits_cnn,
            eps=0.06,
            version="custom",
            attacks=["apgd-ce", "apgd-dlr"],
            max_iter=5,
            random_state=3,
            state_path=state_path,
        )

    whole = make(None).evaluate(x, y)
    record = _count_apgd_runs(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        make().evaluate(x, y)  # interrupted in APGD-DLR, after APGD-CE was saved
    record.update(runs=0, interrupt_at=None)
    resumed = make().evaluate(x, y)
    assert record["runs"] == 1  # APGD-CE was not run again
    assert 0 < whole.accuracy_after["apgd-dlr"] < whole.accuracy_after["apgd-ce"]  # both count
    np.testing.assert_array_equal(resumed.x_adv, whole.x_adv)
    np.testing.assert_array_equal(resumed.robust, whole.robust)
    np.testing.assert_array_equal(resumed.broken_by, whole.broken_by)
    assert resumed.accuracy_after == whole.accuracy_after
    assert resumed.clean_accuracy == whole.clean_accuracy


def test_a_repeated_attack_runs_again_under_its_own_label(digits_cnn, subset):
    x, y = subset
    _Spy.calls, _Spy.fail = [], False
    res = AutoAttack(
        digits_cnn,
        eps=0.05,
        version="custom",
        attacks=[_Spy(digits_cnn, eps=0.05), _Spy(digits_cnn, eps=0.1)],
    ).evaluate(x, y)
    assert list(res.accuracy_after) == ["_Spy", "_Spy#2"] and len(_Spy.calls) == 2
    assert set(res.broken_by[~res.robust]) <= {"clean", "_Spy", "_Spy#2"}


class _NaNAfter(torch.nn.Module):
    """A linear digits model that returns NaN from its ``after``-th forward call on."""

    def __init__(self, after):
        super().__init__()
        self.lin = torch.nn.Linear(28 * 28, 10)
        with torch.no_grad():  # seeded without the global RNG
            gen = torch.Generator().manual_seed(0)
            self.lin.weight.copy_(torch.randn(10, 28 * 28, generator=gen) * 0.05)
            self.lin.bias.zero_()
        self.after, self.calls = after, 0

    def forward(self, z):
        self.calls += 1
        out = self.lin(z.flatten(1))
        return out * float("nan") if self.calls >= self.after else out


@pytest.mark.parametrize("after", [1, 3, 8])
def test_a_model_returning_nan_raises_model_error_not_a_flag(subset, after):
    """First call (clean predictions), the health check's repeated calls (where NaN != NaN
    used to read as a randomised model) and inside the attacks: always a ModelError."""
    x, _ = subset
    x = x[:10]
    # Labels = the model's own predictions: every sample starts correct, so the attack runs
    # (and calls the model) past the 8th forward pass.
    y = _NaNAfter(10**9)(torch.as_tensor(x)).argmax(1).numpy()
    clf = TorchClassifier(_NaNAfter(after), input_shape=(1, 28, 28), nb_classes=10)
    aa = AutoAttack(clf, eps=0.1, version="custom", attacks=["apgd-ce"], max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "randomized" (or any) flag is raised instead
        with pytest.raises(ModelError, match="NaN"):
            aa.evaluate(x, y)
    assert not hasattr(aa, "result_")


def test_conformance():
    assert "check_budget_and_bounds" in check_attack(AutoAttack)
