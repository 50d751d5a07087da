"""Searches for the decision boundary, written once for every decision-based attack.

* :func:`bisect`: per-sample bisection of a scalar parameter between a point that is not
  adversarial and one that is (along a segment, a ray, or a family of boxes);
* :func:`first_adversarial`: per-sample search for a starting point among proposals.

Both take the model's decisions as a callback, so they know nothing about query accounting:
the attack passes its own decision function (which charges each query to its sample) and a
``may_query`` mask of the samples that can still pay for one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["bisect", "first_adversarial"]

#: ``adversarial(t, rows)``: the decisions for the points at parameters ``t`` of samples ``rows``.
Decisions = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bisect(
    adversarial: Decisions,
    low: torch.Tensor,
    high: torch.Tensor,
    tol: torch.Tensor | float,
    *,
    may_query: Callable[[], torch.Tensor],
    relative: bool = False,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bisection to the decision boundary, each sample on its own.

    For each sample the point at parameter ``low`` is not adversarial and the one at ``high``
    is; each step queries the midpoint and keeps the half whose ends still disagree, so
    ``high`` always names a point the model found adversarial (or the given one).

    Parameters
    ----------
    adversarial : callable ``(t, rows) -> bool tensor``
        Queries the points at parameters ``t`` (one per row) of samples ``rows``.
    low, high : torch.Tensor, shape (B,)
        The brackets (not modified).
    tol : float or torch.Tensor of shape (B,)
        A sample stops when ``(high - low) * scale <= tol`` (``tol * high`` when ``relative``).
    may_query : callable ``() -> bool tensor (B,)``
        Which samples may still spend a query (evaluated before every step).
    relative : bool, default False
        Precision relative to ``high``.
    scale : torch.Tensor of shape (B,), optional
        Length of a unit of ``t`` (e.g. the norm of a ray's direction).

    Returns
    -------
    high : torch.Tensor, shape (B,)
        The adversarial end of each final bracket.
    """
    low, high = low.clone(), high.clone()
    while True:
        gap = high - low if scale is None else (high - low) * scale
        pending = (gap > (tol * high if relative else tol)) & may_query()
        rows = pending.nonzero().squeeze(1)
        if rows.numel() == 0:
            return high
        mid = (high[rows] + low[rows]) / 2
        adv = adversarial(mid, rows)
        high[rows] = torch.where(adv, mid, high[rows])
        low[rows] = torch.where(adv, low[rows], mid)


def first_adversarial(
    propose: Callable[[int, torch.Tensor], torch.Tensor],
    adversarial: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tries: int,
    start: torch.Tensor,
    found: torch.Tensor,
    *,
    may_query: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first adversarial one of up to ``tries`` proposals, per sample.

    Parameters
    ----------
    propose : callable ``(k, rows) -> points``
        The ``k``-th proposals (``k = 0 .. tries - 1``) for the samples ``rows`` that still
        search, one point each.
    adversarial : callable ``(points, rows) -> bool tensor``
        One query per point, charged to its sample.
    tries : int
    start, found : torch.Tensor
        Starting points ``(B, ...)`` and whether each is adversarial already; updated in place.
    may_query : callable ``() -> bool tensor (B,)``

    Returns
    -------
    start, found
    """
    for k in range(tries):
        rows = (~found & may_query()).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        cand = propose(k, rows)
        ok = adversarial(cand, rows)
        start[rows[ok]] = cand[ok]
        found[rows[ok]] = True
    return start, found
