"""Projected Gradient Descent (Madry et al.) in the Linf, L2 and L1 balls."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion._validation import (
    BATCH_SIZE,
    BUDGET,
    NORM,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
)
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import (
    canonical_norm,
    project_point,
    random_in_ball,
    steepest_direction,
)
from bastion.attacks._restarts import Best, Outcome, best_of_restarts
from bastion.attacks.base import FixedBudgetAttack, is_adversarial
from bastion.estimators.base import SupportsLossGradient

__all__ = ["PGD", "ProjectedGradientDescent"]


class ProjectedGradientDescent(FixedBudgetAttack):
    """Projected Gradient Descent: iterated steepest-ascent steps on the loss, each followed by
    an exact projection onto the eps-ball intersected with ``clip_values``.

    With ``num_random_init >= 1`` each run starts from a point drawn uniformly in the eps-ball
    (Madry et al.); with 0 it starts from ``x`` (the Basic Iterative Method of Kurakin et al.).
    Restarts after the first run only on samples not yet adversarial, and each sample keeps its
    best result: an adversarial one if any run found one, else the one with the highest loss.
    For ``norm=1`` the step is the sparse L1 direction of Tramer and Boneh (2019).

    Threat model: white-box (needs loss gradients). Norms: inf, 2, 1.

    Parameters
    ----------
    estimator : estimator with ``loss_gradient``
    eps : float or array-like of float, default 0.3
        Budget, one value or one per sample.
    eps_step : float or array-like of float, default 0.01
        Step size per iteration (in the chosen norm).
    max_iter : int, default 40
        Steps per run.
    norm : {"inf", 2, 1}, default "inf"
    targeted : bool, default False
    num_random_init : int, default 1
        Number of runs from random starting points; 0 starts once from ``x``.
    l1_sparsity : float in [0, 1), default 0.99
        For ``norm=1``: quantile of gradient magnitudes below which coordinates are not changed.
    batch_size : int, default 128
    random_state : None, int or torch.Generator
        Seeds the random starts.
    verbose : bool, default False

    References
    ----------
    Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083

    Tramer and Boneh, "Adversarial Training and Robustness for Multiple Perturbations",
    NeurIPS 2019. https://arxiv.org/abs/1904.13000

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion import PGD
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = PGD(clf, eps=0.5, eps_step=0.1, max_iter=10, norm=2, random_state=0).generate(x)
    >>> bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
    True
    """

    estimator: SupportsLossGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "eps_step": BUDGET,
        "max_iter": [Interval(int, 0, None)],
        "norm": [NORM],
        "targeted": TARGETED,
        "num_random_init": [Interval(int, 0, None)],
        "l1_sparsity": [Interval(float, 0, 1, closed="left")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "loss_gradient")

    def __init__(
        self,
        estimator: SupportsLossGradient,
        *,
        eps: Any = 0.3,
        eps_step: Any = 0.01,
        max_iter: int = 40,
        norm: Any = "inf",
        targeted: bool = False,
        num_random_init: int = 1,
        l1_sparsity: float = 0.99,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.norm = norm
        self.targeted = targeted
        self.num_random_init = num_random_init
        self.l1_sparsity = l1_sparsity
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        eps_step: torch.Tensor,
    ) -> torch.Tensor:
        """One run of PGD from a (random) start."""
        est = self.estimator
        norm = canonical_norm(self.norm)
        clip = est.clip_values
        if self.num_random_init > 0:
            delta = random_in_ball(x.shape, eps, norm, generator, device=x.device, dtype=x.dtype)
            if mask is not None:
                delta = delta * mask
            x_adv = project_point(x + delta, x, eps, norm, clip)
        else:
            x_adv = x
        for _ in range(self.max_iter):
            grad = est.loss_gradient_tensor(x_adv, y)
            if self.targeted:
                grad = -grad
            if mask is not None:
                grad = grad * mask
            step = steepest_direction(
                grad, norm, x=x_adv, clip_values=clip, l1_sparsity=self.l1_sparsity
            )
            x_adv = project_point(x_adv + eps_step * step, x, eps, norm, clip)
        return x_adv

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        eps_step = per_sample["eps_step"]
        runs = max(1, self.num_random_init)
        if runs == 1:
            # One run needs no scores: no extra prediction.
            return self._run(x, y, mask, generator, eps, eps_step)

        def run(r: int, idx: torch.Tensor | None, best: Best) -> Outcome:
            y_r = _rows(y, idx)
            cand = self._run(
                _rows(x, idx),
                y_r,
                _rows(mask, idx),
                generator,
                _rows(eps, idx),
                _rows(eps_step, idx),
            )
            return Outcome(cand, *self._score(cand, y_r))

        return best_of_restarts(run, x, runs).x

    def _score(self, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Success flags and the loss the attacker minimises (``log p_y`` untargeted,
        ``-log p_t`` targeted), from one prediction."""
        with torch.no_grad():
            probs = self.estimator.predict_tensor(x_adv)
        log_p = probs.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-30).log()
        return is_adversarial(probs, y, self.targeted), -log_p if self.targeted else log_p


PGD = ProjectedGradientDescent
