"""Deterministic input squeezing: fewer colour levels, median smoothing, JPEG compression."""

from __future__ import annotations

import io
from typing import Any, ClassVar

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
        unit = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        return torch.round(unit * levels) / levels * (hi - lo) + lo


def _symmetric_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of ``range(-before, n + after)`` reflected into ``[0, n)`` about the edges
    (``d c b a | a b c d | d c b a``: SciPy's ``mode="reflect"``), for any padding width."""
    i = torch.arange(-before, n + after, device=device)
    m = i.remainder(2 * n)
    return torch.where(m < n, m, 2 * n - 1 - m)


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

    The whole batch is filtered at once (``unfold`` and ``kthvalue``), no loop over images.

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
        unit = ((x.detach() - lo) / (hi - lo)).clamp(0.0, 1.0)
        pixels = torch.round(unit.float() * 255.0).to(torch.uint8)
        images = pixels.permute(0, 2, 3, 1).cpu().numpy()
        decoded = np.stack([_jpeg(image, int(self.quality)) for image in images])
        out = torch.from_numpy(decoded).to(x.device).permute(0, 3, 1, 2).to(x.dtype)
        return (out / 255.0 * (hi - lo) + lo).contiguous()


def _jpeg(image: np.ndarray, quality: int) -> Any:
    """One ``uint8`` image ``(H, W, C)``, C in {1, 3}, through Pillow's JPEG encoder and
    decoder."""
    from PIL import Image

    grey = image.shape[2] == 1
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if grey else image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert("L" if grey else "RGB"))
    return out[:, :, None] if grey else out
