"""Small helpers for attacks that shrink their working batch to the samples still running."""

from __future__ import annotations

import torch

__all__ = ["per_sample", "rows"]


def rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    """Rows ``idx`` of a per-sample tensor (a mask, a budget); a tensor with one shared row, or
    None, is returned as it is."""
    if t is None or t.shape[0] == 1:
        return t
    return t[idx]


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector ``(B,)`` viewed as ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))
