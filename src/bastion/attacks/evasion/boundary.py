"""Boundary attack (Brendel, Rauber and Bethge): a decision-based random walk along the
decision boundary towards the clean input."""

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
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import lp_norm
from bastion.attacks.decision import DecisionBasedAttack
from bastion.estimators.base import SupportsPredict

__all__ = ["BoundaryAttack"]

#: Statistics windows: the last 30 candidates, the last 10 orthogonal probes (one every
#: ``update_stats_every`` steps, so about the last 100 steps with the default).
_STEP_WINDOW = 30
_SPHERICAL_WINDOW = 10
#: Precision of the bisection along the blend between ``x`` and the starting point.
_BLEND_TOL = 1e-3


class BoundaryAttack(DecisionBasedAttack):
    """Boundary attack: a rejection-sampling walk that stays adversarial and moves closer to
    the clean input, from the model's labels alone.

    From an adversarial starting point ``x_adv`` (``x_init``, or the first adversarial of
    ``init_size`` uniform-noise draws, blended towards ``x`` by bisection), each step draws a
    candidate in two moves (section 3.2 of the paper), with ``r = ||x_adv - x||_2``:

    1. an *orthogonal step*: a Gaussian direction, made orthogonal to ``x - x_adv`` and scaled
       to length ``delta * r``, then projected back onto the sphere of radius ``r`` around
       ``x`` (clipped to ``clip_values``);
    2. a *step towards the original*: shrink the distance to ``x`` by ``epsilon * r``.

    The candidate (one query) replaces ``x_adv`` if it is adversarial and closer. Each sample
    adapts its own ``delta`` (``spherical_step``) and ``epsilon`` (``source_step``) to the
    local geometry of the boundary (section 3.4), with the thresholds of the authors'
    reference implementation: every ``update_stats_every`` steps the orthogonal step alone is
    also queried; when more than 50% of the last such probes were adversarial, both steps grow
    by ``step_adaptation``, below 20% both shrink; when more than 25% of the last 30
    candidates were adversarial, ``epsilon`` grows, below 10% it shrinks. A sample stops when
    ``epsilon < source_step_convergence``, when its budget is spent, or after ``max_iter``
    steps.

    All samples of a batch advance together, their candidates in one call. The result is the
    last accepted candidate, the closest found; every returned point was found adversarial
    by a query, so no query is spent to check it. Samples without a starting point are
    returned unchanged, and a ``RuntimeWarning`` says how many and why. A targeted attack
    should pass ``x_init`` (images of the target classes): noise is rarely classified as a
    given class. The starting points and the bisection are the
    :class:`~bastion.attacks.decision.DecisionBasedAttack` template's.

    Threat model: decision-based black-box (labels only), untargeted or targeted. Norm: 2.
    The random draws depend on the batch composition, so results depend on ``batch_size``.

    Parameters
    ----------
    estimator : estimator with ``predict`` (labels suffice)
    targeted : bool, default False
    max_queries : int, default 5000
        Queries per sample, every query included.
    max_iter : int or None, default None
        Maximum number of steps; None: until the budget is spent or the steps converge.
    spherical_step : float, default 0.01
        Initial relative length ``delta`` of the orthogonal step.
    source_step : float, default 0.01
        Initial relative length ``epsilon`` of the step towards the original.
    source_step_convergence : float, default 1e-7
        A sample stops when its ``epsilon`` falls below this.
    step_adaptation : float > 1, default 1.5
        Factor by which the step sizes grow or shrink.
    update_stats_every : int, default 10
        Every this many steps the orthogonal step alone is probed (one more query) and the
        step sizes are adapted.
    init_size : int, default 100
        Most uniform-noise draws per sample to find a starting point.
    batch_size : int, default 128
    random_state : None, int or torch.Generator
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
    Brendel, Rauber and Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against
    Black-Box Machine Learning Models", ICLR 2018. https://arxiv.org/abs/1712.04248

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.evasion.boundary import BoundaryAttack
    >>> w = np.array([1.0, -1.0, 0.5, 0.0], dtype=np.float32)
    >>> api = lambda x: (x @ w > 0.2).astype(int)  # labels only
    >>> clf = BlackBoxClassifier(api, input_shape=(4,), nb_classes=2, clip_values=(0, 1),
    ...                          labels_only=True)
    >>> x = np.array([[0.9, 0.1, 0.5, 0.5]], dtype=np.float32)  # w.x = 1.05, class 1
    >>> attack = BoundaryAttack(clf, max_queries=500, random_state=0)
    >>> x_adv = attack.generate(x)
    >>> int(api(x_adv)[0]), int(attack.queries_[0]) <= 500
    (0, True)
    >>> exact = (1.05 - 0.2) / np.linalg.norm(w)  # distance to the hyperplane
    >>> bool(np.linalg.norm(x_adv - x) < 1.2 * exact)
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "targeted": TARGETED,
        "max_queries": MAX_QUERIES,
        "max_iter": [Interval(int, 0, None), NONE],
        "spherical_step": [Interval(float, 0, None, closed="neither")],
        "source_step": [Interval(float, 0, 1, closed="neither")],
        "source_step_convergence": [Interval(float, 0, None, closed="neither")],
        "step_adaptation": [Interval(float, 1, None, closed="neither")],
        "update_stats_every": [Interval(int, 1, None)],
        "init_size": [Interval(int, 1, None)],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    norm = 2  # not a parameter: the attack is defined in L2

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        targeted: bool = False,
        max_queries: int = 5000,
        max_iter: int | None = None,
        spherical_step: float = 0.01,
        source_step: float = 0.01,
        source_step_convergence: float = 1e-7,
        step_adaptation: float = 1.5,
        update_stats_every: int = 10,
        init_size: int = 100,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.targeted = targeted
        self.max_queries = max_queries
        self.max_iter = max_iter
        self.spherical_step = spherical_step
        self.source_step = source_step
        self.source_step_convergence = source_step_convergence
        self.step_adaptation = step_adaptation
        self.update_stats_every = update_stats_every
        self.init_size = init_size
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
        x_adv, found, lo, hi, spent = self._start_on_boundary(
            x, y, mask, generator, per_sample, linf=False, theta=_BLEND_TOL
        )
        # What one step needs, after the starting point and the blend's bisection.
        needed = spent + math.ceil(math.log2(1 / _BLEND_TOL)) + 1

        b, dev = x.shape[0], x.device
        sph = x.new_full((b,), float(self.spherical_step))
        src = x.new_full((b,), float(self.source_step))
        step_hits = torch.zeros(b, _STEP_WINDOW, dtype=torch.bool, device=dev)
        step_seen = torch.zeros(b, dtype=torch.long, device=dev)
        sph_hits = torch.zeros(b, _SPHERICAL_WINDOW, dtype=torch.bool, device=dev)
        sph_seen = torch.zeros(b, dtype=torch.long, device=dev)
        up, down = float(self.step_adaptation), 1.0 / float(self.step_adaptation)

        step = 0
        while self.max_iter is None or step < self.max_iter:
            step += 1
            dist = lp_norm(x_adv - x, "2")
            live = found & (src >= self.source_step_convergence) & (dist > 0)
            if step == 1:
                self._note_short_budget(
                    live & ~self._counter.has_budget(index),
                    needed,
                    "one step of the walk (1 query)",
                    "they keep their starting point, moved towards the input by bisection",
                )
            a = (live & self._counter.has_budget(index)).nonzero().squeeze(1)
            if a.numel() == 0:
                break
            cand, spherical = self._proposals(
                x[a], x_adv[a], dist[a], sph[a], src[a], _rows(mask, a), lo[a], hi[a], generator
            )
            # The orthogonal step alone is probed every update_stats_every steps (budget
            # permitting), in the same call as the candidates.
            check = step % self.update_stats_every == 0
            probe = check & self._counter.has_budget(index[a], 2)
            p = probe.nonzero().squeeze(1)
            rows = torch.cat([cand, spherical[p]])
            owners = torch.cat([a, a[p]])
            adv = self._decide(rows, y[owners], index[owners])
            cand_adv, sph_adv = adv[: a.numel()], adv[a.numel() :]
            closer = lp_norm(cand - x[a], "2") < dist[a]
            accept = a[cand_adv & closer]
            x_adv[accept] = cand[cand_adv & closer]

            # Success statistics of the candidates (every step, free) ...
            step_hits[a, step_seen[a] % _STEP_WINDOW] = cand_adv
            step_seen[a] += 1
            if not check:
                continue
            # ... and of the orthogonal steps; adapt where a window is full.
            ap = a[p]
            sph_hits[ap, sph_seen[ap] % _SPHERICAL_WINDOW] = sph_adv
            sph_seen[ap] += 1
            full = sph_seen >= _SPHERICAL_WINDOW
            rate = sph_hits.to(x.dtype).mean(1)
            grow, shrink = full & (rate > 0.5), full & (rate < 0.2)
            factor = torch.where(grow, up, torch.where(shrink, down, 1.0))
            sph, src = sph * factor, src * factor
            sph_seen[grow | shrink] = 0
            full = step_seen >= _STEP_WINDOW
            rate = step_hits.to(x.dtype).mean(1)
            grow, shrink = full & (rate > 0.25), full & (rate < 0.1)
            src = src * torch.where(grow, up, torch.where(shrink, down, 1.0))
            step_seen[grow | shrink] = 0
        return x_adv, found

    @staticmethod
    def _proposals(
        x: torch.Tensor,
        x_adv: torch.Tensor,
        dist: torch.Tensor,
        sph: torch.Tensor,
        src: torch.Tensor,
        mask: torch.Tensor | None,
        lo: torch.Tensor,
        hi: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates and their orthogonal steps alone (section 3.2 of the paper)."""
        to_x = x - x_adv
        unit = to_x / _view(dist, x)
        eta = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if mask is not None:
            eta = eta * mask  # x - x_adv lies in the mask's subspace too
        eta = eta - _view((eta * unit).flatten(1).sum(1), x) * unit
        eta = eta * _view(sph * dist / lp_norm(eta, "2").clamp_min(1e-12), x)
        # Back onto the sphere of radius dist around x (Pythagoras), inside the box.
        spherical = x + (eta - to_x) / _view(torch.sqrt(sph**2 + 1), x)
        spherical = torch.minimum(torch.maximum(spherical, lo), hi)
        # Towards x by src * dist, corrected for the clipping's change of radius.
        back = x - spherical
        back_norm = lp_norm(back, "2").clamp_min(1e-12)
        length = (src * dist + back_norm - dist).clamp_min(0) / back_norm
        cand = torch.minimum(torch.maximum(spherical + _view(length, x) * back, lo), hi)
        return cand, spherical
