"""HopSkipJump (Chen, Jordan and Wainwright): decision-based minimal perturbations from labels
only, by gradient-direction estimates at the decision boundary."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from bastion._validation import (
    BATCH_SIZE,
    MAX_QUERIES,
    NONE,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
    Options,
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import canonical_norm, lp_norm
from bastion.attacks.decision import DecisionBasedAttack
from bastion.estimators.base import SupportsPredict

__all__ = ["HopSkipJump"]

#: Most input elements in one tensor of probes (64 MiB in float32): larger sets are queried in
#: several calls.
_PROBE_ELEMENTS = 1 << 24
#: Most probes per query call: forward passes cost more per image in very large batches.
_PROBE_ROWS = 256
#: Halvings of the HopSkipJump step before a sample gives up on the iteration.
_MAX_HALVINGS = 40


class HopSkipJump(DecisionBasedAttack):
    """HopSkipJump: the smallest adversarial perturbation found from the model's labels alone.

    Starting from an adversarial point (``x_init`` or uniform noise), each iteration ``t``:

    1. *binary search* between the clean input ``x`` and the current point, back to the
       decision boundary, to precision ``theta = gamma / d^(3/2)`` (L2, on the segment) or
       ``theta = gamma / d^2`` (Linf, on the boxes ``clip(x_t, x - a, x + a)``), ``d`` the
       input dimension;
    2. *gradient-direction estimate* at the boundary point from ``B_t = nb_init_evals *
       sqrt(t)`` (at most ``max_nb_evals``) random unit probes ``u_b`` at radius
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
    given class. Samples without a starting point are returned unchanged, and a
    ``RuntimeWarning`` says how many and why (every draw kept the label, or the budget ran
    out first); so does a budget too small for one iteration. The starting points and the
    binary search are the :class:`~bastion.attacks.decision.DecisionBasedAttack` template's.

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
    nb_init_evals : int, default 100
        ``B_0``, probes of the first gradient estimate.
    max_nb_evals : int, default 10000
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
    success_ : numpy.ndarray of bool, shape (N,)
        Which samples were broken (a query found the returned point adversarial); the others
        are returned unchanged.

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

    _renamed: ClassVar[dict[str, Any]] = {
        "init_num_evals": "nb_init_evals",
        "max_num_evals": "max_nb_evals",
    }
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "norm": [Options(["inf", float("inf"), 2])],
        "targeted": TARGETED,
        "max_queries": MAX_QUERIES,
        "max_iter": [Interval(int, 0, None), NONE],
        "nb_init_evals": [Interval(int, 1, None)],
        "max_nb_evals": [Interval(int, 1, None)],
        "init_size": [Interval(int, 1, None)],
        "gamma": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        norm: Any = 2,
        targeted: bool = False,
        max_queries: int = 5000,
        max_iter: int | None = None,
        nb_init_evals: int = 100,
        max_nb_evals: int = 10000,
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
        self.nb_init_evals = nb_init_evals
        self.max_nb_evals = max_nb_evals
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
        x_adv, found, lo, hi, spent = self._start_on_boundary(
            x, y, mask, generator, per_sample, linf=linf, theta=theta
        )
        # What one iteration needs, after the starting point and its binary search.
        needed = spent + 2 * bisect_cost + 2
        dist = lp_norm(x_adv - x, norm)
        best, best_dist = x_adv.clone(), dist.clone()

        t = 0
        while self.max_iter is None or t < self.max_iter:
            t += 1
            # Probes this iteration: B_t, less what the step search and binary search need.
            wanted = min(int(self.nb_init_evals * math.sqrt(t)), self.max_nb_evals)
            n_evals = (self._counter.remaining(index) - bisect_cost - 1).clamp(max=wanted)
            # A sample at distance 0 (its clean input is already adversarial) is done.
            live = found & (dist > 0)
            if t == 1:
                self._note_short_budget(
                    live & (n_evals < 1),
                    needed,
                    f"one iteration (a binary search of {bisect_cost} queries, a probe and a step)",
                    "they keep their starting point, moved to the boundary",
                )
            a = (live & (n_evals >= 1)).nonzero().squeeze(1)
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
