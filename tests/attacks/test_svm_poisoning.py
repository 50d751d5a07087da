"""Biggio et al. SVM poisoning: the KKT implicit gradient matches finite differences, and a few
optimised points raise the validation error far more than as many random label flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import SVC

from bastion.attacks.poisoning.svm import SVMPoisoning
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError


@pytest.fixture(scope="module")
def sevens_ones():
    """Digits 7 (label 1) vs 1 (label 0), pixels in [0, 1]: 100 train, 150 validation."""
    x, y = load_digits(return_X_y=True)
    keep = (y == 7) | (y == 1)
    x, y = x[keep] / 16.0, (y[keep] == 7).astype(int)
    p = np.random.default_rng(0).permutation(len(x))
    return (x[p[:100]], y[p[:100]]), (x[p[100:250]], y[p[100:250]])


KERNELS = [("linear", {"C": 1.0}), ("rbf", {"C": 1.0, "gamma": 0.05})]


@pytest.mark.parametrize(
    ("kernel", "kw"), [("linear", {"C": 1.0}), ("rbf", {"C": 1.0, "gamma": 0.5})]
)
def test_implicit_gradient_matches_finite_differences(kernel, kw):
    x, y = load_breast_cancer(return_X_y=True)
    x = MinMaxScaler().fit_transform(x)
    p = np.random.default_rng(0).permutation(len(x))
    tr, va = p[:100], p[100:300]
    attack = SVMPoisoning(SVC(kernel=kernel, tol=1e-8, **kw), x_val=x[va], y_val=y[va])
    learner, kern, gamma = attack._learner(x[tr])
    s = np.where(y[tr] == 1, 1.0, -1.0)
    c = 3
    s[c] = -s[c]
    sv = np.where(y[va] == 1, 1.0, -1.0)
    svc = attack._fit(learner, x[tr], s)
    grad = attack._gradient(
        svc,
        torch.from_numpy(x[tr]),
        torch.from_numpy(s),
        c,
        torch.from_numpy(x[va]),
        torch.from_numpy(sv),
        kern,
        gamma,
    ).numpy()
    rng = np.random.default_rng(1)
    for _ in range(2):
        d = rng.normal(size=x.shape[1])
        d /= np.linalg.norm(d)
        h = 1e-4
        xp, xm = x[tr].copy(), x[tr].copy()
        xp[c] += h * d
        xm[c] -= h * d
        fd = (
            attack._val_loss(attack._fit(learner, xp, s), x[va], sv)
            - attack._val_loss(attack._fit(learner, xm, s), x[va], sv)
        ) / (2 * h)
        assert abs(fd) > 0.05
        np.testing.assert_allclose(grad @ d, fd, rtol=0.05)


@pytest.mark.parametrize(("kernel", "kw"), KERNELS)
def test_poisoning_beats_random_label_flips(sevens_ones, kernel, kw):
    """Measured (10 points of 100): validation error linear 0.08, RBF 0.04, vs 0.007 / 0.000
    for 10 random label flips (mean of 5) and 0.000 clean."""
    (x_tr, y_tr), (x_val, y_val) = sevens_ones

    def val_error(x, y):
        return 1.0 - float(np.mean(SVC(kernel=kernel, **kw).fit(x, y).predict(x_val) == y_val))

    attack = SVMPoisoning(
        SVC(kernel=kernel, **kw),
        x_val=x_val,
        y_val=y_val,
        nb_points=10,
        eps_step=0.5,
        max_iter=50,
        clip_values=(0.0, 1.0),
        random_state=0,
    )
    x_p, y_p, mask = attack.poison(x_tr, y_tr)
    assert mask.sum() == 10 and np.all(y_p[mask] != y_tr[mask])
    np.testing.assert_array_equal(x_p[~mask], x_tr[~mask])
    assert x_p.min() >= 0 and x_p.max() <= 1
    # gradient ascent: the validation hinge loss never decreases along a point's path
    assert all(np.all(np.diff(h) >= 0) and h[-1] > h[0] for h in attack.loss_history_)
    flips = []
    for seed in range(5):
        idx = np.random.default_rng(seed).choice(len(y_tr), 10, replace=False)
        y_f = y_tr.copy()
        y_f[idx] = 1 - y_f[idx]
        flips.append(val_error(x_tr, y_f))
    err, err_flip = val_error(x_p, y_p), float(np.mean(flips))
    assert err >= 0.03 and err > err_flip + 0.025, (err, err_flip)


def test_reproducible_and_types(sevens_ones):
    (x_tr, y_tr), (x_val, y_val) = sevens_ones
    make = lambda seed: SVMPoisoning(  # noqa: E731
        SVC(kernel="linear"),
        x_val=x_val,
        y_val=y_val,
        nb_points=2,
        eps_step=0.5,
        max_iter=5,
        random_state=seed,
    )
    a, b, c = make(0).poison(x_tr, y_tr), make(0).poison(x_tr, y_tr), make(1).poison(x_tr, y_tr)
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-9)  # BLAS round-off only
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[2], c[2])
    x_p, y_p, mask = make(0).poison(torch.from_numpy(x_tr).float(), torch.from_numpy(y_tr))
    assert isinstance(x_p, torch.Tensor) and x_p.dtype == torch.float32
    assert isinstance(y_p, torch.Tensor) and y_p.dtype == torch.int64
    assert isinstance(mask, torch.Tensor) and int(mask.sum()) == 2


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"nb_points": 0}, "nb_points"),
        ({"nb_points": 1000}, "nb_points"),
        ({"eps_step": 0.0}, "eps_step"),
        ({"max_iter": -1}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"clip_values": (1, 0)}, "clip_values"),
        ({"random_state": -1}, "random_state"),
        ({"x_val": np.zeros(3)}, "x_val"),
        ({"x_val": np.zeros((3, 5)), "y_val": np.zeros(3)}, "x_val"),
        ({"y_val": np.full(150, 7)}, "y_val"),
    ],
)
def test_bad_parameters_name_the_parameter(sevens_ones, params, name):
    (x_tr, y_tr), (x_val, y_val) = sevens_ones
    kw = {"x_val": x_val, "y_val": y_val}
    kw.update(params)
    with pytest.raises(InvalidParameterError, match=f"'{name}'"):
        SVMPoisoning(SVC(), **kw).poison(x_tr, y_tr)


def test_bad_estimator_and_inputs(sevens_ones):
    (x_tr, y_tr), (x_val, y_val) = sevens_ones
    with pytest.raises(EstimatorError, match="SVC"):
        SVMPoisoning(object(), x_val=x_val, y_val=y_val).poison(x_tr, y_tr)
    with pytest.raises(EstimatorError, match="kernel"):
        SVMPoisoning(SVC(kernel="poly"), x_val=x_val, y_val=y_val).poison(x_tr, y_tr)
    with pytest.raises(InputError, match="two classes"):
        SVMPoisoning(SVC(), x_val=x_val, y_val=y_val).poison(x_tr, np.arange(100) % 3)
    with pytest.raises(InputError):
        SVMPoisoning(SVC(), x_val=x_val, y_val=y_val).poison(x_tr, y_tr[:5])


def test_takes_the_svc_itself_not_a_bastion_estimator(sevens_ones):
    from sklearn.linear_model import LogisticRegression

    from bastion.estimators import SklearnClassifier

    (x_tr, y_tr), (x_val, y_val) = sevens_ones
    wrapped = SklearnClassifier(LogisticRegression().fit(x_tr, y_tr), clip_values=(0.0, 1.0))
    with pytest.raises(EstimatorError, match="pass the scikit-learn SVC itself"):
        SVMPoisoning(wrapped, x_val=x_val, y_val=y_val).poison(x_tr, y_tr)


def test_any_two_label_values_are_kept(sevens_ones):
    (x_tr, y_tr), (x_val, y_val) = sevens_ones
    signs, val_signs = np.where(y_tr == 1, 1.0, -1.0), np.where(y_val == 1, 1.0, -1.0)
    attack = SVMPoisoning(
        SVC(kernel="linear"), x_val=x_val, y_val=val_signs, nb_points=2, max_iter=2, random_state=0
    )
    x_p, y_p, mask = attack.poison(x_tr, signs)
    assert y_p.dtype == np.float64 and set(np.unique(y_p)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(y_p[mask], -signs[mask])
    np.testing.assert_array_equal(attack.classes_, [-1.0, 1.0])
    # the same points and moves as with 0 / 1 labels
    x_01, y_01, mask_01 = SVMPoisoning(
        SVC(kernel="linear"), x_val=x_val, y_val=y_val, nb_points=2, max_iter=2, random_state=0
    ).poison(x_tr, y_tr)
    np.testing.assert_array_equal(mask, mask_01)
    np.testing.assert_array_equal(y_p == 1.0, y_01 == 1)
    np.testing.assert_allclose(x_p, x_01, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda x, y: (x + 1.0, y), "outside clip_values"),
        (lambda x, y: (x[:0], y[:0]), "empty"),
        (lambda x, y: (x[:, :, None], y), r"\(N, d\)"),
        (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y), "NaN"),
        (lambda x, y: (x, np.where(np.arange(len(y)) == 0, np.nan, y)), "NaN"),
        (lambda x, y: (x, np.array(["a", "b"] * (len(y) // 2))), "numeric"),
        (lambda x, y: (x, y[:, None]), r"labels \(N,\)"),
    ],
)
def test_bad_data_is_a_clear_input_error(sevens_ones, make, match):
    (x_tr, y_tr), (x_val, y_val) = sevens_ones
    x, y = make(x_tr, y_tr)
    attack = SVMPoisoning(SVC(), x_val=x_val, y_val=y_val, clip_values=(0.0, 1.0))
    with pytest.raises(InputError, match=match):
        attack.poison(x, y)
