"""Attack base classes and the shared templates.

* :class:`Attack`: sklearn-style parameters (``__init__`` only stores them), ``get_params`` /
  ``set_params`` / ``repr`` read from the signature, declarative validation, capability checks.
* :class:`EvasionAttack`: ``generate(x, y=None, *, mask=None)``: conversion in and out, input
  and label checks, batching with a progress bar. An attack implements ``_generate_batch``.
* :class:`FixedBudgetAttack`: attacks bounded by ``eps`` in a norm. The template resolves
  per-sample budgets and guarantees the result lies in the eps-ball and inside ``clip_values``;
  an attack writes only ``_attack(x, y, mask, generator, eps)``.
* :class:`MinimumNormAttack`: attacks that search the smallest perturbation. The template keeps
  the original input for samples where no adversarial example was found; an attack writes only
  ``_attack(x, y, mask, generator)``.
* :class:`QueryAttack`: black-box attacks, combined with one of the two above: per-sample query
  budgets counted through one :class:`~bastion.attacks._queries.QueryCounter`, per-sample
  ``success_``, warnings for budgets too small to act, and the results found so far kept when
  the model fails (:class:`AttackInterruptedError`). Decision-based (labels-only) attacks build
  on :class:`bastion.attacks.decision.DecisionBasedAttack`.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import ArrayKind, resolve_random_state, to_tensor
from bastion._validation import (
    NONE,
    Boolean,
    Constraint,
    Interval,
    Options,
    RandomState,
    Satisfies,
    check_labels,
    check_x,
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._lp import canonical_norm, lp_norm, project_lp_box
from bastion.attacks._queries import QueryCounter
from bastion.estimators.base import require_capabilities
from bastion.exceptions import EstimatorError, InputError, ModelError

__all__ = [
    "Attack",
    "AttackInterruptedError",
    "EvasionAttack",
    "FixedBudgetAttack",
    "MinimumNormAttack",
    "PartialResult",
    "QueryAttack",
    "is_adversarial",
    "perturbation_norms",
]


def _outside_attacks() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside
    ``bastion.attacks`` (the user's call, however many ``generate`` overrides lie between)."""
    frame, level = sys._getframe(2), 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "bastion.attacks"
    ):
        frame, level = frame.f_back, level + 1
    return level


