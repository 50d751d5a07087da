"""The numerical pieces of activation clustering: per-class reduction, silhouette, mosaics.

Why ``"whiten"`` exists next to ``"fastica"``: FastICA (the paper's reduction) whitens the
activations with PCA and then applies an orthogonal rotation. k-means and the silhouette
score depend on Euclidean distances only, which a rotation keeps, so the clusters and
silhouettes of FastICA are those of the whitened PCA components, obtained without FastICA's
iterations (10 to 20 times faster on the digits). Whitening is what matters: it puts every
retained direction on the same scale, so a class of clean samples looks like one round
blob (low silhouette) and a trigger's tight cluster stands out (high silhouette).
"""

from __future__ import annotations

import math

import numpy as np

#: Silhouette scores are computed on at most this many samples of a class (O(n^2) otherwise).
SILHOUETTE_SAMPLES = 2000

#: Singular values below this fraction of the largest are treated as zero (dead ReLU units).
_RANK_TOL = 1e-5


def _centred_svd(a: np.ndarray, nb_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of the centred ``a``, numerical rank capped."""
    a = a.astype(np.float64, copy=False)
    centred = a - a.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    rank = int((s > _RANK_TOL * max(float(s[0]), 1e-30)).sum()) if s.size else 0
    dims = max(1, min(nb_dims, rank))
    return u[:, :dims], s[:dims]


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
    """Mean silhouette score of a clustering (NaN when undefined)."""
    from sklearn.metrics import silhouette_score

    k = len(np.unique(labels))
    if k < 2 or k >= points.shape[0]:
        return float("nan")
    sample = SILHOUETTE_SAMPLES if points.shape[0] > SILHOUETTE_SAMPLES else None
    return float(silhouette_score(points, labels, sample_size=sample, random_state=seed))


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


def kmeans(
    points: np.ndarray, nb_clusters: int, n_init: int, seed: int, max_iter: int = 300
) -> np.ndarray:
    """Lloyd's k-means with ``n_init`` k-means++ starts run side by side; the labels of the
    start with the lowest inertia.

    Small, whitened classes have many local optima (30 starts of scikit-learn's k-means on a
    class of 150 digits give 30 different splits), so the poison's split is found reliably
    only with many starts; batching them in one tensor makes 64 starts cost about one.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    sq = x.square().sum(dim=1)

    def dist2(centres: torch.Tensor) -> torch.Tensor:  # (B, n, k) squared distances
        cross = torch.einsum("nd,bkd->bnk", x, centres)
        return (sq[None, :, None] - 2 * cross + centres.square().sum(-1)[:, None, :]).clamp_min(0)

    # k-means++ seeding, all starts at once.
    centres = x[torch.randint(n, (n_init,), generator=gen)].unsqueeze(1)
    for _ in range(1, nb_clusters):
        d2 = dist2(centres).amin(dim=2)
        d2 = torch.where(d2.sum(dim=1, keepdim=True) > 0, d2, torch.ones_like(d2))
        nxt = torch.multinomial(d2, 1, generator=gen).squeeze(1)
        centres = torch.cat([centres, x[nxt].unsqueeze(1)], dim=1)
    labels = dist2(centres).argmin(dim=2)
    tol = 1e-4 * float(x.var(dim=0).mean()) if n > 1 else 0.0  # scikit-learn's tolerance
    for _ in range(max_iter):
        old = centres
        onehot = torch.nn.functional.one_hot(labels, nb_clusters).to(x.dtype)
        counts = onehot.sum(dim=1)
        new = (onehot.transpose(1, 2) @ x) / counts.clamp_min(1).unsqueeze(-1)
        centres = torch.where(counts.unsqueeze(-1) > 0, new, centres)  # an emptied cluster stays
        new_labels = dist2(centres).argmin(dim=2)
        shift = float((centres - old).square().sum(dim=(1, 2)).max())
        if torch.equal(new_labels, labels) or shift <= tol:
            labels = new_labels
            break
        labels = new_labels
    inertia = dist2(centres).amin(dim=2).sum(dim=1)
    return labels[int(torch.argmin(inertia))].numpy().astype(np.int64)
