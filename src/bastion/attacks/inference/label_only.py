"""Label-only membership inference (Choquette-Choo et al. 2021): members sit farther from the
decision boundary and stay correctly classified under perturbations."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bastion._tensor import resolve_random_state
from bastion._validation import (
    BATCH_SIZE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Options,
)
from bastion.attacks.evasion.hop_skip_jump import HopSkipJump
from bastion.attacks.inference._base import MembershipInferenceAttack
from bastion.estimators.base import SupportsPredict
from bastion.exceptions import InputError

__all__ = ["LabelOnly"]


def _translations(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Every translation of images (N, C, H, W) by up to ``max_shift`` pixels (edges
    replicated): shape ((2 s + 1)^2, N, C, H, W), the identity first."""
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    h, w = x.shape[-2], x.shape[-1]
    moves = [(0, 0)] + [
        (dx, dy) for dx in range(-s, s + 1) for dy in range(-s, s + 1) if (dx, dy) != (0, 0)
    ]
    return torch.stack([padded[..., s + dy : s + dy + h, s + dx : s + dx + w] for dx, dy in moves])


class LabelOnly(MembershipInferenceAttack):
    """Label-only membership inference: robustness of the decision as a membership signal.

    Two variants of the paper, both needing only the target's predicted labels:

    * ``method="boundary"``: the L2 (or Linf) distance from the sample to the decision
      boundary, estimated with the decision-based :class:`~bastion.attacks.evasion.
      hop_skip_jump.HopSkipJump` within ``max_queries`` per sample. Misclassified samples
      score 0; a correctly classified sample for which no adversarial point was found scores
      the diameter of the input box (the largest possible distance).
    * ``method="augmentation"``: the fraction of augmented versions of the sample (and the
      sample itself) that the target labels correctly: all translations by up to
      ``max_shift`` pixels for images (``augmentation="shift"``), or ``nb_augmentations``
      draws of Gaussian noise of standard deviation ``noise_std`` (``augmentation="noise"``,
      for any input; clipped to ``clip_values``).

    Threat model: decision-based black-box (labels only). The paper calibrates a threshold
    on shadow models; the scores here are ranked directly (the ROC curve needs no threshold).

    Parameters
    ----------
    estimator : estimator with ``predict`` (labels suffice)
    method : {"boundary", "augmentation"}, default "boundary"
    norm : {2, "inf"}, default 2
        Norm of the boundary distance.
    max_queries : int, default 1000
        Per-sample query budget of HopSkipJump.
    gamma : float, default 1.0
        HopSkipJump's binary-search precision scale; use ``gamma < 1`` for inputs with few
        features (its precision ``gamma / d^1.5`` is coarse there).
    augmentation : {"shift", "noise"}, default "noise"
    max_shift : int, default 1
    nb_augmentations : int, default 16
        Noise draws per sample (``augmentation="noise"``).
    noise_std : float, default 0.05
    batch_size : int, default 128
    random_state : None, int or torch.Generator
    verbose : bool, default False

    References
    ----------
    Choquette-Choo, Tramèr, Carlini and Papernot, "Label-Only Membership Inference Attacks",
    ICML 2021. https://arxiv.org/abs/2007.14321

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.inference.label_only import LabelOnly
    >>> api = lambda x: (x[:, 0] > 0.5).astype(int)  # boundary at x0 = 0.5
    >>> clf = BlackBoxClassifier(api, input_shape=(2,), nb_classes=2, clip_values=(0, 1),
    ...                          labels_only=True)
    >>> x = np.array([[0.95, 0.5], [0.6, 0.5], [0.2, 0.5]], dtype=np.float32)
    >>> s = LabelOnly(clf, max_queries=200, random_state=0).infer(x, [1, 1, 1])
    >>> bool(s[0] > s[1] > s[2] == 0)  # far, near, misclassified
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "method": [Options(["boundary", "augmentation"])],
        "norm": [Options([2, "inf", float("inf")])],
        "max_queries": [Interval(int, 1, None)],
        "gamma": [Interval(float, 0, None, closed="neither")],
        "augmentation": [Options(["shift", "noise"])],
        "max_shift": [Interval(int, 1, None)],
        "nb_augmentations": [Interval(int, 1, None)],
        "noise_std": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        method: str = "boundary",
        norm: Any = 2,
        max_queries: int = 1000,
        gamma: float = 1.0,
        augmentation: str = "noise",
        max_shift: int = 1,
        nb_augmentations: int = 16,
        noise_std: float = 0.05,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ):
        self.estimator = estimator
        self.method = method
        self.norm = norm
        self.max_queries = max_queries
        self.gamma = gamma
        self.augmentation = augmentation
        self.max_shift = max_shift
        self.nb_augmentations = nb_augmentations
        self.noise_std = noise_std
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    self.estimator.predict_tensor(x[i : i + self.batch_size]).argmax(dim=1)
                    for i in range(0, x.shape[0], self.batch_size)
                ]
            )

    def _infer(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.method == "boundary":
            return self._boundary(x, y)
        return self._augmentation(x, y)

    def _boundary(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        correct = self._labels(x) == y
        hsj = HopSkipJump(
            self.estimator,
            norm=self.norm,
            max_queries=self.max_queries,
            gamma=self.gamma,
            batch_size=self.batch_size,
            random_state=self.random_state,
            verbose=self.verbose,
        )
        dist = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        idx = correct.nonzero().squeeze(1)
        if idx.numel() == 0:
            return dist
        x_adv = hsj.generate(x[idx], y[idx])
        delta = (x_adv - x[idx]).reshape(idx.numel(), -1).to(torch.float64)
        linf = self.norm != 2
        d = delta.abs().amax(1) if linf else delta.norm(dim=1)
        clip = self.estimator.clip_values
        span = (clip[1] - clip[0]) if clip is not None else float(d.max().clamp_min(1.0)) * 2
        diameter = span if linf else span * math.sqrt(delta.shape[1])
        # No adversarial point found: the sample is at least as robust as any other.
        found = torch.as_tensor(hsj.success_, device=d.device)
        dist[idx] = torch.where(found, d, torch.full_like(d, diameter))
        return dist

    def _augmentation(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.augmentation == "shift" and x.ndim != 4:
            raise InputError(
                "LabelOnly with augmentation='shift' needs images (N, C, H, W); got x of shape "
                f"{tuple(x.shape)}. Use augmentation='noise'."
            )
        gen = resolve_random_state(self.random_state, x.device)
        clip = self.estimator.clip_values
        hits = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        k = 0
        for i in range(0, x.shape[0], self.batch_size):
            xb, yb = x[i : i + self.batch_size], y[i : i + self.batch_size]
            if self.augmentation == "shift":
                views = _translations(xb, self.max_shift)
            else:
                noise = torch.randn(
                    (self.nb_augmentations, *xb.shape), generator=gen, device=x.device
                ).to(x.dtype)
                views = torch.cat([xb[None], xb[None] + self.noise_std * noise])
                if clip is not None:
                    views = views.clamp(*clip)
            k = views.shape[0]
            labels = self._labels(views.reshape(-1, *xb.shape[1:])).reshape(k, -1)
            hits[i : i + xb.shape[0]] = (labels == yb[None]).sum(0).to(torch.float64)
        return hits / k
