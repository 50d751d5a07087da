"""The elastic-net attack (EAD) of Chen et al., optimised by ISTA or FISTA."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from bastion._validation import Constraint, Interval, Options
from bastion.attacks.base import BATCH_SIZE, TARGETED, VERBOSE, MinimumNormAttack
from bastion.attacks.evasion.carlini_wagner import _margin, _value_and_grad

__all__ = ["EAD", "ElasticNet"]


class ElasticNet(MinimumNormAttack):
    """Elastic-net attack (EAD): adversarial examples of small L1 and L2 norm, found by
    minimising ``c * f(x_adv) + ||x_adv - x||_2^2 + beta * ||x_adv - x||_1`` over the box.

    ``f`` is Carlini and Wagner's margin on the logits ``Z``:
    ``max(Z_y - max_{j!=y} Z_j, -confidence)`` untargeted, ``max(max_{j!=t} Z_j - Z_t,
    -confidence)`` targeted. The smooth part ``g = c * f + ||x_adv - x||_2^2`` is handled by
    gradient steps and the L1 term by the projected shrinkage-thresholding operator ``S_beta``
    (each feature of ``z - x`` is shrunk towards 0 by ``beta``, set to 0 within ``beta``, and the
    result clipped to ``clip_values``): ISTA iterates ``x_{k+1} = S_beta(y_k - a_k grad g(y_k))``
    with ``y_k = x_k``, FISTA adds the momentum ``y_{k+1} = x_{k+1} + k / (k + 3) (x_{k+1} -
    x_k)``. The step size decays as ``a_k = learning_rate * sqrt(1 - k / max_iter)``. As in the
    paper, the threshold is ``beta`` itself (not ``a_k * beta``).

    Each sample has its own constant ``c``, starting at ``initial_const``; after each of the
    ``binary_search_steps`` runs of ``max_iter`` steps (started again from ``x``), ``c`` is
    bisected towards the largest failed value when the run found an adversarial example and
    multiplied by 10 while none was found. Every iterate ``x_k`` is scored (one extra forward
    pass); the result is, per sample, the adversarial iterate (by a margin of ``confidence``)
    with the smallest elastic-net distance ``||d||_2^2 + beta * ||d||_1`` (``decision_rule="EN"``)
    or the smallest ``||d||_1`` (``"L1"``) over all runs. A sample never made adversarial comes
    back unchanged. Without ``clip_values`` the shrinkage is not clipped (no box).

    Threat model: white-box (needs gradients of the logits). Norms: 1 and 2 (elastic net).

    Parameters
    ----------
    estimator : estimator with differentiable ``logits``
    confidence : float, default 0.0
        Margin ``kappa`` by which the adversarial class must win.
    targeted : bool, default False
    beta : float, default 1e-3
        Weight of the L1 term, and threshold of the shrinkage.
    learning_rate : float, default 0.01
        Initial step size ``a_0`` in input space.
    max_iter : int, default 100
        ISTA / FISTA steps per run (the paper uses 1000).
    binary_search_steps : int, default 9
        Runs of the optimisation, each with the updated constants.
    initial_const : float, default 1e-3
        First value of ``c``.
    decision_rule : {"EN", "L1"}, default "EN"
        Which successful iterate is kept: the smallest elastic-net distance or the smallest L1.
    optimizer : {"fista", "ista"}, default "fista"
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Chen, Sharma, Zhang, Yi and Hsieh, "EAD: Elastic-Net Attacks to Deep Neural Networks via
    Adversarial Examples", AAAI 2018. https://arxiv.org/abs/1709.04114

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.elastic_net import ElasticNet
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = ElasticNet(clf, binary_search_steps=5, max_iter=50).generate(x)
    >>> changed = (x_adv != x).any(dim=1)  # the others were not fooled and come back unchanged
    >>> bool((clf.predict(x_adv).argmax(1) != clf.predict(x).argmax(1))[changed].all())
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "confidence": [Interval(float, 0, None)],
        "targeted": TARGETED,
        "beta": [Interval(float, 0, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "max_iter": [Interval(int, 1, None)],
        "binary_search_steps": [Interval(int, 1, None)],
        "initial_const": [Interval(float, 0, None, closed="neither")],
        "decision_rule": [Options(["EN", "L1"])],
        "optimizer": [Options(["fista", "ista"])],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "logits", "class_gradient")
    _conformance: ClassVar[dict[str, Any]] = {
        "params": {
            "max_iter": 10,
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
        beta: float = 1e-3,
        learning_rate: float = 0.01,
        max_iter: int = 100,
        binary_search_steps: int = 9,
        initial_const: float = 1e-3,
        decision_rule: str = "EN",
        optimizer: str = "fista",
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.confidence = confidence
        self.targeted = targeted
        self.beta = beta
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.binary_search_steps = binary_search_steps
        self.initial_const = initial_const
        self.decision_rule = decision_rule
        self.optimizer = optimizer
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
        n, kappa, beta = x.shape[0], float(self.confidence), float(self.beta)
        clip = est.clip_values

        def masked(x_new: torch.Tensor) -> torch.Tensor:
            return x_new if mask is None else x + (x_new - x) * mask

        def smooth(const: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], tuple[Any, ...]]:
            def fn(x_adv: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
                l2 = (x_adv - x).flatten(1).square().sum(1)
                return (l2 + const * _margin(z, y, self.targeted).clamp_min(-kappa),)

            return fn

        def shrink(z: torch.Tensor) -> torch.Tensor:
            # Projected shrinkage-thresholding S_beta; x lies in the box, so clipping after the
            # shrinkage is the paper's case-wise projection.
            d = z - x
            out = x + d.sign() * (d.abs() - beta).clamp_min(0)
            return out if clip is None else out.clamp(*clip)

        const = torch.full((n,), float(self.initial_const), dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best_dist = torch.full_like(const, math.inf)
        best = x.clone()
        fista = self.optimizer == "fista"
        for _ in range(self.binary_search_steps):
            x_k, slack = x.clone(), x.clone()
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            for k in range(self.max_iter):
                step = self.learning_rate * math.sqrt(1 - k / self.max_iter)
                grad, _ = _value_and_grad(est, slack, masked, smooth(const))
                x_new = masked(shrink(slack - step * grad))
                slack = x_new + (k / (k + 3)) * (x_new - x_k) if fista else x_new
                x_k = x_new
                with torch.no_grad():
                    margin = _margin(est.logits_tensor(x_k), y, self.targeted)
                d = (x_k - x).flatten(1)
                l1 = d.abs().sum(1)
                dist = l1 if self.decision_rule == "L1" else d.square().sum(1) + beta * l1
                success = margin < -kappa
                better = success & (dist < best_dist)
                best_dist = torch.where(better, dist, best_dist)
                best[better] = x_k[better]
                found |= success
            # Binary search on c: bisect once a run succeeded, else grow tenfold.
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper.isfinite(), (lower + upper) / 2, const * 10)
        return best


EAD = ElasticNet
