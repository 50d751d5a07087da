"""Seeded k-means: k-means++ starts and Lloyd's iterations, many point sets and starts at once.

One implementation for the library: activation clustering splits every class of a training
set in two with 64 starts each (whitened classes have many local optima), Knockoff Nets
groups its query pool into actions with one start. The sets are zero-padded to one size and
every start of every set advances in the same array operations, so ten classes of 64 starts
cost about as many Python-level steps as one start of one class.

Each start runs Lloyd's iterations as scikit-learn's ``KMeans`` does and stops when its labels
no longer change (a fixed point); the starts of a set still running stop together once none
of them moves its centres (summed squared shift) by more than ``1e-4`` times the mean feature
variance of the set, scikit-learn's tolerance (with one start per set, exactly its rule). A
start that has stopped leaves the batch: once half of the batch has stopped, the running
starts are gathered into a smaller one, so a few slow starts do not drag the others through
every remaining iteration (on the digits' classes, 64 starts stop after 2 to 20 iterations,
half of them within 6).

The kernel works on the CPU in NumPy (float32): most problems it serves are small (a class
of activations reduced to 10 dimensions), where an array operation's fixed cost decides the
time, and NumPy's is about a fifth of torch's. The random draws still come from a
``torch.Generator``, so one ``random_state`` seeds a whole attack or defence.

References
----------
S. Lloyd. "Least squares quantization in PCM." IEEE Transactions on Information Theory
28(2), 1982.
D. Arthur, S. Vassilvitskii. "k-means++: the advantages of careful seeding." SODA 2007.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["kmeans", "kmeans_batch"]

#: Elements of the largest (sets x starts x points x max(clusters, dims)) array that
#: :func:`kmeans_batch` runs at once; more sets are split into groups.
_BUDGET = 1 << 22

#: The running starts are gathered into a smaller batch once at most half of the batch runs,
#: if the batch holds more than this many (start, point) pairs: below, the copy costs more
#: than the work it saves.
_GATHER_MIN = 8192

#: Projection given to padding points in the two-cluster step: never the nearer side.
_FAR = 1e30

_DTYPE = np.float32


def kmeans(
    x: np.ndarray,
    nb_clusters: int,
    *,
    generator: torch.Generator,
    n_init: int = 1,
    max_iter: int = 300,
) -> np.ndarray:
    """Cluster labels (int64) of the rows of ``x`` ``(n, d)``; see :func:`kmeans_batch`."""
    return kmeans_batch([x], nb_clusters, generator=generator, n_init=n_init, max_iter=max_iter)[0]


def kmeans_batch(
    sets: Sequence[np.ndarray],
    nb_clusters: int,
    *,
    generator: torch.Generator,
    n_init: int = 1,
    max_iter: int = 300,
) -> list[np.ndarray]:
    """Lloyd's k-means of several point sets, ``n_init`` k-means++ starts each, side by side.

    Parameters
    ----------
    sets : sequence of numpy.ndarray
        Point sets ``(n_i, d_i)``, each with at least one point; clustered in float32.
    nb_clusters : int
        Clusters per set.
    generator : torch.Generator
        A CPU generator: every random draw (the seeding of the starts) comes from it.
    n_init : int, default=1
        k-means++ starts per set; the labels of the start of lowest inertia are kept (the
        first such start on ties).
    max_iter : int, default=300
        Lloyd iterations at most per start.

    Returns
    -------
    list of numpy.ndarray
        Labels ``(n_i,)`` in ``[0, nb_clusters)``, int64, one array per set.
    """
    out: list[np.ndarray] = []
    start = 0
    while start < len(sets):
        stop, n, d = start + 1, sets[start].shape[0], sets[start].shape[1]
        while stop < len(sets):
            n2, d2 = max(n, sets[stop].shape[0]), max(d, sets[stop].shape[1])
            if (stop - start + 1) * n_init * n2 * max(nb_clusters, d2) > _BUDGET:
                break
            n, d, stop = n2, d2, stop + 1
        out.extend(_kmeans_group(sets[start:stop], nb_clusters, n_init, generator, max_iter))
        start = stop
    return out


class _Sets:
    """Zero-padded point sets ``(c, n, d)`` and what a Lloyd step over them needs.

    Labels are arrays ``(c, B, n)`` for ``B`` starts: for two clusters "in cluster 1" as 0.0
    or 1.0 (padding always 0.0), else int64 indices (padding always 0).
    """

    _FIELDS = ("x", "sizes", "real", "sq", "total", "aug", "aug_t")

    def __init__(self, x: np.ndarray, sizes: np.ndarray, k: int) -> None:
        c, n, d = x.shape
        self.x, self.k, self.d = x, k, d
        self.sizes = sizes.astype(_DTYPE).reshape(c, 1, 1)
        self.real = (np.arange(n) < sizes[:, None]).astype(_DTYPE)  # (c, n)
        self.sq = np.einsum("cnd,cnd->cn", x, x)[:, None, None, :]  # (c, 1, 1, n)
        self.total = x.sum(axis=1)[:, None, :]  # (c, 1, d): padding rows are zero
        if k == 2:
            # Points [x, is padding, 1] against normals [c1 - c0, -_FAR, -threshold]: one
            # product gives x.(c1 - c0) - threshold for real points and a hugely negative
            # value for padding (never in cluster 1); the product the other way gives the
            # sums and the size of cluster 1 at once.
            self.aug = np.concatenate(
                [x, (1 - self.real)[:, :, None], np.ones((c, n, 1), dtype=_DTYPE)], axis=2
            )
            self.aug_t = np.ascontiguousarray(self.aug.transpose(0, 2, 1))

    def take(self, rows: np.ndarray) -> _Sets:
        """The same for the sets ``rows`` only."""
        out = object.__new__(_Sets)
        out.k, out.d = self.k, self.d
        for name in self._FIELDS:
            if hasattr(self, name):
                setattr(out, name, getattr(self, name)[rows])
        return out

    def dist2(self, centres: np.ndarray) -> np.ndarray:
        """Squared distances ``(c, B, k', n)`` of every point to centres ``(c, B, k', d)``."""
        c, b, kk, d = centres.shape
        cross = (centres.reshape(c, b * kk, d) @ self.x.transpose(0, 2, 1)).reshape(c, b, kk, -1)
        csq = np.einsum("cbkd,cbkd->cbk", centres, centres)[..., None]
        return np.maximum(self.sq - 2 * cross + csq, 0)

    def assign(self, centres: np.ndarray) -> np.ndarray:
        """Labels of the nearest centres (cluster 0 / the first centre on ties)."""
        if self.k != 2:
            return _nearest(self.dist2(centres))[1] * self.real[:, None, :].astype(np.int64)
        return (self._projection(centres) > 0).astype(_DTYPE)

    def _projection(self, centres: np.ndarray) -> np.ndarray:
        """``x.(c1 - c0) - (|c1|^2 - |c0|^2) / 2`` for every point ``(c, B, n)``: positive on
        centre 1's side of the bisecting hyperplane; hugely negative for padding."""
        c, b, _, d = centres.shape
        sq = np.einsum("cbkd,cbkd->cbk", centres, centres)
        normal = np.empty((c, b, d + 2), dtype=_DTYPE)
        np.subtract(centres[:, :, 1], centres[:, :, 0], out=normal[:, :, :d])
        normal[:, :, d] = -_FAR
        normal[:, :, d + 1] = 0.5 * (sq[:, :, 0] - sq[:, :, 1])  # minus the threshold
        return normal @ self.aug_t

    def means(self, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """Centres of the clusters ``labels`` give; an emptied cluster keeps its centre."""
        new = centres.copy()
        if self.k == 2:
            s = labels @ self.aug  # (c, B, d + 2): sum of cluster 1, 0, its size
            s1, n1 = s[:, :, : self.d], s[:, :, self.d + 1 :]
            n0 = self.sizes - n1
            np.divide(self.total - s1, n0, out=new[:, :, 0], where=n0 > 0)
            np.divide(s1, n1, out=new[:, :, 1], where=n1 > 0)
            return new
        c, b, n = labels.shape
        ks = np.arange(self.k).reshape(1, 1, self.k, 1)
        member = (labels[:, :, None, :] == ks) * self.real[:, None, None, :]
        sums = (member.reshape(c, b * self.k, n) @ self.x).reshape(c, b, self.k, self.d)
        counts = member.sum(axis=3, keepdims=True)
        return np.divide(sums, counts, out=new, where=counts > 0)

    def inertia(self, centres: np.ndarray) -> np.ndarray:
        """Summed squared distance ``(c, B)`` of the points to their nearest centre."""
        if self.k != 2:
            return (self.dist2(centres).min(axis=2) * self.real[:, None, :]).sum(axis=2)
        # min(|x - c0|^2, |x - c1|^2) = |x - c0|^2 - 2 max(0, x.(c1 - c0) - threshold): the
        # first term summed in closed form, the second from the hyperplane's projections
        c0 = centres[:, :, 0].astype(np.float64)
        to_c0 = (
            self.sq.sum(axis=3)[:, :, 0].astype(np.float64)
            - 2 * (c0 * self.total).sum(axis=2)
            + self.sizes[:, :, 0] * np.square(c0).sum(axis=2)
        )
        past = np.maximum(self._projection(centres), 0).sum(axis=2, dtype=np.float64)
        return to_c0 - 2 * past


def _nearest(d2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(c, B, k', n)`` -> distance to and index of the nearest centre (the first on ties)."""
    best = d2[:, :, 0]
    lab = np.zeros(best.shape, dtype=np.int64)
    for j in range(1, d2.shape[2]):
        closer = d2[:, :, j] < best
        best = np.where(closer, d2[:, :, j], best)
        lab[closer] = j
    return best, lab


def _stack(sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sets as one zero-padded float32 array, their sizes and scikit-learn's tolerances
    (``1e-4`` times the mean feature variance, in each set's own precision)."""
    c, n, d = len(sets), max(s.shape[0] for s in sets), max(s.shape[1] for s in sets)
    sizes = np.array([s.shape[0] for s in sets], dtype=np.int64)
    if c == 1:  # no padding: no copy when the points already are float32
        tol = 1e-4 * sets[0].var(axis=0).mean() if n > 1 else 0.0
        return np.asarray(sets[0], dtype=_DTYPE)[None], sizes, np.array([tol], dtype=_DTYPE)
    dims = np.array([s.shape[1] for s in sets])
    exact = np.zeros((c, n, d), dtype=np.result_type(*sets))
    for i, s in enumerate(sets):
        exact[i, : s.shape[0], : s.shape[1]] = s
    # variances over each set's real points, averaged over its own dimensions
    real = (np.arange(n) < sizes[:, None])[:, :, None]
    mean = exact.sum(axis=1, keepdims=True) / sizes[:, None, None]
    var = np.square(np.where(real, exact - mean, 0)).sum(axis=1) / sizes[:, None]
    tol = np.where(sizes > 1, 1e-4 * var.sum(axis=1) / dims, 0.0)
    return exact.astype(_DTYPE, copy=False), sizes, tol.astype(_DTYPE)


def _plusplus(sets: _Sets, sizes: np.ndarray, n_init: int, gen: torch.Generator) -> np.ndarray:
    """k-means++ seeding of every start of every set: centres ``(c, B, k, d)``."""
    x, c = sets.x, sets.x.shape[0]
    sizes = sizes.reshape(c, 1)
    cols = np.arange(c)[:, None]
    first = torch.rand(c, n_init, generator=gen).numpy() * sizes.astype(_DTYPE)
    first = first.astype(np.int64)
    centres = x[cols, np.minimum(first, sizes - 1)][:, :, None, :]
    w = sets.real[:, None, :]
    for _ in range(1, sets.k):
        p = _nearest(sets.dist2(centres))[0] * w
        p = np.where(p.sum(axis=2, keepdims=True) > 0, p, w)
        # one point per row with probability p, by inverse CDF (torch's cumsum of a row is
        # several times faster than NumPy's)
        cdf = torch.from_numpy(p).cumsum(dim=2)
        u = torch.rand(c, n_init, 1, generator=gen) * cdf[:, :, -1:]
        nxt = torch.searchsorted(cdf, u, right=True).squeeze(2).numpy()
        nxt = np.minimum(nxt, sizes - 1)
        centres = np.concatenate([centres, x[cols, nxt][:, :, None, :]], axis=2)
    return centres


def _kmeans_group(
    point_sets: Sequence[np.ndarray], k: int, n_init: int, gen: torch.Generator, max_iter: int
) -> list[np.ndarray]:
    x, sizes, tol = _stack(point_sets)
    full = _Sets(x, sizes, k)
    c = x.shape[0]
    centres = _plusplus(full, sizes, n_init, gen)
    final = centres.copy()  # where each start stopped

    # The running batch: a row per set (`rows`: its index in `full`), a slot per start
    # (`slot`: the start's index); `running` marks the starts still iterating.
    sets, rows, tol = full, np.arange(c), tol[:, None]
    slot = np.broadcast_to(np.arange(n_init), (c, n_init))
    running = np.ones((c, n_init), dtype=bool)
    labels = sets.assign(centres)
    for it in range(max_iter):
        new = sets.means(labels, centres)
        new_labels = sets.assign(new)
        shift = np.square(new - centres).sum(axis=(2, 3))
        changed = (new_labels != labels).any(axis=2)
        # a start whose labels hold is at a fixed point; the starts of a set still running
        # stop together once none of them moves by more than the tolerance
        moving = np.where(running, shift, 0).max(axis=1, keepdims=True) > tol
        stopped = running & ~(changed & moving)
        if it == max_iter - 1:
            stopped = running
        centres, labels = new, new_labels
        if not stopped.any():
            continue
        r, s = np.nonzero(stopped)
        final[rows[r], slot[r, s]] = new[r, s]
        running = running & ~stopped
        left = int(running.sum())
        if left == 0:
            break
        if 2 * left <= running.size and running.size * x.shape[1] > _GATHER_MIN:
            keep = np.flatnonzero(running.any(axis=1))
            width = int(running[keep].sum(axis=1).max())
            order = np.argsort(~running[keep], axis=1, kind="stable")[:, :width]
            sel = keep[:, None]
            centres, labels = centres[sel, order], labels[sel, order]
            slot, running = slot[sel, order], running[sel, order]
            rows, tol, sets = rows[keep], tol[keep], sets.take(keep)
    best = full.inertia(final).argmin(axis=1)
    labels = full.assign(final[np.arange(c), best][:, None])[:, 0].astype(np.int64)
    return [labels[i, : sizes[i]] for i in range(c)]
