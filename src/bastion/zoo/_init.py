"""Seeded parameter initialisation that leaves torch's global RNG alone.

PyTorch layers initialise themselves from the global RNG as they are built. To seed a model
without touching that RNG, its layers are built on the ``meta`` device (no memory, no random
draws), then materialised and initialised with PyTorch's default scheme drawn from a private
generator.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from bastion._tensor import RandomStateLike, resolve_random_state

__all__ = ["initialize", "layers_device"]


@contextlib.contextmanager
def layers_device(random_state: RandomStateLike) -> Iterator[None]:
    """Build layers on the ``meta`` device when they will be initialised from ``random_state``."""
    if random_state is None:
        yield
    else:
        with torch.device("meta"):
            yield


def initialize(module: nn.Module, random_state: RandomStateLike) -> None:
    """Materialise a module built under :func:`layers_device` and initialise its parameters.

    Reproduces PyTorch's default layer initialisation (``kaiming_uniform_(a=sqrt(5))`` weights,
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` biases, batch-norm weight 1 and bias 0), drawing from
    a generator made from ``random_state``, module by module in registration order. Does
    nothing when ``random_state`` is None (the layers then hold PyTorch's own initialisation).
    """
    if random_state is None:
        return
    device = torch.empty(()).device  # the default device, as an unseeded model would use
    generator = resolve_random_state(random_state, "cpu")
    # Initialise on the CPU, so a seed gives the same parameters whatever the default device.
    module.to_empty(device="cpu")
    for m in module.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_parameters()  # weight 1, bias 0, fresh running statistics
        elif any(True for _ in m.parameters(recurse=False)) or any(
            True for _ in m.buffers(recurse=False)
        ):
            raise TypeError(f"no seeded initialisation for {type(m).__name__}")
    module.to(device)
