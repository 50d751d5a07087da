"""The state the adversarial trainers share: parameter constraints, where a batch sits, the
run of one ``fit``, and the small helpers of the step."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bastion._validation import (
    BATCH_SIZE,
    NONE,
    OPTIONAL_PATH,
    RANDOM_STATE,
    VERBOSE,
    Boolean,
    Constraint,
    Interval,
    Options,
    Satisfies,
)
from bastion.defenses.training.adversarial._distributed import DataParallel
from bastion.defenses.training.adversarial._inner import derive_seed
from bastion.defenses.training.adversarial._schedules import SCHEDULES

__all__ = [
    "BUDGET_CONSTRAINTS",
    "LOOP_CONSTRAINTS",
    "PGD_SPEC",
    "RANDOM_START",
    "TrainingEvaluation",
    "copy_state",
    "cross_entropy",
]

PGD_SPEC = re.compile(r"^pgd-([1-9][0-9]*)$")


def _valid_validation_attack(value: Any) -> bool:
    if isinstance(value, str):
        return PGD_SPEC.match(value) is not None
    return callable(getattr(value, "generate", None)) and hasattr(value, "estimator")


#: The constraints of the loop's parameters, shared by every recipe.
LOOP_CONSTRAINTS: dict[str, list[Constraint]] = {
    "epochs": [Interval(int, 1, None)],
    "batch_size": BATCH_SIZE,
    "optimizer": [Options(["sgd", "adam"])],
    "learning_rate": [Interval(float, 0, None, closed="neither")],
    "momentum": [Interval(float, 0, 1, closed="left")],
    "weight_decay": [Interval(float, 0, None)],
    "schedule": [Options(SCHEDULES), NONE],
    "validation_attack": [
        NONE,
        Satisfies(_valid_validation_attack, "None, 'pgd-K' (K >= 1) or a bastion evasion attack"),
    ],
    "checkpoint_dir": OPTIONAL_PATH,
    "random_state": RANDOM_STATE,
    "verbose": VERBOSE,
    "amp": [Boolean()],
    "channels_last": [Boolean()],
}

#: The constraints of a training attack's budget.
BUDGET_CONSTRAINTS: dict[str, list[Constraint]] = {
    "eps": [Interval(float, 0, None, closed="neither")],
    "eps_step": [Interval(float, 0, None, closed="neither")],
    "max_iter": [Interval(int, 1, None)],
    "norm": [Options(["inf", float("inf"), 2])],
}


#: ``num_random_init`` of a training attack: one random start or none.
RANDOM_START: list[Constraint] = [Interval(int, 0, 1)]


@dataclass(frozen=True)
class TrainingEvaluation:
    """Clean and AutoAttack-robust accuracy of a trained estimator (:meth:`evaluate`).

    Attributes
    ----------
    clean_accuracy, robust_accuracy : float
    eps : float
    norm : str
    nb_samples : int
    """

    clean_accuracy: float
    robust_accuracy: float
    eps: float
    norm: str
    nb_samples: int


@dataclass
class _Batch:
    """Where a batch sits: epoch, index, global size and this rank's positions in it."""

    epoch: int
    index: int
    n_global: int
    positions: torch.Tensor | None
    base_seed: int
    #: The training position at the end of this step, in epochs (``epoch + (index + 1) /
    #: batches``; ``epoch + 1`` for loaders of unknown length): the eps warm-up reads it.
    progress: float = math.inf

    def seed(self, purpose: str) -> int:
        return derive_seed(self.base_seed, self.epoch, self.index, purpose)


@dataclass
class _Run:
    """The state of one ``fit``."""

    module: torch.nn.Module
    net: torch.nn.Module  # the module, wrapped for data parallelism where there is any
    optimizer: torch.optim.Optimizer
    scaler: Any
    dp: DataParallel
    base_seed: int
    device: torch.device
    dtype: torch.dtype
    autocast: Callable[[], Any]
    config_hash: str
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    stop: bool = False
    first_batch: tuple[torch.Tensor, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bare module's logits (attacks, metrics), in float32."""
        with self.autocast():
            return self.module(x).float()

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward pass, through the data-parallel wrapper."""
        with self.autocast():
            return self.net(x).float()

    def train_forward_pair(
        self, x: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of clean and adversarial inputs. Two forward passes in one process; one
        over both batches under DDP (one forward per backward; BatchNorm statistics then mix
        the two halves)."""
        if self.dp.world_size == 1:
            return self.train_forward(x), self.train_forward(x_adv)
        both = self.train_forward(torch.cat([x, x_adv]))
        return both[: x.shape[0]], both[x.shape[0] :]


def _step_sums(
    loss_sum: torch.Tensor,
    clean_logits: torch.Tensor | None,
    adv_logits: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """``[loss sum, clean correct, adversarial correct, n, n with clean logits]`` of a step.
    Recipes that never compute the clean logits give ``None``: no forward pass runs just to
    log (DESIGN principle 3), and their clean training accuracy is NaN."""
    n = y.shape[0]
    out = torch.zeros(NB_SUMS, device=y.device, dtype=torch.float64)
    out[0], out[3] = loss_sum.detach(), n
    out[2] = (adv_logits.detach().argmax(1) == y).sum()
    if clean_logits is not None:
        out[1], out[4] = (clean_logits.detach().argmax(1) == y).sum(), n
    return out


#: The number of per-step sums :func:`_step_sums` gives.
NB_SUMS = 5


def rates(sums: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """The epoch's mean loss and accuracies from the summed step sums."""
    n, n_clean = max(float(sums[3]), 1.0), float(sums[4])
    return {
        "loss": float(sums[0]) / n,
        f"{prefix}clean_accuracy": float(sums[1]) / n_clean if n_clean else math.nan,
        f"{prefix}robust_accuracy": float(sums[2]) / n,
    }


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def copy_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the module's state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
