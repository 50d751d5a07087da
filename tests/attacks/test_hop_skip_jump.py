"""HopSkipJump: labels-only minimal perturbations on the digits CNN, a logistic regression and
a random forest."""

import warnings

import numpy as np
import pytest

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.hop_skip_jump import HopSkipJump
from bastion.estimators import BlackBoxClassifier
from bastion.exceptions import InputError
from bastion.testing import check_attack
from bastion.testing._problems import sklearn_problem


def test_conformance():
    assert "check_query_budget" in check_attack(HopSkipJump)


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


@pytest.fixture(scope="module")
def correct(digits_cnn, digits_test):
    x, y = digits_test
    ok = np.asarray(digits_cnn.predict(x)).argmax(1) == y
    return x[ok], y[ok]


def _predict(clf, x):
    return np.asarray(clf.predict(x)).argmax(1)


def test_l2_shrinks_with_queries_and_nears_deepfool(digits_cnn, labels_api, correct):
    x, y = correct[0][:8], correct[1][:8]
    white_box = np.median(perturbation_norms(x, DeepFool(digits_cnn).generate(x, y), 2))
    medians = []
    for budget in (250, 500, 1000):
        attack = HopSkipJump(labels_api, max_queries=budget, random_state=0)
        before = labels_api.query_count
        x_adv = attack.generate(x, y)
        assert labels_api.query_count - before == attack.queries_.sum()
        assert attack.queries_.max() <= budget
        assert np.all(_predict(digits_cnn, x_adv) != y)  # every sample broken
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        medians.append(np.median(perturbation_norms(x, x_adv, 2)))
    # measured: 4.07, 3.02, 2.16 against DeepFool's 1.09 (white-box, same model)
    assert medians[0] > medians[1] > medians[2]
    assert medians[2] <= 2.0 * white_box


def test_linf(digits_cnn, labels_api, correct):
    x, y = correct[0][8:14], correct[1][8:14]
    white_box = perturbation_norms(x, DeepFool(digits_cnn, norm="inf").generate(x, y), "inf")
    attack = HopSkipJump(labels_api, norm="inf", max_queries=1000, random_state=0)
    x_adv = attack.generate(x, y)
    assert np.all(_predict(digits_cnn, x_adv) != y)
    assert attack.queries_.max() <= 1000
    ratio = np.median(perturbation_norms(x, x_adv, "inf")) / np.median(white_box)
    assert ratio < 3.0  # measured 2.56


def test_targeted_from_given_starting_points(digits_cnn, labels_api, correct, digits_test):
    x, y = correct[0][:5], correct[1][:5]
    target = (y + 1) % 10
    pool = digits_test[0]
    pred = _predict(digits_cnn, pool)
    x_init = np.stack([pool[pred == t][0] for t in target])
    attack = HopSkipJump(labels_api, targeted=True, max_queries=500, random_state=0)
    x_adv = attack.generate(x, target, x_init=x_init)
    np.testing.assert_array_equal(_predict(digits_cnn, x_adv), target)
    start = perturbation_norms(x, x_init, 2)
    # measured: the distance falls to 0.06 to 0.70 of the starting point's
    assert np.all(perturbation_norms(x, x_adv, 2) < 0.8 * start)
    with pytest.raises(InputError, match="target labels"):
        attack.generate(x)
    with pytest.raises(InputError, match="x_init"):
        attack.generate(x, target, x_init=x_init[:2])


def test_already_adversarial_inputs_stay_put(digits_cnn, labels_api, correct):
    """A sample whose clean input is already adversarial (wrong label given) converges to a
    perturbation of (almost) zero instead of failing."""
    x, y = correct[0][:2], (correct[1][:2] + 1) % 10
    x_adv = HopSkipJump(labels_api, max_queries=200, random_state=0).generate(x, y)
    assert np.all(perturbation_norms(x, x_adv, 2) < 1e-3)


# --------------------------------------------------------------------------- logistic regression


@pytest.fixture(scope="module")
def logistic():
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
    # Uniform noise is (almost) always class 0 here: start class-0 samples from a class-1 one.
    x_init = np.stack([x[ok][y[ok] != c][0] for c in ys])
    return clf, model, xs, ys, x_init


