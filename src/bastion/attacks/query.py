"""The template of black-box (query) attacks.

:class:`QueryAttack` combines with :class:`~bastion.attacks.base.FixedBudgetAttack` or
:class:`~bastion.attacks.base.MinimumNormAttack`: per-sample query budgets counted through one
:class:`~bastion.attacks._queries.QueryCounter`, a per-sample ``success_``, warnings for budgets
too small to act, and the results found so far kept when the model fails
(:class:`AttackInterruptedError`, carrying a :class:`PartialResult`). Decision-based
(labels-only) attacks build on it in :mod:`bastion.attacks.decision`.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._tensor import ArrayKind
from bastion.attacks._lp import canonical_norm
from bastion.attacks._queries import QueryCounter
from bastion.attacks.base import EvasionAttack, FixedBudgetAttack, is_adversarial
from bastion.exceptions import EstimatorError, ModelError

__all__ = ["AttackInterruptedError", "PartialResult", "QueryAttack"]


def _outside_attacks() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside
    ``bastion.attacks`` (the user's call, however many ``generate`` overrides lie between)."""
    frame, level = sys._getframe(2), 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "bastion.attacks"
    ):
        frame, level = frame.f_back, level + 1
    return level


@dataclass
class _CallState:
    """What one ``generate`` call of a query attack keeps while it runs (released after)."""

    #: Queries spent per sample on the clean label (1 when ``y`` was omitted).
    label_queries: int = 0
    #: (step, outcome) -> (samples short, largest budget needed), for the warnings.
    shortfalls: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    #: Samples an attack noted as short of budget.
    noted: int = 0
    #: The checked inputs of the call and their number.
    x: torch.Tensor | None = None
    n: int = 0
    #: The output being filled batch by batch (clean inputs where no batch has run yet).
    out: torch.Tensor | None = None
    #: The batch in progress: (x, y, mask, per-sample quantities).
    batch: tuple[Any, ...] | None = None
    #: Samples whose batch has finished (they come first).
    finished: int = 0
    #: Per sample: a query showed the returned point adversarial.
    success: torch.Tensor | None = None
    #: ``generate`` ran to its end.
    complete: bool = False

    def start(self, x: torch.Tensor) -> None:
        self.x, self.n, self.out, self.batch, self.finished = x, int(x.shape[0]), None, None, 0
        self.success = torch.zeros(self.n, dtype=torch.bool, device=x.device)

    def success_mask(self) -> torch.Tensor:
        if self.success is None:
            raise RuntimeError("internal error: a query attack's call state was not started")
        return self.success


@dataclass(frozen=True)
class PartialResult:
    """What a black-box attack had found when the model failed (see
    :class:`AttackInterruptedError`).

    Attributes
    ----------
    x_adv : same type, device, dtype and shape as ``x``
        For each sample the adversarial example the attack returns (samples whose attack had
        finished), or the closest point the model had answered adversarial (within ``eps`` for
        a fixed-budget attack; samples cut short); the clean input where none was found.
    success : numpy.ndarray of bool, shape (N,)
        Whether ``x_adv`` is adversarial, as a query of the model showed.
    queries : numpy.ndarray of int, shape (N,)
        Queries the model answered for each sample.
    finished : numpy.ndarray of bool, shape (N,)
        Samples whose attack ran to its end. The others were cut short or never started:
        attacking ``x[~finished]`` again completes the run.
    """

    x_adv: Any
    success: np.ndarray
    queries: np.ndarray
    finished: np.ndarray


class AttackInterruptedError(ModelError):
    """The model failed in the middle of a black-box attack.

    A :class:`~bastion.exceptions.ModelError` (``except ModelError`` catches it) whose cause is
    the estimator's error, with what the attack had found in :attr:`partial_result`.
    """

    def __init__(self, message: str, partial_result: PartialResult | None = None) -> None:
        super().__init__(message)
        self.partial_result = partial_result


