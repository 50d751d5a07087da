"""Deterministic input squeezing: fewer colour levels, median smoothing, JPEG compression."""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import torch

from bastion._validation import Constraint, Interval
from bastion.defenses.preprocessing._base import CLIP_VALUES, Preprocessor
from bastion.exceptions import InputError

__all__ = ["FeatureSqueezing", "JpegCompression", "SpatialSmoothing"]


class FeatureSqueezing(Preprocessor):
    """Reduce the colour depth to ``2**bit_depth`` levels over ``clip_values`` (Xu et al. 2018).

    Each value is mapped to the unit range, multiplied by ``2**bit_depth - 1``, rounded to the
    nearest integer and mapped back: ``lo + round((x - lo) / (hi - lo) * (2**b - 1)) / (2**b -
    1) * (hi - lo)``. Rounding is torch's (and NumPy's ``rint``, as in ART): to the nearest
    integer, ties to even. With ``bit_depth=2`` and ``clip_values=(0, 4)`` the values
    ``[0, 1, 2, 3, 4]`` scale to ``[0, 0.75, 1.5, 2.25, 3]``, round to ``[0, 1, 2, 2, 3]`` (the
    tie 1.5 goes to the even 2) and come back as ``[0, 4/3, 8/3, 8/3, 4]``.

    Threat model: squeezing removes small perturbations, but it is not differentiable (zero
    gradient almost everywhere), so a white-box attacker differentiates through the identity
    (BPDA, :meth:`bpda`) and is barely slowed down (Athalye et al. 2018). Works on batches of
    any shape.

    Parameters
    ----------
    bit_depth : int, default 8
        Bits per value, in ``[1, 64]``.
    clip_values : (float, float), default (0.0, 1.0)
        The data range.

    References
    ----------
    Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
    Networks", NDSS 2018. https://arxiv.org/abs/1704.01155

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.preprocessing import FeatureSqueezing
    >>> squeeze = FeatureSqueezing(bit_depth=2, clip_values=(0.0, 4.0))
    >>> squeeze(torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])) * 3
    tensor([[ 0.,  4.,  8.,  8., 12.]])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "bit_depth": [Interval(int, 1, 64)],
        "clip_values": CLIP_VALUES,
    }

    def __init__(self, *, bit_depth: int = 8, clip_values: tuple[float, float] = (0.0, 1.0)):
        self.bit_depth = bit_depth
        self.clip_values = clip_values

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range()
        levels = float(2**self.bit_depth - 1)
        span = hi - lo
        # ((x - lo) / span).clamp(0, 1), rounded to levels, mapped back: the same operations in
        # the same order on one copy, in place (x - 0, x / 1 and x * 1 are exact: skipped).
        if lo != 0.0:
            out = x - lo
            if span != 1.0:
                out.div_(span)
        elif span != 1.0:
            out = x / span
        else:
            out = x.clamp(0.0, 1.0)
        if lo != 0.0 or span != 1.0:
            out.clamp_(0.0, 1.0)
        out.mul_(levels).round_().div_(levels)
        if span != 1.0:
            out.mul_(span)
        return out.add_(lo)


def _symmetric_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of ``range(-before, n + after)`` reflected into ``[0, n)`` about the edges
    (``d c b a | a b c d | d c b a``: SciPy's ``mode="reflect"``), for any padding width."""
    i = torch.arange(-before, n + after, device=device)
    m = i.remainder(2 * n)
    return torch.where(m < n, m, 2 * n - 1 - m)


# Devillard's median selection networks ("Fast median search: an ANSI C implementation",
# 1998): opt_med9 (19 compare-exchanges, after J. L. Smith, XILINX XCELL 23) and opt_med25
# (99, from Graphics Gems). A compare-exchange (i, j) puts the min in i and the max in j; the
# median ends in the middle wire. Both checked on all 0/1 inputs (the 0-1 principle).
_MED9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
         (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))  # fmt: skip
