"""Shared fixtures: a trained digits-28 CNN, cached per test session (and per xdist worker)."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.zoo import SmallCNN, train_classifier


@pytest.fixture(scope="session")
def digits28():
    return load_digits(size=28, random_state=0)


@pytest.fixture(scope="session")
def digits_cnn(digits28):
    """The SmallCNN of the demo, trained 5 epochs, seeded (about 96% test accuracy)."""
    (x_tr, y_tr), _ = digits28
    model = train_classifier(
        SmallCNN(in_channels=1, nb_classes=10, random_state=0), x_tr, y_tr, epochs=5, random_state=0
    )
    return TorchClassifier(model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))


@pytest.fixture(scope="session")
def digits_test(digits28, digits_cnn):
    """200 test images and labels."""
    _, (x_te, y_te) = digits28
    return x_te[:200], y_te[:200]


def accuracy(clf, x, y) -> float:
    return float(np.mean(np.asarray(clf.predict(x)).argmax(1) == np.asarray(y)))
