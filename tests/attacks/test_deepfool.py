"""DeepFool: exact answers on linear models, near-minimal perturbations on the digits CNN."""

import numpy as np
import pytest
import torch

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion import PGD
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.exceptions import EstimatorError, InvalidParameterError

OVERSHOOT = 0.02


def _scaled(loader):
    from sklearn.preprocessing import MinMaxScaler

    x, y = loader(return_X_y=True)
    return MinMaxScaler().fit_transform(x).astype(np.float32), y


@pytest.fixture(scope="module")
def binary_logistic():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    from bastion.estimators import SklearnClassifier

    x, y = _scaled(load_breast_cancer)
    model = LogisticRegression(max_iter=5000).fit(x, y)
    return SklearnClassifier(model, clip_values=None), x, y, model


@pytest.fixture(scope="module")
def multinomial_logistic():
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    from bastion.estimators import SklearnClassifier

    x, y = _scaled(load_wine)
    model = LogisticRegression(max_iter=5000).fit(x, y)  # multinomial (lbfgs)
    assert model.coef_.shape[0] == 3
    return SklearnClassifier(model, clip_values=None), x, y, model


@pytest.mark.parametrize(("norm", "dual"), [(2, 2), ("inf", 1)])
def test_binary_linear_model_exact_distance(binary_logistic, norm, dual):
    """The minimal Lp perturbation to the hyperplane w.x + b = 0 has norm |w.x + b| / ||w||_q
    (q dual to p). DeepFool lands on the boundary in one step and scales it by 1 + overshoot,
    and each sample stops (and leaves the batch) after that one step."""
    clf, x, y, model = binary_logistic
    correct = model.predict(x) == y
    w, b = model.coef_[0], model.intercept_[0]
    exact = np.abs(x @ w + b) / np.linalg.norm(w, dual)
    clf.reset_counts()
    x_adv = DeepFool(clf, norm=norm, overshoot=OVERSHOOT).generate(x, y)
    assert np.all(model.predict(x_adv)[correct] != y[correct])
    ratio = perturbation_norms(x, x_adv, norm)[correct] / exact[correct]
    assert ratio.min() >= 1.0 and ratio.max() <= 1.05
    np.testing.assert_allclose(ratio, 1 + OVERSHOOT, atol=1e-3)
    # one gradient per correctly classified sample; misclassified ones come back unchanged
    assert clf.gradient_count == correct.sum()
    np.testing.assert_array_equal(x_adv[~correct], x[~correct])


def test_multinomial_linear_model_exact_distance(multinomial_logistic):
    """For a multinomial linear model the region of class y is the polytope
    {z_y >= z_j for all j}; its complement is the union of the half-spaces {z_j > z_y}, so the
    exact minimal L2 distance out of it is min_j |(w_y - w_j).x + b_y - b_j| / ||w_y - w_j||."""
    clf, x, y, model = multinomial_logistic
    correct = model.predict(x) == y
    x, y = x[correct], y[correct]
    w, b = model.coef_, model.intercept_
    z = x @ w.T + b
    rows = np.arange(len(y))
    gap = z[rows, y][:, None] - z  # (n, K) >= 0
    dw = np.linalg.norm(w[y][:, None, :] - w[None], axis=2)
    gap[rows, y], dw[rows, y] = np.inf, 1.0
    exact = (gap / dw).min(axis=1)

    x_adv = DeepFool(clf, overshoot=OVERSHOOT).generate(x, y)
    assert np.all(model.predict(x_adv) != y)
    ratio = perturbation_norms(x, x_adv, 2) / exact
    np.testing.assert_allclose(ratio, 1 + OVERSHOOT, atol=1e-3)

    # With the runner-up class as the only candidate, DeepFool goes to the runner-up's
    # boundary, which may be farther than the nearest one: never below the exact minimum.
    x_two = DeepFool(clf, nb_grads=2, overshoot=OVERSHOOT).generate(x, y)
    norms_two = perturbation_norms(x, x_two, 2)
    z_other = np.where(np.arange(z.shape[1]) == y[:, None], -np.inf, z)
    runner_up = z_other.argmax(1)
    np.testing.assert_allclose(
        norms_two, (1 + OVERSHOOT) * gap[rows, runner_up] / dw[rows, runner_up], rtol=1e-3
    )
    assert np.all(norms_two >= exact)
    assert np.any(norms_two > 1.04 * exact)  # the nearest boundary is not always the runner-up's