def is_adversarial(scores: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The "is adversarial" test every attack uses: per sample, does the predicted class
    (argmax of ``scores``: probabilities, logits or one-hot rows, ``(N, K)``) differ from the
    true label ``y`` (untargeted), or equal the target ``y`` (``targeted=True``)?"""
    pred = scores.argmax(dim=1)
    return pred == y if targeted else pred != y


def checked_input(estimator: Any, x: Any, name: str = "x") -> tuple[torch.Tensor, ArrayKind]:
    """The input preamble of the evasion attacks' public methods.

    ``x`` as a tensor on the estimator's device and dtype, checked (a non-empty batch of
    finite samples of the estimator's ``input_shape``, inside its ``clip_values``), and how to
    give a result back in ``x``'s type (``kind.restore(out, unchanged=xt)`` returns the
    caller's values bit for bit where the attack left them).

    Raises
    ------
    InputError
        For bad data, and for integer or boolean ``x``: adversarial examples come back in
        ``x``'s dtype, so it must be floating-point.
    """
    xt, kind = to_tensor(
        x, device=estimator.device, dtype=getattr(estimator, "dtype", torch.float32)
    )
    if not kind.floating:
        raise InputError(
            f"{name} must hold floating-point values (the adversarial examples come back in "
            f"{name}'s dtype); got dtype {kind.dtype}. Convert it first, e.g. "
            "x.astype(np.float32) / 255 for 8-bit images."
        )
    check_x(xt, input_shape=estimator.input_shape, clip_values=estimator.clip_values, name=name)
    return xt, kind


class Attack(Parametrized):
    """Base of every attack: parameters, validation and capability checks.

    Subclasses define ``__init__(self, estimator, *, param=default, ...)`` that stores each
    parameter under its own name and does nothing else, a ``_parameter_constraints`` mapping and
    the estimator capabilities they need in ``_estimator_requirements``.
    """

    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)

    estimator: Any

    def _validate(self) -> None:
        """Check hyper-parameters and estimator capabilities (called at the start of work)."""
        super()._validate()
        require_capabilities(self.estimator, self._estimator_requirements, type(self).__name__)


def _is_budget_array(value: Any) -> bool:
    if isinstance(value, (numbers.Real, str, bool)) or value is None:
        return False
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return arr.ndim == 1 and arr.size > 0 and bool(np.all(np.isfinite(arr)) and np.all(arr >= 0))


#: A budget: a non-negative float, or one non-negative value per sample.
BUDGET: list[Constraint] = [
    Interval(float, 0, None),
    Satisfies(_is_budget_array, "an array-like of non-negative floats, one per sample"),
]
NORM = Options(["inf", float("inf"), 1, 2])
BATCH_SIZE: list[Constraint] = [Interval(int, 1, None)]
VERBOSE: list[Constraint] = [Boolean()]
TARGETED: list[Constraint] = [Boolean()]
#: An optional directory or file path (str, bytes or any ``os.PathLike``).
OPTIONAL_PATH: list[Constraint] = [
    Satisfies(lambda v: isinstance(v, (str, bytes)) or hasattr(v, "__fspath__"), "a path"),
    NONE,
]
RANDOM_STATE: list[Constraint] = [RandomState()]
MAX_QUERIES: list[Constraint] = [Interval(int, 1, None)]


class EvasionAttack(Attack):
    """Base of evasion attacks: ``generate(x, y=None, *, mask=None) -> x_adv``.

    The template converts inputs (NumPy or torch) to tensors on the estimator's device, checks
    them, resolves labels and the mask, runs the attack batch by batch (with a progress bar when
    ``verbose``) and gives ``x_adv`` back in the caller's type, device and dtype. Subclasses
    implement :meth:`_generate_batch`.
    """

    batch_size: int
    verbose: bool
    #: The attack's core on one batch, whose signature its template defines: ``x_adv``, or
    #: ``(x_adv, success)``.
    _attack: Callable[..., Any]

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-sample quantities resolved once for all of ``x``; the template slices them per
        batch and passes them to ``_generate_batch`` as keyword arguments."""
        return {}

    def _generate_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        """One batch: the templates run ``_attack`` and ``_finalize`` its result."""
        result = self._attack(x, y, mask, generator, **per_sample)
        return self._finalize(x, y, mask, result, per_sample)[0]

    def _finalize(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        result: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        per_sample: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, Any]:
        """What a template guarantees of ``_attack``'s result: ``(x_adv, success)``, success
        per sample or None where unknown."""
        return result if isinstance(result, tuple) else (result, None)

    def generate(self, x: Any, y: Any = None, *, mask: Any = None) -> Any:
        """Craft adversarial examples.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Clean inputs inside the estimator's ``clip_values``.
        y : array-like or torch.Tensor, optional
            True labels (untargeted) or target labels (``targeted=True``), as class indices
            ``(N,)`` or one-hot ``(N, nb_classes)``. When omitted for an untargeted attack, the
            estimator's predictions are used.
        mask : array-like or torch.Tensor, optional
            Which features may change (1) and which may not (0); broadcastable to ``x`` or to
            one sample.

        Returns
        -------
        x_adv : same type, device, dtype and shape as ``x``
        """
        self._validate()
        xt, kind = checked_input(self.estimator, x)
        try:
            out = self._generate_tensor(xt, y, mask)
        except ModelError as err:
            self._model_failed(err, kind)  # a template may raise a richer error instead
            raise
        return kind.restore(out, unchanged=xt)

    def _generate_tensor(self, x: torch.Tensor, y: Any, mask: Any) -> torch.Tensor:
        """The attack on checked tensors: labels, mask, per-sample quantities, then batches."""
        yt = self._resolve_labels(x, y)
        mt = self._resolve_mask(mask, x)
        gen = resolve_random_state(getattr(self, "random_state", None), self.estimator.device)
        per_sample = self._prepare(x, mt)
        n, bs = x.shape[0], self.batch_size
        out = self._output(x)
        with tqdm(
            total=n, desc=type(self).__name__, unit="sample", disable=not self.verbose
        ) as bar:
            for i in range(0, n, bs):
                sl = slice(i, i + bs)
                mb = None if mt is None else (mt[sl] if mt.shape[0] > 1 else mt)
                extras = {k: v[sl] for k, v in per_sample.items()}
                out[sl] = self._generate_batch(x[sl], yt[sl], mb, gen, **extras).detach()
                bar.update(min(bs, n - i))
        return out

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor the batches' results are written into."""
        return torch.empty_like(x)

    def _model_failed(self, err: ModelError, kind: ArrayKind) -> None:
        """Called when the model fails during :meth:`generate`; ``err`` is re-raised after."""

    def _predicted_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The estimator's labels for ``x``, predicted in batches of ``batch_size``."""
        with torch.no_grad():
            return torch.cat(
                [
                    self.estimator.predict_tensor(x[i : i + self.batch_size]).argmax(dim=1)
                    for i in range(0, x.shape[0], self.batch_size)
                ]
            )

    def _resolve_labels(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        est = self.estimator
        if y is None:
            if getattr(self, "targeted", False):
                raise InputError(
                    f"{type(self).__name__} with targeted=True needs the target labels y."
                )
            return self._predicted_labels(x)
        yt, _ = to_tensor(y, device=est.device, dtype=None)
        return check_labels(yt, n=x.shape[0], nb_classes=est.nb_classes)

    def _resolve_mask(self, mask: Any, x: torch.Tensor) -> torch.Tensor | None:
        if mask is None:
            return None
        mt, _ = to_tensor(mask, device=x.device, dtype=torch.float32)
        if mt.ndim == x.ndim - 1:
            mt = mt.unsqueeze(0)
        try:
            fits = mt.ndim == x.ndim and torch.broadcast_shapes(mt.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise InputError(
                f"mask of shape {tuple(np.shape(mask))} does not broadcast to x of shape "
                f"{tuple(x.shape)} (give one mask per sample, or one for all samples)."
            )
        if not bool(((mt == 0) | (mt == 1)).all()):
            raise InputError("mask must contain only 0 (frozen) and 1 (may change).")
        return mt


class FixedBudgetAttack(EvasionAttack):
    """Template for attacks bounded by ``eps`` in the ``norm`` ball.

    ``eps`` may be one float or one value per sample. Subclasses implement
    ``_attack(x, y, mask, generator, eps) -> x_adv`` where ``eps`` has shape ``(B, 1, ..., 1)``;
    the template then projects exactly onto the eps-ball intersected with ``clip_values``, so a
    returned perturbation never exceeds the budget.
    """

    eps: Any
    norm: Any

    def _budget(self, name: str, x: torch.Tensor) -> torch.Tensor:
        value = getattr(self, name)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        t, _ = to_tensor(value, device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            return t.expand(shape)
        if t.shape[0] != x.shape[0]:
            raise InputError(
                f"{name} has {t.shape[0]} per-sample values but x has {x.shape[0]} samples."
            )
        return t.reshape(shape)

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        # Every budget the attack takes (``eps``, and ``eps_step`` for iterative attacks) may be
        # one value or one per sample.
        names = self._param_names()
        return {name: self._budget(name, x) for name in ("eps", "eps_step") if name in names}

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _finalize(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        result: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        per_sample: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Project the attack's result onto the eps-ball and the box; a reported success
        stands only where the point was feasible as it is (then it is returned bit for bit)."""
        x_att, success = result if isinstance(result, tuple) else (result, None)
        raw = x_att - x
        delta = project_lp_box(
            raw, x, per_sample["eps"], canonical_norm(self.norm), self.estimator.clip_values
        )
        if mask is not None:
            delta = delta * mask
        x_adv = x + delta
        if success is not None:
            # ``x + (x_adv - x)`` may differ from ``x_adv`` in the last bit: keep the queried point.
            exact = (delta == raw).flatten(1).all(dim=1)
            x_adv = torch.where(_view(exact, x), x_att, x_adv)
            success = success & exact
        if self.estimator.clip_values is not None:
            x_adv = x_adv.clamp(*self.estimator.clip_values)
        return x_adv, success


class MinimumNormAttack(EvasionAttack):
    """Template for attacks that look for the smallest adversarial perturbation.

    Subclasses implement ``_attack(x, y, mask, generator) -> x_adv``. The template checks each
    candidate with one prediction and returns the clean input, unchanged, for samples where the
    attack found no adversarial example (so the perturbation norm is 0 exactly when it failed).
    An attack that already knows which samples it broke (a black-box attack, whose every query
    counts) returns ``(x_adv, success)`` instead and no prediction is spent.
    """

    targeted: bool

    def _is_adversarial(self, probs_or_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return is_adversarial(probs_or_logits, y, self.targeted)

    def _finalize(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        result: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        per_sample: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the mask and the box, check success (one prediction) unless reported, and
        put the clean input back where the attack failed."""
        x_att, success = result if isinstance(result, tuple) else (result, None)
        x_adv = x_att
        if mask is not None:
            x_adv = x + (x_att - x) * mask
            if success is not None:
                # A reported point was queried as it is: keep it, bit for bit, where it
                # already respects the mask.
                frozen = ((x_att != x) & (mask == 0)).flatten(1).any(dim=1)
                x_adv = torch.where(_view(~frozen, x), x_att, x_adv)
        if self.estimator.clip_values is not None:
            x_adv = x_adv.clamp(*self.estimator.clip_values)
        if success is None:
            with torch.no_grad():
                success = self._is_adversarial(self.estimator.predict_tensor(x_adv), y)
        return torch.where(_view(success, x), x_adv, x), success


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
    _run: dict[str, Any]

    def _validate(self) -> None:
        super()._validate()
        if self._needs_scores and getattr(self.estimator, "labels_only", False):
            raise EstimatorError(
                f"{type(self).__name__} needs class scores, but the estimator reveals only "
                "labels (labels_only=True). Use a decision-based attack such as HopSkipJump, "
                "BoundaryAttack, GeoDA or SignOPT."
            )

    def generate(self, x: Any, y: Any = None, *, mask: Any = None) -> Any:
        self._run = {"shortfalls": {}, "noted": 0, "n": 0, "label_queries": int(y is None)}
        try:
            out = super().generate(x, y, mask=mask)
            self.queries_ = self._counter.used.cpu().numpy()
            self.success_ = self._run["success"].cpu().numpy()
            self._run["complete"] = True
            return out
        finally:
            for message in self._warnings():
                warnings.warn(message, RuntimeWarning, stacklevel=_outside_attacks())
            self._run = {}  # the state of this call holds the data: let it go
            self._clean_probs = None
            if hasattr(self, "_counter"):
                self._counter.unwatch()

    generate.__doc__ = EvasionAttack.generate.__doc__

    def _resolve_labels(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        n = x.shape[0]
        self._counter = QueryCounter(self.estimator, self.max_queries, n, x.device)
        self._clean_probs = None
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        self._run.update(x=x, n=n, out=None, batch=None, finished=0, success=success)
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
        self._run["out"] = x.clone()
        return self._run["out"]

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
        self._run["batch"] = (x, y, mask, per_sample)
        result = self._attack(x, y, mask, generator, **per_sample)
        if not isinstance(result, tuple):
            best, found = self._counter.watched()
            result = (result, found & (result == best).flatten(1).all(dim=1))
        x_adv, success = self._finalize(x, y, mask, result, per_sample)
        self._run["success"][index] = success
        self._run.update(batch=None, finished=int(index[-1]) + 1)
        return x_adv

    def _model_failed(self, err: ModelError, kind: ArrayKind) -> None:
        run = self._run
        if "x" not in run:
            return  # failed before the attack began: nothing to keep
        out = run["x"].clone() if run["out"] is None else run["out"]
        if run["batch"] is not None:
            # The batch in progress: the closest adversarial point each sample's queries found.
            x, y, mask, per_sample = run["batch"]
            best, found = self._counter.watched()
            x_adv, success = self._finalize(x, y, mask, (best, found), per_sample)
            index = per_sample["index"]
            out[index] = x_adv
            run["success"][index] = success
        self.queries_ = self._counter.used.cpu().numpy()
        self.success_ = run["success"].cpu().numpy()
        finished = np.arange(run["n"]) < run["finished"]
        partial = PartialResult(
            kind.restore(out, unchanged=run["x"]),
            self.success_.copy(),
            self.queries_.copy(),
            finished,
        )
        raise AttackInterruptedError(
            f"{type(self).__name__} was interrupted by the model's failure after "
            f"{int(self.queries_.sum())} answered queries, with {int(finished.sum())} of "
            f"{run['n']} samples finished and {int(self.success_.sum())} adversarial examples "
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
        self._run["noted"] += count
        seen, most = self._run["shortfalls"].get((step, outcome), (0, 0))
        self._run["shortfalls"][(step, outcome)] = (seen + count, max(most, need))

    def _warnings(self) -> list[str]:
        """The warnings collected during :meth:`generate`."""
        run, name = self._run, type(self).__name__
        found = [
            f"{name}: max_queries={self.max_queries} cannot pay for {step} for {count} of "
            f"{run['n']} samples ({outcome}); max_queries would have to be at least {need}."
            for (step, outcome), (count, need) in run["shortfalls"].items()
        ]
        if run.get("complete") and run["noted"] == 0:
            # The net under attacks that say nothing themselves: a sample that got no query
            # beyond its clean label was not attacked at all.
            spent = self.queries_ - run["label_queries"]
            idle = int(((spent == 0) & ~self.success_).sum())
            if idle:
                found.append(
                    f"{name} sent no query for {idle} of {run['n']} samples (max_queries="
                    f"{self.max_queries}, {run['label_queries']} spent on the clean label), "
                    "which are returned unchanged: raise max_queries."
                )
        return found


def perturbation_norms(x: Any, x_adv: Any, norm: Any = "inf") -> np.ndarray:
    """Per-sample Lp norms of ``x_adv - x`` as a NumPy array (for reports and tests)."""
    a, _ = to_tensor(x, dtype=torch.float64)
    b, _ = to_tensor(x_adv, dtype=torch.float64)
    return lp_norm((b.cpu() - a.cpu()), canonical_norm(norm)).numpy()
