"""Fast Gradient Method (FGSM and its L2 / L1 variants)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion._validation import BATCH_SIZE, BUDGET, NORM, TARGETED, VERBOSE, Constraint, Interval
from bastion.attacks._lp import canonical_norm, steepest_direction
from bastion.attacks.base import FixedBudgetAttack
from bastion.estimators.base import SupportsLossGradient

__all__ = ["FGSM", "FastGradientMethod"]


class FastGradientMethod(FixedBudgetAttack):
    """Fast Gradient Method: one step of size ``eps`` along the steepest-ascent direction of
    the loss.

    ``x_adv = x + eps * d`` where ``d`` is ``sign(grad)`` for ``norm="inf"`` (FGSM),
    ``grad / ||grad||_2`` for ``norm=2`` and the sparse L1 direction of Tramer and Boneh (2019)
    for ``norm=1``; targeted attacks step against the gradient of the loss of the target class.
    The result is projected exactly onto the eps-ball and ``clip_values``.

    Threat model: white-box (needs loss gradients). Norms: inf, 2, 1.

    Parameters
    ----------
    estimator : estimator with ``loss_gradient``
    eps : float or array-like of float, default 0.3
        Budget, one value or one per sample.
    norm : {"inf", 2, 1}, default "inf"
    targeted : bool, default False
        Move towards the labels given to ``generate`` instead of away from them.
    l1_sparsity : float in [0, 1), default 0.99
        For ``norm=1``: coordinates whose gradient magnitude is below this quantile are not
        changed.
    batch_size : int, default 128
    verbose : bool, default False
        Show a progress bar.

    References
    ----------
    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples",
    ICLR 2015. https://arxiv.org/abs/1412.6572

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion import FGSM
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = FGSM(clf, eps=0.1).generate(x)
    >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
    True
    """

    estimator: SupportsLossGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "norm": [NORM],
        "targeted": TARGETED,
        "l1_sparsity": [Interval(float, 0, 1, closed="left")],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "loss_gradient")

    def __init__(
        self,
        estimator: SupportsLossGradient,
        *,
        eps: Any = 0.3,
        norm: Any = "inf",
        targeted: bool = False,
        l1_sparsity: float = 0.99,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.norm = norm
        self.targeted = targeted
        self.l1_sparsity = l1_sparsity
        self.batch_size = batch_size
        self.verbose = verbose

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        grad = self.estimator.loss_gradient_tensor(x, y)
        if self.targeted:
            grad = -grad
        if mask is not None:
            grad = grad * mask
        direction = steepest_direction(
            grad,
            canonical_norm(self.norm),
            x=x,
            clip_values=self.estimator.clip_values,
            l1_sparsity=self.l1_sparsity,
        )
        return x + eps * direction


FGSM = FastGradientMethod