def test_box_constrained_linear_model(binary_logistic):
    """With clip_values the box can only make the minimal distance larger; DeepFool still
    crosses the boundary for (almost) every sample by leaving clipped coordinates alone."""
    from bastion.estimators import SklearnClassifier

    _, x, y, model = binary_logistic
    clf = SklearnClassifier(model, clip_values=(0, 1))
    correct = model.predict(x) == y
    w, b = model.coef_[0], model.intercept_[0]
    exact_unboxed = np.abs(x @ w + b) / np.linalg.norm(w)
    x_adv = DeepFool(clf).generate(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    success = (model.predict(x_adv) != y) & correct
    assert success.sum() > 0.95 * correct.sum()
    assert np.all(perturbation_norms(x, x_adv, 2)[success] >= exact_unboxed[success])


# --------------------------------------------------------------------------- digits CNN


@pytest.fixture(scope="module")
def deepfool_l2(digits_cnn, digits_test):
    x, y = digits_test
    return DeepFool(digits_cnn, norm=2).generate(x, y)


def _success(clf, x_adv, y):
    return np.asarray(clf.predict(x_adv)).argmax(1) != y


def test_deepfool_l2_on_the_digits_cnn(digits_cnn, digits_test, deepfool_l2):
    """Measured: 99% success, median L2 norm about 1.5; PGD-L2 with that median as a fixed
    budget fools only about 57% of the same samples."""
    x, y = digits_test
    correct = ~_success(digits_cnn, x, y)
    success = _success(digits_cnn, deepfool_l2, y) & correct
    assert success.sum() > 0.95 * correct.sum()
    norms = perturbation_norms(x, deepfool_l2, 2)[success]
    median = float(np.median(norms))
    assert 0.5 < median < 3.0
    assert deepfool_l2.min() >= 0.0 and deepfool_l2.max() <= 1.0
    pgd = PGD(
        digits_cnn, eps=median, eps_step=median / 8, max_iter=20, norm=2, num_random_init=0
    ).generate(x, y)
    assert (_success(digits_cnn, pgd, y) & correct).sum() < 0.8 * correct.sum()


def test_deepfool_linf_on_the_digits_cnn(digits_cnn, digits_test):
    """Measured: 99% success, median Linf norm about 0.09 (PGD needs 0.3 for < 5% accuracy)."""
    x, y = digits_test[0][:100], digits_test[1][:100]
    correct = ~_success(digits_cnn, x, y)
    x_adv = DeepFool(digits_cnn, norm="inf").generate(x, y)
    success = _success(digits_cnn, x_adv, y) & correct
    assert success.sum() > 0.95 * correct.sum()
    norms = perturbation_norms(x, x_adv, "inf")[success]
    assert 0.02 < np.median(norms) < 0.2
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_failures_come_back_unchanged_and_finished_samples_are_frozen(
    digits_cnn, digits_test, deepfool_l2
):
    """After one step some samples are fooled and some not: the others come back unchanged.
    A sample that succeeded early keeps exactly the same perturbation in a longer run."""
    x, y = digits_test
    short = DeepFool(digits_cnn, max_iter=1).generate(x, y)
    changed = np.any((short != x).reshape(len(x), -1), axis=1)
    assert 0.05 < changed.mean() < 0.95
    assert np.all(_success(digits_cnn, short[changed], y[changed]))
    np.testing.assert_array_equal(short[~changed], x[~changed])
    np.testing.assert_array_equal(short[changed], deepfool_l2[changed])


def test_dropping_finished_samples_saves_gradients(digits_cnn, digits_test):
    x, y = digits_test[0][:50], digits_test[1][:50]
    digits_cnn.reset_counts()
    DeepFool(digits_cnn, max_iter=50).generate(x, y)
    # one Jacobian per sample and step taken: a few steps each, far from 50 * 50
    assert digits_cnn.gradient_count < 5 * len(x)


def test_fewer_candidate_classes(digits_cnn, digits_test, deepfool_l2):
    x, y = digits_test[0][:60], digits_test[1][:60]
    correct = ~_success(digits_cnn, x, y)
    x_two = DeepFool(digits_cnn, nb_grads=2).generate(x, y)
    assert (_success(digits_cnn, x_two, y) & correct).sum() > 0.9 * correct.sum()
    # nb_grads >= nb_classes means all classes: the same as the default 10 here
    np.testing.assert_array_equal(
        DeepFool(digits_cnn, nb_grads=50).generate(x, y), deepfool_l2[:60]
    )


def test_mask_is_respected(digits_cnn, digits_test):
    x, y = digits_test[0][:30], digits_test[1][:30]
    mask = np.zeros((1, 28, 28), np.float32)
    mask[:, :, :14] = 1
    x_adv = DeepFool(digits_cnn).generate(x, y, mask=mask)
    np.testing.assert_array_equal(x_adv[..., 14:], x[..., 14:])
    changed = np.any((x_adv != x).reshape(len(x), -1), axis=1)
    assert changed.mean() > 0.5
    assert np.all(_success(digits_cnn, x_adv[changed], y[changed]))


def test_tensor_in_tensor_out(digits_cnn, digits_test):
    xt = torch.as_tensor(digits_test[0][:10], dtype=torch.float64)
    out = DeepFool(digits_cnn).generate(xt, torch.as_tensor(digits_test[1][:10]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


def test_parameters_and_capabilities(digits_cnn, digits_test):
    x, y = digits_test[0][:2], digits_test[1][:2]
    attack = DeepFool(digits_cnn, overshoot=0.1)
    assert repr(attack) == "DeepFool(estimator=TorchClassifier, overshoot=0.1)"
    assert "targeted" not in attack.get_params()
    with pytest.raises(InvalidParameterError, match=r"'nb_grads' parameter of DeepFool"):
        DeepFool(digits_cnn, nb_grads=1).generate(x, y)
    with pytest.raises(InvalidParameterError, match=r"'norm' parameter of DeepFool"):
        DeepFool(digits_cnn, norm=1).generate(x, y)
    from bastion.estimators import BlackBoxClassifier

    bb = BlackBoxClassifier(lambda b: np.full((len(b), 2), 0.5), input_shape=(3,), nb_classes=2)
    with pytest.raises(EstimatorError, match="class_gradient"):
        DeepFool(bb).generate(np.zeros((2, 3), dtype=np.float32))
