"""Jacobian-based Saliency Map Attack (Papernot et al. 2016), in linear time per step."""

from __future__ import annotations

from typing import ClassVar

import torch

from bastion._validation import BATCH_SIZE, TARGETED, VERBOSE, Constraint, Interval
from bastion.attacks.base import MinimumNormAttack
from bastion.estimators.base import SupportsClassGradient
from bastion.exceptions import InvalidParameterError

__all__ = ["JSMA", "SaliencyMapMethod"]


class SaliencyMapMethod(MinimumNormAttack):
    """Jacobian-based Saliency Map Attack (JSMA): change a few features, two at a time, by
    ``theta`` each, until the model predicts the target class.

    At each step, with ``F_t`` the softmax probability of the target class ``t``, the paper
    picks the pair of features ``(i, j)`` with ``alpha = dF_t/dx_i + dF_t/dx_j > 0``,
    ``beta = sum_{k != t} (dF_k/dx_i + dF_k/dx_j) < 0`` and ``|alpha * beta|`` largest.
    Because the probabilities sum to one, ``beta = -alpha``: one gradient of ``F_t`` per step is
    enough, and the best pair is the two largest gradient components (the two most negative
    when decreasing), found in linear time instead of searching all ``D^2`` pairs. Neither a
    pair table nor the ``(K, D)`` Jacobian is ever built, so the attack runs on ImageNet-sized
    inputs with 1000 classes.

    The search domain of a sample holds the features that the mask allows and that are not yet
    saturated (at the bound of ``clip_values`` in the direction of change). A sample stops when
    it reaches its goal (leaving the batch), when no pair with positive saliency remains, or
    after ``floor(gamma * D / 2)`` steps, so at most ``gamma * D`` features ever change.
    Samples that fail come back unchanged (minimum-norm template).

    Threat model: white-box (gradients of the class probabilities), targeted by nature. With
    ``targeted=False``, each sample's target is the class the model ranks second on the clean
    input (the nearest class in probability), and the attack stops as soon as the label
    changes. Norm: L0 (the perturbation is sparse; each changed feature moves by ``theta``).

    Parameters
    ----------
    estimator : estimator with ``class_gradient``
    theta : float, default 1.0
        Change applied to each selected feature (clipped to ``clip_values``); a negative value
        decreases features. Must not be 0.
    gamma : float in (0, 1], default 0.1
        Largest fraction of the features that may change.
    targeted : bool, default False
        If True, ``y`` holds the target classes. If False, ``y`` holds the true labels (or is
        omitted) and the target is the second most likely class.
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Papernot, McDaniel, Jha, Fredrikson, Celik and Swami, "The Limitations of Deep Learning in
    Adversarial Settings", IEEE EuroS&P 2016. https://arxiv.org/abs/1511.07528

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.saliency_map import JSMA
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> clf = TorchClassifier(net, input_shape=(16,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 16)
    >>> x_adv = JSMA(clf, theta=1.0, gamma=0.5, targeted=True).generate(x, torch.zeros(5))
    >>> int(((x_adv != x).sum(dim=1) <= 8).sum())
    5
    """

    estimator: SupportsClassGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "theta": [Interval(float, None, None)],
        "gamma": [Interval(float, 0, 1, closed="right")],
        "targeted": TARGETED,
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "class_gradient")

    def __init__(
        self,
        estimator: SupportsClassGradient,
        *,
        theta: float = 1.0,
        gamma: float = 0.1,
        targeted: bool = False,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.theta = theta
        self.gamma = gamma
        self.targeted = targeted
        self.batch_size = batch_size
        self.verbose = verbose

    def _validate(self) -> None:
        super()._validate()
        if self.theta == 0:
            raise InvalidParameterError(
                f"The 'theta' parameter of {type(self).__name__} must be a non-zero float. "
                f"Got {self.theta!r} instead."
            )

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        est = self.estimator
        n = x.shape[0]
        flat = x.flatten(1)
        d = flat.shape[1]
        max_steps = int(self.gamma * d + 1e-6) // 2  # tolerate gamma = k / D rounding down
        sign = 1.0 if self.theta > 0 else -1.0
        if self.targeted:
            target = y
        else:
            # Untargeted: aim at the runner-up class of the clean input (nearest in probability).
            with torch.no_grad():
                target = est.predict_tensor(x).topk(2, dim=1).indices[:, 1]
        # Search domain: allowed by the mask and not saturated in the direction of change.
        domain = torch.ones_like(flat, dtype=torch.bool)
        if mask is not None:
            domain &= mask.expand_as(x).flatten(1) > 0
        clip = est.clip_values
        if clip is not None:
            domain &= flat < clip[1] if sign > 0 else flat > clip[0]
        x_adv = flat.clone()
        active = torch.arange(n, device=x.device)
        for _step in range(max_steps):
            xa, ta = x_adv[active], target[active]

            def target_prob(z: torch.Tensor, ta: torch.Tensor = ta) -> torch.Tensor:
                return torch.softmax(z, dim=1).gather(1, ta.view(-1, 1)).squeeze(1)

            grad, _p, logits = est.objective_gradient_tensor(xa.view(-1, *x.shape[1:]), target_prob)
            pred = logits.argmax(dim=1)
            reached = pred == ta if self.targeted else pred != y[active]
            # beta = -alpha, so the best pair has the two largest (signed) gradient components.
            score = (sign * grad.flatten(1)).masked_fill(~domain[active], float("-inf"))
            top, idx = score.topk(2, dim=1)
            valid = top > float("-inf")
            saliency = torch.where(valid, top, torch.zeros_like(top)).sum(dim=1)
            go = ~reached & valid[:, 0] & (saliency > 0)
            if not bool(go.all()):
                active, xa, idx, valid = active[go], xa[go], idx[go], valid[go]
            if active.numel() == 0:
                break
            step = torch.zeros_like(xa).scatter_(1, idx, valid.to(xa.dtype) * self.theta)
            xa = xa + step
            if clip is not None:
                xa = xa.clamp(*clip)
                # A feature that reached its bound leaves the search domain.
                bound = clip[1] if sign > 0 else clip[0]
                picked = torch.zeros_like(domain[active]).scatter_(1, idx, valid)
                saturated = picked & (xa >= bound if sign > 0 else xa <= bound)
                domain[active] &= ~saturated
            x_adv.index_copy_(0, active, xa)
        return x_adv.view_as(x)


#: Short alias.
JSMA = SaliencyMapMethod
