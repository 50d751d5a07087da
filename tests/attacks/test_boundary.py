"""Boundary attack: a labels-only walk along the boundary, on the digits CNN and a logistic
regression."""

import numpy as np
import pytest

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion.boundary import BoundaryAttack
from bastion.estimators import BlackBoxClassifier
from bastion.testing import check_attack


def test_conformance():
    assert "check_query_budget" in check_attack(BoundaryAttack)


@pytest.fixture(scope="module")
def labels_api(digits_cnn):
    """The digits CNN behind a labels-only API: no gradients, no scores."""
    return BlackBoxClassifier(
        lambda b: digits_cnn.predict(b).argmax(1),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        labels_only=True,
    )


def _predict(clf, x):
    return np.asarray(clf.predict(x)).argmax(1)


def test_walk_shrinks_the_starting_perturbation(digits_cnn, labels_api, digits_test):
    x, y = digits_test
    ok = _predict(digits_cnn, x) == y
    x, y = x[ok][:8], y[ok][:8]
    # max_iter=0: the starting points alone (noise blended towards x), same seed
    start = perturbation_norms(
        x, BoundaryAttack(labels_api, max_iter=0, random_state=0).generate(x, y), 2
    )
    medians = []
    for budget in (500, 1500):
        attack = BoundaryAttack(labels_api, max_queries=budget, random_state=0)
        before = labels_api.query_count
        x_adv = attack.generate(x, y)
        assert labels_api.query_count - before == attack.queries_.sum()
        assert attack.queries_.max() <= budget
        assert np.all(_predict(digits_cnn, x_adv) != y)
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        norms = perturbation_norms(x, x_adv, 2)
        assert np.all(norms <= start + 1e-6)  # a sample only ever moves closer
        medians.append(np.median(norms))
    # measured: median 9.03 at the start, 7.30 after 500 queries, 2.94 after 1500 (3.1x)
    assert medians[1] < medians[0] < np.median(start)
    assert np.median(start) / medians[1] > 2.5


def test_targeted_from_given_starting_points(digits_cnn, labels_api, digits_test):
    x, y = digits_test
    ok = _predict(digits_cnn, x) == y
    x, y = x[ok][:5], y[ok][:5]
    target = (y + 1) % 10
    pred = _predict(digits_cnn, digits_test[0])
    x_init = np.stack([digits_test[0][pred == t][0] for t in target])
    attack = BoundaryAttack(labels_api, targeted=True, max_queries=500, random_state=0)
    x_adv = attack.generate(x, target, x_init=x_init)
    np.testing.assert_array_equal(_predict(digits_cnn, x_adv), target)
    ratio = perturbation_norms(x, x_adv, 2) / perturbation_norms(x, x_init, 2)
    assert np.all(ratio < 0.8)  # measured 0.09 to 0.75


def test_l2_on_a_linear_model_nears_the_exact_distance():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MinMaxScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = MinMaxScaler().fit_transform(x).astype(np.float32)
    model = LogisticRegression(max_iter=5000).fit(x, y)
    clf = BlackBoxClassifier(
        model.predict, input_shape=(30,), nb_classes=2, clip_values=(0, 1), labels_only=True
    )
    ok = model.predict(x) == y
    xs, ys = x[ok][:40], y[ok][:40]
    x_init = np.stack([x[ok][y[ok] != c][0] for c in ys])  # noise is (almost) always class 0
    w, b = model.coef_[0], model.intercept_[0]
    exact = np.abs(xs @ w + b) / np.linalg.norm(w)
    foot = xs - ((xs @ w + b) / np.linalg.norm(w) ** 2)[:, None] * w
    inside = np.all((foot >= 0) & (foot <= 1), axis=1)
    x_adv = BoundaryAttack(clf, max_queries=3000, random_state=0).generate(xs, ys, x_init=x_init)
    # Adversarial, up to float rounding: the walk converges onto the boundary itself, where a
    # prediction in another batch (another BLAS kernel) can round to the other side.
    margin = model.decision_function(x_adv) * np.where(ys == 1, 1.0, -1.0)
    assert np.all(margin < 1e-5)
    ratio = np.linalg.norm(x_adv - xs, axis=1)[inside] / exact[inside]
    # measured: median 1.000005, max 1.00017
    assert ratio.min() >= 1 - 1e-4
    assert np.median(ratio) < 1.01 and ratio.max() < 1.05
