"""Square Attack: schedule and patterns against the reference formulas, and score-based attacks on
the digits CNN behind a NumPy prediction function (no gradients)."""

import numpy as np
import pytest
import torch
from test_restarts import replay_restarts

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion.square import (
    SquareAttack,
    _bump,
    _l2_init,
    _two_bumps,
    p_schedule,
)
from bastion.estimators import BlackBoxClassifier
from bastion.exceptions import EstimatorError
from bastion.testing import check_attack


@pytest.fixture(scope="module")
def blackbox(digits_cnn):
    return BlackBoxClassifier(
        digits_cnn.predict, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0)
    )


@pytest.fixture(scope="module")
def correct(digits_cnn, digits_test):
    """40 correctly classified test digits."""
    x, y = digits_test
    ok = np.asarray(digits_cnn.predict(x)).argmax(1) == y
    return x[ok][:40], y[ok][:40]


def test_conformance():
    ran = check_attack(SquareAttack)
    assert "check_query_budget" in ran and "check_targeted" in ran


def test_p_schedule_halves_at_the_papers_iterations():
    # the reference p_selection for 10000 iterations
    assert p_schedule(0.8, 10, 10000) == 0.8
    for it, halvings in [(11, 1), (50, 1), (51, 2), (201, 3), (501, 4), (1001, 5), (2001, 6)]:
        assert p_schedule(0.8, it, 10000) == 0.8 / 2**halvings
    assert p_schedule(0.8, 4001, 10000) == 0.8 / 128 and p_schedule(0.8, 9999, 10000) == 0.8 / 512
    # rescaled to a 1000-query budget: iteration 2 of 1000 is iteration 20 of 10000
    assert p_schedule(0.1, 1, 1000) == 0.1 and p_schedule(0.1, 2, 1000) == 0.05


def _reference_bump(x, y):
    """pseudo_gaussian_pert_rectangles of the authors' code, loops and all."""
    delta = np.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c2 = [x_c - 1, y_c - 1]
    for counter in range(max(x_c, y_c)):
        delta[
            max(c2[0], 0) : min(c2[0] + 2 * counter + 1, x),
            max(0, c2[1]) : min(c2[1] + 2 * counter + 1, y),
        ] += 1.0 / (counter + 1) ** 2
        c2[0] -= 1
        c2[1] -= 1
    return delta / np.sqrt(np.sum(delta**2))


@pytest.mark.parametrize(("h", "w"), [(1, 1), (2, 5), (3, 3), (4, 9), (7, 7), (8, 3)])
def test_bump_matches_the_reference(h, w):
    ours = _bump(h, w, torch.device("cpu"), torch.float64).numpy()
    np.testing.assert_allclose(ours, _reference_bump(h, w), atol=1e-12)


