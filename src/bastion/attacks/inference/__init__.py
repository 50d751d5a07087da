"""Inference attacks: what a model reveals about its training data.

Membership inference (``infer(x, y) -> scores``, higher meaning more likely a member; evaluate
with :mod:`bastion.metrics.privacy`, the TPR at low FPR first):

- :class:`LossThreshold`, :class:`GapAttack` (Yeom et al. 2018)
- :class:`ShadowModelAttack` (Shokri et al. 2017)
- :class:`LabelOnly` (Choquette-Choo et al. 2021)
- :class:`LiRA` (Carlini et al. 2022)
- :class:`RMIA` (Zarifzadeh et al. 2024)

Attribute inference, inversion and reconstruction:

- :class:`AttributeInferenceBlackBox`, :class:`AttributeInferenceBaseline`,
  :class:`AttributeInferenceWhiteBoxDecisionTree` (Fredrikson et al. 2015),
  :class:`AttributeInferenceWhiteBoxLifestyleDecisionTree` (Mehnaz et al. 2022)
- :class:`MIFace` model inversion (Fredrikson et al. 2015)
- :class:`DatabaseReconstruction` (Balle et al. 2022)
"""

from bastion.attacks.inference.attribute import (
    AttributeInferenceBaseline,
    AttributeInferenceBlackBox,
    AttributeInferenceWhiteBoxDecisionTree,
    AttributeInferenceWhiteBoxLifestyleDecisionTree,
)
from bastion.attacks.inference.label_only import LabelOnly
from bastion.attacks.inference.lira import LiRA, image_augmentations
from bastion.attacks.inference.membership import GapAttack, LossThreshold
from bastion.attacks.inference.model_inversion import MIFace
from bastion.attacks.inference.reconstruction import DatabaseReconstruction
from bastion.attacks.inference.rmia import RMIA
from bastion.attacks.inference.shadow import ShadowModelAttack

__all__ = [
    "RMIA",
    "AttributeInferenceBaseline",
    "AttributeInferenceBlackBox",
    "AttributeInferenceWhiteBoxDecisionTree",
    "AttributeInferenceWhiteBoxLifestyleDecisionTree",
    "DatabaseReconstruction",
    "GapAttack",
    "LabelOnly",
    "LiRA",
    "LossThreshold",
    "MIFace",
    "ShadowModelAttack",
    "image_augmentations",
]
