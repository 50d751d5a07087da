"""Fast Minimum-Norm attack (Pintor et al.): adaptive norm constraints around a PGD step."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._validation import (
    BATCH_SIZE,
    NONE,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
    Options,
    Satisfies,
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._lp import canonical_norm, lp_norm, project_lp_box
from bastion.attacks.base import MinimumNormAttack
from bastion.estimators.base import SupportsClassGradient
from bastion.exceptions import InputError

__all__ = ["FMN", "FastMinimumNorm"]

_TOL = 1e-5
_DUAL = {"inf": 1.0, "2": 2.0, "1": float("inf"), "0": 2.0}


def _cosine(k: int, steps: int, start: float, end: float) -> float:
    """Cosine annealing from ``start`` (k = 0) to ``end`` (k = steps)."""
    return end + (start - end) * (1 + math.cos(math.pi * k / max(steps, 1))) / 2


def _project_l0(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Keep the ``floor(eps)`` largest magnitudes of each perturbation (the L0 projection)."""
    flat = delta.reshape(delta.shape[0], -1)
    k = eps.floor().clamp(0, flat.shape[1]).long()
    ranks = flat.abs().argsort(dim=1, descending=True).argsort(dim=1)
    return (flat * (ranks < k.unsqueeze(1))).reshape(delta.shape)


