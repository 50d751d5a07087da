"""Training-time privacy defences.

- :class:`DPSGDTrainer` / :func:`train_dp_sgd`: differentially private SGD through Opacus (an
  optional dependency: ``pip install --no-deps opacus==1.6.0 opt-einsum``), reporting the
  privacy budget spent.
- Baselines without guarantees: :func:`train_label_smoothing` (softened training targets) and
  :class:`ConfidenceMasking` (an estimator wrapper that reveals only rounded top-k scores).
"""

from bastion.defenses.training.baselines import ConfidenceMasking, train_label_smoothing
from bastion.defenses.training.dp_sgd import DPSGDTrainer, train_dp_sgd

__all__ = ["ConfidenceMasking", "DPSGDTrainer", "train_dp_sgd", "train_label_smoothing"]
