"""The public conformance suite.

Every public attack and estimator is discovered automatically and run through the same generic
checks: API conventions, budget and bounds respected, inputs not mutated, type/device/dtype
preserved, seeded determinism, batch-size invariance, clear errors on bad input, and
finite-difference checks of gradients. A new attack gets them for free; an attack skips a check
only with a written reason in ``_conformance = {"skip": {"check_name": "why"}}``.

Examples
--------
>>> from bastion.attacks.evasion import FGSM
>>> from bastion.testing import check_attack
>>> "check_budget_and_bounds" in check_attack(FGSM)
True
"""

from bastion.testing._attack_checks import attack_checks, check_attack, conformance_params
from bastion.testing._discovery import all_attacks, all_estimators
from bastion.testing._estimator_checks import check_estimator, estimator_checks
from bastion.testing._problems import (
    ESTIMATOR_EXAMPLES,
    Problem,
    blackbox_problem,
    sklearn_problem,
    torch_problem,
)

__all__ = [
    "ESTIMATOR_EXAMPLES",
    "Problem",
    "all_attacks",
    "all_estimators",
    "attack_checks",
    "blackbox_problem",
    "check_attack",
    "check_estimator",
    "conformance_params",
    "estimator_checks",
    "sklearn_problem",
    "torch_problem",
]
