"""Square Attack (Andriushchenko et al. 2020): score-based random search in Linf and L2 balls."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from bastion._validation import (
    BATCH_SIZE,
    BUDGET,
    MAX_QUERIES,
    NONE,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
    Options,
)
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import canonical_norm
from bastion.attacks._restarts import Best, Outcome, best_of_restarts
from bastion.attacks.base import FixedBudgetAttack, is_adversarial
from bastion.attacks.query import QueryAttack
from bastion.estimators.base import SupportsPredict

__all__ = ["SquareAttack", "p_schedule"]

#: Default ``p_init`` per norm: 0.8 for Linf (the value of AutoAttack's Square, suited to small
#: images and robust models), 0.1 for L2 (the paper's value).
_P_INIT = {"inf": 0.8, "2": 0.1}
#: Iterations (of 10000) after which ``p`` halves.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: Linf: how often a square whose new values change nothing is redrawn before giving up.
_REDRAWS = 10


def p_schedule(p_init: float, iteration: int, n_iters: int) -> float:
    """The paper's piece-wise constant schedule for ``p``, the fraction of features changed.

    ``p`` starts at ``p_init`` and halves after iterations 10, 50, 200, 500, 1000, 2000, 4000,
    6000 and 8000 of a 10000-iteration run; for ``n_iters`` iterations the breakpoints are
    rescaled by ``n_iters / 10000`` (as in the reference implementation).

    Examples
    --------
    >>> from bastion.attacks.evasion.square import p_schedule
    >>> [p_schedule(0.8, it, 10000) for it in (0, 10, 11, 51, 9999)]
    [0.8, 0.8, 0.4, 0.2, 0.0015625]
    """
    t = int(iteration / n_iters * 10000)
    return p_init / 2 ** sum(t > b for b in _HALVINGS)


def _as_images(t: torch.Tensor) -> torch.Tensor:
    """View a batch ``(B, *shape)`` as images ``(B, C, H, W)`` (vectors become 1-row images)."""
    shape = t.shape[1:]
    if len(shape) == 1:
        return t.reshape(t.shape[0], 1, 1, shape[0])
    if len(shape) == 2:
        return t.reshape(t.shape[0], 1, shape[0], shape[1])
    return t.reshape(t.shape[0], -1, shape[-2], shape[-1])


def _bump(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Unit-norm pseudo-Gaussian bump of concentric rectangles: at Chebyshev distance ``d`` from
    the centre the weight is ``sum_{k >= d} 1 / (k + 1)^2``."""
    if h == 0 or w == 0:
        return torch.zeros(h, w, device=device, dtype=dtype)
    ch, cw = h // 2, w // 2
    k = torch.arange(max(ch, cw) + 1, device=device, dtype=dtype)
    tail = (1.0 / (k + 1) ** 2).flip(0).cumsum(0).flip(0)
    dist_h = (torch.arange(h, device=device) - ch).abs()
    dist_w = (torch.arange(w, device=device) - cw).abs()
    bump = tail[torch.maximum(dist_h[:, None], dist_w[None, :])]
    return bump / bump.norm()


