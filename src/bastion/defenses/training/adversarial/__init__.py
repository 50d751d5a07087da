"""Adversarial training: one shared loop (arrays or streamed batches, schedules, validation,
best-checkpoint selection, resumable checkpoints, data parallelism) and the recipes that hold
up under AutoAttack."""

from bastion.defenses.training.adversarial._loop import AdversarialTrainingLoop
from bastion.defenses.training.adversarial._pgd import MadryPGDTrainer, MARTTrainer, TRADESTrainer
from bastion.defenses.training.adversarial._single_step import (
    AdversarialTrainer,
    FastFGSMTrainer,
    FreeAdversarialTrainer,
)
from bastion.defenses.training.adversarial._state import TrainingEvaluation

__all__ = [
    "AdversarialTrainer",
    "AdversarialTrainingLoop",
    "FastFGSMTrainer",
    "FreeAdversarialTrainer",
    "MARTTrainer",
    "MadryPGDTrainer",
    "TRADESTrainer",
    "TrainingEvaluation",
]
