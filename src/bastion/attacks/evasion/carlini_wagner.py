"""The Carlini and Wagner attacks in the L2 and L-infinity norms."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from bastion._validation import Constraint, Interval
from bastion.attacks._batch import rows as _rows
from bastion.attacks._optim import adam_step
from bastion.attacks.base import BATCH_SIZE, TARGETED, VERBOSE, MinimumNormAttack

__all__ = ["CW", "CarliniWagnerL2", "CarliniWagnerLinf"]

_BOX_EPS = 1e-6  # keeps atanh finite for inputs on the box edges


def _margin(z: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The paper's objective f before the ``max(., -confidence)``: ``max_{j!=t} Z_j - Z_t``
    (targeted) or ``Z_y - max_{j!=y} Z_j`` (untargeted); negative means adversarial."""
    own = z.gather(1, y.view(-1, 1)).squeeze(1)
    other = z.scatter(1, y.view(-1, 1), float("-inf")).amax(dim=1)
    return other - own if targeted else own - other


class _EarlyAbort:
    """Per-sample early abort of Carlini and Wagner's optimisations, robust to non-monotone
    iterates (Adam, FISTA): the objective is judged by its best value over each window of
    ``every`` steps, and a sample stops after ``patience`` windows in a row whose best fails to
    improve on the window before by 0.01%."""

    def __init__(self, like: torch.Tensor, every: int, patience: int = 2) -> None:
        self.every, self.patience = every, patience
        self.window = torch.full_like(like, math.inf)
        self.prev = torch.full_like(like, math.inf)
        self.strikes = torch.zeros(like.shape, dtype=torch.long, device=like.device)

    def update(self, idx: torch.Tensor, value: torch.Tensor, step: int) -> torch.Tensor:
        """Record ``value`` (the objective of the samples ``idx`` at 0-based ``step``); return
        the samples that go on."""
        self.window[idx] = torch.minimum(self.window[idx], value)
        if (step + 1) % self.every:
            return idx
        best = self.window[idx]
        stalled = best > self.prev[idx] - 1e-4 * self.prev[idx].abs()
        self.strikes[idx] = torch.where(stalled, self.strikes[idx] + 1, 0)
        self.prev[idx] = best
        self.window[idx] = math.inf
        return idx[self.strikes[idx] < self.patience]


