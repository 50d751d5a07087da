"""Attacks, organised by threat: :mod:`~bastion.attacks.evasion`,
:mod:`~bastion.attacks.poisoning`, :mod:`~bastion.attacks.extraction` and
:mod:`~bastion.attacks.inference`."""

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
