"""Iteration machinery shared by the optimisation-based attacks and defences, written once.

* :func:`adam_step`: one step of Adam (Kingma and Ba, 2015) that is elementwise, so each
  sample, class or coordinate of a batch is optimised independently and may have its own step
  count (CW, EAD, ZOO, the adversarial patch, Neural Cleanse's trigger search).
* :class:`EarlyAbort`: the per-sample early abort of Carlini and Wagner's optimisations (CW-L2,
  CW-Linf, EAD, ZOO): a sample stops once its objective stalls.
* :class:`ConstSearch`: the per-sample binary search on the constant ``c`` that weighs the
  misclassification term against the distance (CW-L2, EAD, ZOO).
* :func:`const_search_runs`: the outer loops of CW-L2 and EAD: runs of steps at the constants
  of a :class:`ConstSearch`, each sample leaving a run on its own once its objective stalls.
* :func:`keep_best`: per sample, keep a point that is adversarial and closer than the best.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ConstSearch", "EarlyAbort", "adam_step", "const_search_runs", "keep_best"]


def adam_step(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    t: Any,
    lr: Any,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam descent step on ``p`` with gradient ``g``; returns ``(p, m, v)``.

    Elementwise, so every row of a batch is optimised independently. ``t`` (the step number,
    starting at 1) and ``lr`` are numbers or tensors broadcastable to ``p`` (one step count per
    sample, class or coordinate). ``m`` and ``v`` are not modified in place.

    Kingma and Ba, "Adam: a method for stochastic optimization", ICLR 2015.
    https://arxiv.org/abs/1412.6980
    """
    b1, b2 = betas
    m = m.mul(b1).add_(g, alpha=1 - b1)
    v = v.mul(b2).addcmul_(g, g, value=1 - b2)
    if isinstance(t, torch.Tensor):
        m_hat = m / (1 - torch.pow(b1, t))
        v_hat = v / (1 - torch.pow(b2, t))
    else:
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


