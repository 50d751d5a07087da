"""GeoDA (Rahmati et al.): a geometric decision-based attack with low-frequency normal estimates."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from bastion._validation import (
    BATCH_SIZE,
    MAX_QUERIES,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Options,
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import canonical_norm, lp_norm
from bastion.attacks.decision import DecisionBasedAttack
from bastion.estimators.base import SupportsPredict

__all__ = ["GeoDA"]

#: Random starting points tried per sample (each costs one query) before giving up.
_INIT_TRIES = 40
#: Queries per iteration reserved for moving back to the boundary, as in the authors' schedule.
_ITER_OVERHEAD = 25


def dct_basis(n: int, k: int, *, dtype: torch.dtype, device: Any = None) -> torch.Tensor:
    """The ``k`` lowest-frequency vectors of the orthonormal DCT-II basis of length ``n``, as
    the columns of an ``(n, min(k, n))`` matrix."""
    k = min(k, n)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    f = torch.arange(k, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * i + 1) * f / (2 * n)) * math.sqrt(2.0 / n)
    basis[:, 0] = math.sqrt(1.0 / n)
    return basis.to(dtype=dtype, device=device)


def low_frequency_noise(
    m: int, shape: tuple[int, ...], sub_dim: int, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """``m`` standard Gaussian vectors of the subspace spanned by the ``sub_dim x sub_dim``
    lowest 2D DCT frequencies of each channel (the last two axes are the image; a 1D input
    uses the ``sub_dim`` lowest 1D frequencies). The basis is orthonormal, so the noise is
    N(0, I) inside the subspace; with ``sub_dim`` at least the image size it is N(0, I)."""
    if len(shape) == 1:
        basis = dct_basis(shape[0], sub_dim, dtype=like.dtype, device=like.device)
        coef = torch.randn(
            (m, basis.shape[1]), generator=generator, dtype=like.dtype, device=like.device
        )
        return coef @ basis.T
    h, w = shape[-2:]
    bh = dct_basis(h, sub_dim, dtype=like.dtype, device=like.device)
    bw = dct_basis(w, sub_dim, dtype=like.dtype, device=like.device)
    coef = torch.randn(
        (m, *shape[:-2], bh.shape[1], bw.shape[1]),
        generator=generator,
        dtype=like.dtype,
        device=like.device,
    )
    return bh @ coef @ bw.T


def query_schedule(max_queries: int, lambda_param: float) -> list[int]:
    """GeoDA's allocation of normal-estimation queries over iterations.

    The bound of the paper is minimised by ``N_t`` proportional to ``lambda ** (-2 t / 3)``.
    As in the authors' code, ``25`` queries per iteration are set aside for the boundary
    searches, and the number of iterations ``T`` (first guess ``max_queries / 500``) is the
    largest one that still gives the first iteration at least 50 queries (50 to 80 whenever
    possible); at least one iteration.
    """
    t_guess = max(1, round(max_queries / 500))
    total = max(1, max_queries - _ITER_OVERHEAD * t_guess)

    def alloc(t: int) -> list[int]:
        coef = [lambda_param ** (-2 * i / 3) for i in range(t)]
        s = sum(coef)
        return [max(1, round(total * c / s)) for c in coef]

    t = 1
    while t < 10_000 and alloc(t + 1)[0] >= 50:
        t += 1
    return alloc(t)


class GeoDA(DecisionBasedAttack):
    """GeoDA: Geometric Decision-based Attack.

    A boundary point is found by a binary search between ``x`` and an adversarial starting
    point: ``generate(..., x_init=...)`` where given and adversarial, else the first
    adversarial one of 40 draws of ``x`` plus low-frequency noise of growing amplitude (the
    authors' code grows white Gaussian noise, which image classifiers often ignore); samples
    without one are returned unchanged, and a ``RuntimeWarning`` says how many and why. Each
    iteration
    then estimates the normal of the decision boundary at the current boundary point from
    ``N_t`` labels of random perturbations ``sigma * eta_i`` drawn in the subspace of the
    ``sub_dim x sub_dim`` lowest 2D DCT frequencies (per channel):
    ``w ~ mean_i z_i eta_i`` with ``z_i = +1`` where the perturbed point is adversarial and
    ``-1`` otherwise. The estimates of all iterations add up (as in the authors' code). The
    next point goes from ``x`` along the direction that is optimal for a flat boundary with
    normal ``w``: ``w / ||w||_2`` for L2, ``sign(w)`` for Linf; a binary search along that ray
    finds the boundary, which becomes the new point where it is closer than the current one.
    The normal-estimation queries follow the paper's optimal allocation,
    ``N_t ~ lambda ** (-2 t / 3)`` (see :func:`query_schedule`).

    Departures from the authors' code, for a batched, budgeted attack: the line search probes
    the ray at the current best distance first (one query) and bisects below it, so the
    distance never grows (a ray that is not adversarial there leaves the point unchanged and
    the next estimate refines the normal at the same point); after the planned iterations a
    sample with queries left continues with the last ``N_t``; iterations are cut short where a
    sample's budget runs out, and the best adversarial point found is returned. Noise scale
    ``sigma`` and the tolerance ``bin_search_tol`` are relative to the width of
    ``clip_values`` (as in ART). The paper's L1 variant (a sparse, coordinate-wise search) is
    not included.

    Built on :class:`~bastion.attacks.decision.DecisionBasedAttack` (decisions, starting
    points, bisection, per-sample budgets and results).

    Threat model: decision-based black-box (labels only), untargeted. Norms: 2, inf.

    Parameters
    ----------
    estimator : estimator with ``predict`` (labels only is enough)
    norm : {2, "inf"}, default 2
    max_queries : int, default 1000
        Query budget per sample (the clean-label query included when ``y`` is omitted).
    sub_dim : int, default 10
        Number of low DCT frequencies per image axis spanning the perturbation subspace.
    bin_search_tol : float, default 1e-4
        A binary search stops when its bracket is shorter than this (in the attack's norm,
        relative to the width of ``clip_values``).
    lambda_param : float, default 0.6
        ``lambda`` of the query allocation ``N_t ~ lambda ** (-2 t / 3)``; below 1 the later
        iterations get more queries.
    sigma : float, default 0.0002
        Standard deviation of the probes in each subspace coordinate, relative to the width of
        ``clip_values``.
    batch_size : int, default 128
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        Queries spent on each sample by the last :meth:`generate`.
    success_ : numpy.ndarray of bool, shape (N,)
        Which samples were broken (a query found the returned point adversarial); the others
        are returned unchanged.

    References
    ----------
    Rahmati, Moosavi-Dezfooli, Frossard and Dai, "GeoDA: a geometric framework for black-box
    adversarial attacks", CVPR 2020. https://arxiv.org/abs/2003.06468

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.evasion.geoda import GeoDA
    >>> api = lambda b: (b.reshape(len(b), -1).mean(1) > 0.5).astype(int)
    >>> clf = BlackBoxClassifier(api, input_shape=(1, 4, 4), nb_classes=2, clip_values=(0, 1),
    ...                          labels_only=True)
    >>> x = np.full((2, 1, 4, 4), 0.3, dtype=np.float32)
    >>> attack = GeoDA(clf, max_queries=300, random_state=0)
    >>> x_adv = attack.generate(x, np.zeros(2, dtype=int))
    >>> bool((clf.predict(x_adv).argmax(1) == 1).all()), bool(attack.queries_.max() <= 300)
    (True, True)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "norm": [Options(["inf", float("inf"), 2])],
        "max_queries": MAX_QUERIES,
        "sub_dim": [Interval(int, 1, None)],
        "bin_search_tol": [Interval(float, 0, None, closed="neither")],
        "lambda_param": [Interval(float, 0, None, closed="neither")],
        "sigma": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    # Not a parameter: the paper defines GeoDA for the untargeted case.
    targeted = False

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        norm: Any = 2,
        max_queries: int = 1000,
        sub_dim: int = 10,
        bin_search_tol: float = 1e-4,
        lambda_param: float = 0.6,
        sigma: float = 0.0002,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.norm = norm
        self.max_queries = max_queries
        self.sub_dim = sub_dim
        self.bin_search_tol = bin_search_tol
        self.lambda_param = lambda_param
        self.sigma = sigma
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _noise_starts(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        scale: float,
    ) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """Proposals for the starting points: low-frequency noise (in the DCT subspace) of
        growing amplitude, its root mean square 0.1, 0.2, ... times the width of
        ``clip_values``, added to ``x``. (Low-frequency blobs change the label of an image
        classifier far more often than white noise, which such models tend to ignore.)"""
        shape = tuple(x.shape[1:])

        def propose(k: int, a: torch.Tensor) -> torch.Tensor:
            noise = low_frequency_noise(a.numel(), shape, self.sub_dim, generator, x)
            rms = noise.flatten(1).norm(dim=1) / math.sqrt(noise[0].numel())
            noise = noise * _view((0.1 * (k + 1) * scale) / rms.clamp_min(1e-30), noise)
            m = _rows(mask, a)
            if m is not None:
                noise = noise * m
            return self._point(x[a], noise, x.new_ones(a.numel()))

        return propose

    # ------------------------------------------------------------------ attack

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = per_sample["index"]
        norm = canonical_norm(self.norm)
        clip = self.estimator.clip_values
        scale = float(clip[1] - clip[0]) if clip is not None else 1.0
        tol = self.bin_search_tol * scale
        n = x.shape[0]
        ones = torch.ones(n, dtype=x.dtype, device=x.device)

        how = f"{_INIT_TRIES} low-frequency noise draws of growing amplitude"
        propose = self._noise_starts(x, mask, generator, scale)
        x_init = per_sample.get("x_init")
        start, found = self._starting_points(x, y, mask, index, x_init, propose, _INIT_TRIES, how)
        delta = start - x
        width = lp_norm(delta, norm)
        # The first binary search takes ceil(log2(width / tol)) queries unless the budget ends.
        search = torch.log2((width / tol).clamp_min(1.0)).ceil().long()
        after_search = self._counter.used[index] + search
        t = self._bisect_ray(x, y, delta, torch.zeros_like(ones), ones, index, tol, scale=width)
        best = torch.where(_view(found, x), self._point(x, delta, t), x)
        dist = torch.where(found, lp_norm(best - x, norm), torch.inf)

        normal = torch.zeros_like(x)
        schedule = query_schedule(self.max_queries, self.lambda_param)
        shape = tuple(x.shape[1:])
        it = 0
        while True:
            n_t = schedule[min(it, len(schedule) - 1)]
            it += 1
            # Queries each sample may spend on the normal now: what is left after the line
            # search (one probe, then the bisection down to the tolerance).
            line = 1 + torch.log2((dist / tol).clamp_min(1.0)).ceil()
            probes = (self._counter.remaining(index) - line).clamp(0, n_t)
            probes = torch.where(found & torch.isfinite(line), probes, 0).long()
            if it == 1:
                self._note_short_budget(
                    found & (dist > 0) & (probes == 0),
                    torch.maximum(after_search, self._counter.used[index])
                    + line.nan_to_num(posinf=0).long()
                    + 1,
                    "one iteration (a probe and a line search)",
                    "they keep their starting point, moved to the boundary",
                )
            a = (probes > 0).nonzero().squeeze(1)
            if a.numel() == 0:
                break
            k = int(probes[a].max())
            eta = low_frequency_noise(a.numel() * k, shape, self.sub_dim, generator, x)
            eta = eta.reshape(a.numel(), k, *shape)
            if mask is not None:
                eta = eta * _rows(mask, a).unsqueeze(1)
            used = torch.arange(k, device=x.device).unsqueeze(0) < probes[a].unsqueeze(1)
            rows = used.nonzero()  # (m, 2): sample (within a), probe
            pts = best[a][rows[:, 0]] + (self.sigma * scale) * eta[rows[:, 0], rows[:, 1]]
            if clip is not None:
                pts = pts.clamp(*clip)
            adv = self._decide(pts, y[a][rows[:, 0]], index[a][rows[:, 0]])
            z = torch.zeros(used.shape, dtype=x.dtype, device=x.device)
            z[rows[:, 0], rows[:, 1]] = adv.to(x.dtype) * 2 - 1
            est = torch.einsum("ak,ak...->a...", z, eta)
            est = est / _view(probes[a].to(x.dtype), est)
            normal[a] += est

            # The step that is optimal for a flat boundary with this normal.
            w = normal[a]
            if norm == "inf":
                v = w.sign()
            else:
                v = w / _view(lp_norm(w, "2").clamp_min(1e-30), w)
            r_hi = dist[a] / lp_norm(v, norm).clamp_min(1e-30)
            ok = self._counter.has_budget(index[a])
            b = a[ok]
            hit = torch.zeros(a.numel(), dtype=torch.bool, device=x.device)
            hit[ok] = self._decide(self._point(x[b], v[ok], r_hi[ok]), y[b], index[b])
            if not bool(hit.any()):
                continue
            c, vc = a[hit], v[hit]
            lo_c = torch.zeros_like(r_hi[hit])
            width = lp_norm(vc, norm)
            r = self._bisect_ray(x[c], y[c], vc, lo_c, r_hi[hit], index[c], tol, scale=width)
            cand = self._point(x[c], vc, r)
            d_new = lp_norm(cand - x[c], norm)
            better = d_new < dist[c]
            best[c[better]] = cand[better]
            dist[c[better]] = d_new[better]
        return best, found