def _two_bumps(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The paper's L2 update pattern: a positive bump over a negative one, unit norm."""
    top = _bump(h // 2, w, device, dtype)
    bottom = -_bump(h - h // 2, w, device, dtype)
    both = torch.cat([top, bottom])
    return both / both.norm()


def _window(pos_h: torch.Tensor, pos_w: torch.Tensor, sh: int, sw: int, h: int, w: int) -> Any:
    """Boolean masks ``(A, 1, H, W)`` of the ``sh x sw`` squares at the given corners, and the
    row/column offsets of each pixel inside its square (clamped outside it)."""
    rows = torch.arange(h, device=pos_h.device)[None, :] - pos_h[:, None]
    cols = torch.arange(w, device=pos_w.device)[None, :] - pos_w[:, None]
    inside = ((rows >= 0) & (rows < sh))[:, :, None] & ((cols >= 0) & (cols < sw))[:, None, :]
    return inside[:, None], rows.clamp(0, sh - 1), cols.clamp(0, sw - 1)


def _place(pattern: torch.Tensor, win: Any, transpose: torch.Tensor) -> torch.Tensor:
    """The square ``pattern`` (or its transpose, per sample) written into each window."""
    inside, rows, cols = win
    r, c = rows[:, :, None], cols[:, None, :]
    placed = torch.where(transpose[:, None, None], pattern.T[r, c], pattern[r, c])
    return placed[:, None] * inside


def _sq_norm(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return (t * t).sum(dim=dims, keepdim=True)


def _l2_init(
    n: int, c: int, h: int, w: int, gen: torch.Generator, dev: torch.device, dt: torch.dtype
) -> torch.Tensor:
    """The paper's L2 start: a centred grid of ``h // 5``-sided two-bump tiles, each with a
    random sign per sample and channel (and a random orientation)."""
    s = max(h // 5, 1)
    start = max((h - 5 * s) // 2, 0)
    n_h, n_w = h // s, w // s
    rows = torch.arange(h, device=dev) - start
    cols = torch.arange(w, device=dev) - start
    tile_r, tile_c = (rows // s).clamp(0, n_h - 1), (cols // s).clamp(0, n_w - 1)
    valid = ((rows >= 0) & (rows < n_h * s))[:, None] & ((cols >= 0) & (cols < n_w * s))[None]
    pattern = _two_bumps(s, s, dev, dt)
    r, cc = (rows % s)[:, None], (cols % s)[None, :]
    transpose = torch.rand(n_h, n_w, generator=gen, device=dev) > 0.5
    tiles = torch.where(transpose[tile_r[:, None], tile_c[None]], pattern.T[r, cc], pattern[r, cc])
    sgn = torch.randint(0, 2, (n, c, n_h, n_w), generator=gen, device=dev).to(dt) * 2 - 1
    return sgn[:, :, tile_r[:, None], tile_c[None]] * (tiles * valid)


class SquareAttack(QueryAttack, FixedBudgetAttack):
    """Square Attack: random search that changes one square of the image per query.

    Each iteration proposes a perturbation that differs from the current best one on a random
    square window, and keeps it only if the loss decreases: the margin
    ``log p_y - max_{k != y} log p_k`` (untargeted; equal to the logit margin) or the
    cross-entropy of the target class (targeted). A sample stops querying once it is
    adversarial. The side of the square follows the paper's schedule :func:`p_schedule`: a
    fraction ``p`` of the features changes per query, ``p_init`` halved at fixed fractions of the
    ``max_queries`` budget (iterations 10, 50, ..., 8000 of 10000 in the paper).

    * ``norm="inf"``: initialisation with vertical stripes of ``+-eps`` (one sign per column
      and channel); an update sets the window, per channel, to ``+eps`` or ``-eps`` (drawn again
      when this would not change the current point).
    * ``norm=2``: initialisation with a grid of pseudo-Gaussian "two-bump" patterns of random
      sign, scaled to norm ``eps``; an update adds a two-bump pattern to a first window and moves
      the perturbation mass of a second window into it (the second window is zeroed), then the
      whole perturbation is rescaled to norm ``eps``.

    Threat model: score-based black-box (class probabilities, no gradients). Norms: inf, 2.
    Queries: one for the initialisation, then one per iteration; ``queries_`` reports them.

    Parameters
    ----------
    estimator : estimator with ``predict`` (e.g. a ``BlackBoxClassifier``)
    eps : float or array-like of float, default 0.3
        Budget, one value or one per sample.
    norm : {"inf", 2}, default "inf"
    max_queries : int, default 5000
        Queries per sample, including the clean-label query when ``y`` is omitted.
    p_init : float in (0, 1] or None, default None
        Initial fraction of features changed per query. None: 0.8 for Linf (the value
        AutoAttack uses; the paper uses 0.05 on ImageNet and larger values on small images and
        robust models) and 0.1 for L2 (the paper).
    targeted : bool, default False
    num_random_init : int, default 1
        Runs from fresh random initialisations for samples not yet adversarial (at least one;
        renamed from ``n_restarts``); the budget
        ``max_queries`` is shared between them (each run follows the schedule for
        ``max_queries // num_random_init`` queries).
    batch_size : int, default 128
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        Queries spent per sample in the last :meth:`generate`.

    References
    ----------
    Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020. https://arxiv.org/abs/1912.00049

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.square import SquareAttack
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 1, 4, 4)
    >>> attack = SquareAttack(clf, eps=0.1, max_queries=50, random_state=0)
    >>> x_adv = attack.generate(x)
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all()), bool((attack.queries_ <= 50).all())
    (True, True)
    """

    _renamed: ClassVar[dict[str, Any]] = {"n_restarts": "num_random_init"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "norm": [Options(["inf", float("inf"), 2])],
        "max_queries": MAX_QUERIES,
        "p_init": [Interval(float, 0, 1, closed="right"), NONE],
        "targeted": TARGETED,
        "num_random_init": [Interval(int, 1, None)],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict",)

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        eps: Any = 0.3,
        norm: Any = "inf",
        max_queries: int = 5000,
        p_init: float | None = None,
        targeted: bool = False,
        num_random_init: int = 1,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.norm = norm
        self.max_queries = max_queries
        self.p_init = p_init
        self.targeted = targeted
        self.num_random_init = num_random_init
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        index = per_sample["index"]
        n_iters = max(1, self.max_queries // self.num_random_init)

        def run(r: int, idx: torch.Tensor | None, best: Best) -> Outcome:
            return self._random_search(
                _rows(x, idx),
                _rows(y, idx),
                _rows(mask, idx),
                generator,
                _rows(eps, idx),
                _rows(index, idx),
                n_iters,
            )

        # Samples with no queries left do not run again.
        best = best_of_restarts(
            run, x, self.num_random_init, eligible=lambda: self._counter.has_budget(index)
        )
        return best.x

    def _objective(self, probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The loss to minimise (margin, or the target's cross-entropy) and success flags."""
        log_p = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        own = log_p.gather(1, y[:, None]).squeeze(1)
        success = is_adversarial(probs, y, self.targeted)
        if self.targeted:
            return -own, success
        other = log_p.scatter(1, y[:, None], -math.inf).amax(dim=1)
        return own - other, success

    def _random_search(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        gen: torch.Generator,
        eps: torch.Tensor,
        index: torch.Tensor,
        n_iters: int,
    ) -> Outcome:
        """One run from a fresh initialisation: per sample its best point, whether it is
        adversarial, and its loss."""
        norm = canonical_norm(self.norm)
        p_init = _P_INIT[norm] if self.p_init is None else float(self.p_init)
        clip = self.estimator.clip_values
        xi = _as_images(x)
        mi = None if mask is None else _as_images(mask)
        n, c, h, w = xi.shape
        eps4 = eps.reshape(n, 1, 1, 1)
        dev, dt = x.device, x.dtype

        def project(t: torch.Tensor) -> torch.Tensor:
            return t if clip is None else t.clamp(*clip)

        def signs(*shape: int) -> torch.Tensor:
            return torch.randint(0, 2, shape, generator=gen, device=dev).to(dt) * 2 - 1

        if norm == "inf":
            delta = (signs(n, c, 1, w) * eps4).expand(n, c, h, w)
        else:
            delta = _l2_init(n, c, h, w, gen, dev, dt)
        if mi is not None:
            delta = delta * mi
        if norm == "2":
            delta = delta / _sq_norm(delta, (1, 2, 3)).sqrt().clamp_min(1e-12) * eps4
        x_best = project(xi + delta)
        loss_min, fooled = self._objective(self._counter.predict(x_best.reshape(x.shape), index), y)

        for it in range(n_iters - 1):
            act = (~fooled & self._counter.has_budget(index)).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            p = p_schedule(p_init, it, n_iters)
            xa, ba, ea = xi[act], x_best[act], eps4[act]
            ma = None if mi is None else (mi if mi.shape[0] == 1 else mi[act])
            if norm == "inf":
                cand, changed = self._linf_candidates(xa, ba, ma, ea, p, gen, project)
                act, cand = act[changed], cand[changed]
            else:
                cand = self._l2_candidates(xa, ba, ma, ea, p, gen, project)
            probs = self._counter.predict(cand.reshape((-1, *x.shape[1:])), index[act])
            loss, success = self._objective(probs, y[act])
            # Random search keeps a proposal only if it lowers the loss; a proposal that reaches
            # the goal is kept too (with the targeted cross-entropy it need not lower the loss).
            accept = (loss < loss_min[act]) | success
            acc = act[accept]
            x_best[acc] = cand[accept]
            loss_min[acc] = loss[accept]
            fooled[acc] = success[accept]
        return Outcome(x_best.reshape(x.shape), fooled, loss_min)

    def _linf_candidates(
        self,
        xa: torch.Tensor,
        ba: torch.Tensor,
        ma: torch.Tensor | None,
        ea: torch.Tensor,
        p: float,
        gen: torch.Generator,
        project: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Set one random square per sample to +-eps per channel (redrawing the signs where
        that would change nothing); return the proposals and which of them change anything."""
        a, c, h, w = xa.shape
        dev, dt = xa.device, xa.dtype
        s = round(math.sqrt(p * h * w))
        s = min(max(s, 1), max(min(h, w) - 1, 1))
        sh, sw = min(s, h), min(s, w)
        pos_h = torch.randint(0, h - sh + 1, (a,), generator=gen, device=dev)
        pos_w = torch.randint(0, w - sw + 1, (a,), generator=gen, device=dev)
        inside = _window(pos_h, pos_w, sh, sw, h, w)[0]
        step = ea if ma is None else ea * ma
        cand = ba
        changed = torch.zeros(a, dtype=torch.bool, device=dev)
        for _ in range(_REDRAWS):
            sgn = torch.randint(0, 2, (a, c, 1, 1), generator=gen, device=dev).to(dt) * 2 - 1
            trial = torch.where(inside, project(xa + sgn * step), ba)
            moved = ((trial - ba).abs() > 1e-7).flatten(1).any(dim=1)
            cand = torch.where((~changed)[:, None, None, None], trial, cand)
            changed = changed | moved
            if bool(changed.all()):
                break
        return cand, changed

    def _l2_candidates(
        self,
        xa: torch.Tensor,
        ba: torch.Tensor,
        ma: torch.Tensor | None,
        ea: torch.Tensor,
        p: float,
        gen: torch.Generator,
        project: Any,
    ) -> torch.Tensor:
        """Add a two-bump pattern in a first window, move the mass of a second window into it,
        rescale to norm eps."""
        a, c, h, w = xa.shape
        dev, dt = xa.device, xa.dtype
        s = max(round(math.sqrt(p * h * w)), 3)
        s += 1 - s % 2  # odd side
        sh, sw = min(s, h), min(s, w)
        corners = [
            torch.randint(0, size - side + 1, (a,), generator=gen, device=dev)
            for size, side in ((h, sh), (w, sw), (h, sh), (w, sw))
        ]
        win1 = _window(corners[0], corners[1], sh, sw, h, w)
        win2 = _window(corners[2], corners[3], sh, sw, h, w)
        in1, in2 = win1[0], win2[0]
        delta = ba - xa
        norm_w1 = _sq_norm(delta * in1, (2, 3)).sqrt()
        norm_img2 = _sq_norm(delta, (1, 2, 3))
        norm_both2 = _sq_norm(delta * (in1 | in2), (2, 3))
        transpose = torch.rand(a, generator=gen, device=dev) > 0.5
        if sh != sw:
            transpose = torch.zeros_like(transpose)
        bump = _place(_two_bumps(sh, sw, dev, dt), win1, transpose)
        sgn = torch.randint(0, 2, (a, c, 1, 1), generator=gen, device=dev).to(dt) * 2 - 1
        new = bump * sgn + delta * in1 / (norm_w1 + 1e-10)
        # Unused budget shared among channels, plus the mass of both windows.
        mass = ((ea**2 - norm_img2).clamp_min(0) / c + norm_both2).sqrt()
        new = new / _sq_norm(new, (2, 3)).sqrt().clamp_min(1e-12) * mass
        delta = torch.where(in1, new, torch.where(in2, torch.zeros_like(delta), delta))
        if ma is not None:
            delta = delta * ma
        delta = delta / _sq_norm(delta, (1, 2, 3)).sqrt().clamp_min(1e-12) * ea
        return project(xa + delta)
