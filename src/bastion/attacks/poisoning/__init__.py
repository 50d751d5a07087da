"""Poisoning attacks: tamper with the training data, e.g. plant a backdoor trigger.

- :class:`BackdoorAttack`: BadNets (Gu et al. 2017), all-to-one or all-to-all.
- Triggers: :class:`PixelTrigger`, :class:`PatchTrigger` (BadNets), :class:`BlendTrigger`
  (Chen et al. 2017), :class:`SinusoidalTrigger` (Barni et al. 2019).
- Clean-label and targeted: :class:`CleanLabelBackdoor` (Turner et al. 2019),
  :class:`FeatureCollision` (Shafahi et al. 2018), :class:`GradientMatching` (Geiping et al.
  2021), :class:`HiddenTriggerBackdoor` (Saha et al. 2020); :class:`SVMPoisoning` (Biggio et
  al. 2012).
- :class:`PoisoningAttack`, :class:`Trigger`: the templates they build on.
"""

from bastion.attacks.poisoning._base import PoisoningAttack
from bastion.attacks.poisoning.backdoor import BackdoorAttack
from bastion.attacks.poisoning.clean_label import CleanLabelBackdoor
from bastion.attacks.poisoning.feature_collision import FeatureCollision
from bastion.attacks.poisoning.gradient_matching import GradientMatching
from bastion.attacks.poisoning.hidden_trigger import HiddenTriggerBackdoor
from bastion.attacks.poisoning.svm import SVMPoisoning
from bastion.attacks.poisoning.triggers import (
    BlendTrigger,
    PatchTrigger,
    PixelTrigger,
    SinusoidalTrigger,
    Trigger,
)

__all__ = [
    "BackdoorAttack",
    "BlendTrigger",
    "CleanLabelBackdoor",
    "FeatureCollision",
    "GradientMatching",
    "HiddenTriggerBackdoor",
    "PatchTrigger",
    "PixelTrigger",
    "PoisoningAttack",
    "SVMPoisoning",
    "SinusoidalTrigger",
    "Trigger",
]
