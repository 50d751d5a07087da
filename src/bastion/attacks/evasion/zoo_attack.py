"""ZOO: zeroth-order (coordinate-wise finite-difference) Carlini-Wagner L2 attack."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bastion._validation import Boolean, Constraint, Interval
from bastion.attacks._batch import rows as _rows
from bastion.attacks.base import (
    BATCH_SIZE,
    MAX_QUERIES,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    MinimumNormAttack,
    QueryAttack,
)
from bastion.attacks.evasion.nes import score_objective

__all__ = ["ZooAttack"]

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


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

    A sample stops querying when its budget cannot pay for another iteration. The result is, per
    sample, the adversarial iterate of smallest L2 norm, or the clean input if none was found.

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
    _conformance: ClassVar[dict[str, Any]] = {
        "params": {
            "max_queries": 1500,
            "nb_parallel": 16,
            "max_iter": 30,
            "binary_search_steps": 2,
            "initial_const": 1.0,
            "learning_rate": 0.1,
        },
        "skip": {
            "check_batch_size_invariance": "the coordinates are drawn for the whole batch at "
            "once, so the draws (and the result) depend on the batch composition",
        },
    }

    def __init__(
        self,
        estimator: Any,
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

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = per_sample["index"]
        n, full = x.shape[0], tuple(x.shape[1:])
        clip = self.estimator.clip_values
        kappa, h, lr = float(self.confidence), float(self.h), float(self.learning_rate)
        spaces = self._spaces(x)

        def up(d: torch.Tensor) -> torch.Tensor:
            """Attack space -> input space (bilinear), for a batch of any leading shape."""
            if tuple(d.shape[-len(full) :]) == full:
                return d
            lead = d.shape[: -len(full)]
            flat = d.reshape((-1, math.prod(full[:-2]), *d.shape[-2:]))
            flat = F.interpolate(flat, size=full[-2:], mode="bilinear", align_corners=False)
            return flat.reshape(lead + full)

        def resize(d: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
            flat = d.reshape((d.shape[0], math.prod(shape[:-2]), *d.shape[-2:]))
            flat = F.interpolate(flat, size=shape[-2:], mode="bilinear", align_corners=False)
            return flat.reshape((d.shape[0], *shape))

        def importance(d: torch.Tensor) -> torch.Tensor:
            """Sampling probabilities: |delta| max-pooled over an 8 x 8 grid of regions."""
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

        def objective(
            xr: torch.Tensor,
            probs: torch.Tensor,
            x0: torch.Tensor,
            y0: torch.Tensor,
            c0: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            margin = score_objective(probs, y0, self.targeted, "margin").to(x.dtype)
            l2 = (xr - x0).flatten(1).square().sum(1)
            ok = margin > kappa if kappa > 0 else margin > 0
            return l2 + c0 * (-margin).clamp_min(-kappa), l2, ok

        const = torch.full((n,), float(self.initial_const), dtype=x.dtype, device=x.device)
        lower, upper = torch.zeros_like(const), torch.full_like(const, math.inf)
        best_l2 = torch.full_like(const, math.inf)
        best = x.clone()
        every = max(1, self.max_iter // 10)
        for _ in range(self.binary_search_steps):
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            stage = 0
            delta = torch.zeros((n, *spaces[0]), dtype=x.dtype, device=x.device)
            d = math.prod(spaces[0])
            m1 = torch.zeros(n, d, dtype=x.dtype, device=x.device)
            m2 = torch.zeros_like(m1)
            steps = torch.zeros_like(m1)
            prob = torch.full_like(m1, 1.0 / d)
            prev = torch.full_like(const, math.inf)
            p = min(self.nb_parallel, d)
            cost = 2 * p + 1
            act = self._counter.has_budget(index, cost).nonzero().squeeze(1)
            for it in range(self.max_iter):
                if act.numel() == 0:
                    break
                if it > 0 and it % self.resize_every == 0 and stage + 1 < len(spaces):
                    stage += 1
                    delta = resize(delta, spaces[stage])
                    d = math.prod(spaces[stage])
                    m1 = torch.zeros(n, d, dtype=x.dtype, device=x.device)
                    m2, steps = torch.zeros_like(m1), torch.zeros_like(m1)
                    unif = torch.full_like(m1, 1.0 / d)
                    prob = importance(delta) if self.use_importance else unif
                    p = min(self.nb_parallel, d)
                    cost = 2 * p + 1
                    act = act[self._counter.has_budget(index[act], cost)]
                    if act.numel() == 0:
                        break
                a = act.numel()
                coords = torch.multinomial(prob[act], p, replacement=False, generator=generator)
                da = delta[act].reshape(a, 1, d).repeat(1, cost, 1)
                da[:, 1 : p + 1].scatter_add_(2, coords.unsqueeze(2), da.new_full((a, p, 1), h))
                da[:, p + 1 :].scatter_add_(2, coords.unsqueeze(2), da.new_full((a, p, 1), -h))
                xa, ma = x[act], _rows(mask, act)
                pert = up(da.reshape((a, cost, *delta.shape[1:])))
                if ma is not None:
                    pert = pert * ma.unsqueeze(1)
                xr = xa.unsqueeze(1) + pert
                xr = (xr if clip is None else xr.clamp(*clip)).reshape((-1, *full))
                probs = self._counter.predict(xr, index[act].repeat_interleave(cost))
                rep = torch.arange(a, device=x.device).repeat_interleave(cost)
                loss, l2, ok = objective(xr, probs, xa[rep], y[act][rep], const[act][rep])
                loss, l2, ok = loss.view(a, cost), l2.view(a, cost), ok.view(a, cost)
                # The iterate (row 0) is scored before the step, as in the paper.
                better = ok[:, 0] & (l2[:, 0] < best_l2[act])
                won = act[better]
                best_l2[won] = l2[better, 0]
                best[won] = xr.view((a, cost, *full))[better, 0]
                found[act[ok[:, 0]]] = True
                # ZOO-Adam on the chosen coordinates, each with its own step count.
                g = (loss[:, 1 : p + 1] - loss[:, p + 1 :]) / (2 * h)
                t = steps[act].gather(1, coords) + 1
                mc = m1[act].gather(1, coords) * _BETA1 + (1 - _BETA1) * g
                vc = m2[act].gather(1, coords) * _BETA2 + (1 - _BETA2) * g * g
                upd = lr * (mc / (1 - _BETA1**t)) / ((vc / (1 - _BETA2**t)).sqrt() + _ADAM_EPS)
                flat = delta[act].reshape(a, d)
                flat = flat.scatter_add(1, coords, -upd)
                delta[act] = flat.reshape((a, *delta.shape[1:]))
                m1[act] = m1[act].scatter(1, coords, mc)
                m2[act] = m2[act].scatter(1, coords, vc)
                steps[act] = steps[act].scatter(1, coords, t)
                keep = self._counter.has_budget(index[act], cost)
                if self.abort_early and (it + 1) % every == 0:
                    keep &= ~(loss[:, 0] > prev[act] - 1e-4 * prev[act].abs())
                    prev[act] = loss[:, 0]
                act = act[keep]
            # Binary search on c: bisect once a run succeeded, else grow tenfold.
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper.isfinite(), (lower + upper) / 2, const * 10)
        return best, best_l2.isfinite()
