"""Score-based black-box attacks that estimate gradients from queries: NES (Ilyas et al., 2018)
and Bandits with time and data priors (Ilyas, Engstrom and Madry, 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

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
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import canonical_norm, project_point, steepest_direction
from bastion.attacks.base import FixedBudgetAttack, is_adversarial
from bastion.attacks.query import QueryAttack
from bastion.estimators.base import SupportsPredict

__all__ = ["BanditsAttack", "NESAttack"]

_NORM = Options(["inf", float("inf"), 2])
_LOSS = Options(["ce", "margin"])


def score_objective(
    probs: torch.Tensor, y: torch.Tensor, targeted: bool, loss: str = "ce"
) -> torch.Tensor:
    """The attacker's objective (to maximise) from class probabilities ``(N, K)``.

    ``"ce"``: the cross-entropy ``-log p_y`` (untargeted) or ``log p_t`` (targeted).
    ``"margin"``: ``max_{j!=y} log p_j - log p_y`` (untargeted) or
    ``log p_t - max_{j!=t} log p_j`` (targeted), positive exactly when the attack succeeds.
    ``log p_y`` is computed as ``-log1p(sum_{j!=y} p_j / p_y)``, so it does not round to 0 when a
    confident model's ``p_y`` rounds to 1 in float32 (the other probabilities keep their
    precision).
    """
    tiny = torch.finfo(probs.dtype).tiny
    col = y.view(-1, 1)
    own = probs.gather(1, col).squeeze(1)
    others = probs.scatter(1, col, 0.0)
    log_own = -torch.log1p(others.sum(1) / own.clamp_min(tiny))
    if loss == "ce":
        return log_own if targeted else -log_own
    log_other = others.amax(dim=1).clamp_min(tiny).log()
    return log_own - log_other if targeted else log_other - log_own


def _clip(x: torch.Tensor, clip_values: Any) -> torch.Tensor:
    return x if clip_values is None else x.clamp(*clip_values)


#: What a score-based attack proposes for one step of the samples still running: the probes
#: (rows), the position in the running samples of each probe's owner, and the function that
#: turns the probes' probabilities into the steepest-ascent direction of the step.
_Proposal = tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


class _EstimatedGradientAttack(QueryAttack, FixedBudgetAttack):
    """What NES and Bandits share: projected steps along a gradient estimated from queries.

    Each step queries, for every sample still running, its current iterate (to detect
    success) and the attack's probes in one call; a sample stops as soon as its iterate is
    adversarial, or when its budget cannot pay for another step.
    """

    norm: Any
    targeted: bool

    def _steps(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: torch.Tensor,
        per_sample: dict[str, torch.Tensor],
        cost: int,
        what: str,
        propose: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], _Proposal],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loop, with ``cost`` queries per step (``what`` they are), the probes from
        ``propose(act, x_adv[act], y[act])``; returns ``(x_adv, success)``."""
        eps_step, index = per_sample["eps_step"], per_sample["index"]
        norm, clip = canonical_norm(self.norm), self.estimator.clip_values
        x_adv = x.clone()
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        can_step = self._counter.has_budget(index, cost)
        self._note_short_budget(
            ~can_step,
            self._counter.used[index] + cost,
            f"one step ({cost} queries: {what})",
            "they are returned unchanged",
        )
        act = can_step.nonzero().squeeze(1)
        while act.numel() > 0:
            a = act.numel()
            xa, ya = x_adv[act], y[act]
            probes, owner, direction = propose(act, xa, ya)
            rows = torch.cat([xa, probes])
            probs = self._counter.predict(rows, torch.cat([index[act], index[act][owner]]))
            done = is_adversarial(probs[:a], ya, self.targeted)
            step = direction(probs[a:])
            moved = project_point(xa + eps_step[act] * step, x[act], eps[act], norm, clip)
            x_adv[act] = torch.where(_view(done, xa), xa, moved)
            success[act[done]] = True
            act = act[~done]
            act = act[self._counter.has_budget(index[act], cost)]
        return x_adv, success


