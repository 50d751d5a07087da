"""Health checks of bastion.evaluation.evaluate: a gradient-masked model is flagged, the plain
model passes every check."""

import numpy as np
import pytest
import torch

from bastion.defenses.preprocessing import FeatureSqueezing
from bastion.estimators import DefendedEstimator
from bastion.evaluation import HEALTH_CHECKS, HealthCheck, evaluate

EPS = [0.05, 0.1]


@pytest.fixture(scope="module")
def data(digits_test):
    x, y = digits_test
    return x[:40], y[:40]


@pytest.fixture(scope="module")
def plain(digits_cnn, data):
    return evaluate(digits_cnn, *data, eps=EPS, suite="quick", random_state=0)


@pytest.fixture(scope="module")
def masked(digits_cnn, data):
    # A non-differentiable input quantisation attacked naively: its gradient is zero.
    est = DefendedEstimator(
        digits_cnn, preprocessors=[FeatureSqueezing(bit_depth=1)], gradients="exact"
    )
    return evaluate(est, *data, eps=EPS, suite="quick", random_state=0)


def test_plain_model_passes_every_check(plain):
    assert [h.code for h in plain.health] == list(HEALTH_CHECKS)
    assert all(h.status == "pass" for h in plain.health), plain.summary()
    assert plain.reliable
    assert plain.robust_accuracy[0.1] < plain.clean_accuracy


def test_masked_model_looks_robust_but_is_flagged(plain, masked):
    # quick looks robust: the masked model keeps (almost) its clean accuracy at every eps ...
    assert masked.results[-1].robust_accuracy >= masked.clean_accuracy - 0.05
    assert masked.results[-1].robust_accuracy > plain.results[-1].robust_accuracy + 0.3
    # ... and the health checks say the evaluation is unreliable.
    assert not masked.reliable
    failed = {h.code: h for h in masked.health if h.status == "fail"}
    assert {"gradients", "black-box-stronger", "transfer", "attack-convergence"} <= set(failed)
    assert "unreliable" in failed["gradients"].message
    assert "zero" in failed["gradients"].message
    assert failed["gradients"].fix
    assert "UNRELIABLE" in masked.summary()
    # The checks that cannot see masking still pass.
    assert masked.check("randomness").status == "pass"
    assert masked.check("eps-zero").status == "pass"


def test_checks_are_cheap(plain):
    assert plain.seconds["health"] < 20 * max(plain.seconds["attacks"], 1.0)


def test_randomised_model_is_flagged(digits_cnn, data):
    from bastion.defenses.preprocessing import GaussianNoise

    est = DefendedEstimator(digits_cnn, preprocessors=[GaussianNoise(sigma=0.3)])
    x, y = data
    r = evaluate(est, x[:20], y[:20], eps=[0.05], suite={"attacks": ["FGSM"]})
    assert r.check("randomness").status == "fail"


def test_health_check_status_is_validated():
    with pytest.raises(ValueError):
        HealthCheck("x", "ok", "message")
    assert HealthCheck("x", "warn", "m").to_dict()["status"] == "warn"


def _context(est, data, suite="quick"):
    from bastion.evaluation._health import HealthContext
    from bastion.evaluation._suites import resolve_suite

    x, y = data
    n = len(y)
    return HealthContext(
        estimator=est,
        x=torch.as_tensor(x),
        y=torch.as_tensor(y),
        clean_correct=torch.ones(n, dtype=torch.bool),
        clean_accuracy=1.0,
        norm="inf",
        eps=[0.1],
        robust=[np.ones(n, bool)],
        robust_accuracy=[1.0],
        suite=resolve_suite(suite),
        seed=0,
        batch_size=64,
    )


def test_shattered_gradients_are_seen(digits_cnn, data):
    from bastion.evaluation._health import check_gradients

    # Through BPDA, the straight-through gradient of a 1-bit quantiser is not the model's:
    # a step along it barely changes the quantised input.
    bpda = DefendedEstimator(
        digits_cnn, preprocessors=[FeatureSqueezing(bit_depth=1)], gradients="bpda"
    )
    h = check_gradients(_context(bpda, data))
    assert h.details["shattered"] > 0 and "shattered" in h.message
    assert h.status == "warn" and "BPDA" in h.message
    assert check_gradients(_context(digits_cnn, data)).status == "pass"


def test_monotonic_check_fails_when_accuracy_rises(digits_cnn, data):
    import dataclasses

    from bastion.evaluation._health import check_monotonic

    n = len(data[1])
    ctx = dataclasses.replace(
        _context(digits_cnn, data),
        eps=[0.1, 0.2],
        robust=[np.zeros(n, bool), np.ones(n, bool)],
        robust_accuracy=[0.0, 1.0],
    )
    h = check_monotonic(ctx)
    assert h.status == "fail" and "rises" in h.message


def test_black_box_check_reads_autoattack_square_breaks(digits_cnn, data):
    # The CLI runs one budget at a time and keeps each sample's broken_by, not AutoAttack's
    # flags: a sample broken by AutoAttack's Square stage must still fail the check.
    import dataclasses

    from bastion.evaluation._health import check_black_box

    n = len(data[1])
    broken = np.full(n, "", dtype=object)
    broken[:3] = "AutoAttack/apgd-ce"
    ctx = dataclasses.replace(
        _context(digits_cnn, data, suite="standard"), broken_by=[broken.copy()]
    )
    assert check_black_box(ctx).status == "pass"
    broken[5] = "AutoAttack/square"
    h = check_black_box(dataclasses.replace(ctx, broken_by=[broken]))
    assert h.status == "fail" and "unreliable" in h.message
    assert h.details["broken_by_square"] == 1


class _Quantised(torch.nn.Module):
    """A model with a 1-bit input quantisation inside: zero gradients everywhere, not a
    DefendedEstimator (no BPDA surrogate to build)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x))  # gradient zero almost everywhere


def test_transfer_from_a_distilled_surrogate_flags_a_masked_model(digits_cnn, data):
    """Without a defence to see through, the transfer check distils a surrogate from the
    model's predictions: PGD on it breaks samples the direct attack (zero gradients) left
    robust, and the check fails; on the plain model it breaks none the direct attack missed."""
    from bastion.estimators import TorchClassifier
    from bastion.evaluation._health import check_transfer

    masked = TorchClassifier(
        _Quantised(digits_cnn.torch_module()),
        input_shape=digits_cnn.input_shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    r = evaluate(masked, *data, eps=[0.3], suite="quick", random_state=0, health_checks=False)
    ctx = _context(masked, data)
    ctx.eps, ctx.robust = [0.3], [np.asarray(r.results[0].robust)]
    h = check_transfer(ctx)
    assert h.status == "fail", h.message
    assert "distilled" in h.message and h.details["broken"] > 0
