"""NES and Bandits: score-based black-box attacks on the digits CNN behind a prediction API."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion.nes import BanditsAttack, NESAttack, score_objective
from bastion.estimators import BlackBoxClassifier
from bastion.testing import check_attack


def _blackbox(clf):
    return BlackBoxClassifier(
        clf.predict, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1)
    )


@pytest.fixture(scope="module")
def correct_digits(digits_cnn, digits_test):
    """30 test digits the CNN classifies correctly."""
    x, y = digits_test
    ok = digits_cnn.predict(x).argmax(1) == y
    return x[ok][:30], y[ok][:30]


@pytest.mark.parametrize("cls", [NESAttack, BanditsAttack])
def test_conformance(cls):
    check_attack(cls)


def _run(attack, bb, clf, x, y, budget):
    before = bb.query_count
    x_adv = attack.generate(x, y)
    assert attack.queries_.max() <= budget
    assert bb.query_count - before == attack.queries_.sum()
    success = clf.predict(x_adv).argmax(1) != y
    return x_adv, success


def test_nes_linf_breaks_the_digits_cnn(digits_cnn, correct_digits):
    """Measured (30 digits, budget 2000): 100% success, median 315 queries per sample."""
    x, y = correct_digits
    x, y = x[:20], y[:20]
    bb = _blackbox(digits_cnn)
    attack = NESAttack(
        bb, eps=0.3, eps_step=0.02, max_queries=1000, nb_samples=20, sigma=0.01, random_state=0
    )
    x_adv, success = _run(attack, bb, digits_cnn, x, y, 1000)
    assert success.mean() >= 0.9
    assert np.median(attack.queries_[success]) < 600
    assert perturbation_norms(x, x_adv, "inf").max() <= 0.3 + 1e-6
    # finished samples stop querying: the successful ones spent less than the budget
    assert attack.queries_[success].max() < 1000


def test_bandits_linf_breaks_the_digits_cnn(digits_cnn, correct_digits):
    """Measured: 30/30 successes with a median of about 40 queries (budget 1000)."""
    x, y = correct_digits
    bb = _blackbox(digits_cnn)
    attack = BanditsAttack(bb, eps=0.3, eps_step=0.02, max_queries=1000, random_state=0)
    x_adv, success = _run(attack, bb, digits_cnn, x, y, 1000)
    assert success.mean() >= 0.9
    assert np.median(attack.queries_[success]) < 200
    assert perturbation_norms(x, x_adv, "inf").max() <= 0.3 + 1e-6


def test_bandits_l2(digits_cnn, correct_digits):
    x, y = correct_digits
    x, y = x[:20], y[:20]
    bb = _blackbox(digits_cnn)
    attack = BanditsAttack(bb, eps=3.0, norm=2, max_queries=600, random_state=0)
    x_adv, success = _run(attack, bb, digits_cnn, x, y, 600)
    assert success.mean() >= 0.8
    assert perturbation_norms(x, x_adv, 2).max() <= 3.0 * (1 + 1e-6)


def test_targeted_nes(digits_cnn, correct_digits):
    x, y = correct_digits
    x, y = x[:10], y[:10]
    target = (y + 1) % 10
    bb = _blackbox(digits_cnn)
    attack = NESAttack(
        bb, eps=0.3, eps_step=0.02, max_queries=1500, nb_samples=20, sigma=0.01,
        targeted=True, random_state=0,
    )  # fmt: skip
    x_adv = attack.generate(x, target)
    assert np.mean(digits_cnn.predict(x_adv).argmax(1) == target) >= 0.7


@pytest.fixture(scope="module")
def logistic():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    model = LogisticRegression(max_iter=500).fit(x, data.target)
    clf = BlackBoxClassifier(model.predict_proba, input_shape=(64,), nb_classes=10)
    ok = model.predict(x) == data.target  # misclassified samples would not move
    return model, clf, x[ok][:20], data.target[ok][:20]


def test_nes_estimate_aligns_with_the_true_gradient(logistic):
    """Known answer: for a softmax-linear model the gradient of the cross-entropy is
    ``W^T (p - e_y)``; one L2 step of NES (no momentum, no box) moves along the estimate."""
    model, clf, x, y = logistic
    p = model.predict_proba(x)
    true = (p - np.eye(10)[y]) @ model.coef_  # gradient of -log p_y w.r.t. x
    cosines = {}
    for n in (10, 400):
        attack = NESAttack(
            clf, eps=100.0, eps_step=1.0, norm=2, max_queries=n + 1, nb_samples=n, sigma=1e-3,
            momentum=0.0, random_state=0,
        )  # fmt: skip
        step = attack.generate(x, y) - x
        cos = (step * true).sum(1) / np.linalg.norm(step, axis=1) / np.linalg.norm(true, axis=1)
        cosines[n] = cos.mean()
    assert cosines[400] > 0.8  # measured 0.87, and 0.25 with n=10 (theory: about sqrt(n / (n + d)))
    assert cosines[10] < cosines[400]


def test_bandits_data_prior_is_tiled():
    """With the data prior, the Linf step is constant on ``tile_size`` x ``tile_size`` tiles."""
    w = torch.linspace(-1, 1, 64).reshape(1, 64)
    w = torch.cat([w, -w])

    def api(x):
        z = torch.as_tensor(x).reshape(len(x), -1) @ w.T
        return torch.softmax(z, 1).numpy()

    clf = BlackBoxClassifier(api, input_shape=(1, 8, 8), nb_classes=2)
    x = torch.full((3, 1, 8, 8), 0.5)
    y = torch.tensor([0, 1, 0])
    x_adv = BanditsAttack(
        clf, eps=1.0, eps_step=0.1, tile_size=4, max_queries=9, random_state=0
    ).generate(x, y)
    step = x_adv - x
    tiles = step.reshape(3, 2, 4, 2, 4)
    assert torch.equal(tiles, tiles[:, :, :1, :, :1].expand_as(tiles))
    assert bool((step.abs() > 0).any())


def test_score_objective_does_not_saturate():
    probs = torch.tensor([[1.0, 1e-9, 1e-12], [0.2, 0.5, 0.3]])
    y = torch.tensor([0, 1])
    ce = score_objective(probs, y, targeted=False, loss="ce")
    torch.testing.assert_close(ce[0], torch.tensor(1.001e-9), rtol=1e-4, atol=0)
    torch.testing.assert_close(ce[1], -torch.log(torch.tensor(0.5)))
    margin = score_objective(probs, y, targeted=False, loss="margin")
    assert margin[0] < -20 and margin[1] < 0
    assert torch.allclose(score_objective(probs, y, targeted=True, loss="margin"), -margin)


def _softmax_api(seen=None):
    """A 4-feature softmax-linear model behind a prediction function (recording its inputs)."""
    w = np.array([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.5], [0.0, 0.0]], dtype=np.float32)

    def api(x):
        if seen is not None:
            seen.append(np.array(x))
        z = 10 * x @ w
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return BlackBoxClassifier(api, input_shape=(4,), nb_classes=2, clip_values=(0, 1))


def test_nes_budget_below_one_step_warns():
    """A budget below one step (the iterate and nb_samples probes) used to return the input
    with zero queries and no word; now a RuntimeWarning names the budget that would do."""
    clf = _softmax_api()
    x = np.array([[0.6, 0.4, 0.5, 0.5]] * 3, dtype=np.float32)
    attack = NESAttack(clf, eps=0.3, max_queries=10, nb_samples=10, random_state=0)
    with pytest.warns(RuntimeWarning, match=r"3 of 3 samples.*at least 11\.$"):
        x_adv = attack.generate(x, np.zeros(3, dtype=int))
    np.testing.assert_array_equal(x_adv, x)
    assert attack.queries_.tolist() == [0, 0, 0] and not attack.success_.any()
    with pytest.warns(RuntimeWarning, match=r"at least 12\.$"):  # + the clean-label query
        attack.generate(x)
    assert attack.queries_.tolist() == [1, 1, 1]
    attack.set_params(max_queries=11)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert not np.array_equal(attack.generate(x, np.zeros(3, dtype=int)), x)


def test_bandits_budget_below_one_step_warns():
    clf = _softmax_api()
    x = np.array([[0.6, 0.4, 0.5, 0.5]], dtype=np.float32)
    with pytest.warns(RuntimeWarning, match=r"3 queries.*at least 3\.$"):
        BanditsAttack(clf, max_queries=2, random_state=0).generate(x, np.zeros(1, dtype=int))


def test_bandits_never_sends_nan_on_small_inputs():
    """The paper's Linf prior rate (online_learning_rate=100) on a 4-feature input: every query the
    model sees is finite (the query counter would refuse to send one that is not)."""
    seen = []
    clf = _softmax_api(seen)
    x = np.array([[0.6, 0.4, 0.5, 0.5], [0.55, 0.45, 0.1, 0.9]], dtype=np.float32)
    attack = BanditsAttack(clf, eps=0.05, max_queries=600, random_state=0)
    attack.generate(x, np.zeros(2, dtype=int))
    assert attack.queries_.sum() > 100 and all(np.isfinite(b).all() for b in seen)


def test_success_is_verified_by_a_query(digits_cnn, correct_digits):
    """success_ marks the samples a query showed adversarial: each of them is."""
    x, y = correct_digits[0][:10], correct_digits[1][:10]
    bb = _blackbox(digits_cnn)
    for attack in (
        NESAttack(bb, eps=0.3, eps_step=0.02, max_queries=400, nb_samples=20, random_state=0),
        BanditsAttack(bb, eps=0.3, max_queries=300, random_state=0),
    ):
        _, success = _run(attack, bb, digits_cnn, x, y, attack.max_queries)
        assert attack.success_.dtype == bool and attack.success_.any()
        assert np.all(success[attack.success_])
