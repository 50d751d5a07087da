"""HopSkipJump (Chen, Jordan and Wainwright): decision-based minimal perturbations from labels
only, by gradient-direction estimates at the decision boundary.

The module also holds :class:`DecisionBasedAttack`, the machinery that every decision-based
(labels-only) minimum-norm attack shares: decisions through the query counter, starting points
(given, or found in uniform noise) and bisection towards the clean input.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from bastion._tensor import to_tensor
from bastion._validation import NONE, Constraint, Interval, Options, check_x
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import canonical_norm, lp_norm
from bastion.attacks.base import (
    BATCH_SIZE,
    MAX_QUERIES,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    MinimumNormAttack,
    QueryAttack,
)
from bastion.exceptions import InputError

__all__ = ["HopSkipJump"]  # DecisionBasedAttack is a template, not an attack

#: Most input elements in one tensor of probes (64 MiB in float32): larger sets are queried in
#: several calls.
_PROBE_ELEMENTS = 1 << 24
#: Most probes per query call: forward passes cost more per image in very large batches.
_PROBE_ROWS = 256
#: Halvings of the HopSkipJump step before a sample gives up on the iteration.
_MAX_HALVINGS = 40


class DecisionBasedAttack(QueryAttack, MinimumNormAttack):
    """Shared machinery of decision-based (labels-only) minimum-norm attacks.

    * every query is a decision ``is this point adversarial?`` charged to its sample;
    * starting points: ``generate(..., x_init=...)`` (checked with one query each), else
      uniform noise in the input box, drawn up to ``init_size`` times per sample;
    * bisection between the clean input and an adversarial point; the returned point is always
      one that a query found adversarial, so the attack knows which samples it broke and the
      template spends no query to check.
    """

    _needs_scores = False
    targeted: bool
    init_size: int
    _x_init: Any = None

    def generate(self, x: Any, y: Any = None, *, mask: Any = None, x_init: Any = None) -> Any:
        """Craft adversarial examples.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Clean inputs inside the estimator's ``clip_values``.
        y : array-like or torch.Tensor, optional
            True labels (untargeted) or target labels (``targeted=True``), as class indices
            ``(N,)`` or one-hot ``(N, nb_classes)``. When omitted for an untargeted attack, the
            estimator's predictions are used (one query per sample).
        mask : array-like or torch.Tensor, optional
            Which features may change (1) and which may not (0); broadcastable to ``x`` or to
            one sample.
        x_init : array-like or torch.Tensor, shape (N, *input_shape), optional
            Starting points, e.g. images of the target classes for a targeted attack. Each is
            checked with one query; a sample whose starting point is not adversarial (and every
            sample when ``x_init`` is omitted) searches uniform noise instead. Features frozen
            by ``mask`` are taken from ``x``.

        Returns
        -------
        x_adv : same type, device, dtype and shape as ``x``
            The clean input, unchanged, for samples where no adversarial point was found.
        """
        self._x_init = x_init
        try:
            return super().generate(x, y, mask=mask)
        finally:
            self._x_init = None

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        extras = super()._prepare(x, mask)
        if self._x_init is not None:
            start, _ = to_tensor(self._x_init, device=x.device, dtype=x.dtype)
            if start.shape != x.shape:
                raise InputError(
                    f"x_init of shape {tuple(start.shape)} must have the shape of x, "
                    f"{tuple(x.shape)}."
                )
            est = self.estimator
            check_x(start, input_shape=est.input_shape, clip_values=est.clip_values, name="x_init")
            extras["x_init"] = start
        return extras

    def _box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample bounds ``(B, 1, ..., 1)``: ``clip_values``, else each sample's range."""
        clip = self.estimator.clip_values
        if clip is not None:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            return x.new_full(shape, float(clip[0])), x.new_full(shape, float(clip[1]))
        flat = x.reshape(x.shape[0], -1)
        return _view(flat.amin(1), x), _view(flat.amax(1), x)

    def _decide(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Is each row adversarial? One query, charged to sample ``index[i]``, per row."""
        labels = self._counter.labels(x, index)
        return labels == y if self.targeted else labels != y

    def _starting_points(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        index: torch.Tensor,
        x_init: torch.Tensor | None,
        lo: torch.Tensor,
        hi: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial starting points ``(x_adv, found)``: ``x_init`` where it is adversarial,
        else the first of up to ``init_size`` uniform noise draws that is."""
        x_adv = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if x_init is not None:
            start = x_init if mask is None else x + (x_init - x) * mask
            r = self._counter.has_budget(index).nonzero().squeeze(1)
            found[r] = self._decide(start[r], y[r], index[r])
            x_adv = torch.where(_view(found, x), start, x_adv)
        for _ in range(self.init_size):
            r = (~found & self._counter.has_budget(index)).nonzero().squeeze(1)
            if r.numel() == 0:
                break
            xr = x[r]
            u = torch.rand(xr.shape, generator=generator, device=x.device, dtype=x.dtype)
            noise = lo[r] + (hi[r] - lo[r]) * u
            m = _rows(mask, r)
            if m is not None:
                noise = xr + (noise - xr) * m
            ok = self._decide(noise, y[r], index[r])
            x_adv[r[ok]] = noise[ok]
            found[r[ok]] = True
        return x_adv, found

    def _bisect(
        self,
        x: torch.Tensor,
        x_far: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor,
        *,
        linf: bool,
        theta: float,
    ) -> torch.Tensor:
        """Bisection from the adversarial ``x_far`` towards ``x``; returns the adversarial end.

        L2: on the segment ``x + a (x_far - x)``, ``a`` in [0, 1], to precision ``theta`` in
        ``a``. Linf: on the boxes ``clip(x_far, x - a, x + a)``, ``a`` in [0, ||x_far - x||],
        to precision ``min(theta * ||x_far - x||, theta)``. A sample stops early when out of
        budget (its last adversarial point is kept).
        """
        n = x.shape[0]
        low = x.new_zeros(n)
        if linf:
            high = lp_norm(x_far - x, "inf")
            tol = torch.clamp(high * theta, max=theta)
        else:
            high = x.new_ones(n)
            tol = x.new_full((n,), theta)

        def project(a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            xr, fr = x[r], x_far[r]
            a = _view(a, xr)
            if linf:
                return torch.minimum(torch.maximum(fr, xr - a), xr + a)
            return xr + a * (fr - xr)

        while True:
            pending = ((high - low) > tol) & self._counter.has_budget(index)
            r = pending.nonzero().squeeze(1)
            if r.numel() == 0:
                break
            mid = (high[r] + low[r]) / 2
            adv = self._decide(project(mid, r), y[r], index[r])
            high[r] = torch.where(adv, mid, high[r])
            low[r] = torch.where(adv, low[r], mid)
        return project(high, torch.arange(n, device=x.device))


class HopSkipJump(DecisionBasedAttack):
    """HopSkipJump: the smallest adversarial perturbation found from the model's labels alone.

    Starting from an adversarial point (``x_init`` or uniform noise), each iteration ``t``:

    1. *binary search* between the clean input ``x`` and the current point, back to the
       decision boundary, to precision ``theta = gamma / d^(3/2)`` (L2, on the segment) or
       ``theta = gamma / d^2`` (Linf, on the boxes ``clip(x_t, x - a, x + a)``), ``d`` the
       input dimension;
    2. *gradient-direction estimate* at the boundary point from ``B_t = init_num_evals *
       sqrt(t)`` (at most ``max_num_evals``) random unit probes ``u_b`` at radius
       ``delta_t = sqrt(d) * theta * dist_{t-1}`` (L2) or ``d * theta * dist_{t-1}`` (Linf)
       (``0.1`` times the input range at ``t = 1``): ``mean_b (phi_b - mean phi) u_b`` with
       ``phi_b = +1`` where the probe is adversarial and ``-1`` where it is not (the mean is
       the paper's baseline; when all probes agree, ``+-mean u_b``);
    3. *geometric step-size search*: ``xi = dist_t / sqrt(t)``, halved until
       ``x_t + xi * v`` is still adversarial (``v`` the unit direction for L2, its sign for
       Linf); then back to step 1.

    All samples of a batch advance together: each phase sends the probes of every sample
    still at work in one call (probe sets larger than 16M input elements in a few calls); a
    sample whose budget runs out stops where it is. The result is the closest adversarial
    point seen, so it only improves with more queries. ``max_queries`` is the per-sample
    budget: in the last iteration a sample spends what it has left (fewer probes). Every point
    returned was found adversarial by a query, so no query is spent to check it.

    Without ``x_init``, a sample's starting point is the first of ``init_size`` uniform noise
    draws in ``clip_values`` that is adversarial (as the paper does); a targeted attack
    should pass ``x_init`` (images of the target classes) since noise is rarely classified as a
    given class. Samples without a starting point are returned unchanged.

    Threat model: decision-based black-box (labels only), untargeted or targeted. Norms: 2,
    inf. The Monte-Carlo probes are drawn per batch, so results depend on ``batch_size``.

    Parameters
    ----------
    estimator : estimator with ``predict`` (labels suffice, e.g. a labels-only
        :class:`~bastion.estimators.BlackBoxClassifier`)
    norm : {2, "inf"}, default 2
    targeted : bool, default False
    max_queries : int, default 5000
        Queries per sample, every query included (the clean-label query when ``y`` is
        omitted, the search for a starting point, the binary searches and the probes).
    max_iter : int or None, default None
        Maximum number of iterations; None: until the budget is spent.
    init_num_evals : int, default 100
        ``B_0``, probes of the first gradient estimate.
    max_num_evals : int, default 10000
        Most probes per gradient estimate.
    init_size : int, default 100
        Most uniform-noise draws per sample to find a starting point.
    gamma : float, default 1.0
        Scales the binary-search precision ``theta`` (and with it ``delta_t``). For small
        inputs ``d^(-3/2)`` is coarse (1/8 for 4 features): use ``gamma < 1`` there.
    batch_size : int, default 128
    random_state : None, int or torch.Generator
        Seeds the noise starts and the probes.
    verbose : bool, default False

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        Queries spent on each sample by the last :meth:`generate`.

    References
    ----------
    Chen, Jordan and Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based
    Attack", IEEE S&P 2020. https://arxiv.org/abs/1904.02144

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.evasion.hop_skip_jump import HopSkipJump
    >>> w = np.array([1.0, -1.0, 0.5, 0.0], dtype=np.float32)
    >>> api = lambda x: (x @ w > 0.2).astype(int)  # labels only
    >>> clf = BlackBoxClassifier(api, input_shape=(4,), nb_classes=2, clip_values=(0, 1),
    ...                          labels_only=True)
    >>> x = np.array([[0.9, 0.1, 0.5, 0.5]], dtype=np.float32)  # w.x = 1.05, class 1
    >>> # gamma < 1: a finer binary search than theta = d^(-3/2) for this 4-feature input
    >>> attack = HopSkipJump(clf, max_queries=300, gamma=0.01, random_state=0)
    >>> x_adv = attack.generate(x)
    >>> int(api(x_adv)[0]), int(attack.queries_[0]) <= 300
    (0, True)
    >>> exact = (1.05 - 0.2) / np.linalg.norm(w)  # distance to the hyperplane
    >>> bool(np.linalg.norm(x_adv - x) < 1.05 * exact)
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "norm": [Options(["inf", float("inf"), 2])],
        "targeted": TARGETED,
        "max_queries": MAX_QUERIES,
        "max_iter": [Interval(int, 0, None), NONE],
        "init_num_evals": [Interval(int, 1, None)],
        "max_num_evals": [Interval(int, 1, None)],
        "init_size": [Interval(int, 1, None)],
        "gamma": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _conformance: ClassVar[dict[str, Any]] = {
        "params": {"max_queries": 300, "init_num_evals": 20},
        "skip": {
            "check_batch_size_invariance": (
                "the Monte-Carlo probes and noise starts are drawn for the whole batch at once, "
                "so another batch composition draws other probes"
            ),
        },
    }

    def __init__(
        self,
        estimator: Any,
        *,
        norm: Any = 2,
        targeted: bool = False,
        max_queries: int = 5000,
        max_iter: int | None = None,
        init_num_evals: int = 100,
        max_num_evals: int = 10000,
        init_size: int = 100,
        gamma: float = 1.0,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.norm = norm
        self.targeted = targeted
        self.max_queries = max_queries
        self.max_iter = max_iter
        self.init_num_evals = init_num_evals
        self.max_num_evals = max_num_evals
        self.init_size = init_size
        self.gamma = gamma
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = per_sample["index"]
        norm = canonical_norm(self.norm)
        linf = norm == "inf"
        d = x[0].numel()
        theta = self.gamma / (d**2 if linf else d**1.5)
        # Queries of one binary search (same count for both norms, see _bisect).
        bisect_cost = max(1, math.ceil(math.log2(1.0 / theta)))
        lo, hi = self._box(x)

        x_adv, found = self._starting_points(
            x, y, mask, generator, index, per_sample.get("x_init"), lo, hi
        )
        r = found.nonzero().squeeze(1)
        x_adv[r] = self._bisect(x[r], x_adv[r], y[r], index[r], linf=linf, theta=theta)
        dist = lp_norm(x_adv - x, norm)
        best, best_dist = x_adv.clone(), dist.clone()

        t = 0
        while self.max_iter is None or t < self.max_iter:
            t += 1
            # Probes this iteration: B_t, less what the step search and binary search need.
            wanted = min(int(self.init_num_evals * math.sqrt(t)), self.max_num_evals)
            n_evals = (self._counter.remaining(index) - bisect_cost - 1).clamp(max=wanted)
            # A sample at distance 0 (its clean input is already adversarial) is done.
            a = (found & (n_evals >= 1) & (dist > 0)).nonzero().squeeze(1)
            if a.numel() == 0:
                break
            xa, x0 = x_adv[a], x[a]
            if t == 1:
                delta = (hi[a] - lo[a]).reshape(-1) * 0.1
            else:
                delta = dist[a] * (d * theta if linf else math.sqrt(d) * theta)
                delta = delta.clamp_min(torch.finfo(x.dtype).tiny)
            grad = self._gradient_direction(
                xa, y[a], index[a], n_evals[a], delta, _rows(mask, a), lo[a], hi[a], generator, linf
            )
            update = grad.sign() if linf else grad
            # Geometric step-size search: halve until the step stays adversarial.
            xi = dist[a] / math.sqrt(t)
            pending = torch.ones_like(a, dtype=torch.bool)
            for _ in range(_MAX_HALVINGS):
                p = (pending & self._counter.has_budget(index[a])).nonzero().squeeze(1)
                if p.numel() == 0:
                    break
                cand = self._step(xa[p], update[p], xi[p], lo[a[p]], hi[a[p]])
                ok = self._decide(cand, y[a[p]], index[a[p]])
                pending[p[ok]] = False
                xi[p[~ok]] = xi[p[~ok]] / 2
            moved = (~pending).nonzero().squeeze(1)
            m = a[moved]
            far = self._step(xa[moved], update[moved], xi[moved], lo[m], hi[m])
            x_adv[m] = self._bisect(x0[moved], far, y[m], index[m], linf=linf, theta=theta)
            dist[m] = lp_norm(x_adv[m] - x[m], norm)
            better = m[dist[m] < best_dist[m]]
            best[better], best_dist[better] = x_adv[better], dist[better]
        return best, found

    @staticmethod
    def _step(
        x: torch.Tensor, v: torch.Tensor, xi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> torch.Tensor:
        return torch.minimum(torch.maximum(x + _view(xi, x) * v, lo), hi)

    def _gradient_direction(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor,
        n_evals: torch.Tensor,
        delta: torch.Tensor,
        mask: torch.Tensor | None,
        lo: torch.Tensor,
        hi: torch.Tensor,
        generator: torch.Generator,
        linf: bool,
    ) -> torch.Tensor:
        """Unit L2 estimate of the direction in which the decision turns adversarial, at the
        boundary points ``x`` (Monte Carlo with baseline, section 3.2 of the paper)."""
        m, shape = x.shape[0], x.shape[1:]
        owner = torch.repeat_interleave(torch.arange(m, device=x.device), n_evals)
        s_frv, s_rv = torch.zeros_like(x), torch.zeros_like(x)
        s_f = x.new_zeros(m)
        chunk = max(1, min(_PROBE_ROWS, _PROBE_ELEMENTS // max(1, x[0].numel())))
        for start in range(0, owner.numel(), chunk):
            o = owner[start : start + chunk]
            size = (o.numel(), *shape)
            if linf:
                u = torch.rand(size, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            else:
                u = torch.randn(size, generator=generator, device=x.device, dtype=x.dtype)
            mo = _rows(mask, o)
            if mo is not None:
                u = u * mo
            u = u / _view(lp_norm(u, "2").clamp_min(1e-12), u)
            xo, dl = x[o], _view(delta[o], u)
            probe = torch.minimum(torch.maximum(xo + dl * u, lo[o]), hi[o])
            rv = (probe - xo) / dl  # the probe direction actually taken, after clipping
            f = self._decide(probe, y[o], index[o]).to(x.dtype) * 2 - 1
            s_frv.index_add_(0, o, _view(f, rv) * rv)
            s_rv.index_add_(0, o, rv)
            s_f.index_add_(0, o, f)
        mean_f = _view(s_f / n_evals.to(x.dtype), x)
        # sum (f - mean f) rv; when every probe agrees the baseline would cancel everything,
        # so the paper uses +-mean rv.
        grad = torch.where(mean_f.abs() == 1, mean_f * s_rv, s_frv - mean_f * s_rv)
        return grad / _view(lp_norm(grad, "2").clamp_min(1e-12), grad)
