"""Model extraction: steal a model through its prediction API, counting every query.

- :class:`CopycatCNN`: label natural data with the victim, train a thief (Correia-Silva 2018).
- :class:`KnockoffNets`: random or adaptive (gradient-bandit) query selection, soft labels
  (Orekondy et al. 2019).
- :class:`FunctionallyEquivalentExtraction`: recover a one-hidden-layer ReLU network's weights
  from critical points (Jagielski et al. 2020).
- :class:`JacobianAugmentation`: substitute training with Jacobian-based dataset augmentation
  (Papernot et al. 2017), the classic way to mount transfer attacks.
"""

from bastion.attacks.extraction._base import ExtractionAttack
from bastion.attacks.extraction.copycat import CopycatCNN
from bastion.attacks.extraction.functionally_equivalent import FunctionallyEquivalentExtraction
from bastion.attacks.extraction.jacobian_augmentation import JacobianAugmentation
from bastion.attacks.extraction.knockoff import KnockoffNets

__all__ = [
    "CopycatCNN",
    "ExtractionAttack",
    "FunctionallyEquivalentExtraction",
    "JacobianAugmentation",
    "KnockoffNets",
]
