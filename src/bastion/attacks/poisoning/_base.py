"""Shared pieces of poisoning attacks and triggers: sklearn-style parameters, the
``poison(x, y)`` template, and input checks for image batches."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from bastion._params import Parametrized
from bastion._validation import (
    Constraint,
    Satisfies,
)
from bastion.exceptions import InputError

__all__ = ["PoisoningAttack"]


class _Parametrized(Parametrized):
    """sklearn-style parameters (kept under this name for the poisoning, extraction and
    inference modules that import it)."""


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


def _image_batch(x: torch.Tensor, owner: str, input_shape: tuple[int, ...] | None = None) -> None:
    if x.ndim != 4:
        raise InputError(
            f"{owner} works on channel-first images of shape (N, C, H, W); got shape "
            f"{tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise InputError(f"{owner} needs floating-point images, got dtype {x.dtype}.")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise InputError(
            f"{owner}: x must have shape (N, *{tuple(input_shape)}) to match the estimator; "
            f"got {tuple(x.shape)}."
        )
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{owner}: x contains NaN or infinite values.")


class PoisoningAttack(_Parametrized):
    """Base of data-poisoning attacks: ``poison(x, y) -> (x_p, y_p, poison_mask)``.

    A poisoning attack needs no model: it tampers with the training set. ``__init__`` only
    stores the parameters; they are validated when :meth:`poison` runs.
    """

    def poison(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
        raise NotImplementedError
