"""Estimator wrappers that change what an attacker sees, without touching the attacks.

Every wrapper derives from :class:`~bastion.estimators.base.EstimatorWrapper`, which forwards
the capabilities it lists explicitly.

* :class:`ExpectationOverTransformation`: averages predictions and gradients over the
  randomness of the model (dropout at test time, random defences) and, optionally, over random
  input transformations. Attacks that see through randomised defences wrap the estimator
  instead of growing an ``eot_iter`` flag each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bastion._tensor import resolve_random_state
from bastion._validation import RANDOM_STATE, Interval, Satisfies, validate_params
from bastion.estimators.base import EstimatorWrapper, SupportsPredict

__all__ = ["EOT", "ExpectationOverTransformation"]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class ExpectationOverTransformation(EstimatorWrapper):
    """Expectation over transformation (EOT): the average over ``nb_samples`` random draws.

    Each kernel call evaluates the wrapped estimator ``nb_samples`` times, on
    ``transform(x, generator)`` when a transform is given (otherwise on ``x``, which averages
    the model's own randomness), and returns the mean probabilities, logits, losses and
    gradients. Gradients flow through the transform, which must therefore be differentiable in
    torch. Attacks run unchanged on the wrapper; this is how AutoAttack's ``version="rand"``
    and adaptive attacks on randomised defences compute their gradients.

    Parameters
    ----------
    estimator : Classifier
        The estimator to average; the wrapper has its capabilities except ``fit`` and
        ``activations``.
    nb_samples : int, default 20
        Draws per call (AutoAttack's ``eot_iter``).
    transform : callable, optional
        ``transform(x, generator) -> x'``: a random, differentiable input transformation
        (random resizing, noise, ...). ``None`` averages only the model's own randomness.
    random_state : None, int or torch.Generator
        Seeds the transform's draws (the model's own randomness is its business).

    References
    ----------
    Athalye, Engstrom, Ilyas and Kwok, "Synthesizing robust adversarial examples", ICML 2018.
    https://arxiv.org/abs/1707.07397

    Athalye, Carlini and Wagner, "Obfuscated gradients give a false sense of security", ICML
    2018. https://arxiv.org/abs/1802.00420

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.estimators.wrappers import EOT
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> noisy = EOT(clf, nb_samples=8, random_state=0,
    ...             transform=lambda x, g: x + 0.05 * torch.randn(x.shape, generator=g))
    >>> noisy.loss_gradient(torch.rand(2, 4), [0, 1]).shape
    torch.Size([2, 4])
    """

    forwarded = frozenset({"predict", "logits", "loss_gradient", "class_gradient"})

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        nb_samples: int = 20,
        transform: Transform | None = None,
        random_state: Any = None,
    ) -> None:
        super().__init__(estimator)
        owner = type(self).__name__
        validate_params(
            owner,
            {"nb_samples": nb_samples, "transform": transform, "random_state": random_state},
            {
                "nb_samples": [Interval(int, 1, None)],
                "transform": [Satisfies(lambda t: t is None or callable(t), "None or a callable")],
                "random_state": RANDOM_STATE,
            },
        )
        self.nb_samples = nb_samples
        self.transform = transform
        self.random_state = random_state
        self._generator = resolve_random_state(random_state, self.device)

    # ------------------------------------------------------------------ helpers

    def _draw(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is None:
            return x
        return self.transform(x, self._generator)

    def _mean_gradient(
        self, x: torch.Tensor, inner: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    ) -> tuple[torch.Tensor, ...]:
        """Average of ``inner(x_t)`` over draws; its first output is a gradient wrt ``x_t``,
        chained back to ``x`` through the transform."""
        totals: list[torch.Tensor] | None = None
        for _ in range(self.nb_samples):
            if self.transform is None:
                outs = inner(x)
            else:
                xr = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    xt = self._draw(xr)
                    outs = inner(xt.detach())
                    (g,) = torch.autograd.grad(xt, xr, outs[0])
                outs = (g, *outs[1:])
            if totals is None:
                totals = list(outs)
            else:
                totals = [a + b for a, b in zip(totals, outs, strict=True)]
        return tuple(t / self.nb_samples for t in totals or [])

    # ------------------------------------------------------------------ kernels

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            total = sum(
                self.estimator.predict_tensor(self._draw(x)) for _ in range(self.nb_samples)
            )
        return total / self.nb_samples

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        total = sum(self.estimator.logits_tensor(self._draw(x)) for _ in range(self.nb_samples))
        return total / self.nb_samples

    def _loss_gradient(self, x: torch.Tensor, y: torch.Tensor, return_outputs: bool) -> Any:
        out = self._mean_gradient(
            x, lambda xt: self.estimator.loss_gradient_tensor(xt, y, return_outputs=True)
        )
        return out if return_outputs else out[0]

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        if self.transform is None:
            total = sum(
                self.estimator.class_gradient_tensor(x, label) for _ in range(self.nb_samples)
            )
            return total / self.nb_samples
        # Chain each class's gradient through the transform: one vector-Jacobian product per
        # class row (the transform is elementwise-cheap next to the model).
        total = None
        for _ in range(self.nb_samples):
            xr = x.detach().requires_grad_(True)
            with torch.enable_grad():
                xt = self._draw(xr)
                jac = self.estimator.class_gradient_tensor(xt.detach(), label)
                k = jac.ndim - x.ndim
                flat = jac.reshape(x.shape[0], -1, *x.shape[1:]) if k else jac.unsqueeze(1)
                rows = [
                    torch.autograd.grad(xt, xr, flat[:, r], retain_graph=True)[0]
                    for r in range(flat.shape[1])
                ]
            g = torch.stack(rows, 1).reshape(jac.shape)
            total = g if total is None else total + g
        assert total is not None
        return total / self.nb_samples

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grad = self._class_gradient(x, label)
        with torch.no_grad():
            return grad, self._logits(x)

    def _objective_gradient(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean over draws of the gradient and value of ``objective(logits)``."""
        g, v, z = self._mean_gradient(
            x, lambda xt: self.estimator.objective_gradient_tensor(xt, objective)
        )
        return g, v, z

    def __repr__(self) -> str:
        return (
            f"ExpectationOverTransformation({self.estimator!r}, nb_samples={self.nb_samples}, "
            f"transform={'None' if self.transform is None else 'callable'})"
        )


#: Short alias.
EOT = ExpectationOverTransformation
