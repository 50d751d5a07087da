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
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import resolve_random_state, to_tensor
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
from bastion.attacks._lp import canonical_norm, lp_norm, project_lp_box
from bastion.attacks._queries import QueryCounter
from bastion.estimators.base import require_capabilities
from bastion.exceptions import EstimatorError, InputError

__all__ = [
    "Attack",
    "EvasionAttack",
    "FixedBudgetAttack",
    "MinimumNormAttack",
    "QueryAttack",
    "is_adversarial",
    "perturbation_norms",
]


def is_adversarial(scores: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The "is adversarial" test every attack uses: per sample, does the predicted class
    (argmax of ``scores``: probabilities, logits or one-hot rows, ``(N, K)``) differ from the
    true label ``y`` (untargeted), or equal the target ``y`` (``targeted=True``)?"""
    pred = scores.argmax(dim=1)
    return pred == y if targeted else pred != y


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
        raise NotImplementedError

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
        est = self.estimator
        xt, kind = to_tensor(x, device=est.device, dtype=getattr(est, "dtype", torch.float32))
        check_x(xt, input_shape=est.input_shape, clip_values=est.clip_values)
        yt = self._resolve_labels(xt, y)
        mt = self._resolve_mask(mask, xt)
        gen = resolve_random_state(getattr(self, "random_state", None), est.device)
        per_sample = self._prepare(xt, mt)
        n, bs = xt.shape[0], self.batch_size
        out = torch.empty_like(xt)
        with tqdm(
            total=n, desc=type(self).__name__, unit="sample", disable=not self.verbose
        ) as bar:
            for i in range(0, n, bs):
                sl = slice(i, i + bs)
                mb = None if mt is None else (mt[sl] if mt.shape[0] > 1 else mt)
                extras = {k: v[sl] for k, v in per_sample.items()}
                out[sl] = self._generate_batch(xt[sl], yt[sl], mb, gen, **extras).detach()
                bar.update(min(bs, n - i))
        return kind.restore(out)

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
    ) -> torch.Tensor:
        raise NotImplementedError

    def _generate_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        eps = per_sample["eps"]
        x_adv = self._attack(x, y, mask, generator, **per_sample)
        norm = canonical_norm(self.norm)
        delta = project_lp_box(x_adv - x, x, eps, norm, self.estimator.clip_values)
        if mask is not None:
            delta = delta * mask
        x_adv = x + delta
        if self.estimator.clip_values is not None:
            x_adv = x_adv.clamp(*self.estimator.clip_values)
        return x_adv


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

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _generate_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        result = self._attack(x, y, mask, generator, **per_sample)
        x_adv, success = result if isinstance(result, tuple) else (result, None)
        if mask is not None:
            x_adv = x + (x_adv - x) * mask
        if self.estimator.clip_values is not None:
            x_adv = x_adv.clamp(*self.estimator.clip_values)
        if success is None:
            with torch.no_grad():
                success = self._is_adversarial(self.estimator.predict_tensor(x_adv), y)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return torch.where(success.reshape(shape), x_adv, x)


class QueryAttack(EvasionAttack):
    """Base of black-box attacks: a per-sample query budget, every query counted.

    Combine with :class:`FixedBudgetAttack` or :class:`MinimumNormAttack` (``QueryAttack``
    first). The template creates a :class:`~bastion.attacks._queries.QueryCounter` for each
    ``generate`` call (available to the attack as ``self._counter``) and passes each batch the
    global indices of its samples as the keyword argument ``index``; the attack queries the model
    only through ``self._counter.predict(x, index)``. When ``y`` is omitted, predicting the clean
    labels costs one query per sample, charged to that sample.

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        After :meth:`generate`: the queries spent on each sample (never above ``max_queries``).
    """

    max_queries: int
    queries_: np.ndarray
    #: Score-based attacks need probabilities; decision-based ones set this to False.
    _needs_scores: ClassVar[bool] = True
    _initial_queries: int = 0
    _counter: QueryCounter

    def _validate(self) -> None:
        super()._validate()
        if self._needs_scores and getattr(self.estimator, "labels_only", False):
            raise EstimatorError(
                f"{type(self).__name__} needs class scores, but the estimator reveals only "
                "labels (labels_only=True). Use a decision-based attack such as HopSkipJump, "
                "BoundaryAttack, GeoDA or SignOPT."
            )

    def _resolve_labels(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        self._initial_queries = 1 if y is None else 0
        return super()._resolve_labels(x, y)

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        extras = super()._prepare(x, mask)
        self._counter = QueryCounter(
            self.estimator, self.max_queries, x.shape[0], x.device, self._initial_queries
        )
        extras["index"] = torch.arange(x.shape[0], device=x.device)
        return extras

    def generate(self, x: Any, y: Any = None, *, mask: Any = None) -> Any:
        out = super().generate(x, y, mask=mask)
        self.queries_ = self._counter.used.cpu().numpy()
        return out

    generate.__doc__ = EvasionAttack.generate.__doc__


def perturbation_norms(x: Any, x_adv: Any, norm: Any = "inf") -> np.ndarray:
    """Per-sample Lp norms of ``x_adv - x`` as a NumPy array (for reports and tests)."""
    a, _ = to_tensor(x, dtype=torch.float64)
    b, _ = to_tensor(x_adv, dtype=torch.float64)
    return lp_norm((b.cpu() - a.cpu()), canonical_norm(norm)).numpy()
