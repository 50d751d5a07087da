"""Metrics: how well attacks work and how well defences catch them.

- Poisoning: :func:`detection_scores` (and :func:`detection_precision`,
  :func:`detection_recall`, :func:`detection_f1`) against a ground-truth poison mask,
  :func:`attack_success_rate` of a backdoor, :func:`clean_accuracy`.
"""

from bastion.metrics.poisoning import (
    attack_success_rate,
    clean_accuracy,
    detection_f1,
    detection_precision,
    detection_recall,
    detection_scores,
)

__all__ = [
    "attack_success_rate",
    "clean_accuracy",
    "detection_f1",
    "detection_precision",
    "detection_recall",
    "detection_scores",
]
