"""Shared pieces of poisoning attacks and triggers: sklearn-style parameters, the
``poison(x, y)`` template, and input checks for image batches."""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._validation import (
    Constraint,
    Satisfies,
    validate_params,
)
from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["PoisoningAttack"]


class _Parametrized:
    """sklearn-style parameters: read from ``__init__``'s signature, validated when used."""

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self"]

    def get_params(self) -> dict[str, Any]:
        """The parameters as given."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Any:
        """Set parameters by name; returns ``self``. Values are validated when next used."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise InvalidParameterError(
                    f"Invalid parameter {key!r} for {type(self).__name__}. "
                    f"Valid parameters are: {sorted(valid)!r}."
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        parts = []
        for name in self._param_names():
            value, default = getattr(self, name), sig.parameters[name].default
            try:
                same = bool(value == default) and type(value) is type(default)
            except Exception:
                same = False
            if not same:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _validate(self) -> None:
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)


def _is_clip_values(value: Any) -> bool:
    lo, hi = (float(v) for v in value)
    return math.isfinite(lo) and math.isfinite(hi) and lo < hi


_CLIP: list[Constraint] = [
    Satisfies(_is_clip_values, "a pair (low, high) of finite floats with low < high")
]


def _is_array(value: Any) -> bool:
    if isinstance(value, (str, bytes, numbers.Number)) or value is None:
        return False
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return arr.ndim >= 1 and arr.size > 0 and bool(np.all(np.isfinite(arr.astype(np.float64))))


def _image_batch(x: torch.Tensor, owner: str) -> None:
    if x.ndim != 4:
        raise InputError(
            f"{owner} works on channel-first images of shape (N, C, H, W); got shape "
            f"{tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise InputError(f"{owner} needs floating-point images, got dtype {x.dtype}.")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{owner}: x contains NaN or infinite values.")


class PoisoningAttack(_Parametrized):
    """Base of data-poisoning attacks: ``poison(x, y) -> (x_p, y_p, poison_mask)``.

    A poisoning attack needs no model: it tampers with the training set. ``__init__`` only
    stores the parameters; they are validated when :meth:`poison` runs.
    """

    def poison(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
        raise NotImplementedError
