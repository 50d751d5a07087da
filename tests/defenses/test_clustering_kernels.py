"""The numerical kernels of activation clustering against scikit-learn and NumPy (its
k-means is the library's, tested in ``tests/test_clustering.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from bastion.defenses.poisoning import _clustering
from bastion.defenses.poisoning._clustering import _centred_svd, reduce, silhouette, silhouettes


@pytest.mark.parametrize("k", [2, 3])
def test_silhouette_equals_scikit_learn(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(90, 4))
    lab = rng.integers(0, k, size=90)
    lab[0] = k  # a singleton cluster scores 0
    assert silhouette(x, lab, seed=0) == pytest.approx(silhouette_score(x, lab), abs=1e-10)


def test_silhouettes_of_ragged_sets_at_once_equal_scikit_learn(monkeypatch):
    """Sets of different sizes, dimensions and cluster counts (one with an empty cluster
    index, one too small to score) computed together: each equals its own score."""
    rng = np.random.default_rng(4)
    points, labels = [], []
    for n, d, k in [(90, 4, 2), (40, 10, 3), (130, 2, 2), (3, 2, 3), (60, 5, 1)]:
        points.append(rng.normal(size=(n, d)) + 3 * rng.integers(0, 2, size=(n, 1)))
        labels.append(rng.integers(0, k, size=n) * 2)  # labels 0, 2, 4: not 0..k-1
    labels[3] = np.array([0, 2, 4])
    got = silhouettes(points, labels, [0] * 5)
    for p, lab, s in zip(points[:3], labels[:3], got[:3], strict=True):
        assert s == pytest.approx(silhouette_score(p, lab), abs=1e-10)
    assert np.isnan(got[3]) and np.isnan(got[4])  # every point alone / one cluster
    monkeypatch.setattr(_clustering, "_SILHOUETTE_BUDGET", 1)  # one set per group
    np.testing.assert_allclose(silhouettes(points, labels, [0] * 5), got, atol=1e-12)


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


def test_dead_columns_are_dropped_before_the_eigenproblem():
    """Constant columns add zero eigenvalues only: the reduction of a class with 100 dead
    units is that of its live columns (the whitened distances, hence clusters, are equal)."""
    rng = np.random.default_rng(1)
    live = rng.normal(size=(60, 12)) @ np.diag(np.linspace(1, 4, 12))
    padded = np.zeros((60, 112))
    padded[:, ::9][:, :12] = live
    padded[:, 5] = 3.0  # constant but not zero
    for method in ("whiten", "pca"):
        a, b = reduce(live, method, 8, 0), reduce(padded, method, 8, 0)
        np.testing.assert_allclose(np.abs(a.T @ b), np.abs(a.T @ a), atol=1e-8)
        dist = lambda e: np.linalg.norm(e[:, None] - e[None], axis=2)  # noqa: E731
        np.testing.assert_allclose(dist(a), dist(b), atol=1e-8)
    white = reduce(padded, "whiten", 8, 0)
    np.testing.assert_allclose(white.std(axis=0, ddof=1), 1.0, rtol=1e-10)
