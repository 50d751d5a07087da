"""SimBA: the DCT against SciPy, the eps * sqrt(T) norm identity, direction orders, and
score-based attacks on the digits CNN behind a NumPy prediction function."""

import warnings

import numpy as np
import pytest
import torch
from scipy.fft import dctn

from bastion.attacks.evasion.simba import SimBA, dct_2d, dct_matrix, idct_2d
from bastion.estimators import BlackBoxClassifier
from bastion.testing import check_attack


def _blackbox(clf, clip=(0.0, 1.0)):
    return BlackBoxClassifier(clf.predict, input_shape=(1, 28, 28), nb_classes=10, clip_values=clip)


@pytest.fixture(scope="module")
def correct(digits_cnn, digits_test):
    x, y = digits_test
    ok = np.asarray(digits_cnn.predict(x)).argmax(1) == y
    return x[ok][:30], y[ok][:30]


def test_conformance():
    ran = check_attack(SimBA)
    assert "check_query_budget" in ran and "check_minimum_norm" in ran


def test_dct_matches_scipy_and_is_orthonormal():
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(dct_2d(x).numpy(), dctn(x.numpy(), axes=(2, 3), norm="ortho"))
    torch.testing.assert_close(idct_2d(dct_2d(x)), x)
    d = dct_matrix(9, dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(9, dtype=torch.float64))


def test_pixel_norm_is_eps_sqrt_steps(digits_cnn, correct):
    """Pixel basis, no clipping (inputs kept inside [0.25, 0.75]): each accepted step moves
    one new pixel by exactly eps, so ||delta||_2 = eps * sqrt(T)."""
    x = correct[0][:10] * 0.5 + 0.25
    y = np.asarray(digits_cnn.predict(x)).argmax(1)
    attack = SimBA(
        _blackbox(digits_cnn), basis="pixel", eps_step=0.2, max_queries=300, random_state=0
    )
    x_adv = attack.generate(x, y)
    delta = (x_adv - x).reshape(len(x), -1)
    steps = (np.abs(delta) > 1e-6).sum(1)
    assert (steps > 0).sum() >= 5  # failures come back unchanged (T = 0)
    np.testing.assert_allclose(np.abs(delta[np.abs(delta) > 1e-6]), 0.2, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(delta, axis=1), 0.2 * np.sqrt(steps), rtol=1e-5)


def test_dct_norm_is_eps_sqrt_steps(digits_cnn, correct):
    """DCT basis, inputs kept away from the box: the DCT coefficients of delta are 0 or +-eps."""
    x = correct[0][:8] * 0.4 + 0.3
    y = np.asarray(digits_cnn.predict(x)).argmax(1)
    attack = SimBA(
        _blackbox(digits_cnn),
        eps_step=0.3,
        order="strided",
        freq_dims=6,
        stride=3,
        max_queries=200,
        random_state=0,
    )
    x_adv = attack.generate(x, y)
    coef = dct_2d(torch.as_tensor(x_adv - x, dtype=torch.float64)).reshape(len(x), -1).numpy()
    used = np.abs(coef) > 1e-4
    np.testing.assert_allclose(np.abs(coef[used]), 0.3, atol=1e-4)
    norms = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    np.testing.assert_allclose(norms, 0.3 * np.sqrt(used.sum(1)), rtol=1e-4)


@pytest.mark.parametrize(
    ("params", "budget", "want"),
    [
        # measured on these 30 digits: 100% (median 170 queries) and 100% (median 116)
        ({"basis": "pixel", "eps_step": 0.5}, 1000, 0.95),
        ({"basis": "dct", "eps_step": 0.5, "order": "strided"}, 1000, 0.95),
    ],
)
def test_breaks_the_digits_cnn(digits_cnn, correct, params, budget, want):
    x, y = correct
    bb = _blackbox(digits_cnn)
    attack = SimBA(bb, max_queries=budget, random_state=0, **params)
    x_adv = attack.generate(x, y)
    assert bb.query_count == attack.queries_.sum()
    assert attack.queries_.max() <= budget
    fooled = np.asarray(digits_cnn.predict(x_adv)).argmax(1) != y
    assert fooled.mean() >= want
    assert np.median(attack.queries_[fooled]) < 300
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_targeted(digits_cnn, correct):
    x, y = correct[0][:10], correct[1][:10]
    target = (y + 1) % 10
    attack = SimBA(
        _blackbox(digits_cnn),
        eps_step=0.5,
        order="strided",
        targeted=True,
        max_queries=1000,
        random_state=0,
    )
    x_adv = attack.generate(x, target)
    hit = np.asarray(digits_cnn.predict(x_adv)).argmax(1) == target
    assert hit.mean() >= 0.8
    # failures come back unchanged (minimum-norm template)
    assert np.all(x_adv[~hit] == x[~hit])


def test_clean_label_query_is_reused(digits_cnn, correct):
    """With y omitted, the clean-label query gives the starting probabilities: a budget of one
    query per sample is spent on it and nothing else, and a warning says a step needs two."""
    x = correct[0][:5]
    bb = _blackbox(digits_cnn)
    attack = SimBA(bb, max_queries=1, random_state=0)
    with pytest.warns(RuntimeWarning, match=r"5 of 5 samples.*at least 2\.$"):
        np.testing.assert_array_equal(attack.generate(x), x)
    np.testing.assert_array_equal(attack.queries_, 1)
    assert not attack.success_.any()
    assert bb.query_count == 5
    attack.set_params(max_queries=2)  # enough for one probe: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        attack.generate(x)
    np.testing.assert_array_equal(attack.queries_, 2)


def test_success_is_what_the_model_says(digits_cnn, correct):
    x, y = correct[0][:8], correct[1][:8]
    bb = _blackbox(digits_cnn)
    attack = SimBA(bb, max_queries=150, random_state=0)
    x_adv = attack.generate(x, y)
    np.testing.assert_array_equal(attack.success_, digits_cnn.predict(x_adv).argmax(1) != y)
    assert attack.success_.any() and not attack.success_.all()


def test_orders():
    shape = (2, 8, 8)
    gen = torch.Generator().manual_seed(0)
    clf = BlackBoxClassifier(lambda a: np.zeros((len(a), 2)), input_shape=shape, nb_classes=2)
    flat_u = lambda o: (o // 8) % 8  # noqa: E731
    flat_v = lambda o: o % 8  # noqa: E731
    rnd = SimBA(clf, freq_dims=3)._directions(4, shape, gen)
    assert rnd.shape == (4, 2 * 9)
    assert ((flat_u(rnd) < 3) & (flat_v(rnd) < 3)).all()
    assert not torch.equal(rnd[0], rnd[1])  # one order per sample
    strided = SimBA(clf, freq_dims=3, stride=2, order="strided")._directions(4, shape, gen)
    assert strided.shape == (4, 128)
    assert ((flat_u(strided[:, :18]) < 3) & (flat_v(strided[:, :18]) < 3)).all()
    band = torch.maximum(flat_u(strided), flat_v(strided))
    assert (band[:, 18:].diff(dim=1) >= -1).all()  # bands of width 2 in increasing order
    assert torch.equal(strided.sort(dim=1).values[0], torch.arange(128))
    diag = SimBA(clf, order="diag")._directions(3, shape, gen)
    assert torch.equal(diag[0], diag[2])
    s = flat_u(diag[0]) + flat_v(diag[0])
    assert (s.diff() >= 0).all()
    pixel = SimBA(clf, basis="pixel", freq_dims=3)._directions(2, shape, gen)
    assert pixel.shape == (2, 128)  # freq_dims does not restrict the pixel basis
