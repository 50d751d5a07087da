"""Declarative parameter constraints and input checks, with one message format.

Attacks and estimators declare ``_parameter_constraints = {"eps": [Interval(float, 0, None)]}``;
:func:`validate_params` checks every value against its list (a value must satisfy one of them) and
raises :class:`~bastion.exceptions.InvalidParameterError` with the message::

    The 'eps' parameter of PGD must be a float in [0, inf). Got -1 instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError, InvalidParameterError, ModelError

__all__ = [
    "BATCH_SIZE",
    "BUDGET",
    "LAYER",
    "MAX_QUERIES",
    "NONE",
    "NORM",
    "OPTIONAL_LAYER",
    "OPTIONAL_PATH",
    "RANDOM_STATE",
    "TARGETED",
    "VERBOSE",
    "Boolean",
    "Constraint",
    "Interval",
    "Options",
    "RandomState",
    "Satisfies",
    "check_labels",
    "check_trained",
    "check_x",
    "invalid_parameter",
    "probe_classes",
    "validate_params",
]


class Constraint:
    """A predicate on a parameter value with a human-readable description."""

    description: str = "valid"

    def is_satisfied_by(self, value: Any) -> bool:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.description


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


class Interval(Constraint):
    """A real or integral number in an interval.

    Parameters
    ----------
    kind : type
        ``int`` (integers only) or ``float`` (any real number, integers included).
    left, right : float or None
        Bounds; ``None`` means unbounded.
    closed : {"left", "right", "both", "neither"}
        Which bounds are included.
    """

    def __init__(
        self,
        kind: type,
        left: float | None,
        right: float | None,
        *,
        closed: str = "both",
    ) -> None:
        self.kind = kind
        self.left = left
        self.right = right
        self.closed = closed
        lo = "[" if closed in ("left", "both") and left is not None else "("
        hi = "]" if closed in ("right", "both") and right is not None else ")"
        left_s = "-inf" if left is None else f"{left:g}"
        right_s = "inf" if right is None else f"{right:g}"
        noun = "an int" if kind is int else "a float"
        self.description = f"{noun} in {lo}{left_s}, {right_s}{hi}"

    def is_satisfied_by(self, value: Any) -> bool:
        if _is_bool(value):
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real):
            return False
        v = float(value)
        if math.isnan(v):
            return False
        if self.left is not None:
            if v < self.left or (v == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if v > self.right or (v == self.right and self.closed in ("left", "neither")):
                return False
        return True


class Options(Constraint):
    """One of a fixed set of values (compared with ``==``, booleans never match numbers)."""

    def __init__(self, options: Iterable[Any]) -> None:
        self.options = tuple(options)
        self.description = "one of {" + ", ".join(repr(o) for o in self.options) + "}"

    def is_satisfied_by(self, value: Any) -> bool:
        if _is_bool(value):
            return any(_is_bool(o) and o == value for o in self.options)
        try:
            return any(not _is_bool(o) and type(o) is not bool and o == value for o in self.options)
        except (TypeError, ValueError):
            return False


class Boolean(Constraint):
    """``True`` or ``False``."""

    description = "a bool"

    def is_satisfied_by(self, value: Any) -> bool:
        return _is_bool(value)


class RandomState(Constraint):
    """``None``, a non-negative int, or a :class:`torch.Generator`."""

    description = "None, a non-negative int or a torch.Generator"

    def is_satisfied_by(self, value: Any) -> bool:
        if value is None or isinstance(value, torch.Generator):
            return True
        return isinstance(value, numbers.Integral) and not _is_bool(value) and int(value) >= 0


class Satisfies(Constraint):
    """Any value accepted by ``predicate``, described by ``description``."""

    def __init__(self, predicate: Callable[[Any], bool], description: str) -> None:
        self.predicate = predicate
        self.description = description

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except Exception:
            return False


class _NoneConstraint(Constraint):
    description = "None"

    def is_satisfied_by(self, value: Any) -> bool:
        return value is None


NONE = _NoneConstraint()


def _describe(constraints: list[Constraint]) -> str:
    parts = [str(c) for c in constraints]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def invalid_parameter(name: str, owner: str, allowed: str, value: Any) -> InvalidParameterError:
    """Build the one-format error for a bad parameter value."""
    return InvalidParameterError(
        f"The {name!r} parameter of {owner} must be {allowed}. Got {value!r} instead."
    )


def validate_params(
    owner: str, params: Mapping[str, Any], constraints: Mapping[str, list[Constraint]]
) -> None:
    """Check every parameter that has constraints; raise on the first violation.

    Raises
    ------
    InvalidParameterError
        Naming the parameter, the allowed values and the value given.
    """
    for name, allowed in constraints.items():
        if name not in params:
            continue
        value = params[name]
        if not any(c.is_satisfied_by(value) for c in allowed):
            raise invalid_parameter(name, owner, _describe(allowed), value)


# --------------------------------------------------------------------------- input checks


def check_x(
    x: torch.Tensor,
    *,
    input_shape: tuple[int, ...] | None,
    clip_values: tuple[float, float] | None,
    name: str = "x",
    tol: float = 1e-6,
) -> None:
    """Validate a batch of inputs already converted to a tensor.

    Raises
    ------
    InputError
        If ``x`` is empty, has the wrong shape, holds NaN/inf or leaves ``clip_values``.
    """
    if x.ndim == 0:
        raise InputError(f"{name} must be a batch of samples; got a scalar.")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty: got shape {tuple(x.shape)}.")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        expected = ("N", *input_shape)
        raise InputError(
            f"{name} must have shape {expected} (batch first), got {tuple(x.shape)} "
            f"(ndim {x.ndim}, expected ndim {len(input_shape) + 1})."
        )
    if not x.is_floating_point():
        raise InputError(f"{name} must hold floating-point values, got dtype {x.dtype}.")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputError(f"{name} contains {bad} NaN or infinite value(s).")
    if clip_values is not None:
        lo, hi = clip_values
        x_min, x_max = float(x.min()), float(x.max())
        if x_min < lo - tol or x_max > hi + tol:
            raise InputError(
                f"{name} has values in [{x_min:g}, {x_max:g}], outside clip_values "
                f"({lo:g}, {hi:g}). Scale the data to the estimator's clip_values first."
            )


def check_labels(y: torch.Tensor, *, n: int, nb_classes: int, name: str = "y") -> torch.Tensor:
    """Validate labels and return them as int64 class indices of shape ``(n,)``.

    Accepts class indices ``(n,)`` or one-hot / probability rows ``(n, nb_classes)``.

    Raises
    ------
    InputError
        Wrong length, wrong shape, non-integral values or classes outside ``[0, nb_classes)``.
    """
    if y.ndim == 2 and y.shape[1] == nb_classes and nb_classes > 1:
        y = y.argmax(dim=1)
    elif y.ndim != 1:
        raise InputError(
            f"{name} must be class indices of shape (N,) or one-hot of shape (N, {nb_classes}); "
            f"got shape {tuple(y.shape)}."
        )
    if y.shape[0] != n:
        raise InputError(f"{name} has {y.shape[0]} labels but x has {n} samples.")
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise InputError(f"{name} must hold integer class indices.")
    elif y.dtype == torch.bool or y.is_complex():
        raise InputError(f"{name} must hold integer class indices, got dtype {y.dtype}.")
    y = y.to(torch.int64)
    if n > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= nb_classes:
            raise InputError(
                f"{name} has labels in [{lo}, {hi}], outside the {nb_classes} classes "
                f"[0, {nb_classes - 1}]."
            )
    return y


# --------------------------------------------------------------------------- models to train


def probe_classes(model: torch.nn.Module, x: torch.Tensor, owner: str) -> int:
    """The number of classes a torch classifier outputs, from the first sample of ``x``
    (in eval mode, without gradients): what the labels of its training set must fit.

    Raises
    ------
    ModelError
        The model raised on the sample (``x`` does not fit it: the error is chained), or
        returned something other than finite logits of shape ``(1, nb_classes)``.
    """
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as err:
        raise ModelError(
            f"{owner}: the model raised {type(err).__name__} on a sample of shape "
            f"{tuple(x.shape[1:])}: {err} (does x have the shape the model takes?)"
        ) from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{owner}: the model must output logits of shape (N, nb_classes); got {got} for "
            "one sample."
        )
    if not bool(torch.isfinite(out).all()):
        raise ModelError(f"{owner}: the model returned NaN or infinite logits before training.")
    return int(out.shape[1])


def check_trained(model: torch.nn.Module, owner: str) -> torch.nn.Module:
    """``model`` after training, unless a weight became NaN or infinite (training diverged).

    Raises
    ------
    ModelError
        Naming the first non-finite parameter.
    """
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            raise ModelError(
                f"{owner}: training diverged: the parameter {name!r} holds NaN or infinite "
                "values (lower the learning rate, or check the data and the loss)."
            )
    return model


# ---------------------------------------------------------------- shared constraints
# The constraints that many public classes share, so each is written (and worded) once.


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
#: A layer: a name of ``estimator.layer_names`` or an index into it.
LAYER: list[Constraint] = [
    Satisfies(
        lambda v: (
            isinstance(v, str) or (isinstance(v, numbers.Integral) and not isinstance(v, bool))
        ),
        "a layer name (str) or index (int)",
    )
]
#: A layer, or ``None`` for the class's default layer.
OPTIONAL_LAYER: list[Constraint] = [*LAYER, NONE]
