"""Robustness of a classifier guarded by a detector of adversarial inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion._tensor import to_tensor
from bastion._validation import check_labels
from bastion.estimators.base import SupportsPredict, require_capabilities
from bastion.exceptions import InputError

__all__ = ["RejectionResult", "robust_accuracy_with_rejection"]


@dataclass(frozen=True)
class RejectionResult:
    """What :func:`robust_accuracy_with_rejection` measures.

    Attributes
    ----------
    robust_accuracy_with_rejection : float
        Fraction of the adversarial inputs that are defended: classified correctly or
        rejected by the detector.
    rejection_rate : float
        Fraction of the adversarial inputs the detector rejects.
    false_rejection_rate : float or None
        Fraction of the clean inputs the detector rejects (given ``x_clean``).
    defended : numpy.ndarray of bool, shape (N,), or None
        Per adversarial input, whether it is defended; the worst case over several attacks
        is the ``&`` of their ``defended`` arrays (a sample is defended only if it withstands
        every attack).
    """

    robust_accuracy_with_rejection: float
    rejection_rate: float
    false_rejection_rate: float | None = None
    defended: np.ndarray | None = field(default=None, repr=False, compare=False)


def _flags(detector: Any, x: Any) -> np.ndarray:
    flagged = detector.detect(x).is_adversarial
    if isinstance(flagged, torch.Tensor):
        flagged = flagged.detach().cpu().numpy()
    return np.asarray(flagged, dtype=bool).reshape(-1)


def robust_accuracy_with_rejection(
    estimator: SupportsPredict,
    detector: Any,
    x_adv: Any,
    y: Any,
    *,
    x_clean: Any = None,
    batch_size: int = 256,
) -> RejectionResult:
    """Accuracy under attack of a classifier that may reject inputs its detector flags.

    An adversarial input counts as defended when the estimator classifies it correctly or the
    detector flags it (``detector.detect(x).is_adversarial``). The price of rejection shows in
    the false-rejection rate on clean inputs.

    Parameters
    ----------
    estimator : Classifier
        The classifier (needs ``predict``).
    detector : InputDetector
        A fitted detector of adversarial inputs.
    x_adv : array-like or torch.Tensor
        Adversarial inputs.
    y : array-like
        Their true labels (indices or one-hot).
    x_clean : array-like or torch.Tensor, optional
        Clean inputs, for the false-rejection rate.
    batch_size : int, default 256
        Samples per forward pass.

    Returns
    -------
    RejectionResult

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.metrics import robust_accuracy_with_rejection
    >>> clf = BlackBoxClassifier(lambda x: np.eye(2)[(x[:, 0] > 0.5).astype(int)],
    ...                          input_shape=(1,), nb_classes=2)
    >>> class Flag:  # flags inputs above 0.9
    ...     def detect(self, x):
    ...         from types import SimpleNamespace
    ...         return SimpleNamespace(is_adversarial=x[:, 0] > 0.9)
    >>> x = np.array([[0.2], [0.7], [0.95], [0.6]], dtype=np.float32)
    >>> res = robust_accuracy_with_rejection(clf, Flag(), x, [0, 0, 0, 1])
    >>> res.robust_accuracy_with_rejection, res.rejection_rate
    (0.75, 0.25)
    """
    require_capabilities(estimator, ["predict"], "robust_accuracy_with_rejection")
    pred = np.asarray(to_tensor(estimator.predict(x_adv, batch_size=batch_size))[0].argmax(1).cpu())
    yt, _ = to_tensor(y, dtype=None)
    labels = check_labels(yt.cpu(), n=pred.shape[0], nb_classes=estimator.nb_classes).numpy()
    flagged = _flags(detector, x_adv)
    if flagged.shape[0] != pred.shape[0]:
        raise InputError(f"the detector gave {flagged.shape[0]} flags for {pred.shape[0]} inputs.")
    defended = (pred == labels) | flagged
    frr = None if x_clean is None else float(_flags(detector, x_clean).mean())
    return RejectionResult(float(defended.mean()), float(flagged.mean()), frr, defended)
