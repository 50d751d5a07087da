"""Iterative FGSM attacks: the Basic Iterative Method (Kurakin et al.) and the Momentum
Iterative Method (Dong et al.)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion._validation import (
    BATCH_SIZE,
    BUDGET,
    NORM,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
    Options,
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._lp import canonical_norm, project_point, steepest_direction
from bastion.attacks.base import FixedBudgetAttack
from bastion.attacks.evasion.projected_gradient import ProjectedGradientDescent
from bastion.estimators.base import SupportsLossGradient

__all__ = ["BIM", "MIM", "BasicIterativeMethod", "MomentumIterativeMethod"]


class BasicIterativeMethod(ProjectedGradientDescent):
    """Basic Iterative Method (BIM, "I-FGSM"): FGSM repeated with a small step, starting from
    ``x``, each step followed by the projection onto the eps-ball intersected with
    ``clip_values``.

    ``x_{t+1} = Proj(x_t + eps_step * d_t)`` with ``d_t = sign(grad)`` for ``norm="inf"`` (the
    paper), ``grad / ||grad||_2`` for ``norm=2`` and the sparse L1 direction of Tramer and Boneh
    (2019) for ``norm=1``; ``x_0 = x`` (no random start). It is
    :class:`~bastion.attacks.evasion.ProjectedGradientDescent` with ``num_random_init=0``, so it
    is deterministic. With ``targeted=True`` and the least-likely class as target it is the
    paper's "iterative least-likely class" method.

    The paper runs ``min(eps + 4, 1.25 eps)`` steps of one grey level for 0-255 images; on
    inputs in [0, 1] the defaults (``eps=0.3``, ``eps_step=0.01``, ``max_iter=40``) follow the
    same idea: ``eps / eps_step = 30`` steps reach the border of the ball, the rest move along
    it.

    Threat model: white-box (needs loss gradients). Norms: inf, 2, 1.

    Parameters
    ----------
    estimator : estimator with ``loss_gradient``
    eps : float or array-like of float, default 0.3
        Budget, one value or one per sample.
    eps_step : float or array-like of float, default 0.01
        Step size per iteration (in the chosen norm).
    max_iter : int, default 40
    norm : {"inf", 2, 1}, default "inf"
    targeted : bool, default False
    l1_sparsity : float in [0, 1), default 0.99
        For ``norm=1``: quantile of gradient magnitudes below which coordinates are not changed.
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Kurakin, Goodfellow and Bengio, "Adversarial Examples in the Physical World", ICLR 2017
    workshop. https://arxiv.org/abs/1607.02533

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.iterative import BIM
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = BIM(clf, eps=0.1, eps_step=0.02, max_iter=10).generate(x)
    >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "eps_step": BUDGET,
        "max_iter": [Interval(int, 0, None)],
        "norm": [NORM],
        "targeted": TARGETED,
        "l1_sparsity": [Interval(float, 0, 1, closed="left")],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }

    # Not parameters: BIM always starts from x, once, so the inherited PGD loop draws nothing.
    num_random_init = 0
    random_state = None

    def __init__(
        self,
        estimator: SupportsLossGradient,
        *,
        eps: Any = 0.3,
        eps_step: Any = 0.01,
        max_iter: int = 40,
        norm: Any = "inf",
        targeted: bool = False,
        l1_sparsity: float = 0.99,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.norm = norm
        self.targeted = targeted
        self.l1_sparsity = l1_sparsity
        self.batch_size = batch_size
        self.verbose = verbose


class MomentumIterativeMethod(FixedBudgetAttack):
    """Momentum Iterative Method (MI-FGSM): iterative FGSM whose step follows an accumulated,
    decaying sum of L1-normalised gradients, which stabilises the direction and transfers
    better to other models.

    ``g_{t+1} = decay * g_t + grad_t / ||grad_t||_1`` (per sample) and
    ``x_{t+1} = Proj(x_t + eps_step * d(g_{t+1}))`` with ``d(g) = sign(g)`` for ``norm="inf"``
    and ``g / ||g||_2`` for ``norm=2`` (the paper's L2 variant); ``x_0 = x``, ``g_0 = 0`` and
    ``Proj`` is the projection onto the eps-ball intersected with ``clip_values``. With
    ``decay=0`` and ``norm="inf"`` it is exactly :class:`BasicIterativeMethod`. The defaults
    follow the paper: ``decay=1``, ten steps of ``eps / 10``.

    Threat model: white-box (needs loss gradients); designed for transfer to black-box models.
    Norms: inf, 2.

    Parameters
    ----------
    estimator : estimator with ``loss_gradient``
    eps : float or array-like of float, default 0.3
        Budget, one value or one per sample.
    eps_step : float or array-like of float, default 0.03
        Step size per iteration (in the chosen norm).
    max_iter : int, default 10
    decay : float >= 0, default 1.0
        Momentum decay factor ``mu``; 0 gives BIM on normalised gradients.
    norm : {"inf", 2}, default "inf"
    targeted : bool, default False
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Dong, Liao, Pang, Su, Zhu, Hu and Li, "Boosting Adversarial Attacks with Momentum",
    CVPR 2018. https://arxiv.org/abs/1710.06081

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.iterative import MIM
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = MIM(clf, eps=0.5, eps_step=0.1, norm=2).generate(x)
    >>> bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
    True
    """

    estimator: SupportsLossGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "eps_step": BUDGET,
        "max_iter": [Interval(int, 0, None)],
        "decay": [Interval(float, 0, None)],
        "norm": [Options(["inf", float("inf"), 2])],
        "targeted": TARGETED,
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "loss_gradient")

    def __init__(
        self,
        estimator: SupportsLossGradient,
        *,
        eps: Any = 0.3,
        eps_step: Any = 0.03,
        max_iter: int = 10,
        decay: float = 1.0,
        norm: Any = "inf",
        targeted: bool = False,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.decay = decay
        self.norm = norm
        self.targeted = targeted
        self.batch_size = batch_size
        self.verbose = verbose

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        est = self.estimator
        eps_step = per_sample["eps_step"]
        norm = canonical_norm(self.norm)
        x_adv = x
        momentum = torch.zeros_like(x)
        for _ in range(self.max_iter):
            grad = est.loss_gradient_tensor(x_adv, y)
            if self.targeted:
                grad = -grad
            if mask is not None:
                grad = grad * mask
            l1 = _view(grad.abs().flatten(1).sum(dim=1).clamp_min(1e-30), grad)
            momentum = self.decay * momentum + grad / l1
            step = steepest_direction(momentum, norm)
            x_adv = project_point(x_adv + eps_step * step, x, eps, norm, est.clip_values)
        return x_adv


BIM = BasicIterativeMethod
MIM = MomentumIterativeMethod
