"""Feature-collision poisoning ("Poison Frogs!", Shafahi et al. 2018).

A poison looks like a base-class image (and keeps its correct label), but its features in a
chosen layer coincide with those of one target test instance. A model fine-tuned on the
poisoned set draws its decision boundary so that the poison, hence the target, falls on the
base side.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._validation import BATCH_SIZE, LAYER, NONE, VERBOSE, Constraint, Interval, Satisfies
from bastion.attacks.poisoning._base import (
    PoisoningAttack,
    _is_array,
    _resolve_layer,
    _target_images,
)
from bastion.estimators.base import SupportsActivationGradientAndPredict

__all__ = ["FeatureCollision"]


class FeatureCollision(PoisoningAttack):
    """Poison Frogs! feature collision: clean-label poisons whose features match a target.

    Each poison ``p`` starts from a base image ``b`` (correctly labelled, from the class the
    target should be misclassified as) and minimises, by forward-backward splitting,

    ``||f(p) - f(t)||^2 + beta * ||p - b||^2``,

    where ``f`` is the output of ``layer`` (the penultimate layer in the paper) and ``t`` the
    target instance. Forward step: ``p' = p - lr * grad ||f(p) - f(t)||^2``; backward
    (proximal) step: ``p = (p' + lr * beta * b) / (1 + lr * beta)``; then ``p`` is clipped to
    ``clip_values``. This backward step, the paper's Algorithm 1, is the exact proximal
    step of ``(beta / 2) ||p - b||^2``, so the iterations minimise ``||f(p) - f(t)||^2 +
    (beta / 2) ||p - b||^2``, the objective monitored and reported. As in the authors' code,
    a step that increases a poison's objective is undone and that poison's learning rate is
    multiplied by ``decay``. With ``opacity > 0`` the
    base is first watermarked with the target, ``b = (1 - opacity) * b + opacity * t`` (the
    paper uses up to 0.3 for end-to-end training).

    Threat model: clean-label, targeted data poisoning; white-box access to the feature
    extractor (transfer learning: the victim fine-tunes only the last layer(s) on the
    poisoned set). The poisons keep their correct labels (``y_p == y``).

    ``poison(x, y)`` takes the base samples ``(N, *input_shape)`` inside the estimator's
    ``clip_values`` (every one becomes a poison) and their labels.

    Parameters
    ----------
    estimator : estimator with ``activations`` and ``activation_gradient``
        The feature extractor (e.g. a :class:`~bastion.estimators.TorchClassifier`): the
        features come from ``activations_tensor``, their gradient with respect to the
        poison from ``activation_gradient_tensor``.
    target : array-like or torch.Tensor, shape ``input_shape`` or ``(1, *input_shape)``
        The target test instance.
    layer : str or int, default=-2
        Feature layer: a name of ``estimator.layer_names`` or an index into it (``-2``: the
        module before the output layer, e.g. ``relu3`` of :class:`bastion.zoo.SmallCNN`).
    beta : float or None, default=None
        Weight of the proximity term; ``None`` uses the paper's ``0.25 * (2048 / d)^2`` with
        ``d`` the input dimension.
    learning_rate : float, default=0.01
        Initial step size ``lr`` of the forward step.
    max_iter : int, default=200
        Iterations.
    decay : float, default=0.5
        Learning-rate factor after a step that increased the objective, in ``(0, 1)``.
    opacity : float, default=0.0
        Watermark opacity in ``[0, 1)``.
    tol : float, default=1e-5
        A poison stops when its relative change ``||p_new - p|| / ||p||`` falls below ``tol``.
    batch_size : int, default=128
    verbose : bool, default=False

    Attributes
    ----------
    objective_ : numpy.ndarray
        Final objective of each poison.
    feature_distance_ : numpy.ndarray
        Final ``||f(p) - f(t)||`` of each poison.

    References
    ----------
    A. Shafahi, W. R. Huang, M. Najibi, O. Suciu, C. Studer, T. Dumitras, T. Goldstein.
    "Poison Frogs! Targeted Clean-Label Poisoning Attacks on Neural Networks." NeurIPS 2018.
    https://arxiv.org/abs/1804.00792

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.poisoning.feature_collision import FeatureCollision
    >>> g = torch.Generator().manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 2))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=2)
    >>> base, target = torch.rand(3, 1, 4, 4, generator=g), torch.rand(1, 4, 4, generator=g)
    >>> attack = FeatureCollision(clf, target, layer="2", beta=0.1, learning_rate=0.5)
    >>> x_p, y_p, mask = attack.poison(base, torch.zeros(3, dtype=torch.long))
    >>> x_p.shape, bool(mask.all())
    (torch.Size([3, 1, 4, 4]), True)
    """

    estimator: SupportsActivationGradientAndPredict

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target": [Satisfies(_is_array, "a finite array (one image)")],
        "layer": LAYER,
        "beta": [NONE, Interval(float, 0, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "max_iter": [Interval(int, 0, None)],
        "decay": [Interval(float, 0, 1, closed="neither")],
        "opacity": [Interval(float, 0, 1, closed="left")],
        "tol": [Interval(float, 0, None)],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("activations", "activation_gradient")
    _sample_ndim = None  # any input shape: (N, *input_shape)

    def __init__(
        self,
        estimator: SupportsActivationGradientAndPredict,
        target: Any,
        *,
        layer: str | int = -2,
        beta: float | None = None,
        learning_rate: float = 0.01,
        max_iter: int = 200,
        decay: float = 0.5,
        opacity: float = 0.0,
        tol: float = 1e-5,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.target = target
        self.layer = layer
        self.beta = beta
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.decay = decay
        self.opacity = opacity
        self.tol = tol
        self.batch_size = batch_size
        self.verbose = verbose

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        est = self.estimator
        layer = _resolve_layer(est, self.layer, type(self).__name__)
        target = _target_images(self.target, est, type(self).__name__, single=True)
        bases = x.to(device=est.device, dtype=est.dtype)
        if self.opacity > 0:
            bases = (1.0 - self.opacity) * bases + self.opacity * target
        d = int(np.prod(est.input_shape))
        beta = 0.25 * (2048.0 / d) ** 2 if self.beta is None else float(self.beta)
        with torch.no_grad():
            feat_t = est.activations_tensor(target, layer).flatten(1)
        out, objs, dists = [], [], []
        for start in range(0, bases.shape[0], self.batch_size):
            p, obj, dist = self._collide(
                bases[start : start + self.batch_size], feat_t, layer, beta
            )
            out.append(p)
            objs.append(obj)
            dists.append(dist)
        self.objective_ = torch.cat(objs).cpu().numpy()
        self.feature_distance_ = torch.cat(dists).cpu().numpy()
        return torch.arange(x.shape[0]), torch.cat(out), None

    def _collide(
        self, base: torch.Tensor, feat_t: torch.Tensor, layer: str, beta: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        est = self.estimator
        clip = est.clip_values
        view = (-1,) + (1,) * (base.ndim - 1)

        def feature_loss(feat: torch.Tensor) -> torch.Tensor:
            return (feat.flatten(1) - feat_t).pow(2).sum(dim=1)

        def feature_gradient(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            grad, value, _ = est.activation_gradient_tensor(p, layer, feature_loss)
            return grad, value

        def total(p: torch.Tensor, floss: torch.Tensor) -> torch.Tensor:
            return floss + 0.5 * beta * (p - base).flatten(1).pow(2).sum(dim=1)

        p = base.clone()
        lr = torch.full((base.shape[0],), float(self.learning_rate), device=base.device)
        grad, floss = feature_gradient(p)
        obj = total(p, floss)
        active = torch.ones(base.shape[0], dtype=torch.bool, device=base.device)
        for _ in tqdm(range(self.max_iter), desc="FeatureCollision", disable=not self.verbose):
            lr_v = lr.view(view).to(p.dtype)
            cand = p - lr_v * grad  # forward step on the feature loss
            cand = (cand + lr_v * beta * base) / (1.0 + lr_v * beta)  # proximal step
            if clip is not None:
                cand = cand.clamp(float(clip[0]), float(clip[1]))
            g_new, f_new = feature_gradient(cand)
            o_new = total(cand, f_new)
            accept = active & (o_new < obj)
            change = (cand - p).flatten(1).norm(dim=1) / p.flatten(1).norm(dim=1).clamp_min(1e-12)
            a = accept.view(view)
            p = torch.where(a, cand, p)
            grad = torch.where(a, g_new, grad)
            floss = torch.where(accept, f_new, floss)
            obj = torch.where(accept, o_new, obj)
            lr = torch.where(active & ~accept, lr * self.decay, lr)
            active = active & ~(accept & (change < self.tol)) & (lr > 1e-12 * self.learning_rate)
            if not bool(active.any()):
                break
        return p, obj, floss.clamp_min(0).sqrt()
