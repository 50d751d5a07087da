"""An estimator written outside the package, with no torch module behind it, passes the
estimator conformance suite and is attacked by every attack whose capabilities it provides.

This is the proof that attacks reach models only through the estimator protocol: the model
below is multinomial logistic regression in NumPy with hand-written gradients. Its scores come
back as tensors without an autograd graph, so an attack that differentiated through
``logits_tensor`` itself, read ``estimator.model`` or a private member would fail here. It is
also the example of docs/writing-an-estimator.md.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from bastion.estimators import Classifier
from bastion.testing import all_attacks, attack_checks, estimator_checks
from bastion.testing._problems import Problem, _digits8


class NumpyLogisticRegression(Classifier):
    """Softmax regression ``z = W x + b`` computed in NumPy (float64), with its own
    vector-Jacobian product: everything the base class needs for every gradient capability."""

    capabilities = frozenset({"predict", "logits", "loss_gradient", "class_gradient"})

    def __init__(self, weights: np.ndarray, bias: np.ndarray, input_shape: tuple[int, ...]):
        super().__init__()
        self.weights = np.asarray(weights, dtype=np.float64)  # (K, D)
        self.bias = np.asarray(bias, dtype=np.float64)  # (K,)
        self.input_shape = tuple(input_shape)
        self.nb_classes = int(self.weights.shape[0])
        self.clip_values = (0.0, 1.0)
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def _scores(self, x: torch.Tensor) -> np.ndarray:
        flat = x.detach().cpu().numpy().reshape(x.shape[0], -1).astype(np.float64)
        return flat @ self.weights.T + self.bias

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._scores(x)).to(x.dtype)

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        z = self._scores(x)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return torch.from_numpy(p / p.sum(axis=1, keepdims=True)).to(x.dtype)

    def _logits_vjp(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # d z_k / d x = W_k, so sum_k w_k dz_k/dx = w @ W, per sample.
        g = weights.detach().cpu().numpy().astype(np.float64) @ self.weights
        return torch.from_numpy(g.reshape(x.shape)).to(x.dtype)


@functools.lru_cache(maxsize=1)
def _problem() -> Problem:
    from sklearn.linear_model import LogisticRegression

    x, y = _digits8()
    flat = x[:1200].reshape(1200, -1)
    model = LogisticRegression(max_iter=500).fit(flat, y[:1200])
    est = NumpyLogisticRegression(model.coef_, model.intercept_, x.shape[1:])
    return Problem(est, x[1200:1224], y[1200:1224], x[:200], y[:200])


def problem() -> Problem:
    p = _problem()
    p.estimator.reset_counts()
    return p


def test_the_external_estimator_passes_the_estimator_checks():
    ran = []
    for check in estimator_checks(problem().estimator):
        check(problem())
        ran.append(check.__name__)
    assert {"check_predict", "check_loss_gradient", "check_class_gradient"} <= set(ran)


def test_its_gradients_are_the_closed_form():
    p = problem()
    est = p.estimator
    x = torch.as_tensor(p.x[:3])
    y = torch.as_tensor(p.y[:3])
    probs = est.predict(x).double()
    onehot = torch.nn.functional.one_hot(y, est.nb_classes).double()
    expected = ((probs - onehot) @ torch.from_numpy(est.weights)).reshape(x.shape)
    torch.testing.assert_close(est.loss_gradient(x, y).double(), expected, rtol=1e-4, atol=1e-5)


ATTACKS = [
    cls
    for cls in all_attacks()
    if set(cls._estimator_requirements) <= problem().estimator.capabilities
]
CASES = [(cls, check) for cls in ATTACKS for check in attack_checks(cls)]


def test_every_attack_with_its_capabilities_is_run():
    names = {cls.__name__ for cls in ATTACKS}
    # white-box gradient attacks and black-box ones alike
    assert {"ProjectedGradientDescent", "CarliniWagnerL2", "HopSkipJump", "SquareAttack"} <= names
    assert len(ATTACKS) >= 25


@pytest.mark.parametrize(
    ("cls", "check"), CASES, ids=[f"{c.__name__}-{k.__name__}" for c, k in CASES]
)
def test_attack_conformance_on_the_external_estimator(cls, check):
    check(cls, problem())