def test_two_bumps_pattern():
    p = _two_bumps(9, 9, torch.device("cpu"), torch.float64)
    assert torch.isclose(p.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert (p[:4] > 0).all() and (p[4:] < 0).all()
    ref = np.concatenate([_reference_bump(4, 9), -_reference_bump(5, 9)])
    np.testing.assert_allclose(p.numpy(), ref / np.linalg.norm(ref), atol=1e-12)


def test_l2_init_is_a_grid_of_signed_tiles():
    gen = torch.Generator().manual_seed(0)
    d = _l2_init(3, 2, 28, 28, gen, torch.device("cpu"), torch.float64)
    assert d.shape == (3, 2, 28, 28)
    # 5 x 5 tiles of side 5 starting at row/column 1: the border rows/columns stay zero
    assert (d[..., 0, :] == 0).all() and (d[..., 26:, :] == 0).all() and (d[..., :, 26:] == 0).all()
    pattern = _two_bumps(5, 5, torch.device("cpu"), torch.float64)
    tile = d[0, 0, 1:6, 1:6]
    assert any(torch.allclose(tile, s * q) for s in (1, -1) for q in (pattern, pattern.T))
    # each tile has unit norm
    tiles = d.reshape(3, 2, 28, 28)[..., 1:26, 1:26].reshape(3, 2, 5, 5, 5, 5)
    np.testing.assert_allclose((tiles**2).sum((3, 5)).numpy(), 1.0, atol=1e-12)


def test_linf_breaks_the_digits_cnn_with_few_queries(blackbox, correct):
    x, y = correct
    before = blackbox.query_count
    attack = SquareAttack(blackbox, eps=0.3, max_queries=300, random_state=0)
    x_adv = attack.generate(x, y)
    assert blackbox.query_count - before == attack.queries_.sum()
    assert attack.queries_.max() <= 300
    fooled = np.asarray(blackbox.predict(x_adv)).argmax(1) != y
    assert fooled.mean() >= 0.95  # measured: 100%, median 4 queries
    assert np.median(attack.queries_[fooled]) <= 20
    assert perturbation_norms(x, x_adv, "inf").max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # Linf proposals are vertices of the ball (or clipped): every change is +-eps or clipped
    delta = np.abs(x_adv - x)
    moved = delta > 1e-6
    at_bound = (x_adv <= 1e-6) | (x_adv >= 1 - 1e-6)
    assert np.all(np.isclose(delta[moved], 0.3, atol=1e-5) | at_bound[moved])


def test_l2_within_budget_and_effective(blackbox, correct):
    x, y = correct[0][:20], correct[1][:20]
    attack = SquareAttack(blackbox, norm=2, eps=3.0, max_queries=600, random_state=0)
    x_adv = attack.generate(x, y)
    norms = perturbation_norms(x, x_adv, 2)
    assert norms.max() <= 3.0 + 1e-5
    fooled = np.asarray(blackbox.predict(x_adv)).argmax(1) != y
    assert fooled.mean() >= 0.6  # measured 65% (median 196 queries); 77% at 1000 queries
    assert attack.queries_.max() <= 600
    # samples that are not fooled spent the whole budget, fooled ones stopped early
    assert np.all(attack.queries_[~fooled] == 600)
    assert np.median(attack.queries_[fooled]) < 300


def test_targeted_linf(blackbox, correct):
    x, y = correct[0][:20], correct[1][:20]
    target = (y + 1) % 10
    attack = SquareAttack(blackbox, eps=0.3, max_queries=300, targeted=True, random_state=0)
    x_adv = attack.generate(x, target)
    hit = np.asarray(blackbox.predict(x_adv)).argmax(1) == target
    assert hit.mean() >= 0.8


def test_per_sample_stop_and_budget(blackbox, correct):
    """A sample that is adversarial at the start spends exactly one query; with y omitted the
    clean-label query is charged too."""
    x, y = correct[0][:6], correct[1][:6]
    wrong = (y + 1) % 10
    eps = np.array([0.0, 0.0, 0.0, 0.3, 0.3, 0.3])
    attack = SquareAttack(blackbox, eps=eps, max_queries=50, random_state=0)
    x_adv = attack.generate(x, np.concatenate([wrong[:3], y[3:]]))
    np.testing.assert_array_equal(attack.queries_[:3], 1)
    np.testing.assert_array_equal(x_adv[:3], x[:3])
    before = blackbox.query_count
    attack = SquareAttack(blackbox, eps=0.05, max_queries=7, random_state=0)
    attack.generate(x)
    assert attack.queries_.max() <= 7 and attack.queries_.min() >= 2
    assert blackbox.query_count - before == attack.queries_.sum()


def test_restarts_share_the_budget(blackbox, correct):
    x, y = correct[0][:10], correct[1][:10]
    attack = SquareAttack(
        blackbox, norm=2, eps=0.5, max_queries=40, num_random_init=4, random_state=0
    )
    attack.generate(x, y)
    assert attack.queries_.max() <= 40
    # samples that stay correct run all four restarts of 10 queries each
    assert np.all(attack.queries_ == 40)


def margin(probs, y):
    """Square's untargeted loss: ``log p_y - max_{k != y} log p_k``."""
    log_p = np.log(np.maximum(probs, np.finfo(probs.dtype).tiny))
    own = log_p[np.arange(len(y)), y]
    log_p[np.arange(len(y)), y] = -np.inf
    return own - log_p.max(1)


def test_restarts_are_single_runs_on_the_samples_not_yet_fooled(blackbox, correct):
    x, y = correct[0][:12], correct[1][:12]
    kw = dict(eps=0.15, batch_size=len(x))
    many = SquareAttack(blackbox, max_queries=30, num_random_init=3, random_state=0, **kw)
    x_many = many.generate(x, y)
    expected, fooled, first = replay_restarts(
        lambda gen: SquareAttack(blackbox, max_queries=10, random_state=gen, **kw),
        x,
        y,
        3,
        0,
        blackbox.predict,
        margin,
    )
    np.testing.assert_array_equal(x_many, expected)
    np.testing.assert_array_equal(np.asarray(blackbox.predict(x_many)).argmax(1) != y, fooled)
    assert 0 < (first > 0).sum() and (first == 0).sum() > 0  # the restarts did something
    # a sample fooled in run r spent at most 10 queries in each of runs 0..r; one never fooled,
    # exactly 10 in each of the three
    assert np.all(many.queries_[~fooled] == 30)
    assert np.all(many.queries_[fooled] <= 10 * (first[fooled] + 1))


def test_mask_respected_and_labels_only_refused(blackbox, correct):
    x, y = correct[0][:5], correct[1][:5]
    mask = np.zeros((1, 28, 28), dtype=np.float32)
    mask[:, 10:20, 10:20] = 1
    x_adv = SquareAttack(blackbox, max_queries=30, random_state=0).generate(x, y, mask=mask)
    assert np.all((x_adv != x)[:, mask == 0] == 0)
    labels = BlackBoxClassifier(
        lambda a: blackbox.predict(a).argmax(1),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0, 1),
        labels_only=True,
    )
    with pytest.raises(EstimatorError, match="labels_only"):
        SquareAttack(labels).generate(x, y)
