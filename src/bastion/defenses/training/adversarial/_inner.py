"""The inner maximisation of adversarial training, in plain batched torch on the trainer's
module, and adversarial weight perturbation.

Each function takes ``forward``, a callable from inputs to logits (the estimator's module,
possibly under autocast), which the caller has put in eval mode: the examples are made with
the model in eval mode, as in the reference implementations of TRADES and MART (for models
without BatchNorm or dropout, such as the digits CNN, the mode makes no difference). Only
gradients with respect to the inputs are taken (``torch.autograd.grad``), so the parameters'
``.grad`` are untouched.

Random starts are drawn for the whole *global* batch from a generator seeded per (epoch,
batch), then indexed by this process's positions: every sample gets the same noise in one
process and under data parallelism, and a resumed run needs no RNG state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bastion.attacks._lp import project_point, random_in_ball, steepest_direction

__all__ = [
    "Forward",
    "awp_perturbation",
    "derive_seed",
    "global_noise",
    "kl_objective",
    "pgd",
    "weights_to_perturb",
]

#: A callable from a batch of inputs to logits.
Forward = Callable[[torch.Tensor], torch.Tensor]


def derive_seed(base: int, *keys: object) -> int:
    """A 63-bit seed from ``base`` and ``keys`` (e.g. epoch, batch, purpose): stable across
    runs, platforms and processes."""
    text = ":".join(str(k) for k in (base, *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def global_noise(
    kind: str,
    seed: int,
    shape: Sequence[int],
    positions: torch.Tensor | None,
    *,
    eps: float,
    norm: str,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Noise for a global batch of ``shape``, rows ``positions`` kept (all: ``None``).

    ``kind="ball"``: uniform in the ``norm`` ball of radius ``eps`` (Madry et al.; Wong et al.
    for the Linf box); ``kind="normal"``: ``0.001 * N(0, 1)``, the start of TRADES and MART.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    if kind == "normal":
        noise = 0.001 * torch.randn(tuple(shape), generator=gen, device=device, dtype=dtype)
    else:
        eps_t = torch.tensor(eps, device=device, dtype=dtype)
        noise = random_in_ball(tuple(shape), eps_t, norm, gen, device=device, dtype=dtype)
    return noise if positions is None else noise[positions]


def pgd(
    forward: Forward,
    x: torch.Tensor,
    x_start: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    eps_step: float,
    max_iter: int,
    norm: str,
    clip_values: tuple[float, float] | None,
) -> torch.Tensor:
    """``max_iter`` steps of projected steepest ascent on ``objective(logits)`` (a scalar,
    summed over the batch, so each row's gradient is its own), from ``x_start`` projected onto
    the ``eps``-ball around ``x`` intersected with ``clip_values``.

    Linf steps are ``eps_step * sign(grad)``, L2 steps ``eps_step * grad / ||grad||``; the
    projection is exact (bastion's :class:`~bastion.attacks.evasion.PGD` takes the same steps).
    """
    eps_t = torch.tensor(eps, device=x.device, dtype=x.dtype)
    x_adv = project_point(x_start.detach(), x, eps_t, norm, clip_values)
    for _ in range(max_iter):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            value = objective(forward(x_adv))
        (grad,) = torch.autograd.grad(value, x_adv)
        step = steepest_direction(grad.detach(), norm)
        x_adv = project_point(x_adv.detach() + eps_step * step, x, eps_t, norm, clip_values)
    return x_adv.detach()


def ce_objective(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The summed cross-entropy against ``y`` (Madry et al., MART's inner maximisation)."""
    return lambda logits: F.cross_entropy(logits.float(), y, reduction="sum")


def kl_objective(p_clean: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``sum_i KL(p_clean_i || softmax(logits_i))``: the TRADES inner maximisation."""
    return lambda logits: F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="sum")


def weights_to_perturb(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters adversarial weight perturbation changes: the trainable weights of more
    than one dimension (convolutions, linear layers), not biases nor normalisation scales, as
    in the reference implementation of Wu et al."""
    return [p for p in module.parameters() if p.requires_grad and p.ndim > 1]


def awp_perturbation(
    weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], gamma: float
) -> list[torch.Tensor]:
    """Layer-wise perturbations ``gamma * ||w|| * g / ||g||`` (Wu et al. 2020, eq. 7-8).

    ``grads`` are the gradients of the training loss at ``w``. The reference implementation
    takes one SGD step of a proxy model on the negated loss and rescales the difference to
    ``||w||``; a plain SGD step moves the weights by a multiple of ``g``, so the normalised
    difference is ``g`` rescaled, whatever the proxy's learning rate.
    """
    out = []
    for w, g in zip(weights, grads, strict=True):
        scale = gamma * w.detach().norm() / (g.norm() + 1e-20)
        out.append(g * scale)
    return out
