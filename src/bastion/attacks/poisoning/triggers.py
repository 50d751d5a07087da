"""Backdoor triggers: stamp a pattern on a batch of channel-first images ``(N, C, H, W)`` in
one batched torch operation, clipped to ``clip_values``.

:class:`PixelTrigger`, :class:`PatchTrigger` (BadNets, Gu et al. 2017), :class:`BlendTrigger`
(Chen et al. 2017) and :class:`SinusoidalTrigger` (Barni et al. 2019).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._params import Parametrized
from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    NONE,
    RANDOM_STATE,
    Constraint,
    Interval,
    Options,
    Satisfies,
    invalid_parameter,
)
from bastion.attacks.poisoning._base import (
    _CLIP,
    PoisoningAttack,
    _check_samples,
    _is_array,
    _to_tensor,
)
from bastion.exceptions import InputError

__all__ = ["BlendTrigger", "PatchTrigger", "PixelTrigger", "SinusoidalTrigger", "Trigger"]


# --------------------------------------------------------------------------- triggers


class Trigger(Parametrized):
    """Base of backdoor triggers: ``apply(x)`` stamps the trigger on every image of a batch.

    Subclasses implement ``_apply(x, generator) -> x_triggered`` on a float tensor
    ``(N, C, H, W)``; the template validates parameters and input, converts NumPy/torch in and
    out and clips the result to ``clip_values``.
    """

    clip_values: tuple[float, float]

    def apply(self, x: Any, *, random_state: RandomStateLike = None) -> Any:
        """Stamp the trigger on every image of ``x``.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Channel-first images inside ``clip_values``.
        random_state : None, int or torch.Generator
            Draws what is random per sample (e.g. the position of a ``"random"`` patch).

        Returns
        -------
        x_triggered : same type, device, dtype and shape as ``x``

        Raises
        ------
        InputError
            ``x`` is not a non-empty batch of finite float images inside ``clip_values``
            (the trigger would clip such images, changing them beyond the trigger).
        """
        self._validate()
        owner = type(self).__name__
        xt, kind = _to_tensor(x, "x", owner)
        _check_samples(xt, owner, sample_ndim=3, clip_values=self.clip_values)
        gen = resolve_random_state(random_state, "cpu")
        return kind.restore(self._apply_tensor(xt, gen))

    def _apply_tensor(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Trigger a validated float tensor; draws on ``generator`` (a CPU generator)."""
        lo, hi = self.clip_values
        return self._apply(x, generator).clamp(float(lo), float(hi))

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


_CORNERS = ("bottom-right", "bottom-left", "top-left", "top-right", "center", "random")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_int_pair(value: Any, low: int) -> bool:
    return (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(_is_int(v) and int(v) >= low for v in value)
    )


def _is_position(value: Any) -> bool:
    return value in _CORNERS if isinstance(value, str) else _is_int_pair(value, 0)


def _is_size(value: Any) -> bool:
    return int(value) >= 1 if _is_int(value) else _is_int_pair(value, 1)


_POSITION: list[Constraint] = [
    Satisfies(
        _is_position, "one of " + ", ".join(repr(c) for c in _CORNERS) + " or a pair (row, col)"
    )
]


