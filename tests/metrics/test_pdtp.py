"""PDTP: per-record leakage by leave-one-out retraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from bastion.estimators import TorchClassifier
from bastion.exceptions import InputError, InvalidParameterError
from bastion.metrics.pdtp import pdtp
from bastion.zoo import MLP, train_classifier


def one_nn_problem():
    # Two tight clusters; record 20 is a mislabelled outlier inside cluster 0 and record 0
    # has an exact duplicate (record 1).
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 0.1, (10, 2)), rng.normal(5, 0.1, (10, 2)), [[0.05, 0.05]]]
    x[1] = x[0]
    y = np.r_[np.zeros(10), np.ones(10), [1]].astype(int)
    return x, y


def test_memorised_outlier_leaks_and_duplicate_does_not():
    x, y = one_nn_problem()
    learner = KNeighborsClassifier(n_neighbors=1)
    target = KNeighborsClassifier(n_neighbors=1).fit(x, y)
    leak = pdtp(target, learner, x, y, indexes=[0, 20, 15])
    # Duplicate: its twin answers the same (ratio 1). Outlier: p goes from 1 to 0, binned
    # 0.995 / 0.005 = 199. A typical record of cluster 1: its neighbours agree (ratio 1).
    np.testing.assert_allclose(leak.average, [1.0, 199.0, 1.0])
    np.testing.assert_allclose(leak.worst, leak.average)
    np.testing.assert_allclose(leak.std, 0.0)
    diff = pdtp(target, learner, x, y, indexes=[0, 20], comparison="difference")
    np.testing.assert_allclose(diff.average, [0.0, 0.99])


def test_all_rows_comparison_dominates_and_callable_learner():
    x, y = load_iris(return_X_y=True)
    x = x[::3]
    y = y[::3]
    target = LogisticRegression(max_iter=1000).fit(x, y)
    idx = [0, 10, 20, 30, 40]
    rec = pdtp(target, LogisticRegression(max_iter=1000), x, y, indexes=idx)
    every = pdtp(target, LogisticRegression(max_iter=1000), x, y, indexes=idx, compare_on="all")
    assert (every.average >= rec.average - 1e-12).all() and (rec.average >= 1.0).all()
    # A randomised learner: several retrainings give a mean, a worst case and a spread.
    seeds = iter(range(100))

    def noisy(xs, ys):
        rng = np.random.default_rng(next(seeds))
        keep = rng.random(len(xs)) < 0.7
        return LogisticRegression(max_iter=1000).fit(xs[keep], ys[keep])

    rand = pdtp(target, noisy, x, y, indexes=idx, num_iter=3)
    assert (rand.worst >= rand.average).all() and (rand.std > 0).any()


def test_torch_learner_through_bastion_estimators():
    x, y = load_iris(return_X_y=True)
    x = (x / x.max(0)).astype(np.float32)

    def learner(xs, ys):
        model = train_classifier(
            MLP(4, 3, hidden=(8,), random_state=0), xs, ys, epochs=3, random_state=0
        )
        return TorchClassifier(model, input_shape=(4,), nb_classes=3)

    target = learner(x, y)
    leak = pdtp(target, learner, torch.from_numpy(x), torch.from_numpy(y), indexes=[0, 1])
    assert leak.average.shape == (2,) and (leak.average >= 1.0).all()


def test_pdtp_errors():
    x, y = one_nn_problem()
    target = KNeighborsClassifier(n_neighbors=1).fit(x, y)
    with pytest.raises(InvalidParameterError, match="'comparison' parameter of pdtp"):
        pdtp(target, KNeighborsClassifier(), x, y, comparison="log")
    with pytest.raises(InputError, match="indexes"):
        pdtp(target, KNeighborsClassifier(), x, y, indexes=[50])
    with pytest.raises(InputError, match="one row per record"):
        pdtp(target, KNeighborsClassifier(), x, y[:3])
