"""Optimisers and learning-rate schedules of the adversarial trainers.

A schedule is a pure function of the training position ``t`` (in epochs, fractional within an
epoch: ``epoch + batch / batches``), so the learning rate of any step is known without a
scheduler's state: a resumed run sets the same rates as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["SCHEDULES", "learning_rate_at", "make_optimizer"]

#: The schedules a trainer accepts (and ``None``: a constant rate).
SCHEDULES = ("piecewise", "cosine", "cyclic")

#: Where the cyclic (one-cycle, triangular) schedule peaks, as a fraction of the epochs: 2/5,
#: as in the code of Wong et al. (2020).
CYCLIC_PEAK = 0.4


def learning_rate_at(schedule: str | None, base: float, t: float, epochs: int) -> float:
    """The learning rate at training position ``t`` (in epochs) of a run of ``epochs``.

    * ``None``: ``base`` throughout;
    * ``"piecewise"``: ``base``, divided by 10 at 50% and again at 75% of the epochs (the
      decay of Madry et al. 2018 and Rice et al. 2020, whose 200-epoch runs decay at 100 and
      150);
    * ``"cosine"``: ``base * (1 + cos(pi t / epochs)) / 2``, from ``base`` down to 0;
    * ``"cyclic"``: linear from 0 up to ``base`` at 2/5 of the epochs, then linear down to 0 at
      the end (Smith's one cycle, as used by Wong et al. 2020), updated every step.

    Examples
    --------
    >>> from bastion.defenses.training.adversarial._schedules import learning_rate_at
    >>> [learning_rate_at("piecewise", 0.1, t, 10) for t in (0, 5, 7.5)]
    [0.1, 0.01, 0.001]
    >>> round(learning_rate_at("cyclic", 0.2, 2.0, 10), 12)
    0.1
    """
    frac = min(max(t / epochs, 0.0), 1.0)
    if schedule is None:
        return base
    if schedule == "piecewise":
        return base / 10 ** (int(frac >= 0.5) + int(frac >= 0.75))
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "cyclic":
        if frac <= CYCLIC_PEAK:
            return base * frac / CYCLIC_PEAK
        return base * (1.0 - frac) / (1.0 - CYCLIC_PEAK)
    raise ValueError(f"unknown schedule {schedule!r}")


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    name: str,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """SGD (with ``momentum``; Nesterov off, as in the papers' code) or Adam."""
    params = [p for p in parameters if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=learning_rate, momentum=momentum, weight_decay=weight_decay
        )
    return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay)
