"""Thermometer encoding: each value becomes a column of level indicators."""

from __future__ import annotations

from typing import ClassVar

import torch

from bastion._validation import Constraint, Interval
from bastion.defenses.preprocessing._base import CLIP_VALUES, Preprocessor

__all__ = ["ThermometerEncoding"]


class ThermometerEncoding(Preprocessor):
    """Thermometer-encode each value into ``levels`` binary channels (Buckman et al. 2018).

    A value ``x`` of channel ``c``, mapped to ``u = (x - lo) / (hi - lo)`` in ``[0, 1]``,
    becomes ``levels`` values at channels ``c * levels + k``: ``tau(u)_0 = 1`` and ``tau(u)_k
    = 1 if u > k / levels else 0`` for ``k >= 1`` (ART's convention). A batch ``(N, C, ...)``
    becomes ``(N, C * levels, ...)``: **the model behind must take ``C * levels`` input
    channels** (it is trained on encoded inputs), unlike every other preprocessor, which keeps
    the shape.

    :meth:`bpda` is the soft, differentiable thermometer encoding that Athalye et al. (2018)
    substitute for the hard one to break the defence: ``soft(u)_0 = 1`` and ``soft(u)_k =
    clip(levels * u - k, 0, 1)``. It equals the hard encoding except in the one level whose
    threshold ``u`` is passing (error below one level per value), and its levels sum to
    ``1 + max(levels * u - 1, 0)``, linear in ``u``.

    Threat model: gradient masking by a discrete encoding; broken by BPDA through the soft
    encoding (Athalye et al. 2018). Not differentiable (zero gradient).

    Parameters
    ----------
    levels : int, default 10
        Number of quantisation levels (>= 2).
    clip_values : (float, float), default (0.0, 1.0)
        The data range.

    References
    ----------
    Buckman, Roy, Raffel and Goodfellow, "Thermometer Encoding: One Hot Way To Resist
    Adversarial Examples", ICLR 2018. https://openreview.net/forum?id=S18Su--CW

    Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of Security",
    ICML 2018. https://arxiv.org/abs/1802.00420

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.preprocessing import ThermometerEncoding
    >>> ThermometerEncoding(levels=4)(torch.tensor([[0.1, 0.6]]))
    tensor([[1., 0., 0., 0., 1., 1., 1., 0.]])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "levels": [Interval(int, 2, None)],
        "clip_values": CLIP_VALUES,
    }

    def __init__(self, *, levels: int = 10, clip_values: tuple[float, float] = (0.0, 1.0)):
        self.levels = levels
        self.clip_values = clip_values

    def _scaled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``levels * u`` with a trailing level axis, and the thresholds ``k``."""
        lo, hi = self._range()
        scaled = ((x - lo) / (hi - lo)).clamp(0.0, 1.0).unsqueeze(2) * self.levels
        k = torch.arange(self.levels, device=x.device, dtype=x.dtype)
        return scaled, k.view(1, 1, -1, *([1] * (x.ndim - 2)))

    def _flatten(self, code: torch.Tensor) -> torch.Tensor:
        n, c = code.shape[:2]
        return code.reshape(n, c * self.levels, *code.shape[3:])

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        scaled, k = self._scaled(x)
        code = (scaled > k) | (k == 0)
        return self._flatten(code.to(x.dtype))

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        """The soft thermometer encoding ``clip(levels * u - k, 0, 1)`` (level 0: 1): the
        differentiable stand-in for :meth:`apply_tensor` in a BPDA attack."""
        self._validate()
        scaled, k = self._scaled(x)
        soft = torch.where(k == 0, torch.ones_like(scaled), (scaled - k).clamp(0.0, 1.0))
        return self._flatten(soft)
