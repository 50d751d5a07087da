"""Attacks, organised by threat: ``evasion`` (more to come: poisoning, extraction, inference)."""

from bastion.attacks.base import (
    Attack,
    EvasionAttack,
    FixedBudgetAttack,
    MinimumNormAttack,
    perturbation_norms,
)

__all__ = [
    "Attack",
    "EvasionAttack",
    "FixedBudgetAttack",
    "MinimumNormAttack",
    "perturbation_norms",
]
