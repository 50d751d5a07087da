"""Attacks, organised by threat: :mod:`~bastion.attacks.evasion`,
:mod:`~bastion.attacks.poisoning`, :mod:`~bastion.attacks.extraction` and
:mod:`~bastion.attacks.inference`."""

from bastion.attacks.base import (
    Attack,
    EvasionAttack,
    FixedBudgetAttack,
    MinimumNormAttack,
    perturbation_norms,
)
from bastion.attacks.decision import DecisionBasedAttack
from bastion.attacks.query import AttackInterruptedError, PartialResult, QueryAttack

__all__ = [
    "Attack",
    "AttackInterruptedError",
    "DecisionBasedAttack",
    "EvasionAttack",
    "FixedBudgetAttack",
    "MinimumNormAttack",
    "PartialResult",
    "QueryAttack",
    "perturbation_norms",
]