def _value_and_grad(
    estimator: Any,
    param: torch.Tensor,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    objective: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Gradient with respect to ``param`` of ``objective(x, logits)[0].sum()`` where
    ``x = to_input(param)``, by autograd through the estimator's differentiable logits. Returns the
    gradient and the objective's outputs (detached); counts one gradient per sample."""
    param = param.detach().requires_grad_(True)
    with torch.enable_grad():
        x = to_input(param)
        outputs = objective(x, estimator.logits_tensor(x))
        (grad,) = torch.autograd.grad(outputs[0].sum(), param)
    estimator.gradient_count += int(param.shape[0])
    return grad, tuple(o.detach() for o in outputs)


_COMMON: dict[str, list[Constraint]] = {
    "confidence": [Interval(float, 0, None)],
    "targeted": TARGETED,
    "learning_rate": [Interval(float, 0, None, closed="neither")],
    "max_iter": [Interval(int, 1, None)],
    "initial_const": [Interval(float, 0, None, closed="neither")],
    "abort_early": [TARGETED[0]],
    "batch_size": BATCH_SIZE,
    "verbose": VERBOSE,
}


class CarliniWagnerL2(MinimumNormAttack):
    """Carlini and Wagner's L2 attack: the smallest L2 perturbation found by minimising
    ``||x_adv - x||_2^2 + c * f(x_adv)`` with Adam, with a binary search over ``c``.

    ``f`` works on the logits ``Z``: ``max(Z_y - max_{j!=y} Z_j, -confidence)`` untargeted,
    ``max(max_{j!=t} Z_j - Z_t, -confidence)`` targeted. The box constraint is removed by the
    change of variables ``x_adv = lo + (tanh(w) + 1) / 2 * (hi - lo)`` over ``clip_values``
    ``(lo, hi)``; an estimator without ``clip_values`` is attacked without a box (Adam directly
    on ``x_adv``). Each sample has its own constant ``c``, starting at ``initial_const``: after
    each of the ``binary_search_steps`` runs of ``max_iter`` Adam steps (started again from
    ``x``), ``c`` is halved towards the largest failed value when the run found an adversarial
    example and multiplied by 10 while none was found. The result is, per sample, the
    adversarial example of smallest L2 norm over all steps of all runs; a sample never made
    adversarial (by a margin of ``confidence``) comes back unchanged.

    With ``abort_early``, a sample stops a run when the best value of its loss over a window of
    ``max_iter // 10`` steps has twice in a row failed to improve by 0.01% on the previous
    window's (the paper's code compares single steps, for the whole batch at once; the Adam
    iterates are not monotone, and per sample the results do not depend on the batch while
    finished samples cost nothing).

    Threat model: white-box (needs gradients of the logits). Norm: 2.

    Parameters
    ----------
    estimator : estimator with differentiable ``logits``
    confidence : float, default 0.0
        Margin ``kappa`` by which the adversarial class must win.
    targeted : bool, default False
    learning_rate : float, default 0.01
        Adam step size (in ``w``-space with ``clip_values``, else in input space).
    binary_search_steps : int, default 9
        Runs of the optimisation, each with the updated constants.
    max_iter : int, default 100
        Adam steps per run (the paper's code uses 10000; with early abort most samples stop
        much sooner, and 100 suffices on small models).
    initial_const : float, default 1e-3
        First value of ``c``.
    abort_early : bool, default True
        Stop a sample's run once its loss stalls.
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    https://arxiv.org/abs/1608.04644

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.carlini_wagner import CarliniWagnerL2
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = CarliniWagnerL2(clf, binary_search_steps=5, max_iter=50).generate(x)
    >>> changed = (x_adv != x).any(dim=1)  # the others were not fooled and come back unchanged
    >>> bool((clf.predict(x_adv).argmax(1) != clf.predict(x).argmax(1))[changed].all())
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **_COMMON,
        "binary_search_steps": [Interval(int, 1, None)],
    }
    _estimator_requirements = ("predict", "logits", "class_gradient")
    _conformance: ClassVar[dict[str, Any]] = {
        "params": {
            "max_iter": 20,
            "binary_search_steps": 2,
            "initial_const": 1.0,
            "learning_rate": 0.1,
        }
    }

    def __init__(
        self,
        estimator: Any,
        *,
        confidence: float = 0.0,
        targeted: bool = False,
        learning_rate: float = 0.01,
        binary_search_steps: int = 9,
        max_iter: int = 100,
        initial_const: float = 1e-3,
        abort_early: bool = True,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.confidence = confidence
        self.targeted = targeted
        self.learning_rate = learning_rate
        self.binary_search_steps = binary_search_steps
        self.max_iter = max_iter
        self.initial_const = initial_const
        self.abort_early = abort_early
        self.batch_size = batch_size
        self.verbose = verbose

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        est = self.estimator
        n, kappa = x.shape[0], float(self.confidence)
        lo, hi = est.clip_values if est.clip_values is not None else (None, None)
        if lo is not None and hi is not None:
            unit = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + _BOX_EPS, 1 - _BOX_EPS)
            w0 = torch.atanh(unit)
        else:
            w0 = x.clone()

        def objective(
            x0: torch.Tensor, y0: torch.Tensor, const: torch.Tensor
        ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
            def fn(x_adv: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
                l2 = (x_adv - x0).flatten(1).square().sum(1)
                margin = _margin(z, y0, self.targeted)
                return l2 + const * margin.clamp_min(-kappa), l2, margin, x_adv

            return fn

        def to_input(x0: torch.Tensor, m: torch.Tensor | None) -> Any:
            def fn(w: torch.Tensor) -> torch.Tensor:
                x_new = (
                    w if lo is None or hi is None else lo + (torch.tanh(w) + 1) * ((hi - lo) / 2)
                )
                return x_new if m is None else x0 + (x_new - x0) * m

            return fn

        const = torch.full((n,), float(self.initial_const), dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best_l2 = torch.full_like(const, math.inf)
        best = x.clone()
        every = max(1, self.max_iter // 10)
        everyone = torch.arange(n, device=x.device)
        for _ in range(self.binary_search_steps):
            w, m1, m2 = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            abort = _EarlyAbort(const, every)
            idx = everyone
            for it in range(self.max_iter):
                all_in = idx.shape[0] == n
                xi, mi = (x, mask) if all_in else (x[idx], _rows(mask, idx))
                wi = w if all_in else w[idx]
                grad, (loss, l2, margin, x_adv) = _value_and_grad(
                    est, wi, to_input(xi, mi), objective(xi, y[idx], const[idx])
                )
                # The iterate before the step is scored, as in the paper (no extra query).
                success = margin < -kappa
                better = success & (l2 < best_l2[idx])
                best_l2[idx[better]] = l2[better]
                best[idx[better]] = x_adv[better]
                found[idx[success]] = True
                wi, m1i, m2i = adam_step(
                    wi, grad, m1 if all_in else m1[idx], m2 if all_in else m2[idx], it + 1,
                    self.learning_rate,
                )  # fmt: skip
                if all_in:
                    w, m1, m2 = wi, m1i, m2i
                else:
                    w[idx], m1[idx], m2[idx] = wi, m1i, m2i
                if self.abort_early:
                    idx = abort.update(idx, loss, it)
                    if idx.numel() == 0:
                        break
            # Binary search on c: bisect once a run succeeded, else grow tenfold.
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper.isfinite(), (lower + upper) / 2, const * 10)
        return best


CW = CarliniWagnerL2


class CarliniWagnerLinf(MinimumNormAttack):
    """Carlini and Wagner's L-infinity attack: shrink a bound ``tau`` on the perturbation while
    the model can still be fooled within it.

    For the current ``tau`` the attack minimises
    ``c * f(x + delta) + sum_i max(|delta_i| - tau, 0)`` with Adam (``f`` as in
    :class:`CarliniWagnerL2`), warm-started from the last success. As soon as an iterate is
    adversarial with ``||delta||_inf <= tau``, ``tau`` becomes ``tau_decrease`` times that norm
    and a new round starts from that point (the constant is halved if ``reduce_const``). When a
    round fails (``max_iter`` steps, or a stalled loss with ``abort_early``), ``c`` is multiplied
    by ``const_factor`` and the round goes on; a sample is finished once ``c`` exceeds
    ``largest_const`` or ``tau`` falls below 1/256 of the ``clip_values`` width. Every sample
    runs its own rounds, constants and ``tau`` in one batch; the result is the adversarial
    iterate of smallest L-infinity norm seen, or the clean input where none was found.

    Deviations from the paper, for speed and strength:

    * the box is kept by clipping ``x + delta`` to ``clip_values`` after each Adam step, not by
      the ``tanh`` change of variables, which lets pixels on the box edges (the black background
      of MNIST-like images, which an L-infinity attack needs) move only after hundreds of steps;
    * Adam's step size is ``learning_rate * tau`` (``tau`` starts at the width of
      ``clip_values``), so the iterates settle within a small fraction of the shrinking bound
      instead of oscillating around it with a fixed step: rounds then succeed whenever the
      smaller bound is feasible;
    * a round ends at the first success, or when the loss stalls (``abort_early``), and
      ``max_iter`` is 100 instead of 1000; ``initial_const`` is 1e-2 instead of 1e-5, which only
      saves the failed rounds that end the attack (with Adam's scale-free steps the result does
      not depend on it much).

    Threat model: white-box (needs gradients of the logits). Norm: inf.

    Parameters
    ----------
    estimator : estimator with differentiable ``logits``
    confidence : float, default 0.0
        Margin ``kappa`` by which the adversarial class must win.
    targeted : bool, default False
    learning_rate : float, default 0.01
        Adam step size as a fraction of the current bound ``tau`` (of 1 before the first
        success when the estimator has no ``clip_values``).
    max_iter : int, default 100
        Adam steps at most per round (one ``tau`` and one ``c``).
    tau_decrease : float in (0, 1), default 0.9
        Factor applied to ``tau`` after each success.
    initial_const : float, default 0.01
        First value of ``c``.
    largest_const : float, default 20.0
        A sample stops when ``c`` would exceed it.
    const_factor : float > 1, default 2.0
        Growth of ``c`` after a failed round.
    reduce_const : bool, default False
        Halve ``c`` after each success.
    abort_early : bool, default True
        End a round once the sample's loss has not decreased by 0.01% in ``max_iter // 10``
        steps.
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    https://arxiv.org/abs/1608.04644

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.carlini_wagner import CarliniWagnerLinf
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = CarliniWagnerLinf(clf, max_iter=50).generate(x)
    >>> changed = (x_adv != x).any(dim=1)  # the others were not fooled and come back unchanged
    >>> bool((clf.predict(x_adv).argmax(1) != clf.predict(x).argmax(1))[changed].all())
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **_COMMON,
        "tau_decrease": [Interval(float, 0, 1, closed="neither")],
        "largest_const": [Interval(float, 0, None, closed="neither")],
        "const_factor": [Interval(float, 1, None, closed="neither")],
        "reduce_const": [TARGETED[0]],
    }
    _estimator_requirements = ("predict", "logits", "class_gradient")
    _conformance: ClassVar[dict[str, Any]] = {
        "params": {"max_iter": 10, "learning_rate": 0.02, "initial_const": 0.1}
    }

    def __init__(
        self,
        estimator: Any,
        *,
        confidence: float = 0.0,
        targeted: bool = False,
        learning_rate: float = 0.01,
        max_iter: int = 100,
        tau_decrease: float = 0.9,
        initial_const: float = 1e-2,
        largest_const: float = 20.0,
        const_factor: float = 2.0,
        reduce_const: bool = False,
        abort_early: bool = True,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.confidence = confidence
        self.targeted = targeted
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tau_decrease = tau_decrease
        self.initial_const = initial_const
        self.largest_const = largest_const
        self.const_factor = const_factor
        self.reduce_const = reduce_const
        self.abort_early = abort_early
        self.batch_size = batch_size
        self.verbose = verbose

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        est = self.estimator
        n, kappa = x.shape[0], float(self.confidence)
        clip = est.clip_values
        scale = clip[1] - clip[0] if clip is not None else math.inf
        tau_min = scale / 256 if clip is not None else 0.0
        view = (-1,) + (1,) * (x.ndim - 1)
        tau = torch.full((n,), scale, dtype=x.dtype, device=x.device)
        const = torch.full_like(tau, float(self.initial_const))
        best_linf = torch.full_like(tau, math.inf)
        best = x.clone()
        delta, m1, m2 = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
        t = torch.zeros_like(tau)  # Adam steps since the last reset
        steps = torch.zeros(n, dtype=torch.long, device=x.device)  # steps in this round
        prev = torch.full_like(tau, math.inf)
        live = torch.ones(n, dtype=torch.bool, device=x.device)
        every = max(1, self.max_iter // 10)

        def objective(
            x0: torch.Tensor, y0: torch.Tensor, c: torch.Tensor, bound: torch.Tensor
        ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
            def fn(x_adv: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
                d = x_adv - x0
                excess = (d.abs() - bound.view(view)).clamp_min(0).flatten(1).sum(1)
                margin = _margin(z, y0, self.targeted)
                linf = d.abs().flatten(1).amax(1)
                return c * margin.clamp_min(-kappa) + excess, margin, linf

            return fn

        while bool(live.any()):
            idx = live.nonzero().squeeze(1)
            xi, di, mi = x[idx], delta[idx], _rows(mask, idx)
            grad, (loss, margin, linf) = _value_and_grad(
                est, di, xi.add, objective(xi, y[idx], const[idx], tau[idx])
            )
            adversarial = margin < -kappa
            better = adversarial & (linf < best_linf[idx])
            best_linf[idx[better]] = linf[better]
            best[idx[better]] = xi[better] + di[better]
            if mi is not None:
                grad = grad * mi
            t[idx] += 1
            step = self.learning_rate * tau[idx].nan_to_num(posinf=1.0).view(view)
            di, m1i, m2i = adam_step(di, grad, m1[idx], m2[idx], t[idx].view(view), step)
            if clip is not None:
                di = (xi + di).clamp(*clip) - xi
            delta[idx], m1[idx], m2[idx] = di, m1i, m2i
            steps[idx] += 1

            # A round succeeds once an iterate is adversarial within tau: shrink tau below the
            # best norm so far and restart Adam from that example (warm start).
            success = adversarial & (linf <= tau[idx])
            won = idx[success]
            tau[won] = self.tau_decrease * torch.minimum(tau[won], best_linf[won])
            delta[won] = best[won] - x[won]
            m1[won], m2[won], t[won] = 0.0, 0.0, 0.0
            if self.reduce_const:
                const[won] /= 2
            # A round fails after max_iter steps, or earlier once the loss stalls: raise c and
            # go on from the current point.
            ended = steps[idx] >= self.max_iter
            if self.abort_early:
                checked = steps[idx] % every == 0
                ended |= checked & (loss > prev[idx] - 1e-4 * prev[idx].abs())
                prev[idx] = torch.where(checked, loss, prev[idx])
            lost = idx[ended & ~success]
            const[lost] *= self.const_factor
            restart = idx[success | ended]
            steps[restart] = 0
            prev[restart] = math.inf
            live &= (const <= self.largest_const) & (tau > tau_min)
        return best
