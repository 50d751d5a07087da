"""Attacks, organised by threat: ``evasion``, ``poisoning`` (more to come: extraction,
inference)."""

from bastion.attacks.base import (
    Attack,
    EvasionAttack,
    FixedBudgetAttack,
    MinimumNormAttack,
    QueryAttack,
    perturbation_norms,
)

__all__ = [
    "Attack",
    "EvasionAttack",
    "FixedBudgetAttack",
    "MinimumNormAttack",
    "QueryAttack",
    "perturbation_norms",
]
