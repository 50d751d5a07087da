"""The preprocessor template: validated parameters, checked inputs, a tensor kernel, a BPDA
surrogate and an explicit random stream."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from bastion._params import Parametrized
from bastion._tensor import resolve_random_state, to_tensor
from bastion._validation import Constraint, Satisfies, check_x
from bastion.exceptions import InputError

__all__ = ["CLIP_VALUES", "Preprocessor"]


def _is_range(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        return False
    lo, hi = (float(v) for v in value)
    return math.isfinite(lo) and math.isfinite(hi) and lo < hi


#: The data range a preprocessor works in: two finite floats ``(lo, hi)`` with ``lo < hi``.
CLIP_VALUES: list[Constraint] = [Satisfies(_is_range, "a pair (lo, hi) of finite floats, lo < hi")]


def _fast_in_range(t: torch.Tensor, clip_values: tuple[float, float], tol: float = 1e-6) -> bool:
    """One pass (``torch.aminmax``) telling that a non-empty floating-point batch holds only
    finite values inside ``clip_values`` (``check_x``'s tolerance): NaN propagates into the
    min and max and infinities fall outside the range, so ``True`` means ``check_x`` passes.
    ``False`` (a failure, or a batch this does not cover) leaves the verdict to ``check_x``."""
    if t.ndim == 0 or t.shape[0] == 0 or t.numel() == 0 or not t.is_floating_point():
        return False
    lo, hi = clip_values
    t_min, t_max = torch.aminmax(t)
    x_min, x_max = float(t_min), float(t_max)
    return lo - tol <= x_min and x_max <= hi + tol


class Preprocessor(Parametrized):
    """Base of input-transforming defences: ``preprocessor(x) -> x'`` before the model sees it.

    ``__init__`` only stores keyword parameters; they are validated at the first call. A
    subclass implements ``_apply(x)`` on a batch tensor (parameters valid, inputs checked) and,
    where the operation needs it, ``_check_shape(x)``.

    Attributes
    ----------
    differentiable : bool
        ``apply_tensor`` has useful gradients under torch autograd (an attacker can
        differentiate through it); ``False`` for quantisers, filters and codecs, whose
        gradient an adaptive attacker replaces with the one of :meth:`bpda`.
    randomized : bool
        Each call draws fresh randomness from the preprocessor's generator.
    """

    differentiable: ClassVar[bool] = False
    randomized: ClassVar[bool] = False

    # ------------------------------------------------------------------ public entry point

    def __call__(self, x: Any) -> Any:
        """Apply the defence to a batch ``x``; NumPy in, NumPy out; a tensor in, a tensor on
        its device and of its dtype out. ``x`` is never modified.

        Raises
        ------
        InvalidParameterError
            A parameter has a value outside its allowed set.
        InputError
            ``x`` is not a non-empty floating-point batch (at least two dimensions: batch
            first) of finite values inside ``clip_values``, or lacks the shape the operation
            needs (images ``(N, C, H, W)`` for the image defences).
        """
        self._validate()
        t, kind = to_tensor(x, dtype=None)
        self._check_input(t)
        return kind.restore(self.apply_tensor(t))

    def _check_input(self, t: torch.Tensor) -> None:
        name = type(self).__name__
        if t.ndim > 0 and t.numel() == 0:
            raise InputError(f"{name}: x is empty: got shape {tuple(t.shape)}.")
        clip_values = self._range()
        if not _fast_in_range(t, clip_values):
            # Something is wrong (or unusual): the full check names it (NaN/inf, range, ...).
            check_x(t, input_shape=None, clip_values=clip_values, name=f"{name}: x")
        if t.ndim < 2:
            raise InputError(
                f"{name}: x must be a batch (batch first, then the sample's dimensions); got "
                f"shape {tuple(t.shape)} (ndim {t.ndim}, expected ndim >= 2)."
            )
        self._check_shape(t)

    def _check_shape(self, t: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``t`` has the shape the operation needs."""

    def _check_images(self, t: torch.Tensor) -> None:
        if t.ndim != 4:
            raise InputError(
                f"{type(self).__name__} expects images of shape (N, C, H, W); got shape "
                f"{tuple(t.shape)} (ndim {t.ndim})."
            )

    def _range(self) -> tuple[float, float]:
        lo, hi = self.clip_values  # type: ignore[attr-defined]
        return float(lo), float(hi)

    # ------------------------------------------------------------------ kernels

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel: parameters validated, no checks on ``x`` (a batch tensor inside
        ``clip_values``); the same shape, dtype and device out (``ThermometerEncoding``
        multiplies the channels). Differentiable by autograd where ``differentiable``."""
        self._validate()
        return self._apply(x)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable surrogate of ``apply_tensor`` whose gradient a BPDA attacker
        uses (Athalye et al. 2018): the identity, unless a subclass knows better."""
        return x

    # ------------------------------------------------------------------ randomness

    def reset(self) -> None:
        """Restart the random stream from ``random_state``: an int gives the same sequence of
        outputs again; a ``torch.Generator`` (owned by the caller, never rewound) and
        ``None`` (a fresh seed) simply go on. A no-op for deterministic preprocessors."""
        self._generator: torch.Generator | None = None

    def _rng(self, device: torch.device) -> torch.Generator:
        """The generator kept across calls, resolved on ``device`` at the first draw."""
        gen = getattr(self, "_generator", None)
        if gen is None or gen.device.type != device.type:
            gen = resolve_random_state(self.random_state, device)  # type: ignore[attr-defined]
            self._generator = gen
        return gen