class FastMinimumNorm(MinimumNormAttack):
    """Fast Minimum-Norm (FMN) attack: a projected-gradient step inside an Lp ball whose radius
    adapts at every step, shrinking while the point is adversarial and growing toward the
    linearised boundary while it is not.

    With the margin loss ``L = z_y - max_{j != y} z_j`` (untargeted; targeted,
    ``L = max_{j != t} z_j - z_t``), ``L < 0`` means adversarial (``L`` must be below
    ``-1e-5 (1 + max |z|)``, so that the estimator's prediction, which decides success, does not
    round a point on the boundary back to the clean side). At step ``k`` (of ``K``) FMN
    computes ``L`` and its gradient ``g`` at ``x + delta_k`` and sets the per-sample radius

    * ``eps_k = min(eps_{k-1}, ||delta*||_p) * (1 - gamma_k)`` when ``x + delta_k`` is
      adversarial (``delta*`` is the smallest adversarial perturbation found so far);
    * ``eps_k = ||delta_k||_p + |L| / ||g||_q`` (``q`` the dual norm: the distance to the
      boundary of the model linearised at ``x + delta_k``) while no adversarial point has been
      found, and ``eps_k = eps_{k-1} * (1 + gamma_k)`` after one has. The extrapolated radius
      is at least ``||delta_k||_p * (1 + gamma_k)``: on a linear model the extrapolation lands
      exactly on the boundary, where float rounding can leave the point on the clean side.

    For L0 the radius is a feature count: ``floor`` of the shrunk radius, at most one less than
    before; at least one more when growing. Then ``delta_{k+1}`` is the projection of
    ``delta_k - alpha_k g / ||g||_2`` (a descent step on the margin) onto the ball
    ``||delta||_p <= eps_k`` intersected with the box ``clip_values`` (exact for L1, L2 and
    Linf; for L0 the ``floor(eps_k)`` largest magnitudes are kept, then clipped). Both
    ``gamma_k`` (from ``gamma_init`` to ``gamma_final``) and the step ``alpha_k`` (from
    ``alpha_init`` to ``alpha_final``) follow a cosine schedule, so early steps move the radius
    and the point coarsely and late steps refine them. The result is ``x + delta*``; samples
    for which no step was adversarial come back unchanged. All ``max_iter`` steps run for every
    sample, as the schedules are global.

    With ``x_init`` (adversarial inputs, one per sample), the attack starts from the
    point of the segment between ``x`` and the starting point nearest to ``x`` that is still
    adversarial (``binary_search_steps`` bisection steps), with ``eps_0`` its norm. Samples
    whose starting point is not adversarial start from ``x``.

    Threat model: white-box (needs the gradients of the logits), untargeted or targeted.
    Norms: 0, 1, 2, inf.

    Parameters
    ----------
    estimator : estimator with ``logits`` and ``class_gradient``
    norm : {"inf", 2, 1, 0}, default "inf"
    targeted : bool, default False
    max_iter : int, default 100
        Number of steps ``K``.
    alpha_init : float > 0, default 1.0
        Initial step size (the step is ``alpha_k`` times the L2-normalised gradient).
    alpha_final : float > 0, optional
        Final step size; ``alpha_init / 100`` when omitted.
    gamma_init : float in (0, 1), default 0.05
        Initial rate at which the radius shrinks (or grows).
    gamma_final : float in (0, 1), default 0.001
        Final rate.
    x_init : array-like or torch.Tensor, shape (N, *input_shape), optional
        Adversarial points to start from, one per sample of ``x`` in ``generate``.
    binary_search_steps : int, default 10
        Bisection steps toward ``x`` from each starting point (used only with
        ``x_init``).
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Pintor, Roli, Brendel and Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive
    Norm Constraints", NeurIPS 2021. https://arxiv.org/abs/2102.12827

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.fast_minimum_norm import FastMinimumNorm
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=None)
    >>> x = torch.rand(5, 4)
    >>> x_adv = FastMinimumNorm(clf, norm=2, max_iter=50).generate(x)
    >>> bool((clf.predict(x_adv).argmax(1) != clf.predict(x).argmax(1)).all())
    True
    """

    estimator: SupportsClassGradient

    _renamed: ClassVar[dict[str, Any]] = {"starting_points": "x_init"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "norm": [Options(["inf", float("inf"), 2, 1, 0])],
        "targeted": TARGETED,
        "max_iter": [Interval(int, 1, None)],
        "alpha_init": [Interval(float, 0, None, closed="neither")],
        "alpha_final": [NONE, Interval(float, 0, None, closed="neither")],
        "gamma_init": [Interval(float, 0, 1, closed="neither")],
        "gamma_final": [Interval(float, 0, 1, closed="neither")],
        "x_init": [NONE, Satisfies(lambda v: np.ndim(v) >= 2, "an array of inputs")],
        "binary_search_steps": [Interval(int, 0, None)],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "logits", "class_gradient")

    def __init__(
        self,
        estimator: SupportsClassGradient,
        *,
        norm: Any = "inf",
        targeted: bool = False,
        max_iter: int = 100,
        alpha_init: float = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        x_init: Any = None,
        binary_search_steps: int = 10,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.norm = norm
        self.targeted = targeted
        self.max_iter = max_iter
        self.alpha_init = alpha_init
        self.alpha_final = alpha_final
        self.gamma_init = gamma_init
        self.gamma_final = gamma_final
        self.x_init = x_init
        self.binary_search_steps = binary_search_steps
        self.batch_size = batch_size
        self.verbose = verbose

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self.x_init is None:
            return {}
        start = torch.as_tensor(self.x_init, device=x.device).to(x.dtype)
        if start.shape != x.shape:
            raise InputError(
                f"x_init of shape {tuple(start.shape)} must have the shape of x "
                f"{tuple(x.shape)} (one starting point per sample)."
            )
        return {"x_init": start}

    def _margin(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``z_y - max_{j != y} z_j`` (targeted: ``max_{j != t} z_j - z_t``); < 0 adversarial."""
        own = z.gather(1, y.view(-1, 1)).squeeze(1)
        other = z.scatter(1, y.view(-1, 1), float("-inf")).amax(dim=1)
        return other - own if self.targeted else own - other

    def _start(
        self, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Bisect each segment ``[x, start]`` toward ``x`` while it stays adversarial."""
        delta = start - x
        if mask is not None:
            delta = delta * mask
        with torch.no_grad():
            ok = self._margin(self.estimator.logits_tensor(x + delta), y) < 0
            lo = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
            hi = torch.ones_like(lo)
            for _ in range(self.binary_search_steps):
                mid = (lo + hi) / 2
                adv = self._margin(self.estimator.logits_tensor(x + _view(mid, x) * delta), y) < 0
                hi = torch.where(adv, mid, hi)
                lo = torch.where(adv, lo, mid)
        return torch.where(_view(ok, x), _view(hi, x) * delta, torch.zeros_like(delta))

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        est = self.estimator
        norm = canonical_norm(self.norm)
        dual = _DUAL[norm]
        clip = est.clip_values
        n = x.shape[0]
        alpha_final = self.alpha_init / 100 if self.alpha_final is None else self.alpha_final

        def objective(z: torch.Tensor) -> torch.Tensor:
            return self._margin(z, y)

        start = per_sample.get("x_init")
        delta = torch.zeros_like(x) if start is None else self._start(x, y, start, mask)
        eps = lp_norm(delta, norm)
        inf = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        best_norm, best = inf.clone(), delta.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        if start is not None:
            # Only starting points that are adversarial give a nonzero delta.
            found = eps > 0
            best_norm = torch.where(found, eps, inf)

        for k in range(self.max_iter + 1):
            if k == self.max_iter:
                # The last step's point is only checked, not followed.
                with torch.no_grad():
                    z = est.logits_tensor(x + delta)
                loss = self._margin(z, y)
            else:
                grad, loss, z = est.objective_gradient_tensor(x + delta, objective)
            d_norm = lp_norm(delta, norm)
            # A margin within float rounding of 0 is not adversarial: the estimator's prediction
            # (which decides success in the template) may round the other way.
            adv = loss < -_TOL * (1 + z.abs().amax(dim=1))
            better = adv & (d_norm < best_norm)
            best = torch.where(_view(better, x), delta, best)
            best_norm = torch.where(better, d_norm, best_norm)
            found = found | adv
            if k == self.max_iter:
                break

            if mask is not None:
                grad = grad * mask
            gamma = _cosine(k, self.max_iter, self.gamma_init, self.gamma_final)
            alpha = _cosine(k, self.max_iter, self.alpha_init, alpha_final)
            g_flat = grad.reshape(n, -1)
            if norm == "0":
                shrunk = torch.minimum(
                    torch.minimum(eps - 1, (eps * (1 - gamma)).floor()), best_norm
                )
                grown = torch.maximum(eps + 1, (eps * (1 + gamma)).floor())
                eps = torch.where(adv, shrunk, grown)
            else:
                to_boundary = loss.abs() / g_flat.norm(p=dual, dim=1).clamp_min(1e-12)
                # On a (nearly) linear boundary the extrapolation lands on it, not across it,
                # and float rounding can keep the point on the clean side: grow by gamma at least.
                grow = torch.maximum(d_norm + to_boundary, d_norm * (1 + gamma))
                eps = torch.where(
                    adv,
                    torch.minimum(eps, best_norm) * (1 - gamma),
                    torch.where(found, eps * (1 + gamma), grow),
                )
            eps = eps.clamp_min(0)

            step = grad / _view(g_flat.norm(dim=1).clamp_min(1e-12), grad)
            # Gradient ascent on -L, i.e. descent on the margin.
            candidate = delta - alpha * step
            if norm == "0":
                delta = _project_l0(candidate, eps)
                if clip is not None:
                    delta = (x + delta).clamp(*clip) - x
            else:
                delta = project_lp_box(candidate, x, _view(eps, x), norm, clip)
        return x + best


FMN = FastMinimumNorm
