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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

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
    """Mean silhouette score of a clustering (NaN when undefined).

    Rousseeuw's silhouette with Euclidean distances, as scikit-learn's ``silhouette_score``
    computes it (same sampling of ``SILHOUETTE_SAMPLES`` points drawn with ``seed``; a
    point alone in its cluster scores 0), without its per-call overhead: one distance
    matrix and one matrix product per class.
    """
    import torch

    n = points.shape[0]
    if n > SILHOUETTE_SAMPLES:
        keep = np.random.RandomState(seed).permutation(n)[:SILHOUETTE_SAMPLES]
        points, labels = points[keep], labels[keep]
        n = SILHOUETTE_SAMPLES
    _, lab = np.unique(labels, return_inverse=True)
    k = int(lab.max()) + 1 if n else 0
    if k < 2 or k >= n:
        return float("nan")
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
    cl = torch.from_numpy(lab.reshape(-1))
    onehot = torch.nn.functional.one_hot(cl, k).to(torch.float64)
    sums = torch.cdist(x, x) @ onehot  # (n, k): summed distance to each cluster
    freq = onehot.sum(dim=0)
    own = freq[cl]
    rows = torch.arange(n)
    a = sums[rows, cl] / (own - 1).clamp_min(1)
    means = sums / freq
    means[rows, cl] = torch.inf
    b = means.amin(dim=1)
    s = torch.nan_to_num((b - a) / torch.maximum(a, b))
    return float(torch.where(own > 1, s, 0.0).mean())


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


#: Elements of the largest (classes x starts x samples x max(clusters, dims)) tensor that
#: :func:`kmeans_batch` runs at once; more classes are split into groups.
_KMEANS_BUDGET = 1 << 22


def kmeans(
    points: np.ndarray, nb_clusters: int, n_init: int, seed: int, max_iter: int = 300
) -> np.ndarray:
    """k-means of one point set (see :func:`kmeans_batch`)."""
    return kmeans_batch([points], nb_clusters, n_init, seed, max_iter)[0]


