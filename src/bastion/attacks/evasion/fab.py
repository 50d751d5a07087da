"""FAB (Croce and Hein): minimal perturbations by projections onto linearised boundaries."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from bastion._validation import (
    BATCH_SIZE,
    NONE,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
    Options,
)
from bastion.attacks._lp import canonical_norm, lp_norm
from bastion.attacks._restarts import Best, Outcome, best_of_restarts
from bastion.attacks.base import MinimumNormAttack
from bastion.estimators.base import SupportsClassGradient

__all__ = ["FAB", "project_hyperplane_box"]

#: Restart radius per norm when ``eps`` is None (the reference implementation's defaults).
_DEFAULT_EPS = {"inf": 0.3, "2": 1.0, "1": 5.0}
_TINY = 1e-12


def project_hyperplane_box(
    w: torch.Tensor,
    c: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    norm: str,
) -> torch.Tensor:
    """Smallest ``d`` in Lp norm with ``<w, d> + c = 0`` and ``lower <= d <= upper``, batched.

    ``w``: ``(B, D)``; ``c``: ``(B,)``; ``lower <= 0 <= upper``: broadcastable to ``(B, D)``
    (may be infinite). ``norm`` is ``"inf"``, ``"2"`` or ``"1"``. When the hyperplane misses the
    box, the result is the box point nearest to it (``|<w, d> + c|`` smallest) of least norm.

    Each coordinate of a minimiser moves against ``sign(c w_i)`` by ``e_i`` in
    ``[0, cap_i]``, so the problem is ``min ||e||_p`` subject to ``sum |w_i| e_i = |c|``, solved
    exactly after one sort (no iterative bisection):

    * L1, a fractional knapsack: fill the coordinates in decreasing ``|w_i|`` until ``|c|`` is
      reached (the last one partly);
    * L2 (``e_i = min(lam |w_i|, cap_i)``) and Linf (``e_i = min(lam, cap_i)``): the constraint
      is piecewise linear and increasing in ``lam``, with breakpoints ``cap_i / |w_i|`` (L2) or
      ``cap_i`` (Linf); sort them, find the segment where it reaches ``|c|``, solve for ``lam``.
    """
    sign = torch.where(c >= 0, 1.0, -1.0).to(w.dtype).unsqueeze(1)
    ws = w * sign  # now <ws, d> must reach -|c|
    g = ws.abs()
    active = g > 0
    cap = torch.where(ws > 0, -lower, upper).expand_as(w)
    cap = torch.where(active, cap, torch.zeros_like(cap))
    target = c.abs().unsqueeze(1)
    gm = torch.where(active, g * cap, torch.zeros_like(g))  # decrease when coordinate i is full
    zero = torch.zeros_like(target)
    if norm == "1":
        order = g.argsort(dim=1, descending=True)
        gs, caps, gms = g.gather(1, order), cap.gather(1, order), gm.gather(1, order)
        before = torch.cat([zero, gms.cumsum(dim=1)[:, :-1]], dim=1)  # exclusive cumsum
        full = before + gms < target
        # The first coordinate that is not full reaches the target (none: infeasible).
        first = full.logical_not().cumsum(dim=1) == 1
        part = ((target - before) / gs.clamp_min(_TINY)).clamp_min(0)
        e_sorted = torch.where(full, caps, torch.where(first & ~full, part, 0.0))
        e_sorted = torch.minimum(e_sorted, caps)
        e = torch.zeros_like(g).scatter(1, order, e_sorted)
    elif norm in ("2", "inf"):
        kk = g if norm == "2" else active.to(g.dtype)
        # Inactive coordinates sort first (breakpoint -1): they never move.
        r = torch.where(active, cap / kk.clamp_min(_TINY), -torch.ones_like(g))
        order = r.argsort(dim=1)
        rs, gms, gks = r.gather(1, order), gm.gather(1, order), (g * kk).gather(1, order)
        cum_gm = gms.cumsum(dim=1)
        tail = gks.flip(1).cumsum(dim=1).flip(1)  # sum_{i >= j} g_i k_i
        tail_after = torch.cat([tail[:, 1:], zero], dim=1)
        # Decrease at the breakpoints; at an infinite one (no box) it is unbounded.
        h = torch.where(torch.isfinite(rs), cum_gm + rs * tail_after, math.inf)
        k = (h < target).sum(dim=1, keepdim=True)  # breakpoints passed: those coordinates full
        feasible = k < g.shape[1]
        kc = k.clamp_max(g.shape[1] - 1)
        excl = torch.cat([zero, cum_gm[:, :-1]], dim=1).gather(1, kc)
        lam = ((target - excl) / tail.gather(1, kc).clamp_min(_TINY)).clamp_min(0)
        lam = torch.where(feasible, lam, math.inf)
        e = torch.where(active, torch.minimum(lam * kk, cap), torch.zeros_like(g))
    else:
        raise ValueError(f"unknown norm {norm!r}")
    return -torch.sign(ws) * e


def _dual_norm(w: torch.Tensor, norm: str) -> torch.Tensor:
    """Norm dual to ``norm`` along the last dimension."""
    if norm == "inf":
        return w.abs().sum(dim=-1)
    if norm == "2":
        return w.norm(dim=-1)
    return w.abs().amax(dim=-1)


class FAB(MinimumNormAttack):
    """Fast Adaptive Boundary (FAB) attack: minimal Lp perturbations by repeated projection onto
    the linearised decision boundary, biased toward the original point.

    At the current point ``x_i`` the decision boundary between the class ``y`` and a class
    ``s`` is linearised, ``pi_s = {z : f_s + <w_s, z - x_i> = 0}`` with ``f_s = z_s - z_y``
    and ``w_s = grad z_s - grad z_y`` (``z`` the logits). Untargeted, ``s`` is the class whose
    linearised boundary is nearest in the chosen norm, ``|f_s| / ||w_s||_q`` with ``q`` the
    dual norm (all class gradients come from one Jacobian call); targeted, ``s`` is the target
    ``t`` and ``y`` the strongest other class at ``x_i``. Let ``P(p)`` be the exact Lp
    projection of ``p`` onto ``pi_s`` intersected with the box ``clip_values``
    (:func:`project_hyperplane_box`), ``d_1 = P(x_i) - x_i`` and
    ``d_2 = P(x_orig) - x_orig``. The step is

    ``x_{i+1} = clip((1 - alpha) (x_i + eta d_1) + alpha (x_orig + eta d_2))`` with
    ``alpha = min(||d_1|| / (||d_1|| + ||d_2||), alpha_max)``

    (the extrapolation ``eta > 1`` crosses the boundary instead of landing on it; ``alpha``
    biases the step toward points close to ``x_orig``). When ``x_{i+1}`` is adversarial it is
    kept if it is the smallest so far for its sample, and the iterate moves back toward the
    original point, ``x_{i+1} = x_orig + beta (x_{i+1} - x_orig)``, so that the search
    continues from the clean side of the boundary. The first run starts at ``x_orig``; each of
    the ``num_random_init`` others at a random point at distance ``min(||delta_best||, eps) / 2``
    from it (``eps`` when nothing is found yet). Only samples not already adversarial at
    ``x_orig`` are attacked.

    With ``targeted=False`` and ``nb_target_classes=k``, the attack is the FAB-T of AutoAttack:
    for each of the ``k`` classes with the highest clean logits (other than ``y``), a run
    projects onto the linearised boundary between ``y`` and that class only; a point counts as
    soon as it is misclassified, and the smallest perturbation over all runs is returned.
    With ``targeted=True`` the labels ``y`` are the targets and ``nb_target_classes`` is not
    used (the paper fixes the other class of the boundary to the clean class; here it is the
    strongest non-target class at the current point, which is the boundary to cross for the
    prediction to become the target).

    Threat model: white-box (needs the gradients of the logits), untargeted or targeted.
    Norms: inf, 2, 1.

    Parameters
    ----------
    estimator : estimator with ``logits`` and ``class_gradient``
    norm : {"inf", 2, 1}, default "inf"
    max_iter : int, default 100
        Steps per run (each costs one Jacobian and one or two forward passes).
    eps : float > 0, optional
        Radius scale of the random restarts; per norm ``0.3`` (inf), ``1.0`` (2), ``5.0`` (1)
        when omitted.
    alpha_max : float in [0, 1), default 0.1
        Largest weight of the step from the original point.
    eta : float >= 1, default 1.05
        Extrapolation factor of the projection steps.
    beta : float in [0, 1], default 0.9
        Factor of the backward step toward the original point after an adversarial point.
    num_random_init : int >= 0, default 0
        Runs per target after the first (which starts at ``x_orig``), each from a random
        point. (Renamed from ``n_restarts``, which counted the first run too:
        ``n_restarts=k`` is ``num_random_init=k - 1``.)
    targeted : bool, default False
    nb_target_classes : int >= 1, optional
        Untargeted only: run FAB-T over this many candidate classes (see above) instead of
        choosing the nearest boundary at each step.
    batch_size : int, default 128
    random_state : None, int or torch.Generator, optional
        Seeds the random restarts.
    verbose : bool, default False

    Notes
    -----
    The result is ``x_orig + delta_best``, the smallest adversarial point found for each
    sample. Samples for which no step was adversarial (and those already misclassified, or
    already classified as the target, at ``x_orig``) are returned unchanged, so their
    perturbation norm is 0. Features with ``mask`` 0 are left out of the linearisation (their
    weight is set to 0), so no projection moves them.

    References
    ----------
    Croce and Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
    attack", ICML 2020. https://arxiv.org/abs/1907.02044

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.fab import FAB
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=None)
    >>> x = torch.rand(5, 4)
    >>> x_adv = FAB(clf, norm=2, max_iter=10).generate(x)
    >>> bool((clf.predict(x_adv).argmax(1) != clf.predict(x).argmax(1)).all())
    True
    """

    estimator: SupportsClassGradient

    _renamed: ClassVar[dict[str, Any]] = {
        "n_restarts": ("num_random_init", lambda k: k - 1 if isinstance(k, int) else k),
        "n_target_classes": "nb_target_classes",
    }
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "norm": [Options(["inf", float("inf"), 2, 1])],
        "max_iter": [Interval(int, 1, None)],
        "eps": [NONE, Interval(float, 0, None, closed="neither")],
        "alpha_max": [Interval(float, 0, 1, closed="left")],
        "eta": [Interval(float, 1, None)],
        "beta": [Interval(float, 0, 1)],
        "num_random_init": [Interval(int, 0, None)],
        "targeted": TARGETED,
        "nb_target_classes": [NONE, Interval(int, 1, None)],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "logits", "class_gradient")

    def __init__(
        self,
        estimator: SupportsClassGradient,
        *,
        norm: Any = "inf",
        max_iter: int = 100,
        eps: float | None = None,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        num_random_init: int = 0,
        targeted: bool = False,
        nb_target_classes: int | None = None,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.norm = norm
        self.max_iter = max_iter
        self.eps = eps
        self.alpha_max = alpha_max
        self.eta = eta
        self.beta = beta
        self.num_random_init = num_random_init
        self.targeted = targeted
        self.nb_target_classes = nb_target_classes
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

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
        with torch.no_grad():
            logits = est.logits_tensor(x)
        # Samples adversarial at x need no attack; the template returns them unchanged.
        todo = (~self._is_adversarial(logits, y)).nonzero().squeeze(1)
        out = x.clone()
        if todo.numel() == 0:
            return out
        x0 = x[todo].reshape(todo.numel(), -1)
        y0, logits0 = y[todo], logits[todo]
        m0 = None
        if mask is not None:
            m0 = (mask[todo] if mask.shape[0] > 1 else mask).reshape(-1, x0.shape[1])

        # Each run: (the class s of the boundary or None for the nearest, the fixed other class
        # or None for the strongest one).
        runs: list[tuple[torch.Tensor | None, torch.Tensor | None]]
        if self.targeted:
            runs = [(y0, None)]
        elif self.nb_target_classes is not None:
            k = min(self.nb_target_classes, est.nb_classes - 1)
            ranked = logits0.scatter(1, y0.view(-1, 1), -math.inf).topk(k, dim=1).indices
            runs = [(ranked[:, r], y0) for r in range(k)]
        else:
            runs = [(None, None)]

        eps = _DEFAULT_EPS[norm] if self.eps is None else float(self.eps)

        per_target = 1 + self.num_random_init

        def run(r: int, idx: torch.Tensor | None, best: Best) -> Outcome:
            cls, other = runs[r // per_target]
            start = x0
            if r % per_target > 0:
                # Around x0, at half the smallest perturbation found so far (at most eps).
                radius = best.score.clamp_max(eps) / 2
                start = x0 + self._random_offset(x0, radius, norm, m0, generator)
                if est.clip_values is not None:
                    start = start.clamp(*est.clip_values)
            return self._run(x0, y0, start, cls, other, m0, norm)

        best = best_of_restarts(run, x0, len(runs) * per_target, minimum_norm=True)
        out[todo] = best.x.reshape(out[todo].shape)
        return out

    @staticmethod
    def _random_offset(
        x0: torch.Tensor,
        radius: torch.Tensor,
        norm: str,
        mask: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """A random perturbation of Lp norm ``radius`` (before masking), one per row."""
        if norm == "inf":
            t = 2 * torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) - 1
        else:
            t = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = t / lp_norm(t, norm).clamp_min(_TINY).unsqueeze(1) * radius.unsqueeze(1)
        return t if mask is None else t * mask

    def _run(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        start: torch.Tensor,
        cls: torch.Tensor | None,
        other: torch.Tensor | None,
        mask: torch.Tensor | None,
        norm: str,
    ) -> Outcome:
        """One FAB run from ``start`` (flat, like ``x0``): per sample, its adversarial iterate
        nearest to ``x0`` (and its norm), where one was found."""
        est = self.estimator
        shape = (-1, *est.input_shape)
        n = x0.shape[0]
        rows = torch.arange(n, device=x0.device)
        lo, hi = est.clip_values if est.clip_values is not None else (-math.inf, math.inf)
        best = x0.clone()
        best_norm = torch.full((n,), math.inf, device=x0.device, dtype=x0.dtype)
        x1 = start.clone()
        # Targeted FAB picks, at each step, the strongest class other than the target: it needs
        # the logits at x1 before the Jacobian call. The other variants take them from it.
        pick_other = cls is not None and other is None
        logits = torch.empty(0)
        if pick_other:
            with torch.no_grad():
                logits = est.logits_tensor(x1.reshape(shape))
        for it in range(self.max_iter):
            if cls is None:
                # Untargeted FAB: all classes in one Jacobian call (whose forward pass gives the
                # logits too), nearest linearised boundary.
                jac, logits = est.class_gradient_and_logits_tensor(x1.reshape(shape))
                jac = jac.flatten(2)  # (n, K, D)
                f = logits - logits.gather(1, y.view(-1, 1))
                w_all = jac - jac[rows, y].unsqueeze(1)
                if mask is not None:
                    w_all = w_all * mask.unsqueeze(1)
                dist = f.abs() / _dual_norm(w_all, norm).clamp_min(_TINY)
                s = dist.scatter(1, y.view(-1, 1), math.inf).argmin(dim=1)
                w, f_s = w_all[rows, s], f[rows, s]
            else:
                o = other
                if o is None:  # the strongest class other than the target, at x1
                    o = logits.scatter(1, cls.view(-1, 1), -math.inf).argmax(dim=1)

                # One backward pass, of the logit difference itself.
                def margin(
                    z: torch.Tensor, c: torch.Tensor = cls, o: torch.Tensor = o
                ) -> torch.Tensor:
                    return z[rows, c] - z[rows, o]

                grad, f_s, logits = est.objective_gradient_tensor(x1.reshape(shape), margin)
                w = grad.flatten(1)
                if mask is not None:
                    w = w * mask
            # Project x1 and x0 onto the same linearised boundary, each within the box.
            d1 = project_hyperplane_box(w, f_s, lo - x1, hi - x1, norm)
            c0 = f_s + (w * (x0 - x1)).sum(dim=1)
            d2 = project_hyperplane_box(w, c0, lo - x0, hi - x0, norm)
            a1 = lp_norm(d1, norm).clamp_min(1e-8)
            a2 = lp_norm(d2, norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0.0, self.alpha_max).unsqueeze(1)
            x1 = (1 - alpha) * (x1 + self.eta * d1) + alpha * (x0 + self.eta * d2)
            x1 = x1.clamp(lo, hi)
            with torch.no_grad():
                logits = est.logits_tensor(x1.reshape(shape))
            adv = self._is_adversarial(logits, y)
            if not bool(adv.any()):
                continue
            dist_now = lp_norm(x1 - x0, norm)
            better = adv & (dist_now < best_norm)
            best = torch.where(better.unsqueeze(1), x1, best)
            best_norm = torch.where(better, dist_now, best_norm)
            if it == self.max_iter - 1:
                break
            # Step back toward x0 (the next Jacobian call gives the logits there, except for
            # targeted FAB, which needs them first).
            idx = adv.nonzero().squeeze(1)
            x1[idx] = x0[idx] + self.beta * (x1[idx] - x0[idx])
            if pick_other:
                with torch.no_grad():
                    logits[idx] = est.logits_tensor(x1[idx].reshape(shape))
        return Outcome(best, best_norm < math.inf, best_norm)
