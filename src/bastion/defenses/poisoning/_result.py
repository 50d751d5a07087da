"""Former home of the detector template, kept so that existing imports keep working.

The template lives in :mod:`bastion.defenses.poisoning.base` now; import it from there (or
from :mod:`bastion.defenses.poisoning`).
"""

from bastion.defenses.poisoning.base import DetectionResult, PoisonDetector
from bastion.defenses.poisoning.base import _sklearn_seeds as _sklearn_seeds

__all__ = ["DetectionResult", "PoisonDetector"]