def kmeans_batch(
    sets: list[np.ndarray], nb_clusters: int, n_init: int, seed: int, max_iter: int = 300
) -> list[np.ndarray]:
    """Lloyd's k-means of several point sets, ``n_init`` k-means++ starts each, all run side
    by side; for each set, the labels of its start with the lowest inertia.

    Small, whitened classes have many local optima (30 starts of scikit-learn's k-means on a
    class of 150 digits give 30 different splits), so the poison's split is found reliably
    only with many starts. The sets (classes) are zero-padded to a common size and every
    start of every class advances in the same tensor operations, so 64 starts of 10 classes
    cost about as many Python-level steps as one start of one class. A class stops moving
    once its labels are stable or its centres move less than scikit-learn's tolerance.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    out: list[np.ndarray] = []
    start = 0
    while start < len(sets):
        stop, n, d = start + 1, sets[start].shape[0], sets[start].shape[1]
        while stop < len(sets):
            n2, d2 = max(n, sets[stop].shape[0]), max(d, sets[stop].shape[1])
            if (stop - start + 1) * n_init * n2 * max(nb_clusters, d2) > _KMEANS_BUDGET:
                break
            n, d, stop = n2, d2, stop + 1
        out.extend(_kmeans_group(sets[start:stop], nb_clusters, n_init, gen, max_iter))
        start = stop
    return out


def _kmeans_group(
    sets: list[np.ndarray], k: int, n_init: int, gen: torch.Generator, max_iter: int
) -> list[np.ndarray]:
    import torch

    dt = torch.float32  # ample for k-means; halves the memory traffic of every step
    sizes = torch.tensor([s.shape[0] for s in sets])
    c, n, d = len(sets), int(sizes.max()), max(s.shape[1] for s in sets)
    x = torch.zeros(c, n, d, dtype=dt)
    tol = torch.zeros(c, dtype=dt)
    for i, s in enumerate(sets):
        pts = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float64))
        x[i, : s.shape[0], : s.shape[1]] = pts
        if s.shape[0] > 1:  # scikit-learn's tolerance: 1e-4 x the mean feature variance
            tol[i] = 1e-4 * pts.var(dim=0, unbiased=False).mean()
    w = (torch.arange(n) < sizes[:, None]).to(dt)  # (c, n): 1 on real points, 0 on padding
    sq = x.square().sum(dim=2)[:, None, None, :]
    xt = x.transpose(1, 2)  # (c, d, n)
    cols = torch.arange(c)[:, None]

    def dist2(centres: torch.Tensor) -> torch.Tensor:  # (c, B, k', d) -> (c, B, k', n)
        kk = centres.shape[2]
        cross = torch.bmm(centres.reshape(c, n_init * kk, d), xt).view(c, n_init, kk, n)
        return (sq - 2 * cross + centres.square().sum(dim=3, keepdim=True)).clamp_min(0)

    def nearest(d2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (c, B, k', n) -> distance to and index of the nearest centre (first on ties); a
        # loop over the few centres beats argmin over a middle dimension by far
        best, lab = d2[:, :, 0], torch.zeros(d2.shape[:2] + d2.shape[3:], dtype=torch.long)
        for j in range(1, d2.shape[2]):
            closer = d2[:, :, j] < best
            best = torch.where(closer, d2[:, :, j], best)
            lab = lab.masked_fill(closer, j)
        return best, lab

    # k-means++ seeding, every start of every set at once.
    first = (torch.rand(c, n_init, generator=gen) * sizes[:, None]).long()
    centres = x[cols, first.clamp_max(sizes[:, None] - 1)].unsqueeze(2)
    for _ in range(1, k):
        p = nearest(dist2(centres))[0] * w[:, None, :]
        p = torch.where(p.sum(dim=2, keepdim=True) > 0, p, w[:, None, :].expand_as(p))
        cdf = p.cumsum(dim=2)  # draw one point per row with probability p (inverse CDF)
        u = torch.rand(c, n_init, 1, generator=gen, dtype=cdf.dtype) * cdf[:, :, -1:]
        nxt = torch.searchsorted(cdf, u, right=True).squeeze(2).clamp_max(sizes[:, None] - 1)
        centres = torch.cat([centres, x[cols, nxt].unsqueeze(2)], dim=2)
    sizes_f = sizes.to(dt)[:, None, None]
    total = x.sum(dim=1)[:, None, :]  # (c, 1, d): padding rows are zero

    def assign(centres: torch.Tensor) -> torch.Tensor:  # (c, B, k, d) -> labels (c, B, n)
        if k == 2:  # nearer to centre 1 <=> the projection on c1 - c0 passes the midpoint
            sqn = centres.square().sum(dim=3)
            proj = torch.bmm(centres[:, :, 1] - centres[:, :, 0], xt)
            return (proj > 0.5 * (sqn[:, :, 1:] - sqn[:, :, :1])).long()
        return nearest(dist2(centres))[1]

    def means(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # sums, counts
        if k == 2:
            member = labels.to(dt) * w[:, None, :]
            s1, n1 = torch.bmm(member, x), member.sum(dim=2, keepdim=True)
            return torch.stack([total - s1, s1], dim=2), torch.stack([sizes_f - n1, n1], dim=2)
        member = (labels.unsqueeze(2) == torch.arange(k).view(1, 1, k, 1)).to(dt)
        member = member * w[:, None, None, :]
        sums = torch.bmm(member.view(c, n_init * k, n), x).view(c, n_init, k, d)
        return sums, member.sum(dim=3, keepdim=True)

    labels = assign(centres)
    done = torch.zeros(c, dtype=torch.bool)
    for _ in range(max_iter):
        sums, counts = means(labels)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # emptied: stays
        new = torch.where(done[:, None, None, None], centres, new)  # converged sets stay put
        new_labels = assign(new)
        shift = (new - centres).square().sum(dim=(2, 3)).amax(dim=1)
        same = ((new_labels == labels) | (w[:, None, :] == 0)).flatten(1).all(dim=1)
        centres, labels = new, new_labels
        done |= same | (shift <= tol)
        if bool(done.all()):
            break
    inertia = (nearest(dist2(centres))[0] * w[:, None, :]).sum(dim=2)  # (c, B)
    best = inertia.argmin(dim=1)
    return [labels[i, int(best[i]), : int(sizes[i])].numpy().astype(np.int64) for i in range(c)]
