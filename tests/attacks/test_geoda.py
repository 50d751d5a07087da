"""GeoDA: decision-based attack with labels only, on the digits CNN and a linear model."""

import numpy as np
import pytest
import torch

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.geoda import GeoDA, dct_basis, low_frequency_noise, query_schedule
from bastion.estimators import BlackBoxClassifier
from bastion.exceptions import InvalidParameterError
from bastion.testing import check_attack


def test_conformance():
    check_attack(GeoDA)


def test_dct_basis_is_orthonormal_and_noise_is_low_frequency():
    basis = dct_basis(28, 28, dtype=torch.float64)
    torch.testing.assert_close(basis.T @ basis, torch.eye(28, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    like = torch.zeros(1, dtype=torch.float64)
    noise = low_frequency_noise(5, (3, 28, 28), 6, gen, like)
    coef = basis.T @ noise @ basis  # the 2D DCT of each channel
    assert coef[..., 6:, :].abs().max() < 1e-12 and coef[..., :, 6:].abs().max() < 1e-12
    assert coef[..., :6, :6].abs().min() > 0
    flat = low_frequency_noise(4, (30,), 30, gen, like)  # full space for 1D inputs
    assert flat.shape == (4, 30)


def test_query_schedule_is_the_papers_allocation():
    """N_t proportional to lambda ** (-2 t / 3), first iteration 50-80 queries, 25 queries per
    iteration set aside for the boundary searches."""
    sched = query_schedule(3000, 0.6)
    t = len(sched)
    assert 50 <= sched[0] <= 80
    ratios = np.array(sched[1:]) / np.array(sched[:-1])
    np.testing.assert_allclose(ratios, 0.6 ** (-2 / 3), rtol=0.03)
    assert abs(sum(sched) - (3000 - 25 * 6)) <= t
    assert query_schedule(100, 0.6) == [75]  # small budgets: one iteration
    flat = query_schedule(3000, 1.0)
    assert max(flat) - min(flat) <= 1


@pytest.fixture(scope="module")
def digits_problem(digits_cnn, digits_test):
    x, y = digits_test
    correct = np.asarray(digits_cnn.predict(x)).argmax(1) == y
    x, y = x[correct][:8], y[correct][:8]
    deepfool = perturbation_norms(x, DeepFool(digits_cnn).generate(x, y), 2)
    return x, y, deepfool


def _labels_only(clf):
    return BlackBoxClassifier(
        lambda b: np.asarray(clf.predict(b)).argmax(1),
        input_shape=clf.input_shape,
        nb_classes=clf.nb_classes,
        clip_values=clf.clip_values,
        labels_only=True,
    )


def test_digits_cnn_labels_only(digits_cnn, digits_problem):
    """Labels only, no gradients: every sample with a start is adversarial, the budget is
    respected and counted exactly, the distance shrinks as the budget grows (same seed), and
    with 1000 queries the median L2 distance is close to white-box DeepFool's."""
    x, y, deepfool = digits_problem
    medians = []
    for budget in (250, 500, 1000):
        bb = _labels_only(digits_cnn)
        attack = GeoDA(bb, max_queries=budget, random_state=0)
        x_adv = attack.generate(x, y)
        assert attack.queries_.max() <= budget
        assert bb.query_count == attack.queries_.sum()
        changed = np.any((x_adv != x).reshape(len(x), -1), axis=1)
        fooled = np.asarray(digits_cnn.predict(x_adv)).argmax(1) != y
        assert changed.mean() == 1.0  # a start was found for every sample
        assert np.all(fooled[changed])
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        medians.append(np.median(perturbation_norms(x, x_adv, 2)))
    assert medians[0] > medians[1] > medians[2]
    # measured: medians 1.64 > 1.38 > 1.35; white-box DeepFool 1.09 (ratio 1.24)
    assert medians[2] <= 1.5 * np.median(deepfool)


@pytest.fixture(scope="module")
def linear():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MinMaxScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = MinMaxScaler().fit_transform(x).astype(np.float32)
    model = LogisticRegression(max_iter=5000).fit(x, y)
    correct = model.predict(x) == y
    x, y = x[correct][:40], y[correct][:40]
    # float64 inside: sklearn's float32 decision values depend on the batch at the 1e-6 level
    bb = BlackBoxClassifier(
        lambda b: model.predict(b.astype(np.float64)),
        input_shape=(30,),
        nb_classes=2,
        clip_values=None,
        labels_only=True,
    )
    return bb, x, y, model


@pytest.mark.parametrize(("norm", "dual"), [(2, 2), ("inf", 1)])
def test_linear_model_reaches_the_exact_distance(linear, norm, dual):
    """The minimal Lp distance to the hyperplane w.x + b = 0 is |w.x + b| / ||w||_q: GeoDA
    (full-space probes for 30 tabular features) never goes below it and gets within 10%."""
    bb, x, y, model = linear
    w, b = model.coef_[0], model.intercept_[0]
    exact = np.abs(x.astype(np.float64) @ w + b) / np.linalg.norm(w, dual)
    attack = GeoDA(bb, norm=norm, max_queries=1000, sub_dim=30, random_state=0)
    x_adv = attack.generate(x, y)
    assert np.all(model.predict(x_adv.astype(np.float64)) != y)
    ratio = perturbation_norms(x, x_adv, norm) / exact
    # measured: L2 median 1.03, max 1.06; Linf median 1.03, max 1.19
    assert ratio.min() >= 1 - 1e-4
    assert np.median(ratio) <= 1.1
    assert ratio.max() <= (1.1 if norm == 2 else 1.3)


def test_mask_and_parameter_errors(linear):
    bb, x, y, _ = linear
    mask = np.zeros(30, dtype=np.float32)
    mask[:15] = 1
    x_adv = GeoDA(bb, max_queries=200, sub_dim=30, random_state=0).generate(x[:5], y[:5], mask=mask)
    np.testing.assert_array_equal(x_adv[:, 15:], x[:5, 15:])
    with pytest.raises(InvalidParameterError, match="'norm' parameter of GeoDA"):
        GeoDA(bb, norm=1).generate(x[:2], y[:2])
    with pytest.raises(InvalidParameterError, match="'sigma' parameter of GeoDA"):
        GeoDA(bb, sigma=0.0).generate(x[:2], y[:2])


def test_starting_points_from_x_init(linear):
    """generate(..., x_init=...) (the decision-based template): an adversarial starting point
    is used as it is (one query), moved to the boundary and improved; one that is not
    adversarial falls back to the noise search."""
    bb, x, y, model = linear
    pick = np.r_[np.flatnonzero(y == 0)[:3], np.flatnonzero(y == 1)[:3]]
    xs, ys = x[pick], y[pick]
    other = x[pick[::-1]]  # a sample of the other class
    attack = GeoDA(bb, max_queries=150, sub_dim=30, random_state=0)
    x_adv = attack.generate(xs, ys, x_init=other)
    assert attack.success_.all()
    assert np.all(model.predict(x_adv.astype(np.float64)) != ys)
    assert np.all(perturbation_norms(xs, x_adv, 2) < perturbation_norms(xs, other, 2))
    own = x[np.r_[np.flatnonzero(y == 0)[3:6], np.flatnonzero(y == 1)[1:4]]]  # same classes
    x_adv = attack.generate(xs, ys, x_init=own)
    assert attack.success_.all()
    assert np.all(model.predict(x_adv.astype(np.float64)) != ys)
