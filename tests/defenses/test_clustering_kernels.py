"""The numerical kernels of activation clustering against scikit-learn and NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from bastion.defenses.poisoning import _clustering
from bastion.defenses.poisoning._clustering import _centred_svd, kmeans, kmeans_batch, silhouette


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


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kmeans_batch_recovers_separated_blobs_of_ragged_sets(k):
    rng = np.random.default_rng(k)
    sets, truth = [], []
    for n0, dim in [(40, 3), (97, 10), (15, 1), (250, 6)]:  # sizes and dimensions differ
        x, y = _blobs(rng, [n0] + [max(3, n0 // 4)] * (k - 1), dim, spread=40.0)
        sets.append(x)
        truth.append(y)
    labels = kmeans_batch(sets, k, 16, seed=0)
    for x, y, lab in zip(sets, truth, labels, strict=True):
        assert lab.shape == (x.shape[0],) and lab.dtype == np.int64
        assert adjusted_rand_score(y, lab) == 1.0


@pytest.mark.parametrize("k", [2, 4])
def test_kmeans_reaches_scikit_learns_best_inertia(k):
    """No structure to find: the best of many starts matches scikit-learn's best of 50."""
    rng = np.random.default_rng(1)
    sets = [rng.normal(size=(n, d)) for n, d in [(120, 10), (80, 4), (150, 7)]]
    for x, lab in zip(sets, kmeans_batch(sets, k, 64, seed=3), strict=True):
        ref = KMeans(k, n_init=50, random_state=0).fit(x)
        assert _inertia(x, lab) <= ref.inertia_ * (1 + 1e-3)


def test_kmeans_is_seeded_and_groups_do_not_change_the_optimum(monkeypatch):
    rng = np.random.default_rng(2)
    sets = [rng.normal(size=(n, 5)) for n in (60, 90, 75)]
    a = kmeans_batch(sets, 2, 32, seed=4)
    b = kmeans_batch(sets, 2, 32, seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    monkeypatch.setattr(_clustering, "_KMEANS_BUDGET", 1)  # one set per group
    c = kmeans_batch(sets, 2, 32, seed=4)
    for x, p, q in zip(sets, a, c, strict=True):
        assert _inertia(x, q) == pytest.approx(_inertia(x, p), rel=1e-3)
    single = kmeans(sets[0], 2, 32, seed=4)
    assert _inertia(sets[0], single) == pytest.approx(_inertia(sets[0], a[0]), rel=1e-3)


def test_kmeans_of_duplicate_points_and_too_few_points():
    same = np.ones((6, 3))  # no distance to split on: any labelling, but a valid one
    lab = kmeans(same, 2, 8, seed=0)
    assert lab.shape == (6,) and set(lab.tolist()) <= {0, 1}
    two = np.array([[0.0, 0.0], [5.0, 5.0]])
    lab = kmeans(two, 2, 8, seed=0)
    assert lab[0] != lab[1]


@pytest.mark.parametrize("k", [2, 3])
def test_silhouette_equals_scikit_learn(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(90, 4))
    lab = rng.integers(0, k, size=90)
    lab[0] = k  # a singleton cluster scores 0
    assert silhouette(x, lab, seed=0) == pytest.approx(silhouette_score(x, lab), abs=1e-10)


def test_silhouette_samples_like_scikit_learn_and_is_nan_when_undefined():
    rng = np.random.default_rng(0)
    n = _clustering.SILHOUETTE_SAMPLES + 300
    x = rng.normal(size=(n, 3))
    lab = (x[:, 0] > 0).astype(int)
    ref = silhouette_score(x, lab, sample_size=_clustering.SILHOUETTE_SAMPLES, random_state=7)
    assert silhouette(x, lab, seed=7) == pytest.approx(ref, abs=1e-10)
    assert np.isnan(silhouette(x[:5], np.zeros(5, dtype=int), seed=0))
    assert np.isnan(silhouette(x[:3], np.arange(3), seed=0))


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (30, 30)])
def test_centred_svd_matches_numpy(shape):
    rng = np.random.default_rng(0)
    a = rng.normal(size=shape) @ np.diag(np.linspace(1, 5, shape[1]))
    u, s = _centred_svd(a, 6)
    c = a - a.mean(0)
    u_ref, s_ref, _ = np.linalg.svd(c, full_matrices=False)
    np.testing.assert_allclose(s, s_ref[:6], rtol=1e-9)
    np.testing.assert_allclose(np.abs(u.T @ u_ref[:, :6]), np.eye(6), atol=1e-8)


def test_centred_svd_drops_directions_without_variance():
    rng = np.random.default_rng(0)
    a = np.zeros((50, 20))
    a[:, :3] = rng.normal(size=(50, 3))  # rank 3; dead columns
    u, s = _centred_svd(a, 10)
    assert u.shape == (50, 3) and s.shape == (3,)
    u, s = _centred_svd(np.ones((8, 5)), 4)  # no variance at all: one zero direction
    assert u.shape == (8, 1) and np.all(u == 0) and s[0] == pytest.approx(0.0, abs=1e-12)
