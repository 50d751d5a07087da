"""ZOO: zeroth-order (coordinate-wise finite-difference) Carlini-Wagner L2 attack."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bastion._validation import (
    BATCH_SIZE,
    MAX_QUERIES,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    Boolean,
    Constraint,
    Interval,
)
from bastion.attacks._batch import rows as _rows
from bastion.attacks._optim import ConstSearch, EarlyAbort, adam_step, keep_best
from bastion.attacks.base import MinimumNormAttack
from bastion.attacks.evasion.nes import score_objective
from bastion.attacks.query import QueryAttack
from bastion.estimators.base import SupportsPredict

__all__ = ["ZooAttack"]


def _upsample(d: torch.Tensor, full: tuple[int, ...]) -> torch.Tensor:
    """Attack space -> input space ``full`` (bilinear), for a batch of any leading shape."""
    if tuple(d.shape[-len(full) :]) == full:
        return d
    lead = d.shape[: -len(full)]
    flat = d.reshape((-1, math.prod(full[:-2]), *d.shape[-2:]))
    flat = F.interpolate(flat, size=full[-2:], mode="bilinear", align_corners=False)
    return flat.reshape(lead + full)


def _resize(d: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A batch of perturbations resized (bilinear) to the attack space ``shape``."""
    flat = d.reshape((d.shape[0], math.prod(shape[:-2]), *d.shape[-2:]))
    flat = F.interpolate(flat, size=shape[-2:], mode="bilinear", align_corners=False)
    return flat.reshape((d.shape[0], *shape))


