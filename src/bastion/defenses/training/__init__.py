"""Training-time defences.

- Adversarial training (evasion): :class:`MadryPGDTrainer` (optionally with adversarial weight
  perturbation), :class:`TRADESTrainer`, :class:`MARTTrainer`, :class:`FastFGSMTrainer`,
  :class:`FreeAdversarialTrainer` and :class:`AdversarialTrainer` (any bastion attack), on one
  shared loop; :meth:`~MadryPGDTrainer.evaluate` reports AutoAttack robust accuracy.
- :class:`DPSGDTrainer` / :func:`train_dp_sgd`: differentially private SGD through Opacus (an
  optional dependency: ``pip install --no-deps opacus==1.6.0 opt-einsum``), reporting the
  privacy budget spent.
- Baselines without guarantees: :func:`train_label_smoothing` (softened training targets) and
  :class:`ConfidenceMasking` (an estimator wrapper that reveals only rounded top-k scores).
"""

from bastion.defenses.training.adversarial import (
    AdversarialTrainer,
    FastFGSMTrainer,
    FreeAdversarialTrainer,
    MadryPGDTrainer,
    MARTTrainer,
    TRADESTrainer,
    TrainingEvaluation,
)
from bastion.defenses.training.baselines import ConfidenceMasking, train_label_smoothing
from bastion.defenses.training.dp_sgd import DPSGDTrainer, train_dp_sgd

__all__ = [
    "AdversarialTrainer",
    "ConfidenceMasking",
    "DPSGDTrainer",
    "FastFGSMTrainer",
    "FreeAdversarialTrainer",
    "MARTTrainer",
    "MadryPGDTrainer",
    "TRADESTrainer",
    "TrainingEvaluation",
    "train_dp_sgd",
    "train_label_smoothing",
]
