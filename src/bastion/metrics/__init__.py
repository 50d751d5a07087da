"""Metrics: how well attacks work and how well defences catch them.

- Poisoning: :func:`detection_scores` (and :func:`detection_precision`,
  :func:`detection_recall`, :func:`detection_f1`) against a ground-truth poison mask,
  :func:`attack_success_rate` of a backdoor, :func:`clean_accuracy`.
- Extraction: :func:`fidelity` (agreement of a stolen model with the victim),
  :func:`thief_accuracy`, :func:`accuracy_vs_queries`.
- Privacy: :mod:`bastion.metrics.privacy` (ROC, AUC, TPR at low FPR, membership advantage,
  log-log ROC plot) and :func:`pdtp` (per-sample leakage, Long et al. 2017).
- Certification: :func:`certified_accuracy` and :func:`certified_accuracy_curve` (certified
  predictions and radii, e.g. of randomized smoothing, against the L2 radius).
- Detection of adversarial inputs: :func:`robust_accuracy_with_rejection` (an input is
  defended when classified correctly or rejected).
"""

from bastion.metrics.certification import (
    CertifiedAccuracyCurve,
    certified_accuracy,
    certified_accuracy_curve,
)
from bastion.metrics.detection import RejectionResult, robust_accuracy_with_rejection
from bastion.metrics.extraction import accuracy_vs_queries, fidelity, thief_accuracy
from bastion.metrics.pdtp import PDTPResult, pdtp
from bastion.metrics.poisoning import (
    attack_success_rate,
    clean_accuracy,
    detection_f1,
    detection_precision,
    detection_recall,
    detection_scores,
)

__all__ = [
    "CertifiedAccuracyCurve",
    "PDTPResult",
    "RejectionResult",
    "accuracy_vs_queries",
    "attack_success_rate",
    "certified_accuracy",
    "certified_accuracy_curve",
    "clean_accuracy",
    "detection_f1",
    "detection_precision",
    "detection_recall",
    "detection_scores",
    "fidelity",
    "pdtp",
    "robust_accuracy_with_rejection",
    "thief_accuracy",
]
