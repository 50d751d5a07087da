"""Per-sample query accounting for black-box (score- and decision-based) attacks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bastion.attacks._lp import lp_norm
from bastion.estimators.base import SupportsPredict

__all__ = ["QueryCounter"]


class QueryCounter:
    """Counts the model queries spent on each sample and refuses to exceed ``max_queries``.

    Every query an attack makes goes through :meth:`predict`, which forwards to the estimator's
    ``predict_tensor`` (so the estimator's own ``query_count`` grows by the same amount) and adds
    one query to each sample that a row of the batch belongs to, once the estimator has answered
    (a call that fails charges nothing, so ``used`` always equals the answered queries). Asking
    for a query beyond the budget, or sending a NaN or infinite row, is a bug in the attack and
    raises ``RuntimeError`` before anything is sent; attacks consult :meth:`remaining` /
    :meth:`has_budget` to decide which samples may still query.

    While :meth:`watch` is set, the counter also records the closest point that an answered
    query found adversarial for each watched sample: what an attack interrupted by a failing
    model has found so far.

    Parameters
    ----------
    estimator : Classifier
        The attacked model.
    max_queries : int
        Budget per sample.
    n : int
        Number of samples attacked in this ``generate`` call.
    device : torch.device
        Where the counts live.
    initial : int
        Queries already spent per sample.
    """

    #: Rows per call to the estimator when the queries are computed on the CPU. Forward passes
    #: cost more per image in large batches there (the activation buffers leave the caches and,
    #: past glibc's mmap threshold, are page-faulted in again at every call): on the digits CNN
    #: with channels-last weights, HopSkipJump ran 2.0 s with 64 rows against 3.1 s with 256 in
    #: a warmed-up process (equal, 3.0-3.5 s, in a fresh one).
    chunk_size: int = 64
    #: Rows per call on an accelerator, where large batches are what make it fast.
    device_chunk_size: int = 4096

    def __init__(
        self,
        estimator: SupportsPredict,
        max_queries: int,
        n: int,
        device: torch.device,
        initial: int = 0,
    ) -> None:
        self.estimator = estimator
        self.max_queries = int(max_queries)
        self.used = torch.full((n,), int(initial), dtype=torch.long, device=device)
        self._watch: _Watch | None = None

    def remaining(self, index: torch.Tensor) -> torch.Tensor:
        """Queries left for the samples ``index`` (global sample indices)."""
        return self.max_queries - self.used[index]

    def has_budget(self, index: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Boolean mask: may each sample in ``index`` spend ``k`` more queries?"""
        return self.used[index] + k <= self.max_queries

    def predict(
        self, x: torch.Tensor, index: torch.Tensor, *, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Probabilities for ``x``; row ``i`` is charged to sample ``index[i]`` once answered.

        ``chunk_size`` overrides the rows per estimator call (:attr:`chunk_size` on the CPU,
        :attr:`device_chunk_size` elsewhere).
        """
        if x.shape[0] == 0:
            return x.new_zeros((0, self.estimator.nb_classes))
        counts = torch.bincount(index, minlength=self.used.shape[0])
        if bool((self.used + counts > self.max_queries).any()):
            raise RuntimeError(
                "internal error: an attack asked for queries beyond max_queries "
                f"({self.max_queries}); please report it."
            )
        if not bool(torch.isfinite(x).all()):
            # Never show the model garbage: a paid or rate-limited endpoint would charge it.
            raise RuntimeError(
                "internal error: an attack built a query with NaN or infinite values; nothing "
                "was sent to the model. Please report it."
            )
        step = chunk_size or (self.chunk_size if x.device.type == "cpu" else self.device_chunk_size)
        parts: list[torch.Tensor] = []
        try:
            with torch.no_grad():
                for i in range(0, x.shape[0], step):
                    parts.append(self.estimator.predict_tensor(x[i : i + step]))
                    self.used += torch.bincount(index[i : i + step], minlength=self.used.shape[0])
        finally:
            # What was answered is recorded even when a later chunk fails (once per call:
            # the record costs a few small tensor operations).
            if self._watch is not None and parts:
                answered = sum(p.shape[0] for p in parts)
                probs = parts[0] if len(parts) == 1 else torch.cat(parts)
                self._watch.record(x[:answered], index[:answered], probs)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def labels(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Predicted labels for ``x`` (one query per row), for decision-based attacks."""
        return self.predict(x, index).argmax(dim=1)

    def watch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        first: int,
        *,
        adversarial: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        norm: str,
        radius: torch.Tensor | None = None,
    ) -> None:
        """Record the closest adversarial point answered for samples ``first .. first + len(x)``.

        ``x`` and ``y`` are those samples' clean inputs and labels; ``adversarial(probs, y)``
        is the attack's test of success; distances are measured in ``norm``. With ``radius``
        (one budget per sample, any shape with ``len(x)`` elements) only points within it
        count, so that a fixed-budget attack's probes outside its ball are never kept.
        """
        self._watch = _Watch(x, y, first, adversarial, norm, radius)

    def unwatch(self) -> None:
        """Stop recording (and let go of the watched samples)."""
        self._watch = None

    def watched(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(best, found)`` for the watched samples: the closest adversarial point answered
        (the clean input where none was) and whether one was."""
        if self._watch is None:
            raise RuntimeError("internal error: no samples are watched")
        return self._watch.best, torch.isfinite(self._watch.dist)


class _Watch:
    """The closest answered adversarial point of each sample of one batch.

    Each answered call costs only the test of success and a copy of its adversarial rows; the
    rows are reduced to each sample's closest in bulk, when ``_PENDING`` elements have piled
    up or the result is asked for.
    """

    #: Input elements of adversarial rows kept before they are reduced (64 MiB in float32).
    _PENDING = 1 << 24

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        first: int,
        adversarial: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        norm: str,
        radius: torch.Tensor | None,
    ) -> None:
        self.x, self.y, self.first = x, y, first
        self.adversarial, self.norm = adversarial, norm
        self.radius = None if radius is None else radius.reshape(-1)
        self._best = x.clone()
        self._dist = torch.full((x.shape[0],), torch.inf, dtype=x.dtype, device=x.device)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_size = 0

    @property
    def best(self) -> torch.Tensor:
        self._reduce()
        return self._best

    @property
    def dist(self) -> torch.Tensor:
        self._reduce()
        return self._dist

    def record(self, rows: torch.Tensor, owner: torch.Tensor, probs: torch.Tensor) -> None:
        local = owner - self.first
        hit = self.adversarial(probs, self.y[local])
        if not bool(hit.any()):
            return
        kept = rows[hit]  # a copy: the attack may reuse the buffer it queried
        self._pending.append((kept, local[hit]))
        self._pending_size += kept.numel()
        if self._pending_size >= self._PENDING:
            self._reduce()

    def _reduce(self) -> None:
        if not self._pending:
            return
        rows = torch.cat([r for r, _ in self._pending])
        local = torch.cat([i for _, i in self._pending])
        self._pending, self._pending_size = [], 0
        d = lp_norm(rows - self.x[local], self.norm).to(self._dist.dtype)
        if self.radius is not None:
            d = torch.where(d <= self.radius[local], d, torch.inf)
        closest = torch.full_like(self._dist, torch.inf).scatter_reduce_(0, local, d, "amin")
        better = closest < self._dist
        if not bool(better.any()):
            return
        # One row per sample, deterministically: the closest, the first answered of equals.
        pos = torch.arange(d.shape[0], device=d.device)
        key = torch.where((d == closest[local]) & better[local], pos, d.shape[0])
        first = torch.full_like(self._dist, d.shape[0], dtype=pos.dtype)
        first = first.scatter_reduce_(0, local, key, "amin")
        s = better.nonzero().squeeze(1)
        self._best[s] = rows[first[s]]
        self._dist[s] = closest[s]
