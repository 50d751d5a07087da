"""Evasion attacks: adversarial examples at inference time."""

from bastion.attacks.evasion.adversarial_patch import AdversarialPatch
from bastion.attacks.evasion.auto_attack import AutoAttack, AutoAttackResult, EvaluationFlag
from bastion.attacks.evasion.auto_pgd import APGD, AutoProjectedGradientDescent
from bastion.attacks.evasion.boundary import BoundaryAttack
from bastion.attacks.evasion.carlini_wagner import CW, CarliniWagnerL2, CarliniWagnerLinf
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.elastic_net import EAD, ElasticNet
from bastion.attacks.evasion.fab import FAB
from bastion.attacks.evasion.fast_gradient import FGSM, FastGradientMethod
from bastion.attacks.evasion.fast_minimum_norm import FMN, FastMinimumNorm
from bastion.attacks.evasion.geoda import GeoDA
from bastion.attacks.evasion.hop_skip_jump import HopSkipJump
from bastion.attacks.evasion.iterative import (
    BIM,
    MIM,
    BasicIterativeMethod,
    MomentumIterativeMethod,
)
from bastion.attacks.evasion.nes import BanditsAttack, NESAttack
from bastion.attacks.evasion.newtonfool import NewtonFool
from bastion.attacks.evasion.projected_gradient import PGD, ProjectedGradientDescent
from bastion.attacks.evasion.saliency_map import JSMA, SaliencyMapMethod
from bastion.attacks.evasion.sign_opt import SignOPT
from bastion.attacks.evasion.simba import SimBA
from bastion.attacks.evasion.square import SquareAttack
from bastion.attacks.evasion.tree import (
    DecisionTreeAttack,
    KantchelianAttack,
    TreeEnsembleMILPAttack,
)
from bastion.attacks.evasion.universal import UniversalPerturbation
from bastion.attacks.evasion.virtual_adversarial import VirtualAdversarialMethod
from bastion.attacks.evasion.zoo_attack import ZooAttack

__all__ = [
    "APGD",
    "BIM",
    "CW",
    "EAD",
    "FAB",
    "FGSM",
    "FMN",
    "JSMA",
    "MIM",
    "PGD",
    "AdversarialPatch",
    "AutoAttack",
    "AutoAttackResult",
    "AutoProjectedGradientDescent",
    "BanditsAttack",
    "BasicIterativeMethod",
    "BoundaryAttack",
    "CarliniWagnerL2",
    "CarliniWagnerLinf",
    "DecisionTreeAttack",
    "DeepFool",
    "ElasticNet",
    "EvaluationFlag",
    "FastGradientMethod",
    "FastMinimumNorm",
    "GeoDA",
    "HopSkipJump",
    "KantchelianAttack",
    "MomentumIterativeMethod",
    "NESAttack",
    "NewtonFool",
    "ProjectedGradientDescent",
    "SaliencyMapMethod",
    "SignOPT",
    "SimBA",
    "SquareAttack",
    "TreeEnsembleMILPAttack",
    "UniversalPerturbation",
    "VirtualAdversarialMethod",
    "ZooAttack",
]
