"""Poisoning attacks: tamper with the training data, e.g. plant a backdoor trigger.

- :class:`BackdoorAttack`: BadNets (Gu et al. 2017), all-to-one or all-to-all.
- Triggers: :class:`PixelTrigger`, :class:`PatchTrigger` (BadNets), :class:`BlendTrigger`
  (Chen et al. 2017), :class:`SinusoidalTrigger` (Barni et al. 2019).
- :class:`PoisoningAttack`, :class:`Trigger`: the templates they build on.
"""

from bastion.attacks.poisoning._base import PoisoningAttack
from bastion.attacks.poisoning.backdoor import BackdoorAttack
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
    "PatchTrigger",
    "PixelTrigger",
    "PoisoningAttack",
    "SinusoidalTrigger",
    "Trigger",
]