def test_l2_on_a_linear_model_nears_the_exact_distance(logistic):
    """Exact minimal L2 distance to a linear boundary is |w.x + b| / ||w||_2 (where its foot
    lies inside the box)."""
    clf, model, x, y, x_init = logistic
    w, b = model.coef_[0], model.intercept_[0]
    exact = np.abs(x @ w + b) / np.linalg.norm(w)
    foot = x - ((x @ w + b) / np.linalg.norm(w) ** 2)[:, None] * w
    inside = np.all((foot >= 0) & (foot <= 1), axis=1)
    x_adv = HopSkipJump(clf, max_queries=2000, random_state=0).generate(x, y, x_init=x_init)
    assert np.all(model.predict(x_adv) != y)
    ratio = np.linalg.norm(x_adv - x, axis=1)[inside] / exact[inside]
    assert ratio.min() >= 1 - 1e-4  # never below the exact minimum
    assert np.median(ratio) < 1.03 and ratio.max() < 1.06  # measured 1.016 and 1.024


def test_linf_on_a_linear_model(logistic):
    clf, model, x, y, x_init = logistic
    w, b = model.coef_[0], model.intercept_[0]
    exact = np.abs(x @ w + b) / np.abs(w).sum()  # a lower bound (the box may bind)
    x_adv = HopSkipJump(clf, norm="inf", max_queries=1000, random_state=0).generate(
        x, y, x_init=x_init
    )
    assert np.all(model.predict(x_adv) != y)
    ratio = np.abs(x_adv - x).max(1) / exact
    assert ratio.min() >= 1 - 1e-4 and np.median(ratio) < 1.1  # measured 1.06


# --------------------------------------------------------------------------- a random forest


@pytest.fixture(scope="module")
def forest():
    """A scikit-learn random forest on 8x8 digits: predictions only, no gradients, no
    scores worth following (a piecewise-constant model)."""
    problem = sklearn_problem("forest", 10)
    x_train = problem.x_train
    return problem, x_train


def test_forest_without_a_starting_point_warns(forest):
    """Noise in features the forest never splits on (pixels that are 0 in every training
    image) never changes its label: every sample is returned unchanged, with a warning that
    says why, and success_ says it failed."""
    problem, x_train = forest
    mask = (x_train.std(0) == 0).astype(np.float32)
    assert 0 < mask.sum() < mask.size
    attack = HopSkipJump(problem.estimator, max_queries=300, init_size=30, random_state=0)
    msg = r"no adversarial starting point for 10 of 10 samples.*10 tried init_size=30"
    with pytest.warns(RuntimeWarning, match=msg):
        x_adv = attack.generate(problem.x, problem.y, mask=mask)
    np.testing.assert_array_equal(x_adv, problem.x)
    assert not attack.success_.any() and np.all(attack.queries_ == 30)
    with pytest.warns(RuntimeWarning, match=r"10 ran out of queries first \(max_queries=3\)"):
        HopSkipJump(problem.estimator, max_queries=3, random_state=0).generate(problem.x, mask=mask)


def test_forest_targeted_needs_starting_points(forest):
    problem, x_train = forest
    clf, x, y = problem.estimator, problem.x, problem.y
    target = (y + 1) % 10
    attack = HopSkipJump(clf, targeted=True, max_queries=200, init_size=5, random_state=0)
    with pytest.warns(RuntimeWarning, match="the model put none in the target class"):
        x_adv = attack.generate(x, target)
    failed = ~attack.success_
    assert failed.any()
    np.testing.assert_array_equal(_predict(clf, x_adv)[failed], y[failed])
    np.testing.assert_array_equal(_predict(clf, x_adv)[~failed], target[~failed])
    # The remedy the warning names: images of the target classes as starting points.
    pred = _predict(clf, x_train)
    x_init = np.stack([x_train[pred == t][0] for t in target])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        x_adv = attack.generate(x, target, x_init=x_init)
    assert attack.success_.all()
    np.testing.assert_array_equal(_predict(clf, x_adv), target)


def test_forest_untargeted_success_is_what_the_forest_says(forest):
    problem, _ = forest
    attack = HopSkipJump(problem.estimator, max_queries=200, random_state=0)
    x_adv = attack.generate(problem.x, problem.y)
    np.testing.assert_array_equal(attack.success_, _predict(problem.estimator, x_adv) != problem.y)
    assert attack.success_.all()


def test_budget_of_the_clean_label_only(labels_api, correct):
    """max_queries=1 with y omitted: the clean label takes the whole budget."""
    x = correct[0][:3]
    attack = HopSkipJump(labels_api, max_queries=1, random_state=0)
    with pytest.warns(RuntimeWarning, match=r"3 ran out of queries first \(max_queries=1\)"):
        x_adv = attack.generate(x)
    np.testing.assert_array_equal(x_adv, x)
    assert attack.queries_.tolist() == [1, 1, 1] and not attack.success_.any()
