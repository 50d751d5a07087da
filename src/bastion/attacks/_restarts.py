"""Restarts that keep each sample's best: one combinator for every multi-start attack.

An attack with restarts (PGD, APGD, FAB, Square) writes one *run*: from a (random) start, on a
subset of the batch, it returns a candidate per sample, whether that candidate reached the goal,
and a score (lower is better). :func:`best_of_restarts` calls it again and again and keeps, per
sample, the best candidate so far:

* fixed-budget attacks (``minimum_norm=False``): a sample's first successful candidate, else
  its candidate of lowest score (the loss the attack minimises). A sample leaves once a run
  fools it, and the restarts stop as soon as every sample is fooled;
* minimum-norm attacks (``minimum_norm=True``): among the successful candidates, the one of
  smallest score (the perturbation's norm); earlier runs win ties. Every sample takes part in
  every run, because a sample already fooled may still find a smaller perturbation.

Randomness and batch composition. The combinator draws nothing: a run draws its random start
from the attack's generator. Run 0 draws for every sample of the batch (or every eligible one),
so it is exactly the single run with the same seed; run ``r`` draws only for the samples still
running after run ``r - 1``, in batch order. So the result of a sample depends on the seed, on
its position in its batch, and on which other samples of that batch are still running: the
same batch with the same seed gives the same result, a different ``batch_size`` may not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["Best", "Outcome", "best_of_restarts"]


class Outcome(NamedTuple):
    """What one run gives for the samples it ran on (rows in the order of its ``idx``)."""

    #: The candidate of each sample, ``(n, *shape)``.
    x: torch.Tensor
    #: Whether the candidate reached the goal (is adversarial), ``(n,)`` bool.
    success: torch.Tensor
    #: Lower is better: the loss the attack minimises, or the perturbation's norm.
    score: torch.Tensor


class Best(NamedTuple):
    """Each sample's best over the runs so far (all rows of the batch)."""

    x: torch.Tensor
    success: torch.Tensor
    score: torch.Tensor
    #: The run that gave the kept candidate, ``-1`` where none did (the sample's input kept).
    run: torch.Tensor


#: ``run(r, idx, best) -> Outcome``: run number ``r`` on the rows ``idx`` of the batch (None: all
#: rows), knowing each sample's best so far (FAB scales its random start by it).
Run = Callable[[int, torch.Tensor | None, Best], Outcome]


def best_of_restarts(
    run: Run,
    x: torch.Tensor,
    n_runs: int,
    *,
    minimum_norm: bool = False,
    eligible: Callable[[], torch.Tensor] | None = None,
) -> Best:
    """Run an attack ``n_runs`` times and keep each sample's best candidate.

    Parameters
    ----------
    run : callable ``(r, idx, best) -> Outcome``
        Run number ``r`` (0, 1, ...) on the rows ``idx`` of ``x`` (a long tensor, or None for
        all rows); ``best`` is the state before the run.
    x : torch.Tensor, shape (B, ...)
        The clean batch: kept for a sample that no run improves on (in particular one that
        never runs).
    n_runs : int >= 1
    minimum_norm : bool, default False
        False: keep a sample's first success, else its lowest score, and rerun only samples not
        yet successful. True: keep the success of lowest score (norm), and rerun every sample.
    eligible : callable returning a ``(B,)`` bool tensor, optional
        Which samples may run at all, asked before each run (for example: those with queries
        left); all when omitted.

    Returns
    -------
    Best
        ``x``, ``success``, ``score`` and ``run`` per sample (score ``+inf`` where no run
        counted: a failure of a minimum-norm attack, or a sample that never ran).
    """
    if n_runs < 1:
        raise ValueError(f"n_runs must be at least 1, got {n_runs}")
    n = x.shape[0]
    best = Best(
        x.clone(),
        torch.zeros(n, dtype=torch.bool, device=x.device),
        torch.full((n,), torch.inf, dtype=x.dtype, device=x.device),
        torch.full((n,), -1, dtype=torch.long, device=x.device),
    )
    for r in range(n_runs):
        todo = torch.ones(n, dtype=torch.bool, device=x.device)
        if r > 0 and not minimum_norm:
            todo = ~best.success
        if eligible is not None:
            todo = todo & eligible()
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        if n_runs == 1 and idx.numel() == n:
            out = run(0, None, best)
            return Best(out.x, out.success, out.score, torch.zeros_like(best.run))
        out = run(r, None if idx.numel() == n else idx, best)
        if minimum_norm:
            better = out.success & (out.score < best.score[idx])
        elif r == 0:
            # The first run is the single run: its candidates are taken as they are.
            better = torch.ones_like(out.success)
        else:
            # Only samples not yet successful ran: a success, or a lower loss, replaces.
            better = out.success | (out.score < best.score[idx])
        keep = idx[better]
        best.x[keep] = out.x[better]
        best.success[keep] = out.success[better]
        best.score[keep] = out.score[better]
        best.run[keep] = r
    return best