class QueryAttack(EvasionAttack):
    """Base of black-box attacks: a per-sample query budget, every query counted, the outcome
    of every sample reported.

    Combine with :class:`FixedBudgetAttack` or :class:`MinimumNormAttack` (``QueryAttack``
    first). The template creates a :class:`~bastion.attacks._queries.QueryCounter` for each
    ``generate`` call (available to the attack as ``self._counter``) and passes each batch the
    global indices of its samples as the keyword argument ``index``; the attack queries the model
    only through ``self._counter.predict(x, index)``. When ``y`` is omitted, predicting the clean
    labels costs one query per sample, charged to that sample (the probabilities are kept in
    ``self._clean_probs`` for attacks that start from them).

    The attack returns ``(x_adv, success)``, ``success`` saying per sample whether a query
    showed the returned point adversarial (an attack that returns only ``x_adv`` is credited
    where its point is the closest adversarial one its queries found). Nothing fails silently:

    * an attack calls :meth:`_note_short_budget` for samples whose budget cannot pay for one
      step, and ``generate`` ends with one ``RuntimeWarning`` per kind of shortfall that names
      the ``max_queries`` one step needs (for an attack that notes nothing, a warning names the
      samples that got no query at all);
    * queries are charged once answered, and never sent with NaN or infinite values;
    * when the model fails (a :class:`~bastion.exceptions.ModelError`, e.g. a remote endpoint
      that stops answering), ``generate`` raises :class:`AttackInterruptedError`, chained to
      the model's error, whose ``partial_result`` holds the adversarial examples found so far
      (see :class:`PartialResult`); ``success_`` and ``queries_`` are set as well. Raising, not
      warning, keeps an evaluation from counting the samples it never attacked as robust.

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        After :meth:`generate`: the queries the model answered for each sample (never above
        ``max_queries``).
    success_ : numpy.ndarray of bool, shape (N,)
        After :meth:`generate`: whether a query showed each returned example adversarial (for
        the true label, or the target when ``targeted``); no query is spent to check. A
        minimum-norm attack returns the clean input exactly where it is False; a fixed-budget
        one may end with a step it had no query left to check.
    """

    max_queries: int
    queries_: np.ndarray
    success_: np.ndarray
    #: Score-based attacks need probabilities; decision-based ones set this to False.
    _needs_scores: ClassVar[bool] = True
    _counter: QueryCounter
    _clean_probs: torch.Tensor | None = None
    #: The state of the running ``generate`` call.
    _call: _CallState

    def _validate(self) -> None:
        super()._validate()
        if self._needs_scores and getattr(self.estimator, "labels_only", False):
            raise EstimatorError(
                f"{type(self).__name__} needs class scores, but the estimator reveals only "
                "labels (labels_only=True). Use a decision-based attack such as HopSkipJump, "
                "BoundaryAttack, GeoDA or SignOPT."
            )

    def generate(self, x: Any, y: Any = None, *, mask: Any = None) -> Any:
        self._call = _CallState(label_queries=int(y is None))
        try:
            out = super().generate(x, y, mask=mask)
            self.queries_ = self._counter.used.cpu().numpy()
            self.success_ = self._call.success_mask().cpu().numpy()
            self._call.complete = True
            return out
        finally:
            for message in self._warnings():
                warnings.warn(message, RuntimeWarning, stacklevel=_outside_attacks())
            self._call = _CallState()  # the state of this call holds the data: let it go
            self._clean_probs = None
            if hasattr(self, "_counter"):
                self._counter.unwatch()

    generate.__doc__ = EvasionAttack.generate.__doc__

    def _resolve_labels(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        n = x.shape[0]
        self._counter = QueryCounter(self.estimator, self.max_queries, n, x.device)
        self._clean_probs = None
        self._call.start(x)
        return super()._resolve_labels(x, y)

    def _predicted_labels(self, x: torch.Tensor) -> torch.Tensor:
        index = torch.arange(x.shape[0], device=x.device)
        bs = self.batch_size
        self._clean_probs = torch.cat(
            [
                self._counter.predict(x[i : i + bs], index[i : i + bs], chunk_size=bs)
                for i in range(0, x.shape[0], bs)
            ]
        )
        return self._clean_probs.argmax(dim=1)

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        extras = super()._prepare(x, mask)
        extras["index"] = torch.arange(x.shape[0], device=x.device)
        return extras

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        # Samples an interrupted attack never reached keep their clean input.
        self._call.out = x.clone()
        return self._call.out

    def _generate_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        index = per_sample["index"]
        targeted = bool(getattr(self, "targeted", False))
        self._counter.watch(
            x,
            y,
            int(index[0]),
            adversarial=lambda probs, labels: is_adversarial(probs, labels, targeted),
            norm=canonical_norm(getattr(self, "norm", 2)),
            radius=per_sample.get("eps") if isinstance(self, FixedBudgetAttack) else None,
        )
        self._call.batch = (x, y, mask, per_sample)
        result = self._attack(x, y, mask, generator, **per_sample)
        if not isinstance(result, tuple):
            best, found = self._counter.watched()
            result = (result, found & (result == best).flatten(1).all(dim=1))
        x_adv, success = self._finalize(x, y, mask, result, per_sample)
        self._call.success_mask()[index] = success
        self._call.batch, self._call.finished = None, int(index[-1]) + 1
        return x_adv

    def _model_failed(self, err: ModelError, kind: ArrayKind) -> None:
        call = self._call
        if call.x is None:
            return  # failed before the attack began: nothing to keep
        out = call.x.clone() if call.out is None else call.out
        if call.batch is not None:
            # The batch in progress: the closest adversarial point each sample's queries found.
            x, y, mask, per_sample = call.batch
            best, found = self._counter.watched()
            x_adv, success = self._finalize(x, y, mask, (best, found), per_sample)
            index = per_sample["index"]
            out[index] = x_adv
            call.success_mask()[index] = success
        self.queries_ = self._counter.used.cpu().numpy()
        self.success_ = call.success_mask().cpu().numpy()
        finished = np.arange(call.n) < call.finished
        partial = PartialResult(
            kind.restore(out, unchanged=call.x),
            self.success_.copy(),
            self.queries_.copy(),
            finished,
        )
        raise AttackInterruptedError(
            f"{type(self).__name__} was interrupted by the model's failure after "
            f"{int(self.queries_.sum())} answered queries, with {int(finished.sum())} of "
            f"{call.n} samples finished and {int(self.success_.sum())} adversarial examples "
            "found. They are in this error's partial_result (x_adv, success, queries, "
            f"finished) and in the attack's success_ and queries_. The model's error: {err}",
            partial,
        ) from err

    def _note_short_budget(
        self, short: torch.Tensor, needed: torch.Tensor | int, step: str, outcome: str
    ) -> None:
        """Note the samples (``short``, a mask over the batch) whose budget cannot pay for
        ``step``: ``needed`` (one value, or one per sample) is the ``max_queries`` that would
        (or a lower bound where the attack cannot know), ``outcome`` what the samples get
        instead. ``generate`` warns once per kind of shortfall, with the largest ``needed``."""
        count = int(short.sum())
        if count == 0:
            return
        need = needed if isinstance(needed, int) else int(needed[short].max())
        self._call.noted += count
        seen, most = self._call.shortfalls.get((step, outcome), (0, 0))
        self._call.shortfalls[(step, outcome)] = (seen + count, max(most, need))

    def _warnings(self) -> list[str]:
        """The warnings collected during :meth:`generate`."""
        call, name = self._call, type(self).__name__
        found = [
            f"{name}: max_queries={self.max_queries} cannot pay for {step} for {count} of "
            f"{call.n} samples ({outcome}); max_queries would have to be at least {need}."
            for (step, outcome), (count, need) in call.shortfalls.items()
        ]
        if call.complete and call.noted == 0:
            # The net under attacks that say nothing themselves: a sample that got no query
            # beyond its clean label was not attacked at all.
            spent = self.queries_ - call.label_queries
            idle = int(((spent == 0) & ~self.success_).sum())
            if idle:
                found.append(
                    f"{name} sent no query for {idle} of {call.n} samples (max_queries="
                    f"{self.max_queries}, {call.label_queries} spent on the clean label), "
                    "which are returned unchanged: raise max_queries."
                )
        return found