_MED25 = ((0, 1), (3, 4), (2, 4), (2, 3), (6, 7), (5, 7), (5, 6), (9, 10), (8, 10), (8, 9),
          (12, 13), (11, 13), (11, 12), (15, 16), (14, 16), (14, 15), (18, 19), (17, 19),
          (17, 18), (21, 22), (20, 22), (20, 21), (23, 24), (2, 5), (3, 6), (0, 6), (0, 3),
          (4, 7), (1, 7), (1, 4), (11, 14), (8, 14), (8, 11), (12, 15), (9, 15), (9, 12),
          (13, 16), (10, 16), (10, 13), (20, 23), (17, 23), (17, 20), (21, 24), (18, 24),
          (18, 21), (19, 22), (8, 17), (9, 18), (0, 18), (0, 9), (10, 19), (1, 19), (1, 10),
          (11, 20), (2, 20), (2, 11), (12, 21), (3, 21), (3, 12), (13, 22), (4, 22), (4, 13),
          (14, 23), (5, 23), (5, 14), (15, 24), (6, 24), (6, 15), (7, 16), (7, 19), (13, 21),
          (15, 23), (7, 13), (7, 15), (1, 9), (3, 11), (5, 17), (11, 17), (9, 17), (4, 10),
          (6, 12), (7, 14), (4, 6), (4, 7), (12, 14), (10, 14), (6, 7), (10, 12), (6, 10),
          (6, 17), (12, 17), (7, 17), (7, 10), (12, 18), (7, 12), (10, 18), (12, 20),
          (10, 20), (10, 12))  # fmt: skip
_MEDIAN_NETWORKS = {3: _MED9, 5: _MED25}


