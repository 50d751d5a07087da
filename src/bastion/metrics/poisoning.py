"""Poisoning metrics: detection quality, backdoor success, clean accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bastion._tensor import to_tensor
from bastion._validation import BATCH_SIZE, check_labels, validate_params
from bastion.estimators.base import SupportsPredict, require_capabilities
from bastion.exceptions import InputError

__all__ = [
    "attack_success_rate",
    "clean_accuracy",
    "detection_f1",
    "detection_precision",
    "detection_recall",
    "detection_scores",
]


def _mask(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "is_poison"):  # a DetectionResult
        value = value.is_poison
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):  # a ragged list
            raise InputError(f"{name} must be a 1-d mask (one entry per sample).") from None
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-d mask (one entry per sample); got {arr.shape}.")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise InputError(f"{name} must hold booleans (or 0/1).")
        arr = arr.astype(bool)
    return arr


def detection_scores(is_poison_pred: Any, is_poison_true: Any) -> dict[str, float]:
    """Quality of a poison detection against the ground truth.

    Parameters
    ----------
    is_poison_pred : bool array-like or DetectionResult
        The detector's verdict per sample (True: poison).
    is_poison_true : bool array-like
        The ground truth, e.g. the ``poison_mask`` of ``BackdoorAttack.poison``.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``false_positive_rate`` (floats; a ratio 0/0 is
        reported as 0.0) and the counts ``true_positives``, ``false_positives``,
        ``false_negatives``, ``true_negatives``.

    Examples
    --------
    >>> from bastion.metrics import detection_scores
    >>> s = detection_scores([True, True, False, False], [True, False, True, False])
    >>> s["precision"], s["recall"], s["f1"], s["false_positive_rate"]
    (0.5, 0.5, 0.5, 0.5)
    """
    pred = _mask(is_poison_pred, "is_poison_pred")
    true = _mask(is_poison_true, "is_poison_true")
    if pred.shape != true.shape:
        raise InputError(
            f"is_poison_pred has {pred.shape[0]} entries but is_poison_true has {true.shape[0]}."
        )
    tp = int((pred & true).sum())
    fp = int((pred & ~true).sum())
    fn = int((~pred & true).sum())
    tn = int((~pred & ~true).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": fp / (fp + tn) if fp + tn else 0.0,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "true_negatives": tn,
    }


def detection_precision(is_poison_pred: Any, is_poison_true: Any) -> float:
    """Fraction of the flagged samples that are poison (0.0 when nothing is flagged)."""
    return detection_scores(is_poison_pred, is_poison_true)["precision"]


def detection_recall(is_poison_pred: Any, is_poison_true: Any) -> float:
    """Fraction of the poison that is flagged (0.0 when there is no poison)."""
    return detection_scores(is_poison_pred, is_poison_true)["recall"]


def detection_f1(is_poison_pred: Any, is_poison_true: Any) -> float:
    """Harmonic mean of detection precision and recall."""
    return detection_scores(is_poison_pred, is_poison_true)["f1"]


def _predicted(estimator: SupportsPredict, x: Any, batch_size: int, user: str) -> np.ndarray:
    validate_params(user, {"batch_size": batch_size}, {"batch_size": BATCH_SIZE})
    require_capabilities(estimator, ["predict"], user)
    probs = estimator.predict(x, batch_size=batch_size)
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    return np.asarray(probs).argmax(axis=1)


def _labels(y: Any, n: int, nb_classes: int, name: str) -> np.ndarray:
    yt, _ = to_tensor(y, dtype=None)
    if yt.ndim == 0:
        yt = yt.expand(n)
    return check_labels(yt.cpu(), n=n, nb_classes=nb_classes, name=name).numpy()


def attack_success_rate(
    estimator: SupportsPredict,
    x_triggered: Any,
    target: Any,
    y_true: Any = None,
    *,
    batch_size: int = 256,
) -> float:
    """Fraction of triggered inputs classified as the attacker's target.

    Samples whose true class already is the target are left out (they say nothing about the
    backdoor).

    Parameters
    ----------
    estimator : Classifier
        The (possibly backdoored) model.
    x_triggered : array-like or torch.Tensor
        Inputs carrying the trigger, e.g. ``BackdoorAttack.apply_trigger(x_test)``.
    target : int or array-like of int
        The target class, or one per sample (``BackdoorAttack.target_labels(y_test)`` for an
        all-to-all attack).
    y_true : array-like of int, optional
        True classes of the inputs; samples with ``y_true == target`` are excluded.
    batch_size : int, default=256
        Samples per forward pass.

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    InputError
        If no sample remains once those of the target class are excluded.
    """
    pred = _predicted(estimator, x_triggered, batch_size, "attack_success_rate")
    n, k = pred.shape[0], estimator.nb_classes
    tgt = _labels(target, n, k, "target")
    keep = np.ones(n, dtype=bool)
    if y_true is not None:
        keep = _labels(y_true, n, k, "y_true") != tgt
    if not keep.any():
        raise InputError("attack_success_rate: every sample already belongs to its target class.")
    return float((pred[keep] == tgt[keep]).mean())


def clean_accuracy(estimator: SupportsPredict, x: Any, y: Any, *, batch_size: int = 256) -> float:
    """Accuracy of ``estimator`` on clean data ``(x, y)``, in ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.metrics import clean_accuracy
    >>> net = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.eye(2)), net.bias.zero_()
    >>> clf = TorchClassifier(net, input_shape=(2,), nb_classes=2)
    >>> clean_accuracy(clf, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [0, 0])
    0.5
    """
    pred = _predicted(estimator, x, batch_size, "clean_accuracy")
    return float((pred == _labels(y, pred.shape[0], estimator.nb_classes, "y")).mean())
