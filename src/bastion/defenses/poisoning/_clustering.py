"""The numerical pieces of activation clustering: per-class reduction, silhouette, mosaics.

Why ``"whiten"`` exists next to ``"fastica"``: FastICA (the paper's reduction) whitens the
activations with PCA and then applies an orthogonal rotation. k-means and the silhouette
score depend on Euclidean distances only, which a rotation keeps, so the clusters and
silhouettes of FastICA are those of the whitened PCA components, obtained without FastICA's
iterations (10 to 20 times faster on the digits). Whitening is what matters: it puts every
retained direction on the same scale, so a class of clean samples looks like one round
blob (low silhouette) and a trigger's tight cluster stands out (high silhouette).

The k-means itself is the library's one implementation, :mod:`bastion._clustering`.
"""

from __future__ import annotations

import math

import numpy as np

#: Silhouette scores are computed on at most this many samples of a class (O(n^2) otherwise).
SILHOUETTE_SAMPLES = 2000

#: Singular values below this fraction of the largest are treated as zero (dead ReLU units).
_RANK_TOL = 1e-5


def _centred_svd(a: np.ndarray, nb_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading left singular vectors and singular values of the centred ``a``.

    At most ``nb_dims`` of them, and only those above the numerical rank. Only the leading
    pairs are needed, so they come from a partial symmetric eigendecomposition of the
    smaller of the Gram matrix ``A A^T`` and the scatter matrix ``A^T A`` (a few times
    cheaper than a full SVD of each class). A squared singular value of relative size
    ``_RANK_TOL**2 = 1e-10`` is still far above float64 rounding, so the rank test holds.
    """
    from scipy.linalg import eigh

    # Constant columns (dead ReLU units: a third or more of a small CNN's penultimate layer)
    # are zero once centred and add only zero eigenvalues: dropping them first leaves the
    # leading pairs unchanged and shrinks the eigenproblem, whose cost grows as d**3.
    live = a.max(axis=0) > a.min(axis=0) if a.shape[0] else np.ones(a.shape[1], dtype=bool)
    a = a[:, live] if live.any() else a[:, :1]
    a = a.astype(np.float64, copy=False)
    centred = a - a.mean(axis=0)
    n, d = centred.shape
    small = min(n, d)
    if small == 0:
        return np.zeros((n, 1)), np.zeros(1)
    k = min(nb_dims, small)
    by_rows = n <= d
    gram = centred @ centred.T if by_rows else centred.T @ centred
    w, v = eigh(gram, subset_by_index=[small - k, small - 1])
    s = np.sqrt(np.clip(w[::-1], 0.0, None))
    v = v[:, ::-1]
    rank = int((s > _RANK_TOL * max(float(s[0]), 1e-30)).sum())
    dims = max(1, rank)
    s, v = s[:dims], v[:, :dims]
    if by_rows:
        return v, s
    u = np.divide(centred @ v, s, out=np.zeros((n, dims)), where=s > 0)
    return u, s


def reduce(a: np.ndarray, method: str, nb_dims: int, seed: int) -> np.ndarray:
    """Project one class's activations ``(n, D)`` onto at most ``nb_dims`` dimensions.

    Directions of zero variance (dead units, fewer samples than dimensions) are dropped
    first, so the reduction never divides by zero.
    """
    if method in ("pca", "whiten"):
        u, s = _centred_svd(a, nb_dims)
        if method == "pca":
            return u * s
        return u * math.sqrt(max(a.shape[0] - 1, 1))  # unit variance per component
    if method == "fastica":
        from sklearn.decomposition import FastICA

        keep = a.std(axis=0) > 0
        a = a[:, keep] if keep.any() else a
        u, _ = _centred_svd(a, nb_dims)
        ica = FastICA(
            n_components=u.shape[1],
            whiten="unit-variance",
            max_iter=1000,
            tol=5e-3,
            random_state=seed,
        )
        return ica.fit_transform(a)
    try:
        import umap
    except ImportError:
        raise ImportError(
            "ActivationClustering(reduce='umap') needs the umap-learn package "
            "(pip install umap-learn); use reduce='whiten', 'pca' or 'fastica' without it."
        ) from None
    return umap.UMAP(n_components=nb_dims, random_state=seed).fit_transform(a)


def silhouette(points: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Mean silhouette score of one clustering (NaN when undefined); see :func:`silhouettes`."""
    return silhouettes([points], [labels], [seed])[0]


#: Elements of the largest (sets x samples x samples) distance array computed at once.
_SILHOUETTE_BUDGET = 1 << 21


def silhouettes(
    point_sets: list[np.ndarray], label_sets: list[np.ndarray], seeds: list[int]
) -> list[float]:
    """Mean silhouette score of the clustering of each point set (NaN when undefined).

    Rousseeuw's silhouette with Euclidean distances, as scikit-learn's ``silhouette_score``
    computes it (same sampling of ``SILHOUETTE_SAMPLES`` points drawn with each set's seed;
    a point alone in its cluster scores 0), without its per-call overhead: the sets are
    zero-padded to one size and their distance matrices computed together (float64), a
    group of sets at a time.
    """
    sets: list[tuple[np.ndarray, np.ndarray]] = []
    for points, labels, seed in zip(point_sets, label_sets, seeds, strict=True):
        n = points.shape[0]
        if n > SILHOUETTE_SAMPLES:
            keep = np.random.RandomState(seed).permutation(n)[:SILHOUETTE_SAMPLES]
            points, labels = points[keep], labels[keep]
        sets.append((points, np.unique(labels, return_inverse=True)[1].reshape(-1)))
    out: list[float] = []
    start = 0
    while start < len(sets):
        stop, n = start + 1, sets[start][0].shape[0]
        while stop < len(sets):
            n2 = max(n, sets[stop][0].shape[0])
            if (stop - start + 1) * n2 * n2 > _SILHOUETTE_BUDGET:
                break
            n, stop = n2, stop + 1
        out.extend(_silhouette_group(sets[start:stop]))
        start = stop
    return out


def _silhouette_group(sets: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    c = len(sets)
    n = max(p.shape[0] for p, _ in sets)
    d = max(p.shape[1] for p, _ in sets)
    k = max(int(lab.max()) + 1 if lab.size else 0 for _, lab in sets)
    x = np.zeros((c, n, d))
    onehot = np.zeros((c, n, max(k, 1)))  # padding rows belong to no cluster
    for i, (p, lab) in enumerate(sets):
        x[i, : p.shape[0], : p.shape[1]] = p
        onehot[i, np.arange(lab.size), lab] = 1.0
    sq = np.einsum("cnd,cnd->cn", x, x)
    dist = sq[:, :, None] + sq[:, None, :] - 2 * (x @ x.transpose(0, 2, 1))
    np.sqrt(np.maximum(dist, 0, out=dist), out=dist)
    dist[:, np.arange(n), np.arange(n)] = 0.0  # exact zeros, as scikit-learn sets them
    sums = dist @ onehot  # (c, n, k): summed distance of each point to each cluster
    freq = onehot.sum(axis=1)  # (c, k)
    own = (onehot * freq[:, None, :]).sum(axis=2)  # size of each point's cluster
    a = (sums * onehot).sum(axis=2) / np.maximum(own - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = sums / freq[:, None, :]
    means[(onehot > 0) | (freq[:, None, :] == 0)] = np.inf  # own and empty clusters
    b = means.min(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.nan_to_num((b - a) / np.maximum(a, b))
    s = np.where(own > 1, s, 0.0)
    out = []
    for i, (p, lab) in enumerate(sets):
        m = p.shape[0]
        clusters = int(lab.max()) + 1 if m else 0
        out.append(float(s[i, :m].mean()) if 2 <= clusters < m else float("nan"))
    return out


def mosaic(images: np.ndarray, max_images: int) -> np.ndarray:
    """Tile images ``(m, C, H, W)`` into one array ``(rows * H, cols * W, C)``."""
    side = math.ceil(math.sqrt(max_images))
    m = images.shape[0]
    rows = max(1, math.ceil(m / side))
    if m == 0:
        return np.zeros((1, 1, 1), dtype=np.float32)
    _, ch, h, w = images.shape
    grid = np.zeros((rows * side, ch, h, w), dtype=np.float32)
    grid[:m] = images
    grid = grid.reshape(rows, side, ch, h, w).transpose(0, 3, 1, 4, 2)
    return grid.reshape(rows * h, side * w, ch)
