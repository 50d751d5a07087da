"""verify(): verdicts from IBP / CROWN / alpha-CROWN on trained digits models that PGD with
restarts never breaks, nested verdicts (alpha-CROWN >= CROWN >= IBP), types, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.certification import VerificationResult, verify
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.testing._problems import _digits8
from bastion.zoo import MLP, train_classifier


@pytest.fixture(scope="module")
def digits():
    x, y = _digits8()
    return x[:1200], y[:1200], x[1200:1260], y[1200:1260]


@pytest.fixture(scope="module")
def digits_mlp(digits):
    x, y, _, _ = digits
    model = train_classifier(
        MLP(64, 10, hidden=(32, 32), random_state=0), x, y, epochs=15, random_state=0
    )
    return TorchClassifier(
        model,
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        preprocessing=(0.3, 0.4),
    )


@pytest.fixture(scope="module")
def digits_cnn(digits):
    x, y, _, _ = digits
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / p[0].numel() ** 0.5)
    train_classifier(model, x, y, epochs=10, random_state=0)
    return TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0))


@pytest.mark.parametrize("which", ["digits_mlp", "digits_cnn"])
@pytest.mark.parametrize("norm,eps", [("inf", 0.02), (2, 0.1)])
def test_verified_samples_resist_pgd_and_verdicts_nest(which, norm, eps, digits, request):
    clf = request.getfixturevalue(which)
    _, _, x, y = digits
    res = {
        m: verify(clf, x, y, eps=eps, norm=norm, method=m, alpha_iter=5)
        for m in ("ibp", "crown", "alpha-crown")
    }
    ibp, crown, alpha = res["ibp"].verified, res["crown"].verified, res["alpha-crown"].verified
    assert np.all(crown[ibp]) and np.all(alpha[crown])  # nested: tighter bounds verify more
    assert np.all(res["crown"].margin_lower >= res["ibp"].margin_lower - 1e-5)
    assert np.all(res["alpha-crown"].margin_lower >= res["crown"].margin_lower - 1e-5)
    assert crown.sum() >= 10  # not vacuous
    # The sound verdicts hold against an attack with restarts.
    step = eps / 8
    attack = PGD(
        clf, eps=eps, eps_step=step, max_iter=40, norm=norm, num_random_init=5, random_state=0
    )
    x_adv = attack.generate(x[alpha], y[alpha])
    assert np.all(np.asarray(clf.predict(x_adv)).argmax(1) == y[alpha])
    # Statuses: verified, falsified for clean mistakes, unknown otherwise.
    wrong = np.asarray(clf.predict(x)).argmax(1) != y
    assert np.all(res["crown"].status[wrong] == "falsified")
    assert np.all(res["crown"].status[crown] == "verified")
    assert np.all(res["crown"].status[~crown & ~wrong] == "unknown")


def test_result_types_follow_the_input(digits_mlp, digits):
    _, _, x, y = digits
    res = verify(digits_mlp, x[:5], y[:5], eps=0.01)
    assert isinstance(res, VerificationResult)
    assert isinstance(res.verified, np.ndarray) and res.verified.dtype == bool
    assert isinstance(res.margin_lower, np.ndarray) and res.margin_lower.dtype == np.float32
    assert res.status.shape == (5,) and res.counterexample.shape == (5, 1, 8, 8)
    assert res.method == "crown" and res.norm == "inf" and res.seconds > 0
    res_t = verify(digits_mlp, torch.as_tensor(x[:5]), torch.as_tensor(y[:5]), eps=0.01)
    assert isinstance(res_t.verified, torch.Tensor) and res_t.verified.dtype == torch.bool
    assert isinstance(res_t.margin_lower, torch.Tensor)
    np.testing.assert_array_equal(res_t.verified.numpy(), res.verified)
    with pytest.raises(dataclasses_error()):
        res.method = "ibp"  # type: ignore[misc]
    # eps = 0: the margin bound is the clean margin itself.
    z = np.asarray(digits_mlp.logits(torch.as_tensor(x[:5])).detach())
    margin = z[np.arange(5), y[:5]] - np.where(np.eye(10)[y[:5]] > 0, -np.inf, z).max(1)
    np.testing.assert_allclose(
        verify(digits_mlp, x[:5], y[:5], eps=0.0).margin_lower, margin, atol=1e-4
    )


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_labels_default_to_predictions_and_batches_do_not_matter(digits_cnn, digits):
    _, _, x, _ = digits
    a = verify(digits_cnn, x[:9], eps=0.02, batch_size=4)
    b = verify(digits_cnn, x[:9], eps=0.02, batch_size=9)
    np.testing.assert_allclose(a.margin_lower, b.margin_lower, atol=1e-5)
    assert "falsified" not in a.status.tolist()


def test_verify_bad_inputs(digits_mlp, digits):
    _, _, x, y = digits
    with pytest.raises(InvalidParameterError, match=r"norm='inf'.*crown"):
        verify(digits_mlp, x[:2], y[:2], eps=0.1, norm=2, method="complete")
    with pytest.raises(InvalidParameterError, match="method"):
        verify(digits_mlp, x[:2], y[:2], eps=0.1, method="lp")
    with pytest.raises(InvalidParameterError, match="eps"):
        verify(digits_mlp, x[:2], y[:2], eps=-1.0)
    with pytest.raises(InvalidParameterError, match="time_limit"):
        verify(digits_mlp, x[:2], y[:2], eps=0.1, method="complete", time_limit=-1.0)
    with pytest.raises(InputError, match="outside"):
        verify(digits_mlp, x[:2], np.array([0, 10]), eps=0.1)
    with pytest.raises(InputError, match="labels"):
        verify(digits_mlp, x[:2], y[:3], eps=0.1)
    with pytest.raises(InputError, match="clip_values"):
        verify(digits_mlp, x[:2] + 2.0, y[:2], eps=0.1)
    from bastion.testing._problems import sklearn_problem

    with pytest.raises(EstimatorError, match="RandomizedSmoothing"):
        verify(sklearn_problem("forest").estimator, x[:2].reshape(2, 1, 8, 8), y[:2], eps=0.1)
