"""Small helpers for attacks that shrink their working batch to the samples still running."""

from __future__ import annotations

from typing import overload

import torch

__all__ = ["per_sample", "rows"]


@overload
def rows(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor: ...


@overload
def rows(t: None, idx: torch.Tensor | None) -> None: ...


def rows(t: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    """Rows ``idx`` of a per-sample tensor (inputs, labels, a mask, a budget); a tensor with one
    shared row, or None, is returned as it is, and so is any tensor when ``idx`` is None (all
    rows)."""
    if t is None or idx is None or t.shape[0] == 1:
        return t
    return t[idx]


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector ``(B,)`` viewed as ``(B, 1, ..., 1)`` to broadcast against ``like``
    (a batch ``(B, *shape)``)."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))
