"""Iteration machinery shared by the optimisation-based attacks and defences, written once.

* :func:`adam_step`: one step of Adam (Kingma and Ba, 2015) that is elementwise, so each
  sample, class or coordinate of a batch is optimised independently and may have its own step
  count (CW, EAD, ZOO, the adversarial patch, Neural Cleanse's trigger search).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["adam_step"]


def adam_step(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    t: Any,
    lr: Any,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam descent step on ``p`` with gradient ``g``; returns ``(p, m, v)``.

    Elementwise, so every row of a batch is optimised independently. ``t`` (the step number,
    starting at 1) and ``lr`` are numbers or tensors broadcastable to ``p`` (one step count per
    sample, class or coordinate). ``m`` and ``v`` are not modified in place.

    Kingma and Ba, "Adam: a method for stochastic optimization", ICLR 2015.
    https://arxiv.org/abs/1412.6980
    """
    b1, b2 = betas
    m = m.mul(b1).add_(g, alpha=1 - b1)
    v = v.mul(b2).addcmul_(g, g, value=1 - b2)
    if isinstance(t, torch.Tensor):
        m_hat = m / (1 - torch.pow(b1, t))
        v_hat = v / (1 - torch.pow(b2, t))
    else:
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v
