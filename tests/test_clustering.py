"""The library's one k-means (k-means++ starts, Lloyd's iterations) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from bastion import _clustering
from bastion._clustering import _plusplus, _Sets, _stack, kmeans, kmeans_batch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inertia(points: np.ndarray, labels: np.ndarray) -> float:
    return float(
        sum(((points[labels == j] - points[labels == j].mean(0)) ** 2).sum() for j in set(labels))
    )


def _blobs(rng: np.random.Generator, sizes: list[int], dim: int, spread: float) -> tuple:
    centres = rng.normal(size=(len(sizes), dim))
    centres[:, 0] += spread * np.arange(len(sizes))  # unit-variance blobs, far apart
    x = np.concatenate([c + rng.normal(size=(m, dim)) for c, m in zip(centres, sizes, strict=True)])
    y = np.repeat(np.arange(len(sizes)), sizes)
    return x, y


def _seeds(sets: list[np.ndarray], k: int, n_init: int, seed: int) -> np.ndarray:
    """The k-means++ centres ``(c, n_init, k, d)`` kmeans_batch starts from with ``seed``."""
    x, sizes, _ = _stack(sets)
    return _plusplus(_Sets(x, sizes, k), sizes, n_init, _gen(seed))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_recovers_separated_blobs_of_ragged_sets(k):
    rng = np.random.default_rng(k)
    sets, truth = [], []
    for n0, dim in [(40, 3), (97, 10), (15, 1), (250, 6)]:  # sizes and dimensions differ
        x, y = _blobs(rng, [n0] + [max(3, n0 // 4)] * (k - 1), dim, spread=40.0)
        sets.append(x)
        truth.append(y)
    labels = kmeans_batch(sets, k, generator=_gen(0), n_init=16)
    for x, y, lab in zip(sets, truth, labels, strict=True):
        assert lab.shape == (x.shape[0],) and lab.dtype == np.int64
        assert adjusted_rand_score(y, lab) == 1.0


@pytest.mark.parametrize("k", [2, 4])
def test_reaches_scikit_learns_best_inertia(k):
    """No structure to find: the best of many starts matches scikit-learn's best of 50."""
    rng = np.random.default_rng(1)
    sets = [rng.normal(size=(n, d)) for n, d in [(120, 10), (80, 4), (150, 7)]]
    for x, lab in zip(sets, kmeans_batch(sets, k, generator=_gen(3), n_init=64), strict=True):
        ref = KMeans(k, n_init=50, random_state=0).fit(x)
        assert _inertia(x, lab) <= ref.inertia_ * (1 + 1e-3)


@pytest.mark.parametrize("k", [2, 3])
def test_every_start_is_scikit_learns_lloyd_from_the_same_centres(k):
    """One start per set, sets of different sizes: each set's labels are those of
    scikit-learn's Lloyd iterations (same stopping rule) from the same k-means++ centres,
    whatever the other sets do (they stop at different iterations and leave the batch)."""
    rng = np.random.default_rng(5)
    sets = [rng.normal(size=(n, 6)).astype(np.float32) for n in (300, 41, 170, 90, 230, 12)]
    centres = _seeds(sets, k, 1, seed=7)
    labels = kmeans_batch(sets, k, generator=_gen(7), n_init=1)
    for i, (x, lab) in enumerate(zip(sets, labels, strict=True)):
        ref = KMeans(k, init=centres[i, 0, :, : x.shape[1]], n_init=1, algorithm="lloyd").fit(x)
        assert adjusted_rand_score(ref.labels_, lab) == 1.0, i
        assert _inertia(x, lab) == pytest.approx(ref.inertia_, rel=1e-4)


