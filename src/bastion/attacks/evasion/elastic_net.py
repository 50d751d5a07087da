"""The elastic-net attack (EAD) of Chen et al., optimised by ISTA or FISTA."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from bastion._validation import BATCH_SIZE, TARGETED, VERBOSE, Constraint, Interval, Options
from bastion.attacks._batch import rows as _rows
from bastion.attacks._optim import ConstSearch, const_search_runs, keep_best
from bastion.attacks.base import MinimumNormAttack
from bastion.attacks.evasion.carlini_wagner import _margin, _weighted_hinge
from bastion.estimators.base import SupportsClassGradient

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
    with ``y_k = x_k``, FISTA adds the momentum ``y_{k+1} = P(x_{k+1} + k / (k + 3) (x_{k+1} -
    x_k))`` with ``P`` the projection onto the box, as in the paper's Algorithm 1. The step size
    decays as ``a_k = learning_rate * sqrt(1 - k / max_iter)``. As in the paper, the threshold
    is ``beta`` itself (not ``a_k * beta``).

    Each sample has its own constant ``c``, starting at ``initial_const``; after each of the
    ``binary_search_steps`` runs of ``max_iter`` steps (each warm-started from the previous
    run's last iterate, which finds smaller perturbations for the same number of steps), ``c`` is
    bisected towards the largest failed value when the run found an adversarial example and
    multiplied by 10 while none was found. Every point where the gradient is evaluated (``y_k``,
    a valid input inside the box) is scored from the logits of that same forward pass, so
    scoring costs no query; the result is, per sample, the adversarial point (by a margin of
    ``confidence``) with the smallest elastic-net distance ``||d||_2^2 + beta * ||d||_1``
    (``decision_rule="EN"``) or the smallest ``||d||_1`` (``"L1"``) over all runs. With
    ``abort_early`` a sample leaves the current run once the best value of its objective over a
    window of a tenth of ``max_iter`` steps has twice in a row failed to improve by 0.01% on the
    previous window's (Carlini and Wagner's criterion, made robust to the non-monotone FISTA
    iterates), and the remaining samples go on in a smaller batch. A sample never made
    adversarial comes back unchanged. Without ``clip_values`` the shrinkage is not clipped (no box).

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
    abort_early : bool, default True
        Stop a sample's run when its objective stalls.
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

    estimator: SupportsClassGradient

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
        "abort_early": TARGETED,
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "logits", "class_gradient")

    def __init__(
        self,
        estimator: SupportsClassGradient,
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
        abort_early: bool = True,
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
        n, kappa, beta = x.shape[0], float(self.confidence), float(self.beta)
        clip = est.clip_values
        l1_rule = self.decision_rule == "L1"

        def box(z: torch.Tensor, x0: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
            z = z if clip is None else z.clamp(*clip)
            return z if m is None else x0 + (z - x0) * m

        def shrink(z: torch.Tensor, x0: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
            # Projected shrinkage-thresholding S_beta; x lies in the box, so clipping after the
            # shrinkage is the paper's case-wise projection.
            d = z - x0
            return box(x0 + d.sign() * (d.abs() - beta).clamp_min(0), x0, m)

        search = ConstSearch(self.initial_const, n, device=x.device, dtype=x.dtype)
        best_dist = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        best = x.clone()
        fista = self.optimizer == "fista"
        x_k, slack = x.clone(), x.clone()

        def step(run: int, k: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal x_k, slack
            # Runs are warm-started: x_k and the slack point go on from the run before.
            sub = None if idx.shape[0] == n else idx  # None: all rows, without copies
            xi, mi, si, ki = _rows(x, sub), _rows(mask, sub), _rows(slack, sub), _rows(x_k, sub)
            g, hinge, z = est.objective_gradient_tensor(
                si, _weighted_hinge(y[idx], search.const[idx], kappa, self.targeted)
            )
            d = si - xi
            l2, l1 = d.flatten(1).square().sum(1), d.flatten(1).abs().sum(1)
            # Score the point just evaluated (a valid input): no extra forward pass.
            success = _margin(z, y[idx], self.targeted) < -kappa
            keep_best(best, best_dist, idx, si, l1 if l1_rule else l2 + beta * l1, success)
            # Gradient step on g = c f + ||d||_2^2, then the shrinkage for the L1 term.
            a_k = self.learning_rate * math.sqrt(1 - k / self.max_iter)
            x_new = shrink(si - a_k * (g + 2 * d), xi, mi)
            s_new = box(x_new + (k / (k + 3)) * (x_new - ki), xi, mi) if fista else x_new
            if sub is None:
                x_k, slack = x_new, s_new
            else:
                x_k[sub], slack[sub] = x_new, s_new
            return l2 + hinge + beta * l1, success

        const_search_runs(step, search, self.binary_search_steps, self.max_iter, self.abort_early)
        return best


EAD = ElasticNet