def _importance(d: torch.Tensor) -> torch.Tensor:
    """Sampling probabilities of the coordinates, ``(N, d)``: ``|delta|`` max-pooled over an
    8 x 8 grid of regions (uniform where ``delta`` is zero)."""
    mag = d.abs()
    if d.ndim >= 4:
        hw = d.shape[-2:]
        k = (max(1, hw[0] // 8), max(1, hw[1] // 8))
        flat = mag.reshape((-1, 1, *hw))
        pooled = F.max_pool2d(flat, k, k, ceil_mode=True)
        mag = F.interpolate(pooled, size=hw, mode="nearest").reshape(d.shape)
    p = mag.flatten(1)
    total = p.sum(1, keepdim=True)
    return torch.where(total > 0, p / total.clamp_min(1e-30), 1.0 / p.shape[1])


class ZooAttack(QueryAttack, MinimumNormAttack):
    """ZOO: the Carlini-Wagner L2 attack with gradients replaced by coordinate-wise symmetric
    finite differences, optimised by ZOO-Adam.

    For each sample the attack minimises ``||x_adv - x||_2^2 + c * f(x_adv)`` over a
    perturbation ``delta`` with ``x_adv = clip(x + up(delta))``, where ``f`` is the CW loss on
    log-probabilities (only scores are available): ``max(log p_y - max_{j!=y} log p_j, -kappa)``
    untargeted and ``max(max_{j!=t} log p_j - log p_t, -kappa)`` targeted. Each iteration picks
    ``nb_parallel`` coordinates of ``delta`` per sample, estimates each partial derivative as
    ``(L(delta + h e_i) - L(delta - h e_i)) / (2 h)`` and takes one Adam step per coordinate, with
    the coordinate's own step count (ZOO-Adam, Chen et al., Algorithm 2). The ``2 nb_parallel``
    probes and the current iterate of every running sample are sent in one query call, so an
    iteration costs ``2 nb_parallel + 1`` queries per sample; the iterate's scores track the
    smallest adversarial perturbation found.

    * Attack-space reduction (``use_resize``, images only): ``delta`` starts at
      ``init_size x init_size`` per channel and is upsampled with bilinear interpolation (``up``);
      every ``resize_every`` iterations its side doubles (the current ``delta`` is upsampled, Adam
      restarts) until it reaches the input size.
    * Importance sampling (``use_importance``): at each resize the coordinates are drawn with
      probabilities proportional to the absolute values of ``delta`` max-pooled over an 8 x 8
      grid of regions (uniformly before the first resize, or when ``delta`` is zero).
    * Binary search over ``c`` (``binary_search_steps`` runs restarted from ``delta = 0``): ``c``
      is bisected after a run that succeeded and multiplied by 10 while none did.
    * Early abort (``abort_early``): a sample ends a run when its loss has not decreased by 0.01%
      over ``max_iter // 10`` iterations.

    A sample stops querying when its budget cannot pay for another iteration; one whose budget
    cannot pay for the first (``2 min(nb_parallel, d) + 1`` queries, ``d`` the size of the first
    attack space) is returned unchanged, and ``generate`` warns (``RuntimeWarning``) with the
    ``max_queries`` that would. The result is, per sample, the adversarial iterate of smallest
    L2 norm, or the clean input if none was found.

    Threat model: score-based black-box (queries class probabilities). Norm: 2.

    Parameters
    ----------
    estimator : any classifier with ``predict`` (class scores)
    confidence : float, default 0.0
        Margin ``kappa`` (in log-probability) by which the adversarial class must win.
    targeted : bool, default False
    learning_rate : float, default 0.01
        Adam step size (the paper's ``eta``).
    binary_search_steps : int, default 5
    max_iter : int, default 1000
        Iterations (of ``nb_parallel`` coordinates) per binary-search step.
    initial_const : float, default 0.1
        First value of ``c``.
    h : float, default 1e-4
        Finite-difference step.
    nb_parallel : int, default 128
        Coordinates estimated per iteration (the paper's batch of 128).
    use_resize : bool, default False
        Optimise a smaller perturbation, upsampled with bilinear interpolation.
    init_size : int, default 32
        Side of the first attack space when ``use_resize``.
    resize_every : int, default 500
        Iterations between two doublings of the attack space.
    use_importance : bool, default True
        Importance sampling of coordinates after each resize.
    abort_early : bool, default True
    max_queries : int, default 100000
        Query budget per sample.
    batch_size : int, default 32
        Samples attacked together (each iteration sends ``batch_size * (2 nb_parallel + 1)``
        rows).
    random_state : None, int or torch.Generator
        Seeds the choice of coordinates.
    verbose : bool, default False

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        Queries spent on each sample by the last :meth:`generate`.

    References
    ----------
    Chen, Zhang, Sharma, Yi and Hsieh, "ZOO: Zeroth Order Optimization Based Black-box Attacks to
    Deep Neural Networks without Training Substitute Models", AISec 2017.
    https://arxiv.org/abs/1708.03999

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.evasion.zoo_attack import ZooAttack
    >>> w = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    >>> api = lambda x: torch.softmax(torch.as_tensor(x) @ w * 10, 1).numpy()
    >>> clf = BlackBoxClassifier(api, input_shape=(4,), nb_classes=2, clip_values=(0, 1))
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]])
    >>> attack = ZooAttack(clf, nb_parallel=4, max_iter=100, binary_search_steps=3,
    ...                    learning_rate=0.05, max_queries=3000, random_state=0)
    >>> x_adv = attack.generate(x)
    >>> clf.predict(x_adv).argmax(1).item()
    1
    >>> round(float((x_adv - x).norm()), 2)  # the exact distance to the boundary is 0.14
    0.14
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "confidence": [Interval(float, 0, None)],
        "targeted": TARGETED,
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "binary_search_steps": [Interval(int, 1, None)],
        "max_iter": [Interval(int, 1, None)],
        "initial_const": [Interval(float, 0, None, closed="neither")],
        "h": [Interval(float, 0, None, closed="neither")],
        "nb_parallel": [Interval(int, 1, None)],
        "use_resize": [Boolean()],
        "init_size": [Interval(int, 1, None)],
        "resize_every": [Interval(int, 1, None)],
        "use_importance": [Boolean()],
        "abort_early": [Boolean()],
        "max_queries": MAX_QUERIES,
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        confidence: float = 0.0,
        targeted: bool = False,
        learning_rate: float = 0.01,
        binary_search_steps: int = 5,
        max_iter: int = 1000,
        initial_const: float = 0.1,
        h: float = 1e-4,
        nb_parallel: int = 128,
        use_resize: bool = False,
        init_size: int = 32,
        resize_every: int = 500,
        use_importance: bool = True,
        abort_early: bool = True,
        max_queries: int = 100000,
        batch_size: int = 32,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.confidence = confidence
        self.targeted = targeted
        self.learning_rate = learning_rate
        self.binary_search_steps = binary_search_steps
        self.max_iter = max_iter
        self.initial_const = initial_const
        self.h = h
        self.nb_parallel = nb_parallel
        self.use_resize = use_resize
        self.init_size = init_size
        self.resize_every = resize_every
        self.use_importance = use_importance
        self.abort_early = abort_early
        self.max_queries = max_queries
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _spaces(self, x: torch.Tensor) -> list[tuple[int, ...]]:
        """The attack-space shapes (one sample), smallest first, ending with the input's."""
        full = tuple(x.shape[1:])
        if not (self.use_resize and x.ndim >= 4):
            return [full]
        hh, ww = full[-2:]
        side = min(self.init_size, max(hh, ww))
        out = []
        while side < max(hh, ww):
            out.append((*full[:-2], min(side, hh), min(side, ww)))
            side *= 2
        return [*out, full]

    def _objective(
        self,
        xr: torch.Tensor,
        probs: torch.Tensor,
        x0: torch.Tensor,
        y0: torch.Tensor,
        c0: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per queried point: the loss ``||xr - x0||^2 + c * f``, the squared L2 distance, and
        whether the point is adversarial by the margin ``confidence``."""
        kappa = float(self.confidence)
        margin = score_objective(probs, y0, self.targeted, "margin").to(xr.dtype)
        l2 = (xr - x0).flatten(1).square().sum(1)
        ok = margin > kappa if kappa > 0 else margin > 0
        return l2 + c0 * (-margin).clamp_min(-kappa), l2, ok

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = per_sample["index"]
        n, spaces = x.shape[0], self._spaces(x)
        cost = 2 * min(self.nb_parallel, math.prod(spaces[0])) + 1
        self._note_short_budget(
            ~self._counter.has_budget(index, cost),
            self._counter.used[index] + cost,
            f"one iteration ({cost} queries: the iterate and {cost - 1} coordinate probes)",
            "they are returned unchanged",
        )
        search = ConstSearch(self.initial_const, n, device=x.device, dtype=x.dtype)
        best_l2 = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        best = x.clone()
        for _ in range(self.binary_search_steps):
            run = _Run(self, x, y, mask, index, search.const, spaces)
            for it in range(self.max_iter):
                if it > 0 and it % self.resize_every == 0:
                    run.grow()
                if run.act.numel() == 0:
                    break
                run.step(it, best, best_l2, generator)
            search.update(run.found)
        return best, best_l2.isfinite()


class _Run:
    """One binary-search step of ZOO: ZOO-Adam on the perturbation ``delta`` (in the current
    attack space) of every sample still running, from ``delta = 0``, for a fixed ``c``."""

    def __init__(
        self,
        attack: ZooAttack,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        index: torch.Tensor,
        const: torch.Tensor,
        spaces: list[tuple[int, ...]],
    ) -> None:
        self.attack, self.x, self.y, self.mask, self.index, self.const = (
            attack, x, y, mask, index, const
        )  # fmt: skip
        self.counter = attack._counter
        self.spaces, self.stage = spaces, 0
        n = x.shape[0]
        self.found = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.abort = EarlyAbort(
            n, every=max(1, attack.max_iter // 10), device=x.device, dtype=x.dtype
        )
        self.delta = torch.zeros((n, *spaces[0]), dtype=x.dtype, device=x.device)
        self.restart_adam(uniform=True)
        self.act = self.counter.has_budget(index, self.cost).nonzero().squeeze(1)

    def restart_adam(self, uniform: bool) -> None:
        """Fresh Adam moments and step counts for the current attack space, and the sampling
        probabilities of its coordinates."""
        n, d = self.delta.shape[0], math.prod(self.delta.shape[1:])
        self.m = torch.zeros(n, d, dtype=self.x.dtype, device=self.x.device)
        self.v, self.t = torch.zeros_like(self.m), torch.zeros_like(self.m)
        imp = not uniform and self.attack.use_importance
        self.prob = _importance(self.delta) if imp else torch.full_like(self.m, 1.0 / d)
        self.p = min(self.attack.nb_parallel, d)
        self.cost = 2 * self.p + 1

    def grow(self) -> None:
        """Double the attack space (upsample ``delta``, restart Adam), if not yet full."""
        if self.stage + 1 >= len(self.spaces):
            return
        self.stage += 1
        self.delta = _resize(self.delta, self.spaces[self.stage])
        self.restart_adam(uniform=False)
        self.act = self.act[self.counter.has_budget(self.index[self.act], self.cost)]

    def step(
        self, it: int, best: torch.Tensor, best_l2: torch.Tensor, generator: torch.Generator
    ) -> None:
        """One iteration: query the iterate and its ``2 p`` probes, record the iterate if it is
        the smallest adversarial example yet, and take a ZOO-Adam step on the ``p`` chosen
        coordinates of every running sample."""
        attack, act, p, cost = self.attack, self.act, self.p, self.cost
        full = tuple(self.x.shape[1:])
        a, d, h = act.numel(), self.m.shape[1], float(attack.h)
        coords = torch.multinomial(self.prob[act], p, replacement=False, generator=generator)
        da = self.delta[act].reshape(a, 1, d).repeat(1, cost, 1)
        da[:, 1 : p + 1].scatter_add_(2, coords.unsqueeze(2), da.new_full((a, p, 1), h))
        da[:, p + 1 :].scatter_add_(2, coords.unsqueeze(2), da.new_full((a, p, 1), -h))
        xa, ma = self.x[act], _rows(self.mask, act)
        pert = _upsample(da.reshape((a, cost, *self.delta.shape[1:])), full)
        if ma is not None:
            pert = pert * ma.unsqueeze(1)
        xr = xa.unsqueeze(1) + pert
        clip = attack.estimator.clip_values
        xr = (xr if clip is None else xr.clamp(*clip)).reshape((-1, *full))
        probs = self.counter.predict(xr, self.index[act].repeat_interleave(cost))
        rep = torch.arange(a, device=xr.device).repeat_interleave(cost)
        loss, l2, ok = attack._objective(xr, probs, xa[rep], self.y[act][rep], self.const[act][rep])
        loss, l2, ok = loss.view(a, cost), l2.view(a, cost), ok.view(a, cost)
        # The iterate (row 0) is scored before the step, as in the paper.
        keep_best(best, best_l2, act, xr.view((a, cost, *full))[:, 0], l2[:, 0], ok[:, 0])
        self.found[act[ok[:, 0]]] = True
        # ZOO-Adam on the chosen coordinates, each with its own step count (Algorithm 2).
        g = (loss[:, 1 : p + 1] - loss[:, p + 1 :]) / (2 * h)
        flat = self.delta[act].reshape(a, d)
        t = self.t[act].gather(1, coords) + 1
        pc, mc, vc = adam_step(
            flat.gather(1, coords), g, self.m[act].gather(1, coords),
            self.v[act].gather(1, coords), t, float(attack.learning_rate),
        )  # fmt: skip
        self.delta[act] = flat.scatter(1, coords, pc).reshape((a, *self.delta.shape[1:]))
        self.m[act] = self.m[act].scatter(1, coords, mc)
        self.v[act] = self.v[act].scatter(1, coords, vc)
        self.t[act] = self.t[act].scatter(1, coords, t)
        keep = self.counter.has_budget(self.index[act], cost)
        if attack.abort_early:
            keep &= ~self.abort.update(act, loss[:, 0], it + 1)
        self.act = act[keep]