def _median_network(p: list[torch.Tensor], network: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """The elementwise median of the tensors ``p`` (an odd number) by a selection network:
    one of the values (min and max only move them), so equal to ``kthvalue`` over them. Each
    compare-exchange computes only the outputs that a later one (or the result) reads."""
    middle = len(p) // 2
    live, plan = {middle}, []
    for i, j in reversed(network):
        if i in live or j in live:
            plan.append((i, j, i in live, j in live))
            live |= {i, j}
    p = list(p)
    for i, j, need_min, need_max in reversed(plan):
        low = torch.minimum(p[i], p[j]) if need_min else None
        if need_max:
            p[j] = torch.maximum(p[i], p[j])
        if low is not None:
            p[i] = low
    return p[middle]


class SpatialSmoothing(Preprocessor):
    """Median filter over each channel of images ``(N, C, H, W)`` (Xu et al. 2018).

    Each pixel becomes the median of the ``window x window`` patch around it, channel by
    channel. The result equals ``scipy.ndimage.median_filter(image, size=(1, window,
    window), mode="reflect")`` image by image (checked by the tests for windows 2 to 5):

    - edges are extended by reflection about the edge, the edge value repeated
      (``d c b a | a b c d | d c b a``);
    - an even window covers the offsets ``-window // 2 .. window // 2 - 1`` around the pixel
      (SciPy's ``origin=0``), and its median is the upper of the two middle values (SciPy's
      rank ``window**2 // 2``): ``window=2`` maps ``[[1, 2], [3, 4]]`` to ``[[1, 2], [3, 3]]``.

    The whole batch is filtered at once, no loop over images: 3 x 3 and 5 x 5 windows by a
    min/max selection network over the shifted images (Devillard's ``opt_med9`` and
    ``opt_med25``), other windows by ``unfold`` and ``kthvalue``.

    Threat model: removes salt-and-pepper-like perturbations; not differentiable usefully
    (BPDA with the identity defeats it, Athalye et al. 2018).

    Parameters
    ----------
    window : int, default 3
        Side of the square window (>= 1; 1 is the identity).
    clip_values : (float, float), default (0.0, 1.0)
        The data range.

    References
    ----------
    Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
    Networks", NDSS 2018. https://arxiv.org/abs/1704.01155

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.preprocessing import SpatialSmoothing
    >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> SpatialSmoothing(window=2, clip_values=(0.0, 4.0))(x)
    tensor([[[[1., 2.],
              [3., 3.]]]])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "window": [Interval(int, 1, None)],
        "clip_values": CLIP_VALUES,
    }

    def __init__(self, *, window: int = 3, clip_values: tuple[float, float] = (0.0, 1.0)):
        self.window = window
        self.clip_values = clip_values

    def _check_shape(self, t: torch.Tensor) -> None:
        self._check_images(t)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        w = int(self.window)
        if w == 1:
            return x.clone()
        n, c, h, width = x.shape
        before, after = w // 2, w - 1 - w // 2
        rows = _symmetric_index(h, before, after, x.device)
        cols = _symmetric_index(width, before, after, x.device)
        padded = x.index_select(2, rows).index_select(3, cols)
        network = _MEDIAN_NETWORKS.get(w)
        if network is not None:
            views = [padded[:, :, i : i + h, j : j + width] for i in range(w) for j in range(w)]
            return _median_network(views, network)
        patches = padded.unfold(2, w, 1).unfold(3, w, 1).reshape(n, c, h, width, w * w)
        return patches.kthvalue(w * w // 2 + 1, dim=-1).values


class JpegCompression(Preprocessor):
    """JPEG-compress and decompress each image with the real codec (Dziugaite et al. 2016).

    Images ``(N, C, H, W)`` with 1 (greyscale, Pillow mode ``L``) or 3 (``RGB``) channels are
    mapped from ``clip_values`` to ``[0, 255]`` (data in ``(0, 1)`` scaled by 255, data in
    ``(0, 255)`` used as is), rounded to ``uint8``, encoded at ``quality`` and decoded by
    Pillow (one encode and one decode per image, Pillow's default chroma subsampling), then
    mapped back to ``clip_values`` in the input's dtype and on its device.

    Threat model: removes high-frequency perturbations; not differentiable (it runs outside
    torch), so an adaptive attacker uses BPDA with the identity (:meth:`bpda`) or a
    differentiable JPEG approximation (Athalye et al. 2018; Shin and Song 2017).

    Parameters
    ----------
    quality : int, default 50
        JPEG quality in ``[1, 100]`` (100 is nearly lossless).
    clip_values : (float, float), default (0.0, 1.0)
        The data range.

    References
    ----------
    Dziugaite, Ghahramani and Roy, "A study of the effect of JPG compression on adversarial
    images", 2016. https://arxiv.org/abs/1608.00853

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.preprocessing import JpegCompression
    >>> x = torch.full((2, 3, 8, 8), 0.5)
    >>> out = JpegCompression(quality=90)(x)
    >>> out.shape, bool((out - x).abs().max() < 0.02)
    (torch.Size([2, 3, 8, 8]), True)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "quality": [Interval(int, 1, 100)],
        "clip_values": CLIP_VALUES,
    }

    def __init__(self, *, quality: int = 50, clip_values: tuple[float, float] = (0.0, 1.0)):
        self.quality = quality
        self.clip_values = clip_values

    def _check_shape(self, t: torch.Tensor) -> None:
        self._check_images(t)
        if t.shape[1] not in (1, 3):
            raise InputError(
                f"JpegCompression encodes images with 1 (greyscale) or 3 (RGB) channels; got "
                f"{t.shape[1]} channels (shape {tuple(t.shape)})."
            )

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range()
        span = hi - lo
        n, c, h, w = x.shape
        # round(clamp((x - lo) / span, 0, 1) as float32 * 255) to uint8, made straight into a
        # contiguous (N, H, W, C) batch for Pillow. x - 0 and x / 1 are exact (skipped), and
        # clamping after the exact casts and the monotone * 255 gives the same values.
        unit = x.detach()
        if lo != 0.0:
            unit = unit - lo
        if span != 1.0:
            unit = unit / span
        scaled = torch.empty((n, h, w, c), dtype=torch.float32, device=x.device)
        if unit.dtype == torch.float32:
            torch.mul(unit.permute(0, 2, 3, 1), 255.0, out=scaled)
        else:
            scaled.copy_(unit.permute(0, 2, 3, 1)).mul_(255.0)
        pixels = scaled.clamp_(0.0, 255.0).round_().to(torch.uint8).cpu().numpy()
        decoded = np.empty_like(pixels)
        for image, into in zip(pixels, decoded, strict=True):
            _jpeg(image, int(self.quality), into)
        # Back on uint8 (a quarter of the bytes) to (N, C, H, W), then / 255 in x's dtype,
        # * span and + lo (skipped where exact: * 1, + 0 on values >= +0).
        out = torch.from_numpy(decoded).permute(0, 3, 1, 2).contiguous()
        out = out.to(x.device).to(x.dtype).div_(255.0)
        if span != 1.0:
            out.mul_(span)
        if lo != 0.0:
            out.add_(lo)
        return out


def _jpeg(image: np.ndarray, quality: int, into: np.ndarray) -> None:
    """One ``uint8`` image ``(H, W, C)``, C in {1, 3}, through Pillow's JPEG encoder and
    decoder, written into ``into`` (same shape)."""
    from PIL import Image

    grey = image.shape[2] == 1
    mode = "L" if grey else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if grey else image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded if decoded.mode == mode else decoded.convert(mode))
    if grey:
        into[:, :, 0] = out
    else:
        into[...] = out