class NESAttack(_EstimatedGradientAttack):
    """Natural Evolution Strategies (NES) gradient estimates in a projected-gradient loop.

    At each step the gradient of the attacker's objective (:func:`score_objective`) at the
    current iterate ``x_t`` is estimated from ``nb_samples`` queries with antithetic Gaussian
    sampling (Ilyas et al., 2018, Algorithm 1):
    ``g = 1 / (nb_samples * sigma) * sum_i [L(x_t + sigma u_i) - L(x_t - sigma u_i)] u_i``
    with ``u_i ~ N(0, I)`` and ``nb_samples / 2`` pairs. The step follows the momentum-averaged
    estimate ``m = momentum * m + (1 - momentum) * g``: ``x_t + eps_step * sign(m)`` (Linf) or
    ``x_t + eps_step * m / ||m||_2`` (L2), projected onto the eps-ball and ``clip_values``.

    Each step queries, for every sample still running, its current iterate (to detect success)
    and its ``nb_samples`` probes in a single batched call; a sample stops as soon as its iterate
    is adversarial or when its budget cannot pay for another step. The probes are clipped to
    ``clip_values`` so that the model is only ever shown valid inputs. A budget below one
    step (``nb_samples + 1`` queries, and the clean-label query when ``y`` is omitted)
    leaves the input unchanged, with a ``RuntimeWarning`` that names the budget one step needs.

    Threat model: score-based black-box (queries class probabilities, never gradients).
    Norms: inf, 2.

    Parameters
    ----------
    estimator : any classifier with ``predict`` (class scores)
    eps : float or array-like of float, default 0.3
        Budget, one value or one per sample.
    eps_step : float or array-like of float, default 0.01
        Step size per iteration (the paper's learning rate, 0.01 with eps 0.05 on ImageNet).
    max_queries : int, default 10000
        Query budget per sample.
    nb_samples : int, default 50
        Queries per gradient estimate (the paper's population size ``n``); an even number
        (antithetic pairs).
    sigma : float, default 0.001
        Standard deviation of the search distribution, in input units.
    momentum : float in [0, 1), default 0.9
        Averaging of successive gradient estimates (the paper's code uses 0.9).
    norm : {"inf", 2}, default "inf"
    targeted : bool, default False
    loss : {"ce", "margin"}, default "ce"
        Objective: cross-entropy as in the paper, or the margin of log-probabilities.
    batch_size : int, default 128
        Samples attacked together (each step sends ``batch_size * (nb_samples + 1)`` rows).
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        Queries spent on each sample by the last :meth:`generate`.
    success_ : numpy.ndarray of bool, shape (N,)
        Which returned examples a query showed adversarial (a step taken when the budget ran
        out is not checked).

    References
    ----------
    Ilyas, Engstrom, Athalye and Lin, "Black-box Adversarial Attacks with Limited Queries and
    Information", ICML 2018. https://arxiv.org/abs/1804.08598

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.evasion.nes import NESAttack
    >>> w = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    >>> api = lambda x: torch.softmax(torch.as_tensor(x) @ w * 10, 1).numpy()
    >>> clf = BlackBoxClassifier(api, input_shape=(4,), nb_classes=2, clip_values=(0, 1))
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]])
    >>> attack = NESAttack(clf, eps=0.3, eps_step=0.05, max_queries=500, nb_samples=10,
    ...                    random_state=0)
    >>> x_adv = attack.generate(x)
    >>> clf.predict(x).argmax(1).item(), clf.predict(x_adv).argmax(1).item()
    (0, 1)
    >>> int(attack.queries_[0]) <= 500
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "eps_step": BUDGET,
        "max_queries": MAX_QUERIES,
        "nb_samples": [Interval(int, 2, None)],
        "sigma": [Interval(float, 0, None, closed="neither")],
        "momentum": [Interval(float, 0, 1, closed="left")],
        "norm": [_NORM],
        "targeted": TARGETED,
        "loss": [_LOSS],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        eps: Any = 0.3,
        eps_step: Any = 0.01,
        max_queries: int = 10000,
        nb_samples: int = 50,
        sigma: float = 0.001,
        momentum: float = 0.9,
        norm: Any = "inf",
        targeted: bool = False,
        loss: str = "ce",
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.eps_step = eps_step
        self.max_queries = max_queries
        self.nb_samples = nb_samples
        self.sigma = sigma
        self.momentum = momentum
        self.norm = norm
        self.targeted = targeted
        self.loss = loss
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        norm, clip = canonical_norm(self.norm), self.estimator.clip_values
        half = max(1, self.nb_samples // 2)
        sigma, shape = float(self.sigma), x.shape[1:]
        avg = torch.zeros_like(x)

        def propose(act: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor) -> _Proposal:
            a, ma = act.numel(), _rows(mask, act)
            u = torch.randn((a, half, *shape), generator=generator, device=x.device)
            u = u.to(x.dtype)
            if ma is not None:
                u = u * ma.unsqueeze(1)
            centre = xa.unsqueeze(1)
            # per sample its `half` plus-probes, then its `half` minus-probes
            probes = torch.stack(
                [_clip(centre + sigma * u, clip), _clip(centre - sigma * u, clip)], 1
            )
            owner = torch.arange(a, device=x.device).repeat_interleave(2 * half)

            def direction(probs: torch.Tensor) -> torch.Tensor:
                obj = score_objective(probs, ya[owner], self.targeted, self.loss)
                diff = (obj.view(a, 2, half)[:, 0] - obj.view(a, 2, half)[:, 1]).to(x.dtype)
                grad = (diff.view((a, half) + (1,) * len(shape)) * u).sum(1) / (2 * half * sigma)
                m = avg[act].mul_(self.momentum).add_(grad, alpha=1 - self.momentum)
                avg[act] = m
                step = steepest_direction(m, norm)
                return step if ma is None else step * ma

            return probes.reshape((-1, *shape)), owner, direction

        what = f"the iterate and its {2 * half} probes"
        return self._steps(x, y, eps, per_sample, 2 * half + 1, what, propose)


def _eg_step(prior: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """Exponentiated-gradient ascent step on a prior in ``[-1, 1]`` (Bandits, Linf).

    With ``p = (prior + 1) / 2`` the step is ``p' = p e^(lr g) / (p e^(lr g) + (1 - p)
    e^(-lr g))``, which is ``prior' = tanh(atanh(prior) + lr g)``: the same map, computed
    without the overflow of ``e^(lr g)`` (lr is 100 by default) that turned priors into NaN.
    """
    return torch.tanh(torch.atanh(prior) + lr * grad)


_BANDITS_DEFAULTS = {
    # norm: (fd_eta, exploration, online_learning_rate, eps_step), the paper's ImageNet settings
    "inf": (0.1, 1.0, 100.0, 0.01),
    "2": (0.01, 0.01, 0.1, 0.5),
}


class BanditsAttack(_EstimatedGradientAttack):
    """Bandits with time and data priors: a gradient *prior* ``v`` is learnt online from two
    queries per step and followed by projected-gradient steps.

    Per step (Ilyas, Engstrom and Madry, 2019, Algorithm 2), with ``u ~ N(0, I) / sqrt(dim)``
    drawn at the prior's resolution: ``q_pm = up(v +- exploration * u)``, the objective ``L``
    (:func:`score_objective`) is queried at ``x_t + fd_eta * q_pm / ||q_pm||_2``, and
    ``Delta = (L+ - L-) / (fd_eta * exploration) * u`` estimates the gradient of ``<v, grad L>``.
    The prior moves by ``online_learning_rate * Delta``: an exponentiated-gradient step keeping
    ``v`` in ``[-1, 1]`` for Linf, a plain gradient step for L2. The image then takes a step of
    ``eps_step`` along ``sign(up(v))`` (Linf) or ``up(v) / ||up(v)||_2`` (L2), projected onto
    the eps-ball and ``clip_values``.

    * Time prior: ``v`` is carried over from step to step (successive gradients are correlated).
    * Data prior: ``v`` has a coarse resolution, one value per ``tile_size x tile_size`` tile of
      the last two (spatial) dimensions, upsampled by nearest neighbour (``up``). Inputs with
      fewer than two spatial dimensions, or ``tile_size=1``, use a prior at full resolution.

    Each step queries, for every sample still running, its current iterate (to detect success:
    the paper's code does not count this query, bastion does) and the two probes in one batched
    call. Probes are clipped to ``clip_values``. A budget below one step (3 queries) leaves
    the input unchanged, with a ``RuntimeWarning``.

    Threat model: score-based black-box (queries class probabilities). Norms: inf, 2.

    Parameters
    ----------
    estimator : any classifier with ``predict`` (class scores)
    eps : float or array-like of float, default 0.3
    eps_step : float or array-like of float, optional
        The image step (the paper's ``image_lr``); default 0.01 (Linf) or 0.5 (L2).
    max_queries : int, default 10000
        Query budget per sample.
    fd_eta : float, optional
        Finite-difference step ``delta``; default 0.1 (Linf) or 0.01 (L2).
    exploration : float, optional
        Exploration scale ``zeta``; default 1.0 (Linf) or 0.01 (L2).
    online_learning_rate : float, optional
        Prior learning rate ``eta``; default 100 (Linf) or 0.1 (L2). The estimate of each
        prior coordinate grows as the prior gets smaller, so on low-dimensional priors (a few
        dozen values, against 7500 in the paper) a smaller rate such as 10 keeps the Linf prior
        from saturating at +-1 after every step.
    tile_size : int, default 4
        Side of the square tiles of the data prior, in pixels (the paper's prior is 50 x 50 on
        224- and 299-pixel ImageNet images, tiles of 4.5 to 6 pixels); 1 disables it.
    norm : {"inf", 2}, default "inf"
    targeted : bool, default False
    loss : {"ce", "margin"}, default "ce"
        Objective: cross-entropy as in the paper, or the margin of log-probabilities.
    batch_size : int, default 128
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        Queries spent on each sample by the last :meth:`generate`.
    success_ : numpy.ndarray of bool, shape (N,)
        Which returned examples a query showed adversarial (a step taken when the budget ran
        out is not checked).

    References
    ----------
    Ilyas, Engstrom and Madry, "Prior Convictions: Black-Box Adversarial Attacks with Bandits
    and Priors", ICLR 2019. https://arxiv.org/abs/1807.07978

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.evasion.nes import BanditsAttack
    >>> w = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    >>> api = lambda x: torch.softmax(torch.as_tensor(x) @ w * 10, 1).numpy()
    >>> clf = BlackBoxClassifier(api, input_shape=(4,), nb_classes=2, clip_values=(0, 1))
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]])
    >>> attack = BanditsAttack(clf, eps=0.3, eps_step=0.05, max_queries=300, random_state=0)
    >>> x_adv = attack.generate(x)
    >>> clf.predict(x).argmax(1).item(), clf.predict(x_adv).argmax(1).item()
    (0, 1)
    """

    _renamed: ClassVar[dict[str, Any]] = {"online_lr": "online_learning_rate"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "eps_step": [*BUDGET, NONE],
        "max_queries": MAX_QUERIES,
        "fd_eta": [Interval(float, 0, None, closed="neither"), NONE],
        "exploration": [Interval(float, 0, None, closed="neither"), NONE],
        "online_learning_rate": [Interval(float, 0, None, closed="neither"), NONE],
        "tile_size": [Interval(int, 1, None)],
        "norm": [_NORM],
        "targeted": TARGETED,
        "loss": [_LOSS],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        eps: Any = 0.3,
        eps_step: Any = None,
        max_queries: int = 10000,
        fd_eta: float | None = None,
        exploration: float | None = None,
        online_learning_rate: float | None = None,
        tile_size: int = 4,
        norm: Any = "inf",
        targeted: bool = False,
        loss: str = "ce",
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.eps_step = eps_step
        self.max_queries = max_queries
        self.fd_eta = fd_eta
        self.exploration = exploration
        self.online_learning_rate = online_learning_rate
        self.tile_size = tile_size
        self.norm = norm
        self.targeted = targeted
        self.loss = loss
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _defaults(self) -> tuple[float, float, float, float]:
        fd, ex, lr, step = _BANDITS_DEFAULTS[canonical_norm(self.norm)]
        return (
            fd if self.fd_eta is None else float(self.fd_eta),
            ex if self.exploration is None else float(self.exploration),
            lr if self.online_learning_rate is None else float(self.online_learning_rate),
            step,
        )

    def _budget(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "eps_step" and self.eps_step is None:
            step = self._defaults()[3]
            return torch.full(
                (x.shape[0],) + (1,) * (x.ndim - 1), step, dtype=x.dtype, device=x.device
            )
        return super()._budget(name, x)

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **per_sample: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        norm, clip = canonical_norm(self.norm), self.estimator.clip_values
        fd_eta, exploration, online_learning_rate, _ = self._defaults()
        tiled = x.ndim >= 4 and self.tile_size > 1
        size = tuple(math.ceil(s / self.tile_size) for s in x.shape[-2:])
        prior_shape = x.shape[1:-2] + size if tiled else x.shape[1:]
        dim = math.prod(prior_shape)

        def up(v: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
            if tiled:
                flat = v.reshape((-1, 1, *v.shape[-2:]))
                flat = F.interpolate(flat, size=tuple(x.shape[-2:]), mode="nearest")
                v = flat.reshape(v.shape[:-2] + x.shape[-2:])
            return v if m is None else v * m

        def unit(q: torch.Tensor) -> torch.Tensor:
            n = q.flatten(1).norm(dim=1).clamp_min(1e-12)
            return q / _view(n, q)

        prior = torch.zeros((x.shape[0], *prior_shape), dtype=x.dtype, device=x.device)

        def propose(act: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor) -> _Proposal:
            a, ma, va = act.numel(), _rows(mask, act), prior[act]
            noise = torch.randn((a, *prior_shape), generator=generator, device=x.device)
            noise = noise.to(x.dtype) * (exploration / math.sqrt(dim))
            q1, q2 = up(va + noise, ma), up(va - noise, ma)
            probes = torch.cat(
                [_clip(xa + fd_eta * unit(q1), clip), _clip(xa + fd_eta * unit(q2), clip)]
            )

            def direction(probs: torch.Tensor) -> torch.Tensor:
                obj = score_objective(probs, ya.repeat(2), self.targeted, self.loss).to(x.dtype)
                deriv = (obj[:a] - obj[a:]) / (fd_eta * exploration)
                est = _view(deriv, noise) * noise
                v = (
                    _eg_step(va, est, online_learning_rate)
                    if norm == "inf"
                    else va + online_learning_rate * est
                )
                prior[act] = v
                return steepest_direction(up(v, ma), norm)

            return probes, torch.arange(a, device=x.device).repeat(2), direction

        return self._steps(x, y, eps, per_sample, 3, "the iterate and two probes", propose)