class PatchTrigger(Trigger):
    """A rectangular patch of constant value or of a given pattern (BadNets, Gu et al. 2017).

    The patch overwrites the pixels it covers, in every channel.

    Parameters
    ----------
    size : int, (int, int) or None, default=3
        Height and width of the patch (an int for a square). ``None`` takes them from the
        pattern given as ``value``.
    position : str or (int, int), default="bottom-right"
        ``"bottom-right"``, ``"bottom-left"``, ``"top-left"``, ``"top-right"``, ``"center"``,
        ``"random"`` (drawn per sample, uniformly among the positions where the patch fits) or
        the (row, col) of the patch's top-left pixel.
    value : float or array-like, default=1.0
        One value for the whole patch, one per channel (shape ``(C,)``) or a pattern of shape
        ``(h, w)`` or ``(C, h, w)`` (e.g. a checkerboard).
    margin : int, default=0
        Distance in pixels between the patch and the image border for the corner and random
        positions.
    clip_values : (float, float), default=(0.0, 1.0)
        Valid pixel range; the triggered image is clipped to it.

    References
    ----------
    T. Gu, B. Dolan-Gavitt, S. Garg. "BadNets: Identifying Vulnerabilities in the Machine
    Learning Model Supply Chain." arXiv:1708.06733, 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.attacks.poisoning import PatchTrigger
    >>> x = np.zeros((2, 1, 5, 5), dtype=np.float32)
    >>> PatchTrigger(size=2, position="bottom-right").apply(x)[0, 0]
    array([[0., 0., 0., 0., 0.],
           [0., 0., 0., 0., 0.],
           [0., 0., 0., 0., 0.],
           [0., 0., 0., 1., 1.],
           [0., 0., 0., 1., 1.]], dtype=float32)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "size": [NONE, Satisfies(_is_size, "a positive int or a pair of positive ints")],
        "position": _POSITION,
        "value": [Interval(float, None, None), Satisfies(_is_array, "a finite array")],
        "margin": [Interval(int, 0, None)],
        "clip_values": _CLIP,
    }

    def __init__(
        self,
        size: int | tuple[int, int] | None = 3,
        position: str | tuple[int, int] = "bottom-right",
        value: Any = 1.0,
        *,
        margin: int = 0,
        clip_values: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.size = size
        self.position = position
        self.value = value
        self.margin = margin
        self.clip_values = clip_values

    def _patch(self, x: torch.Tensor) -> torch.Tensor:
        """The patch as a tensor ``(C, h, w)`` (``C`` may be 1, broadcast over channels)."""
        owner = type(self).__name__
        channels = x.shape[1]
        if isinstance(self.value, numbers.Real):
            if self.size is None:
                raise invalid_parameter(
                    "size", owner, "a positive int or pair when value is a number", None
                )
            h, w = (self.size, self.size) if isinstance(self.size, int) else self.size
            return torch.full((1, int(h), int(w)), float(self.value), dtype=x.dtype)
        pat, _ = to_tensor(self.value, dtype=x.dtype)
        pat = pat.cpu()
        if pat.ndim == 1:  # one value per channel
            if self.size is None:
                raise invalid_parameter(
                    "size", owner, "a positive int or pair when value is per channel", None
                )
            h, w = (self.size, self.size) if isinstance(self.size, int) else self.size
            pat = pat.reshape(-1, 1, 1).expand(-1, int(h), int(w))
        elif pat.ndim == 2:
            pat = pat.unsqueeze(0)
        if pat.ndim != 3 or pat.shape[0] not in (1, channels):
            raise invalid_parameter(
                "value",
                owner,
                f"a number, one value per channel ({channels},), or a pattern (h, w) or "
                f"({channels}, h, w)",
                f"an array of shape {tuple(np.shape(self.value))}",
            )
        if self.size is not None:
            want = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
            if tuple(pat.shape[1:]) != tuple(int(s) for s in want):
                raise invalid_parameter(
                    "value",
                    owner,
                    f"a pattern of spatial shape {tuple(want)} (the size), or size=None",
                    f"an array of shape {tuple(np.shape(self.value))}",
                )
        return pat

    def _corners(
        self, x: torch.Tensor, h: int, w: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[int, int]:
        n, _, height, width = x.shape
        m = self.margin
        if h + 2 * m > height or w + 2 * m > width:
            raise InputError(
                f"{type(self).__name__}: a {h}x{w} patch with margin {m} does not fit in "
                f"{height}x{width} images."
            )
        pos = self.position
        if pos == "random":
            # One position per sample, drawn on the CPU so a seed gives the same positions on
            # every device.
            rows = torch.randint(m, height - h - m + 1, (n,), generator=generator)
            cols = torch.randint(m, width - w - m + 1, (n,), generator=generator)
            return rows.to(x.device), cols.to(x.device)
        if isinstance(pos, str):
            top, left, bottom, right = m, m, height - h - m, width - w - m
            row = {"top": top, "bottom": bottom, "center": (height - h) // 2}[pos.split("-")[0]]
            col = {"left": left, "right": right, "center": (width - w) // 2}[pos.split("-")[-1]]
            return row, col
        row, col = int(pos[0]), int(pos[1])
        if row + h > height or col + w > width:
            raise InputError(
                f"{type(self).__name__}: a {h}x{w} patch at (row, col)={(row, col)} does not "
                f"fit in {height}x{width} images."
            )
        return row, col

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        patch = self._patch(x).to(x.device)
        h, w = patch.shape[1:]
        where = self._corners(x, h, w, generator)
        if isinstance(where[0], int):
            row, col = where
            out = x.clone()
            out[:, :, row : row + h, col : col + w] = patch
            return out
        rows, cols = where
        _, _, height, width = x.shape
        dr = torch.arange(height, device=x.device).view(1, -1, 1) - rows.view(-1, 1, 1)
        dc = torch.arange(width, device=x.device).view(1, 1, -1) - cols.view(-1, 1, 1)
        inside = (dr >= 0) & (dr < h) & (dc >= 0) & (dc < w)  # (N, H, W)
        values = patch[:, dr.clamp(0, h - 1), dc.clamp(0, w - 1)].transpose(0, 1)  # (N, C, H, W)
        return torch.where(inside.unsqueeze(1), values, x)


class PixelTrigger(PatchTrigger):
    """A single bright pixel (the single-pixel backdoor of BadNets, Gu et al. 2017).

    Parameters
    ----------
    position : str or (int, int), default="bottom-right"
        As for :class:`PatchTrigger`: a corner, ``"center"``, ``"random"`` or (row, col).
    value : float or array-like, default=1.0
        The pixel's value, or one value per channel.
    margin : int, default=0
        Distance from the border for corner and random positions.
    clip_values : (float, float), default=(0.0, 1.0)
        Valid pixel range.

    References
    ----------
    T. Gu, B. Dolan-Gavitt, S. Garg. "BadNets: Identifying Vulnerabilities in the Machine
    Learning Model Supply Chain." arXiv:1708.06733, 2017.

    Examples
    --------
    >>> import torch
    >>> from bastion.attacks.poisoning import PixelTrigger
    >>> out = PixelTrigger(position=(1, 2), value=0.5).apply(torch.zeros(1, 1, 3, 4))
    >>> torch.nonzero(out).tolist(), float(out[0, 0, 1, 2])
    ([[0, 0, 1, 2]], 0.5)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "position": _POSITION,
        "value": [Interval(float, None, None), Satisfies(_is_array, "a finite array")],
        "margin": [Interval(int, 0, None)],
        "clip_values": _CLIP,
    }
    size: int = 1  # a class attribute: the pixel trigger is a 1x1 patch

    def __init__(
        self,
        position: str | tuple[int, int] = "bottom-right",
        value: Any = 1.0,
        *,
        margin: int = 0,
        clip_values: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.position = position
        self.value = value
        self.margin = margin
        self.clip_values = clip_values


class BlendTrigger(Trigger):
    """A key pattern blended over the whole image (Chen et al. 2017, blended injection).

    ``x' = (1 - alpha) * x + alpha * pattern``.

    Parameters
    ----------
    pattern : "random" or array-like, default="random"
        The key: an array broadcastable to one image ``(C, H, W)`` (e.g. ``(H, W)``), or
        ``"random"`` for uniform noise over ``clip_values`` (the random-pattern key of the
        paper), drawn once from ``random_state`` and kept in ``pattern_``, so that the same
        trigger object stamps the same key at training and at test time.
    alpha : float, default=0.2
        Blend ratio in ``[0, 1]`` (the paper poisons with 0.2 and tests with up to 0.2-0.5).
    random_state : None, int or torch.Generator, default=0
        Seed of the random key.
    clip_values : (float, float), default=(0.0, 1.0)
        Valid pixel range.

    Attributes
    ----------
    pattern_ : torch.Tensor
        The key used, shape ``(C, H, W)`` (set at the first ``apply``).

    References
    ----------
    X. Chen, C. Liu, B. Li, K. Lu, D. Song. "Targeted Backdoor Attacks on Deep Learning Systems
    Using Data Poisoning." arXiv:1712.05526, 2017.

    Examples
    --------
    >>> import torch
    >>> from bastion.attacks.poisoning import BlendTrigger
    >>> trigger = BlendTrigger(pattern=torch.ones(4, 4), alpha=0.25)
    >>> float(trigger.apply(torch.zeros(1, 1, 4, 4)).mean())
    0.25
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "pattern": [Options(["random"]), Satisfies(_is_array, "a finite array")],
        "alpha": [Interval(float, 0, 1)],
        "random_state": RANDOM_STATE,
        "clip_values": _CLIP,
    }

    def __init__(
        self,
        pattern: Any = "random",
        alpha: float = 0.2,
        *,
        random_state: RandomStateLike = 0,
        clip_values: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.pattern = pattern
        self.alpha = alpha
        self.random_state = random_state
        self.clip_values = clip_values

    def _key(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        if isinstance(self.pattern, str):
            cached = getattr(self, "pattern_", None)
            if cached is None or tuple(cached.shape) != shape:
                lo, hi = self.clip_values
                gen = resolve_random_state(self.random_state, "cpu")
                cached = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
        else:
            cached, _ = to_tensor(self.pattern, dtype=torch.float64)
            try:
                cached = torch.broadcast_to(cached.cpu(), shape)
            except RuntimeError:
                raise invalid_parameter(
                    "pattern",
                    type(self).__name__,
                    f"'random' or an array broadcastable to one image {shape}",
                    f"an array of shape {tuple(np.shape(self.pattern))}",
                ) from None
        self.pattern_ = cached
        return cached.to(device=x.device, dtype=x.dtype)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (1.0 - self.alpha) * x + self.alpha * self._key(x)


class SinusoidalTrigger(Trigger):
    """A horizontal sinusoidal signal added to the image (Barni et al. 2019).

    ``x'[..., i, j] = x[..., i, j] + amplitude * sin(2 pi j frequency / W)`` for every row
    ``i``, column ``j = 0 .. W-1`` and channel, then clipped. The paper designs it for
    clean-label poisoning; with :class:`BackdoorAttack` it serves as a dirty-label trigger.

    Parameters
    ----------
    amplitude : float, default=0.08
        Peak amplitude (the paper uses 20/255 on MNIST-like data at training time).
    frequency : float, default=6
        Periods across the image width.
    clip_values : (float, float), default=(0.0, 1.0)
        Valid pixel range.

    References
    ----------
    M. Barni, K. Kallas, B. Tondi. "A New Backdoor Attack in CNNs by Training Set Corruption
    Without Label Poisoning." ICIP 2019.

    Examples
    --------
    >>> import torch
    >>> from bastion.attacks.poisoning import SinusoidalTrigger
    >>> out = SinusoidalTrigger(amplitude=0.1, frequency=1).apply(torch.full((1, 1, 2, 4), 0.5))
    >>> out[0, 0, 0].tolist()
    [0.5, 0.6000000238418579, 0.5, 0.4000000059604645]
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "amplitude": [Interval(float, 0, None)],
        "frequency": [Interval(float, 0, None, closed="neither")],
        "clip_values": _CLIP,
    }

    def __init__(
        self,
        amplitude: float = 0.08,
        frequency: float = 6,
        *,
        clip_values: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.amplitude = amplitude
        self.frequency = frequency
        self.clip_values = clip_values

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        width = x.shape[-1]
        j = torch.arange(width, device=x.device, dtype=torch.float64)
        signal = self.amplitude * torch.sin(2 * math.pi * j * float(self.frequency) / width)
        # sin(pi) is not exactly 0 in floating point: round away the 1e-17 residue.
        signal = torch.where(signal.abs() < 1e-12, torch.zeros_like(signal), signal)
        return x + signal.to(x.dtype)


# --------------------------------------------------------------------------- attacks


def _is_trigger(value: Any) -> bool:
    return isinstance(value, Trigger)


#: The ``trigger`` parameter of the attacks that plant one.
TRIGGER: list[Constraint] = [Satisfies(_is_trigger, "a Trigger instance")]


class _TriggerAttack(PoisoningAttack):
    """A poisoning attack that plants a backdoor ``trigger``; :meth:`apply_trigger` stamps it
    on test inputs."""

    trigger: Trigger
    random_state: RandomStateLike

    def apply_trigger(self, x: Any) -> Any:
        """Stamp the trigger on every sample of ``x`` (test inputs, to measure the attack's
        success rate); same type out as in. Draws on ``random_state`` where the trigger is
        random (a ``"random"`` patch position)."""
        self._validate_params()
        return self.trigger.apply(x, random_state=self.random_state)
