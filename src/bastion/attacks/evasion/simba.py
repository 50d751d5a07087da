"""SimBA (Guo et al. 2019): simple black-box attacks along random orthonormal directions."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from bastion._validation import (
    BATCH_SIZE,
    MAX_QUERIES,
    NONE,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
    Options,
)
from bastion.attacks.base import MinimumNormAttack
from bastion.attacks.evasion.square import _as_images
from bastion.attacks.query import QueryAttack
from bastion.estimators.base import SupportsPredict

__all__ = ["SimBA", "dct_2d", "dct_matrix", "idct_2d"]


def dct_matrix(n: int, *, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` of size ``n``: ``D @ v`` is the DCT of ``v`` and
    ``D.T`` is its inverse (``D @ D.T = I``)."""
    k = torch.arange(n, device=device, dtype=torch.float64)[:, None]
    i = torch.arange(n, device=device, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


def dct_2d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2D DCT-II over the last two dimensions (``scipy.fft.dctn(norm="ortho")``).

    Examples
    --------
    >>> import torch
    >>> from bastion.attacks.evasion.simba import dct_2d, idct_2d
    >>> x = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    >>> bool(torch.allclose(idct_2d(dct_2d(x)), x))
    True
    """
    dh = dct_matrix(x.shape[-2], device=x.device, dtype=x.dtype)
    dw = dct_matrix(x.shape[-1], device=x.device, dtype=x.dtype)
    return dh @ x @ dw.T


def idct_2d(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct_2d` (the orthonormal 2D DCT-III)."""
    dh = dct_matrix(z.shape[-2], device=z.device, dtype=z.dtype)
    dw = dct_matrix(z.shape[-1], device=z.device, dtype=z.dtype)
    return dh.T @ z @ dw


class SimBA(QueryAttack, MinimumNormAttack):
    """Simple Black-box Attack: greedy steps of size ``eps_step`` along orthonormal directions.

    Each sample walks through its own random order of basis directions ``q`` (pixels, or 2D
    DCT basis images for SimBA-DCT). For each direction it queries ``x + eps_step q``, keeps it if
    the probability of the true class drops (untargeted) or that of the target class rises
    (targeted), and otherwise tries ``x - eps_step q``; it stops as soon as the sample is
    adversarial, when its directions are exhausted, or when its budget is spent. A proposal
    that the mask or ``clip_values`` reduce to no change at all costs no query. A budget
    below one step (the clean probabilities and one probe: 2 queries) leaves the input
    unchanged, with a ``RuntimeWarning``.

    Because every direction is used at most once and the directions are orthonormal, after ``T``
    accepted steps the perturbation (before clipping to ``clip_values``, which only shrinks it)
    has L2 norm exactly ``eps_step * sqrt(T)``; in the pixel basis each changed pixel moved by
    exactly ``eps_step``. SimBA bounds no norm: it returns the point where the sample first
    became adversarial (as a minimum-norm attack: the clean input where it failed).

    Orders: ``"random"`` draws a random permutation of the directions per sample (for the DCT
    basis, of the lowest ``freq_dims x freq_dims`` frequencies of each channel only);
    ``"strided"`` starts with the ``freq_dims x freq_dims`` block in random order, then adds
    frequencies in bands of width ``stride``, each band in random order (the reference's block
    order); ``"diag"`` visits the frequencies by anti-diagonal ``u + v`` (lowest first), the same
    order for every sample. In the pixel basis ``freq_dims`` is ignored (all pixels are used).

    Threat model: score-based black-box (class probabilities, no gradients). Norm: none bounded
    (see above for the resulting L2 norm).

    Parameters
    ----------
    estimator : estimator with ``predict`` (e.g. a ``BlackBoxClassifier``)
    eps_step : float, default 0.2
        Step size along each direction (the paper's value for images in [0, 1]).
    basis : {"dct", "pixel"}, default "dct"
        SimBA-DCT or SimBA (pixel basis).
    freq_dims : int or None, default None
        Side of the low-frequency block (DCT basis). None: half the image side.
    order : {"random", "strided", "diag"}, default "random"
    stride : int or None, default None
        Band width of the ``"strided"`` order. None: ``freq_dims // 2`` (at least 1).
    max_queries : int, default 10000
        Queries per sample, including the clean-label query when ``y`` is omitted.
    targeted : bool, default False
    batch_size : int, default 128
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        Queries spent per sample in the last :meth:`generate`.
    success_ : numpy.ndarray of bool, shape (N,)
        Which samples were broken (a query found the returned point adversarial); the others
        are returned unchanged.

    References
    ----------
    Guo, Gardner, You, Wilson and Weinberger, "Simple Black-box Adversarial Attacks", ICML 2019.
    https://arxiv.org/abs/1905.07121

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.simba import SimBA
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=3)
    >>> x = 0.25 + 0.5 * torch.rand(5, 1, 4, 4)  # away from the box: no clipping
    >>> attack = SimBA(clf, basis="pixel", eps_step=0.1, max_queries=30, random_state=0)
    >>> x_adv = attack.generate(x)
    >>> steps = ((x_adv - x).abs() > 1e-6).flatten(1).sum(1)  # pixels moved by exactly 0.1
    >>> bool(torch.allclose((x_adv - x).flatten(1).norm(dim=1), 0.1 * steps.sqrt(), atol=1e-5))
    True
    """

    _renamed: ClassVar[dict[str, Any]] = {"epsilon": "eps_step"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps_step": [Interval(float, 0, None, closed="neither")],
        "basis": [Options(["dct", "pixel"])],
        "freq_dims": [Interval(int, 1, None), NONE],
        "order": [Options(["random", "strided", "diag"])],
        "stride": [Interval(int, 1, None), NONE],
        "max_queries": MAX_QUERIES,
        "targeted": TARGETED,
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict",)

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        eps_step: float = 0.2,
        basis: str = "dct",
        freq_dims: int | None = None,
        order: str = "random",
        stride: int | None = None,
        max_queries: int = 10000,
        targeted: bool = False,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps_step = eps_step
        self.basis = basis
        self.freq_dims = freq_dims
        self.order = order
        self.stride = stride
        self.max_queries = max_queries
        self.targeted = targeted
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _directions(self, n: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        """Per-sample order of basis coordinates ``(n, n_dirs)`` (flat indices into C*H*W)."""
        c, h, w = shape
        dev = self.estimator.device
        flat = torch.arange(c * h * w, device=dev)
        u, v = (flat // w) % h, flat % w
        if self.basis == "pixel":
            fh, fw = h, w
        else:
            fd = max(h, w) // 2 if self.freq_dims is None else self.freq_dims
            fh, fw = min(fd, h), min(fd, w)
        low = (u < fh) & (v < fw)
        if self.order == "diag":
            key = (((u + v) * h + u) * c + flat // (h * w)).to(torch.float64)
            return key.argsort().expand(n, -1)
        noise = torch.rand(n, flat.numel(), generator=gen, device=dev, dtype=torch.float64)
        if self.order == "random":
            key = torch.where(low, noise, noise + 2.0)
            return key.argsort(dim=1)[:, : int(low.sum())]
        stride = max(1, min(fh, fw) // 2) if self.stride is None else self.stride
        band = torch.maximum(u - fh, v - fw).clamp_min(0) // stride + 1
        key = torch.where(low, torch.zeros_like(band), band) + noise
        return key.argsort(dim=1)

    def _basis_vectors(self, coords: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Unit basis directions ``(A, C, H, W)`` for flat coordinates ``coords``."""
        dt = getattr(self.estimator, "dtype", torch.float32)
        one_hot = torch.zeros(coords.shape[0], math.prod(shape), device=coords.device, dtype=dt)
        one_hot[torch.arange(coords.shape[0], device=coords.device), coords] = 1.0
        q = one_hot.reshape(-1, *shape)
        return q if self.basis == "pixel" else idct_2d(q)

    def _score(self, probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective (probability of the label; lower is better when untargeted) and
        success flags."""
        p = probs.gather(1, y[:, None]).squeeze(1)
        pred = probs.argmax(dim=1)
        return (p, pred == y) if self.targeted else (p, pred != y)

    def _attack(  # returns (x_adv, success): no extra query
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = per_sample["index"]
        counter = self._counter
        clip = self.estimator.clip_values
        xi = _as_images(x)
        mi = None if mask is None else _as_images(mask)
        shape = tuple(xi.shape[1:])
        n = x.shape[0]

        def point(base: torch.Tensor, delta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if mi is not None:
                delta = delta * (mi if mi.shape[0] == 1 else mi[rows])
            out = base + delta
            return out if clip is None else out.clamp(*clip)

        # When y was omitted, the clean-label query (charged already) gave the probabilities.
        if self._clean_probs is not None:
            probs = self._clean_probs[index]
        else:
            probs = counter.predict(x, index)
        best, success = self._score(probs, y)
        self._note_short_budget(
            ~success & ~counter.has_budget(index),
            2,
            "one step (the clean probabilities and one probe: 2 queries)",
            "they are returned unchanged",
        )
        order = self._directions(n, shape, generator)
        delta = torch.zeros_like(xi)
        current = xi.clone()
        sign = -1.0 if self.targeted else 1.0  # compare sign * p: lower is better
        for k in range(order.shape[1]):
            act = (~success & counter.has_budget(index)).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            q = self._basis_vectors(order[act, k], shape) * self.eps_step
            pending = torch.ones(act.numel(), dtype=torch.bool, device=x.device)
            for step in (q, -q):
                trial = delta[act] + step
                cand = point(xi[act], trial, act)
                moved = ((cand - current[act]) != 0).flatten(1).any(dim=1)
                ask = (pending & moved & counter.has_budget(index[act])).nonzero().squeeze(1)
                if ask.numel() == 0:
                    continue
                rows = act[ask]
                p, hit = self._score(
                    counter.predict(cand[ask].reshape(-1, *x.shape[1:]), index[rows]), y[rows]
                )
                better = sign * p < sign * best[rows]
                acc, took = rows[better], ask[better]
                delta[acc] = trial[took]
                current[acc] = cand[took]
                best[acc] = p[better]
                success[acc] = hit[better]
                pending[took] = False
        return current.reshape(x.shape), success
