"""Poisoning metrics: known answers and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.defenses.poisoning._result import DetectionResult
from bastion.estimators import TorchClassifier
from bastion.exceptions import InputError, InvalidParameterError
from bastion.metrics.poisoning import (
    attack_success_rate,
    clean_accuracy,
    detection_f1,
    detection_precision,
    detection_recall,
    detection_scores,
)


def test_detection_scores_known_answer():
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 1], dtype=bool)
    true = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    s = detection_scores(pred, true)
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (2, 2, 1)
    assert s["true_negatives"] == 3
    assert s["precision"] == 0.5 and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s["false_positive_rate"] == pytest.approx(2 / 5)
    assert detection_precision(pred, true) == s["precision"]
    assert detection_recall(pred, true) == s["recall"]
    assert detection_f1(pred, true) == s["f1"]
    # tensors, 0/1 ints and DetectionResult are accepted
    result = DetectionResult(is_poison=pred, scores=np.zeros(8))
    assert detection_scores(result, torch.from_numpy(true.astype(int))) == s


def test_detection_scores_degenerate_cases():
    none = np.zeros(4, dtype=bool)
    s = detection_scores(none, none)
    assert s["precision"] == s["recall"] == s["f1"] == 0.0
    assert detection_scores(np.ones(4, bool), np.ones(4, bool))["f1"] == 1.0
    with pytest.raises(InputError, match="entries"):
        detection_scores(none, np.zeros(3, bool))
    with pytest.raises(InputError, match="1-d"):
        detection_scores(np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    with pytest.raises(InputError, match="booleans"):
        detection_scores(np.array([0, 2]), np.array([0, 1]))


@pytest.fixture
def argmax_clf():
    """Predicts the index of the largest feature."""
    net = torch.nn.Linear(3, 3)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3))
        net.bias.zero_()
    return TorchClassifier(net, input_shape=(3,), nb_classes=3, clip_values=None)


def test_attack_success_rate_excludes_the_target_class(argmax_clf):
    x = torch.eye(3)[[2, 2, 0, 1, 2]]  # predictions 2, 2, 0, 1, 2
    y_true = np.array([0, 1, 1, 0, 2])  # the last one already is the target
    assert attack_success_rate(argmax_clf, x, 2) == pytest.approx(3 / 5)
    assert attack_success_rate(argmax_clf, x, 2, y_true) == pytest.approx(2 / 4)
    # one target per sample (all-to-all): (y + 1) % 3
    targets = (y_true + 1) % 3  # 1, 2, 2, 1, 0
    assert attack_success_rate(argmax_clf, x, targets, y_true) == pytest.approx(2 / 5)
    with pytest.raises(InputError, match="target class"):
        attack_success_rate(argmax_clf, x[:1], 2, [2])
    with pytest.raises(InputError, match="target"):
        attack_success_rate(argmax_clf, x, 5)
    with pytest.raises(InvalidParameterError, match="'batch_size'"):
        attack_success_rate(argmax_clf, x, 2, batch_size=0)


def test_clean_accuracy(argmax_clf):
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    assert clean_accuracy(argmax_clf, x, [0, 1, 2, 0]) == 0.75
    assert clean_accuracy(argmax_clf, torch.from_numpy(x), torch.tensor([0, 1, 2, 2])) == 1.0
    with pytest.raises(InputError, match="labels"):
        clean_accuracy(argmax_clf, x, [0, 1])
