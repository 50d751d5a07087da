"""Informed-adversary reconstruction of a training record (Balle et al., 2022)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from bastion.attacks.inference.reconstruction import DatabaseReconstruction
from bastion.estimators import SklearnClassifier
from bastion.exceptions import EstimatorError, InputError


def relative_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("loader", [load_iris, load_wine, load_breast_cancer])
@pytest.mark.parametrize("target", [0, 17, 101])
def test_gaussian_nb_target_row_recovered(loader, target):
    x, y = loader(return_X_y=True)
    model = GaussianNB().fit(x, y)
    known = np.delete(np.arange(len(x)), target)
    x_t, y_t = DatabaseReconstruction(model).reconstruct(x[known], y[known])
    assert x_t.shape == (1, x.shape[1]) and y_t.shape == (1, len(model.classes_))
    assert int(y_t.argmax()) == y[target]
    # Measured: about 1e-14 (exact up to rounding); the requirement is 5%.
    assert relative_error(x_t[0], x[target]) < 0.05
    np.testing.assert_allclose(x_t[0], x[target], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(("loader", "target"), [(load_iris, 0), (load_iris, 60), (load_wine, 50)])
def test_logistic_regression_target_row_recovered(loader, target):
    x, y = loader(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    model = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x, y)
    known = np.delete(np.arange(len(x)), target)
    x_t, y_t = DatabaseReconstruction(SklearnClassifier(model)).reconstruct(x[known], y[known])
    assert int(y_t.argmax()) == y[target]
    assert relative_error(x_t[0], x[target]) < 0.05  # measured 1e-5 to 1e-4


def test_binary_logistic_regression_and_tensors():
    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x)[:200]
    y = y[:200]
    model = LogisticRegression(C=0.1, tol=1e-12, max_iter=10_000).fit(x, y)
    # A target the model finds hard has a large residual, which conditions the solve well.
    margin = np.abs(model.decision_function(x))
    target = int(np.argmin(margin))
    known = np.delete(np.arange(len(x)), target)
    x_t, y_t = DatabaseReconstruction(model).reconstruct(
        torch.from_numpy(x[known]), torch.from_numpy(y[known])
    )
    assert isinstance(x_t, torch.Tensor) and x_t.dtype == torch.float64
    assert int(y_t.argmax()) == y[target]
    assert relative_error(x_t[0].numpy(), x[target]) < 0.05


def test_reconstruction_errors():
    x, y = load_iris(return_X_y=True)
    model = GaussianNB().fit(x, y)
    with pytest.raises(InputError, match="minus exactly one record"):
        DatabaseReconstruction(model).reconstruct(x, y)  # nothing missing
    with pytest.raises(InputError, match="minus exactly one record"):
        DatabaseReconstruction(model).reconstruct(x[2:], y[2:])  # two missing
    with pytest.raises(EstimatorError, match="GaussianNB or LogisticRegression"):
        DatabaseReconstruction(DecisionTreeClassifier().fit(x, y)).reconstruct(x[1:], y[1:])
    with pytest.raises(InputError, match="shape"):
        DatabaseReconstruction(model).reconstruct(x[1:, :2], y[1:])