def test_the_best_of_many_starts_is_the_best_scikit_learn_run(monkeypatch):
    """64 starts of one set, gathered into smaller batches as they stop: the labels kept
    are those of the lowest-inertia run among scikit-learn's runs from the same centres."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(150, 10)).astype(np.float32)  # many local optima
    monkeypatch.setattr(_clustering, "_GATHER_MIN", 0)  # gather whenever half have stopped
    centres = _seeds([x], 2, 64, seed=11)[0]
    runs = [KMeans(2, init=c, n_init=1, algorithm="lloyd").fit(x) for c in centres]
    best = min(runs, key=lambda r: r.inertia_)
    assert len({round(r.inertia_, 3) for r in runs}) > 10  # the starts really differ
    lab = kmeans(x, 2, generator=_gen(11), n_init=64)
    assert adjusted_rand_score(best.labels_, lab) == 1.0


@pytest.mark.parametrize("k", [2, 3])
def test_inertia_of_any_centres_is_the_brute_force_sum(k):
    """Ragged sets (padding must not count), arbitrary centres: the summed squared distance
    to the nearest centre (for two clusters from the bisecting hyperplane in closed form)."""
    rng = np.random.default_rng(9)
    sets = [rng.normal(size=(n, 4)) + 5.0 for n in (30, 7, 19)]
    x, sizes, _ = _stack(sets)
    centres = rng.normal(size=(3, 5, k, 4)).astype(np.float32) + 5.0
    got = _Sets(x, sizes, k).inertia(centres)
    for i, pts in enumerate(sets):
        d2 = ((pts[None, :, None, :] - centres[i][:, None].astype(np.float64)) ** 2).sum(-1)
        np.testing.assert_allclose(got[i], d2.min(axis=2).sum(axis=1), rtol=1e-5)


def _lockstep(x: np.ndarray, centres: np.ndarray, tol: float) -> np.ndarray:
    """The documented rule, written plainly in float64: every start of one set runs Lloyd's
    iterations in lockstep; a start whose labels hold stops; the running ones stop together
    once none moves its centres by more than ``tol``. Labels of the start of least inertia."""
    c = centres.astype(np.float64)
    dist = lambda c: ((x[None, :, None] - c[:, None]) ** 2).sum(-1)  # noqa: E731
    labels = dist(c).argmin(axis=2)
    running = np.ones(len(c), dtype=bool)
    for _ in range(300):
        new = c.copy()
        for b in np.flatnonzero(running):
            for j in range(c.shape[1]):
                if (labels[b] == j).any():
                    new[b, j] = x[labels[b] == j].mean(axis=0)
        new_labels = dist(new).argmin(axis=2)
        moving = ((new - c) ** 2).sum(axis=(1, 2))[running].max() > tol
        stable = (new_labels == labels).all(axis=1)
        c[running], labels[running] = new[running], new_labels[running]
        running &= ~stable
        if not (running.any() and moving):
            break
    return labels[dist(c).min(axis=2).sum(axis=1).argmin()]


def test_many_starts_of_large_sets_follow_the_documented_stopping_rule():
    """Unstructured sets of 1,500 points: Lloyd converges slowly, so when starts stop decides
    the optimum reached (a start stopping alone at the tolerance ends about 1e-4 higher)."""
    rng = np.random.default_rng(10)
    sets = [rng.normal(size=(1500, 6)) for _ in range(3)]
    centres = _seeds(sets, 2, 16, seed=3)
    labels = kmeans_batch(sets, 2, generator=_gen(3), n_init=16)
    for i, (x, lab) in enumerate(zip(sets, labels, strict=True)):
        tol = 1e-4 * x.var(axis=0).mean()
        ref = _lockstep(x, centres[i], tol)
        assert _inertia(x, lab) == pytest.approx(_inertia(x, ref), rel=1e-7), i


def test_seeding_draws_the_next_centre_with_probability_proportional_to_squared_distance():
    """k-means++ on the points 0, 0, 0, 1, 3: the first centre uniformly, the second with
    probability D(x)^2 / sum D^2 (uniform draws or D-weighted ones give other frequencies)."""
    values = np.array([0.0, 0.0, 0.0, 1.0, 3.0])
    centres = _seeds([values[:, None].astype(np.float32)], 2, 40000, seed=0)[0, :, :, 0]
    expected: dict[tuple[float, float], float] = {}
    for first in values:
        d2 = (values - first) ** 2
        for second, p in zip(values, d2 / d2.sum(), strict=True):
            key = (float(first), float(second))
            expected[key] = expected.get(key, 0.0) + p / len(values)
    pairs, counts = np.unique(centres, axis=0, return_counts=True)
    seen = {(float(a), float(b)): c / len(centres) for (a, b), c in zip(pairs, counts, strict=True)}
    assert set(seen) <= {k for k, p in expected.items() if p > 0}
    for key, p in expected.items():
        assert seen.get(key, 0.0) == pytest.approx(p, abs=0.01), key


def test_is_seeded_and_groups_do_not_change_the_optimum(monkeypatch):
    rng = np.random.default_rng(2)
    sets = [rng.normal(size=(n, 5)) for n in (60, 90, 75)]
    a = kmeans_batch(sets, 2, generator=_gen(4), n_init=32)
    b = kmeans_batch(sets, 2, generator=_gen(4), n_init=32)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    monkeypatch.setattr(_clustering, "_BUDGET", 1)  # one set per group
    c = kmeans_batch(sets, 2, generator=_gen(4), n_init=32)
    for x, p, q in zip(sets, a, c, strict=True):
        assert _inertia(x, q) == pytest.approx(_inertia(x, p), rel=1e-3)
    single = kmeans(sets[0], 2, generator=_gen(4), n_init=32)
    assert _inertia(sets[0], single) == pytest.approx(_inertia(sets[0], a[0]), rel=1e-3)


def test_gathering_the_running_starts_changes_nothing(monkeypatch):
    rng = np.random.default_rng(3)
    for k in (2, 3):
        sets = [rng.normal(size=(n, 4)) for n in (70, 130, 25)]
        monkeypatch.setattr(_clustering, "_GATHER_MIN", 0)
        gathered = kmeans_batch(sets, k, generator=_gen(1), n_init=24)
        monkeypatch.setattr(_clustering, "_GATHER_MIN", 1 << 40)  # never gather
        whole = kmeans_batch(sets, k, generator=_gen(1), n_init=24)
        for p, q in zip(gathered, whole, strict=True):
            np.testing.assert_array_equal(p, q)


def test_max_iter_stops_every_start():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    centres = _seeds([x], 3, 1, seed=2)[0, 0]
    ref = KMeans(3, init=centres, n_init=1, max_iter=1, algorithm="lloyd").fit(x)
    lab = kmeans(x, 3, generator=_gen(2), max_iter=1)
    assert adjusted_rand_score(ref.labels_, lab) == 1.0


def test_duplicate_points_too_few_points_and_draws_from_the_generator_only():
    same = np.ones((6, 3))  # no distance to split on: any labelling, but a valid one
    lab = kmeans(same, 2, generator=_gen(0), n_init=8)
    assert lab.shape == (6,) and set(lab.tolist()) <= {0, 1}
    two = np.array([[0.0, 0.0], [5.0, 5.0]])
    assert kmeans(two, 2, generator=_gen(0), n_init=8).tolist() in ([0, 1], [1, 0])
    one = kmeans(np.zeros((1, 4)), 3, generator=_gen(0))
    assert one.tolist() == [0]
    # the global RNGs are left alone (NumPy's legacy one is what this checks)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    kmeans(np.random.default_rng(0).normal(size=(30, 2)), 3, generator=_gen(1), n_init=4)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])  # noqa: NPY002


def test_many_clusters_of_a_large_float32_set():
    """Knockoff Nets' use: one start, ten clusters of a flattened image pool."""
    rng = np.random.default_rng(8)
    x, y = _blobs(rng, [200] * 10, 64, spread=30.0)
    x = x.astype(np.float32)
    lab = kmeans(x, 10, generator=_gen(0), n_init=1, max_iter=25)
    assert lab.shape == (2000,) and lab.min() >= 0 and lab.max() <= 9
    assert adjusted_rand_score(y, lab) > 0.85  # one start may merge two blobs, not more
