"""The NumPy/torch boundary: tensors in, the caller's type, device and dtype out.

Public functions accept NumPy arrays (or anything ``np.asarray`` takes) and torch tensors.
:func:`to_tensor` converts to a tensor on the computation device and records how to give the
result back; :meth:`ArrayKind.restore` converts a result the way the caller expects: NumPy in,
NumPy out; a tensor on a device in, a tensor on that device out.

Randomness is explicit: :func:`resolve_random_state` turns ``None``, an int or a
``torch.Generator`` into a generator on the device where numbers will be drawn. The global RNGs of
torch, NumPy and :mod:`random` are never read or seeded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError

__all__ = [
    "ArrayKind",
    "RandomStateLike",
    "as_device",
    "resolve_random_state",
    "to_tensor",
]

RandomStateLike = int | torch.Generator | None


@dataclass(frozen=True)
class ArrayKind:
    """How the caller passed an array: restores results to the same kind."""

    is_tensor: bool
    device: torch.device | None
    dtype: Any  # torch.dtype for tensors, np.dtype for arrays
    #: The caller's array, kept when :func:`to_tensor` rounded it to a lower precision (float64
    #: computed in float32), so that values a computation leaves unchanged come back exactly.
    source: Any = field(default=None, compare=False, repr=False)

    @property
    def floating(self) -> bool:
        """Whether the caller's array holds floating-point values."""
        if self.is_tensor:
            return bool(self.dtype.is_floating_point)
        return bool(np.issubdtype(self.dtype, np.floating))

    def restore(
        self, t: torch.Tensor, *, keep_dtype: bool = False, unchanged: torch.Tensor | None = None
    ) -> Any:
        """Convert ``t`` back to the caller's array type, device and (floating) dtype.

        ``keep_dtype=True`` keeps ``t``'s dtype (for labels or indices). ``unchanged`` is the
        input as the computation saw it (``t``'s shape): where ``t`` still equals it, the
        caller's own values are given back bit for bit, not their rounding to the compute
        precision (a float64 input computed in float32 comes back identical where nothing
        changed).
        """
        t = t.detach()
        exact = unchanged is not None and self.source is not None and not keep_dtype
        same = t == unchanged.detach().to(t.device) if exact and unchanged is not None else None
        if self.is_tensor:
            out = t.to(self.device)
            if not keep_dtype and out.is_floating_point() and self.dtype.is_floating_point:
                out = out.to(self.dtype)
            return out if same is None else torch.where(same.to(out.device), self.source, out)
        arr = t.cpu().numpy()
        if not keep_dtype and np.issubdtype(arr.dtype, np.floating):
            if np.issubdtype(self.dtype, np.floating):
                arr = arr.astype(self.dtype, copy=False)
        return arr if same is None else np.where(same.cpu().numpy(), self.source, arr)


def as_device(device: str | torch.device | None) -> torch.device:
    """Resolve a device specification (``None`` means CPU)."""
    return torch.device("cpu") if device is None else torch.device(device)


def to_tensor(
    x: Any,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> tuple[torch.Tensor, ArrayKind]:
    """Convert ``x`` to a tensor on ``device`` and remember how to give results back.

    Tensors already on ``device`` with ``dtype`` are returned as they are (no copy); callers
    must not modify them in place. NumPy arrays share memory with the tensor where possible.

    Parameters
    ----------
    x : array-like or torch.Tensor
        Input data.
    device : torch.device, optional
        Target device; ``None`` keeps a tensor's device (CPU for arrays).
    dtype : torch.dtype or None
        Target dtype; ``None`` keeps the input's dtype.

    Returns
    -------
    tensor : torch.Tensor
    kind : ArrayKind
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        kind = ArrayKind(True, x.device, x.dtype, t if _rounds(t.dtype, dtype) else None)
    else:
        try:
            arr = np.asarray(x)
            rounds = arr.dtype.kind == "f" and _rounds(arr.dtype, dtype)
            kind = ArrayKind(False, None, arr.dtype, arr if rounds else None)
            if arr.dtype.kind == "c":
                raise TypeError("complex values have no real-valued meaning here")
            if arr.dtype == np.float16 or arr.dtype.kind in "biuf":
                t = torch.from_numpy(np.ascontiguousarray(arr) if arr.ndim else arr.copy())
            else:
                t = torch.as_tensor(arr.astype(np.float64))
        except (TypeError, ValueError, RuntimeError) as err:
            # Strings, ragged lists, arbitrary objects: a clear error instead of NumPy's.
            raise InputError(
                f"expected a numeric array or a torch tensor, got {type(x).__name__} that does "
                f"not convert to one ({str(err).splitlines()[0][:160]})."
            ) from None
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None and t.device != device:
        t = t.to(device)
    return t, kind


def _rounds(given: Any, target: torch.dtype | None) -> bool:
    """Whether converting floats of dtype ``given`` (torch or NumPy) to ``target`` loses
    precision."""
    if target is None or not target.is_floating_point:
        return False
    if isinstance(given, torch.dtype):
        return given.is_floating_point and given.itemsize > target.itemsize
    return np.dtype(given).kind == "f" and np.dtype(given).itemsize > target.itemsize


def _fresh_seed() -> int:
    # OS entropy: never draws from (or advances) the global RNGs of torch, NumPy or random.
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)


def resolve_random_state(
    random_state: RandomStateLike, device: str | torch.device | None = None
) -> torch.Generator:
    """Turn ``random_state`` into a :class:`torch.Generator` on ``device``.

    Parameters
    ----------
    random_state : None, int or torch.Generator
        ``None`` draws a fresh seed from the operating system; an int seeds a new generator
        (the same int always gives the same stream); a generator on ``device`` is used as is
        (and advanced), one on another device seeds a new generator on ``device`` from its
        stream.
    device : torch.device, optional
        Where random numbers will be drawn (CPU when ``None``).

    Returns
    -------
    torch.Generator
    """
    dev = as_device(device)
    if isinstance(random_state, torch.Generator):
        if random_state.device.type == dev.type:
            return random_state
        seed = int(
            torch.randint(0, 2**62, (1,), generator=random_state, device=random_state.device)
        )
    elif random_state is None:
        seed = _fresh_seed()
    else:
        seed = int(random_state)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    return gen