class EarlyAbort:
    """Per-sample early abort of an iterative minimisation (Carlini and Wagner, 2017).

    Every ``every`` steps of a sample its objective is checked against the value recorded at the
    sample's previous check: a check that fails to lower it by the relative tolerance ``rtol``
    (``value > prev - rtol * |prev|``) is a strike, a check that lowers it clears the strikes,
    and the sample stops after ``patience`` strikes in a row. The value checked is the
    objective at that step, or with ``window=True`` its smallest value over the ``every`` steps
    since the previous check (robust to non-monotone iterates: Adam, FISTA). Carlini and
    Wagner's code checks single values with a patience of 1, for the whole batch at once; here
    each sample is judged on its own, so results do not depend on the batch.

    Parameters
    ----------
    n : int
        Samples tracked (indexed ``0 .. n-1``).
    every : int
        Steps between two checks of a sample.
    patience : int, default 1
        Failed checks in a row that stop a sample.
    window : bool, default False
        Check the best value since the previous check rather than the current one.
    rtol : float, default 1e-4
        Relative improvement a check must show (0.01%, as in the paper's code).
    device, dtype
        Of the objective values.

    References
    ----------
    Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    https://arxiv.org/abs/1608.04644

    Examples
    --------
    >>> import torch
    >>> abort = EarlyAbort(2, every=2)
    >>> idx = torch.arange(2)
    >>> for step, loss in enumerate([[4.0, 4.0], [3.0, 3.0], [2.0, 3.0], [1.0, 3.0]], 1):
    ...     stop = abort.update(idx, torch.tensor(loss), step)
    >>> stop.tolist()  # the second sample did not improve between its checks at steps 2 and 4
    [False, True]
    """

    def __init__(
        self,
        n: int,
        *,
        every: int,
        patience: int = 1,
        window: bool = False,
        rtol: float = 1e-4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.every, self.patience, self.window, self.rtol = int(every), patience, window, rtol
        self.prev = torch.full((n,), math.inf, device=device, dtype=dtype)
        self.best = torch.full_like(self.prev, math.inf) if window else None
        self.strikes = torch.zeros(n, dtype=torch.long, device=self.prev.device)

    def reset(self, idx: torch.Tensor) -> None:
        """Forget the history of samples ``idx`` (they start a new run)."""
        self.prev[idx] = math.inf
        self.strikes[idx] = 0
        if self.best is not None:
            self.best[idx] = math.inf

    def update(self, idx: torch.Tensor, value: torch.Tensor, done: int | torch.Tensor) -> Any:
        """Record ``value``, the objective of samples ``idx`` after their ``done``-th step (an
        int shared by all, or one per sample); return a boolean tensor over ``idx``, True for
        the samples that stop now."""
        if self.best is not None:
            value = torch.minimum(self.best[idx], value)
            self.best[idx] = value
        if not isinstance(done, torch.Tensor):
            if done % self.every:
                return torch.zeros(idx.shape, dtype=torch.bool, device=idx.device)
            check: Any = True
        else:
            check = done % self.every == 0
        prev = self.prev[idx]
        # prev = inf at a sample's first check: inf - inf is NaN and the comparison is False.
        stalled = value > prev - self.rtol * prev.abs()
        strikes = torch.where(stalled, self.strikes[idx] + 1, 0)
        if check is True:
            self.strikes[idx] = strikes
            self.prev[idx] = value
            if self.best is not None:
                self.best[idx] = math.inf
            return strikes >= self.patience
        strikes = torch.where(check, strikes, self.strikes[idx])
        self.strikes[idx] = strikes
        self.prev[idx] = torch.where(check, value, prev)
        if self.best is not None:
            self.best[idx] = torch.where(check, math.inf, value)
        return check & (strikes >= self.patience)


class ConstSearch:
    """Per-sample binary search on the constant ``c`` of Carlini and Wagner's objective
    ``distance + c * f(x_adv)`` (2017, Section V; also EAD and ZOO).

    Each sample starts at ``initial``. After a run that found an adversarial example ``c``
    becomes the upper bound and is bisected towards the largest value that failed (towards 0
    before any failure); after a failed run it becomes the lower bound and is multiplied by
    ``growth`` while no value has succeeded, else bisected towards the smallest that did.

    Parameters
    ----------
    initial : float
        First value of ``c``.
    n : int
        Samples.
    growth : float, default 10.0
        Factor applied after a failure while no value has succeeded (10 in the papers' code).
    device, dtype
        Of the constants.

    Examples
    --------
    >>> import torch
    >>> search = ConstSearch(1.0, 1)
    >>> [round(float(search.update(torch.tensor([found]))[0]), 4)
    ...  for found in (False, True, False, True)]
    [10.0, 5.5, 7.75, 6.625]
    """

    def __init__(
        self,
        initial: float,
        n: int,
        *,
        growth: float = 10.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.growth = growth
        self.const = torch.full((n,), float(initial), device=device, dtype=dtype)
        self.lower = torch.zeros_like(self.const)
        self.upper = torch.full_like(self.const, math.inf)

    def update(self, found: torch.Tensor) -> torch.Tensor:
        """The next constants, given which samples' runs found an adversarial example."""
        self.upper = torch.where(found, torch.minimum(self.upper, self.const), self.upper)
        self.lower = torch.where(found, self.lower, torch.maximum(self.lower, self.const))
        bisect = (self.lower + self.upper) / 2
        self.const = torch.where(self.upper.isfinite(), bisect, self.const * self.growth)
        return self.const


def const_search_runs(
    step: Callable[[int, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    search: ConstSearch,
    runs: int,
    max_iter: int,
    abort_early: bool,
) -> None:
    """Carlini and Wagner's outer loops around any per-sample minimisation (CW-L2, EAD).

    ``runs`` runs of at most ``max_iter`` steps; after each, ``search`` updates every sample's
    constant from whether the run found an adversarial example for it. ``step(run, it, idx)``
    advances the samples ``idx`` (those still running, in order) by one step at the constants
    ``search.const[idx]`` and returns, for them, the objective at the point it scored and
    whether that point was adversarial (and counts as the run's success). With ``abort_early``
    a sample leaves the run once its objective stalls (:class:`EarlyAbort`: the best value over
    windows of ``max_iter // 10`` steps, patience 2) and the others go on in a smaller batch.
    """
    n = search.const.shape[0]
    everyone = torch.arange(n, device=search.const.device)
    for run in range(runs):
        found = torch.zeros(n, dtype=torch.bool, device=everyone.device)
        abort = EarlyAbort(
            n, every=max(1, max_iter // 10), patience=2, window=True,
            device=everyone.device, dtype=search.const.dtype,
        )  # fmt: skip
        idx = everyone
        for it in range(max_iter):
            value, success = step(run, it, idx)
            found[idx[success]] = True
            if abort_early:
                idx = idx[~abort.update(idx, value, it + 1)]
                if idx.numel() == 0:
                    break
        search.update(found)


def keep_best(
    best: torch.Tensor,
    best_dist: torch.Tensor,
    idx: torch.Tensor,
    point: torch.Tensor,
    dist: torch.Tensor,
    adversarial: torch.Tensor,
) -> None:
    """Where ``point`` (the rows of samples ``idx``) is adversarial and closer than the best so
    far, make it the sample's best: ``best`` and ``best_dist`` are updated in place."""
    better = adversarial & (dist < best_dist[idx])
    best_dist[idx[better]] = dist[better]
    best[idx[better]] = point[better]
