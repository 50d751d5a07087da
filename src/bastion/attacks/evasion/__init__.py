"""Evasion attacks: adversarial examples at inference time."""

from bastion.attacks.evasion.fast_gradient import FGSM, FastGradientMethod
from bastion.attacks.evasion.projected_gradient import PGD, ProjectedGradientDescent

__all__ = [
    "FGSM",
    "PGD",
    "FastGradientMethod",
    "ProjectedGradientDescent",
]
