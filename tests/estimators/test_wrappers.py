"""Expectation over transformation: averages that match a replay of the same draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.estimators import EOT, TorchClassifier
from bastion.exceptions import InvalidParameterError


def _model(seed: int = 0) -> TorchClassifier:
    torch.manual_seed(seed)  # test-local model construction
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(6, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 4),
    )
    return TorchClassifier(net, input_shape=(6,), nb_classes=4, clip_values=(0, 1))


def _affine_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return 0.5 * x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype)


def test_without_transform_a_deterministic_model_is_unchanged():
    clf = _model()
    eot = EOT(clf, nb_samples=3)
    x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(eot.predict(x), clf.predict(x))
    torch.testing.assert_close(eot.loss_gradient(x, y), clf.loss_gradient(x, y))
    torch.testing.assert_close(eot.class_gradient(x), clf.class_gradient(x))


def test_gradients_are_the_mean_over_replayed_draws_chained_through_the_transform():
    clf = _model()
    x, y = torch.rand(3, 6), torch.tensor([1, 2, 3])
    eot = EOT(clf, nb_samples=4, transform=_affine_noise, random_state=7)
    got_loss = eot.loss_gradient(x, y)
    got_class = eot.class_gradient(x)
    # Replay: same seed, same draws; d/dx of f(0.5 x + noise) = 0.5 f'(.)
    g = torch.Generator().manual_seed(7)
    draws = [_affine_noise(x, g) for _ in range(4)]
    want_loss = sum(0.5 * clf.loss_gradient_tensor(d, y) for d in draws) / 4
    torch.testing.assert_close(got_loss, want_loss)
    draws = [_affine_noise(x, g) for _ in range(4)]  # the next four draws of the same stream
    want_class = sum(0.5 * clf.class_gradient_tensor(d) for d in draws) / 4
    torch.testing.assert_close(got_class, want_class)


def test_objective_gradient_averages_value_and_gradient():
    clf = _model()
    x = torch.rand(3, 6)
    eot = EOT(clf, nb_samples=5, transform=_affine_noise, random_state=1)
    grad, value, _ = eot.objective_gradient_tensor(x, lambda z: z[:, 0] - z[:, 1])
    g = torch.Generator().manual_seed(1)
    draws = [_affine_noise(x, g) for _ in range(5)]
    want = [clf.objective_gradient_tensor(d, lambda z: z[:, 0] - z[:, 1]) for d in draws]
    torch.testing.assert_close(grad, sum(0.5 * w[0] for w in want) / 5)
    torch.testing.assert_close(value, sum(w[1] for w in want) / 5)


class _NoisyInput(torch.nn.Module):
    """A randomised defence: Gaussian noise on the input at every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.g = torch.Generator().manual_seed(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * torch.randn(x.shape, generator=self.g)


def test_averaging_a_random_model_shrinks_its_variance():
    base = _model()
    net = torch.nn.Sequential(_NoisyInput(), base.model)
    clf = TorchClassifier(net, input_shape=(6,), nb_classes=4, clip_values=(0, 1))
    x = torch.rand(1, 6).repeat(200, 1)
    single = clf.predict(x)[:, 0].std().item()
    averaged = EOT(clf, nb_samples=25).predict(x)[:, 0].std().item()
    assert single > 0.01
    assert averaged < single / 3  # ~1/sqrt(25) = 1/5 in expectation


def test_bad_parameters_are_named():
    with pytest.raises(InvalidParameterError, match="nb_samples"):
        EOT(_model(), nb_samples=0)
    with pytest.raises(InvalidParameterError, match="transform"):
        EOT(_model(), transform="noise")


def test_counts_and_types():
    clf = _model()
    eot = EOT(clf, nb_samples=3)
    out = eot.predict(np.random.default_rng(0).random((4, 6), dtype=np.float32))
    assert isinstance(out, np.ndarray) and out.shape == (4, 4)
    assert eot.query_count == 4 and clf.query_count == 12
