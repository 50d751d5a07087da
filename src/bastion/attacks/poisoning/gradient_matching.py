"""Gradient-matching poisoning ("Witches' Brew", Geiping et al. 2021).

Small, bounded perturbations of a few correctly labelled training images are optimised so that
the training gradient they produce points the same way as the gradient that would teach the
model the attacker's goal (a target image classified as an adversarial class). Training from
scratch on the poisoned set then follows that gradient and misclassifies the target.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    Constraint,
    Interval,
    RandomState,
    Satisfies,
    invalid_parameter,
)
from bastion.attacks.base import VERBOSE
from bastion.attacks.poisoning._base import PoisoningAttack, _image_batch, _is_array
from bastion.attacks.poisoning.clean_label import _class_labels, _copy_like, _mask_out
from bastion.estimators.base import require_capabilities
from bastion.exceptions import EstimatorError

__all__ = ["GradientMatching"]


def _parameter_gradient(
    estimator: Any, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool
) -> tuple[torch.Tensor, ...]:
    """Gradient of the mean cross-entropy at ``(x, y)`` w.r.t. the model's parameters.

    The protocol has input gradients only; parameter gradients (and their derivative with
    respect to ``x``, hence ``create_graph``) go through ``estimator.logits_tensor``, which is
    differentiable, and ``estimator.model.parameters()``: the one use of ``model`` here
    (proposed protocol extension: ``parameter_gradient_tensor(x, y, *, create_graph)``).
    """
    params = [p for p in estimator.model.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = F.cross_entropy(estimator.logits_tensor(x), y)
        return torch.autograd.grad(loss, params, create_graph=create_graph)


class GradientMatching(PoisoningAttack):
    """Witches' Brew: poisons whose training gradient aligns with the adversarial gradient.

    With ``g_t = grad_theta L(f(x_t), y_adv)`` the gradient for the target image ``x_t`` and
    its adversarial label ``y_adv``, the perturbations ``delta`` of the poisons (training
    images of the class ``target_label``, correctly labelled) minimise the gradient-matching
    loss

    ``1 - cos(g_t, grad_theta (1/P) sum_i L(f(x_i + delta_i), y_i))``

    subject to ``||delta_i||_inf <= eps`` and ``x_i + delta_i`` in ``clip_values``. As in the
    paper, the optimiser is signed Adam (Adam fed with the sign of the gradient), the step size
    drops by 10x at 3/8, 5/8 and 7/8 of ``max_iter``, and ``restarts`` random starts keep the
    perturbation of lowest loss. The differentiable data augmentation of the paper is not
    applied.

    Threat model: clean-label, targeted data poisoning; the adversary knows the architecture
    and a model trained on clean data (the victim retrains from scratch on the poisoned set),
    and perturbs a small budget of training images within ``eps``.

    Parameters
    ----------
    estimator : TorchClassifier
        A model trained on clean data (the surrogate the gradients come from).
    target : array-like or torch.Tensor, shape ``input_shape`` or ``(T, *input_shape)``
        The target image(s).
    target_label : int
        The adversarial class the target(s) should be classified as. Poisons are drawn from
        the training images of this class, as in the paper.
    budget : float, default=0.01
        Poisons as a fraction of the training set size, in ``(0, 1]`` (capped at the number
        of images of ``target_label``).
    eps : float, default=16/255
        Linf bound of the perturbations.
    learning_rate : float, default=0.01
        Initial step size of signed Adam (in input units).
    max_iter : int, default=250
        Optimisation steps per restart.
    restarts : int, default=1
    random_state : None, int or torch.Generator, default=None
        Chooses the poisons and the random starts.
    verbose : bool, default=False

    Attributes
    ----------
    poison_indices_ : numpy.ndarray of int
    alignment_history_ : list of float
        Cosine similarity after each step of the best restart.
    alignment_ : float
        Final cosine similarity of the returned poisons.

    References
    ----------
    J. Geiping, L. Fowl, W. R. Huang, W. Czaja, G. Taylor, M. Moeller, T. Goldstein.
    "Witches' Brew: Industrial Scale Data Poisoning via Gradient Matching." ICLR 2021.
    https://arxiv.org/abs/2009.02276

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.poisoning.gradient_matching import GradientMatching
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=2)
    >>> x, y = torch.rand(20, 1, 4, 4), torch.arange(20) % 2
    >>> attack = GradientMatching(clf, x[0], target_label=1, budget=0.2, eps=0.1,
    ...                           max_iter=10, random_state=0)
    >>> x_p, y_p, mask = attack.poison(x, y)
    >>> int(mask.sum()), bool(((x_p - x).abs() <= 0.1 + 1e-6).all()), bool(torch.equal(y_p, y))
    (4, True, True)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target": [Satisfies(_is_array, "a finite array (one or more images)")],
        "target_label": [Interval(int, 0, None)],
        "budget": [Interval(float, 0, 1, closed="right")],
        "eps": [Interval(float, 0, None, closed="neither")],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "max_iter": [Interval(int, 0, None)],
        "restarts": [Interval(int, 1, None)],
        "random_state": [RandomState()],
        "verbose": VERBOSE,
    }

    #: How the conformance suite builds it (see ``bastion.testing``): 3 steps, one target.
    _conformance: ClassVar[dict[str, Any]] = {
        "factory": lambda cls, p, **kw: cls(p.estimator, p.x_val[0], **kw),
        "params": {"target_label": 0, "budget": 0.1, "eps": 0.05, "max_iter": 3},
        "note": "perturbs a budget of target-class samples within eps; labels never change",
        "clean_label": True,
        "budget": "eps",
        "progress": ("alignment_history_", "up"),
    }

    def __init__(
        self,
        estimator: Any,
        target: Any,
        *,
        target_label: int,
        budget: float = 0.01,
        eps: float = 16 / 255,
        learning_rate: float = 0.01,
        max_iter: int = 250,
        restarts: int = 1,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.target = target
        self.target_label = target_label
        self.budget = budget
        self.eps = eps
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.restarts = restarts
        self.random_state = random_state
        self.verbose = verbose

    def _validate(self) -> None:
        super()._validate()
        est = self.estimator
        require_capabilities(est, ("predict", "logits"), type(self).__name__)
        if not isinstance(getattr(est, "model", None), torch.nn.Module):
            raise EstimatorError(
                f"{type(self).__name__} needs gradients with respect to the model's parameters: "
                f"a TorchClassifier, got {type(est).__name__}."
            )

    def _targets(self) -> torch.Tensor:
        est = self.estimator
        t, _ = to_tensor(self.target, device=est.device, dtype=est.dtype)
        shape = tuple(est.input_shape)
        if tuple(t.shape) == shape:
            t = t.unsqueeze(0)
        if tuple(t.shape[1:]) != shape:
            raise invalid_parameter(
                "target",
                type(self).__name__,
                f"images of shape {shape} or (T, *{shape})",
                f"an array of shape {tuple(t.shape)}",
            )
        return t

    def poison(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
        """Perturb a budget of training images of class ``target_label``; labels unchanged.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Training images within ``clip_values``.
        y : array-like or torch.Tensor
            Class indices ``(N,)`` or one-hot.

        Returns
        -------
        x_p : same type as ``x``
        y_p : same type as ``y`` (a copy)
        poison_mask : bool array (NumPy for NumPy ``x``, a tensor on x's device otherwise)
        """
        self._validate()
        name = type(self).__name__
        est = self.estimator
        xt, kind = to_tensor(x, dtype=None)
        _image_batch(xt, name, tuple(est.input_shape))
        labels = _class_labels(y, xt.shape[0], est.nb_classes, name)
        if self.target_label >= est.nb_classes:
            raise invalid_parameter(
                "target_label", name, f"a class in [0, {est.nb_classes - 1}]", self.target_label
            )
        targets = self._targets()
        adv = torch.full((targets.shape[0],), int(self.target_label), device=est.device)
        gen = resolve_random_state(self.random_state, "cpu")
        members = torch.nonzero(labels == int(self.target_label)).flatten()
        count = min(math.floor(self.budget * xt.shape[0] + 0.5), members.numel())
        idx = torch.sort(members[torch.randperm(members.numel(), generator=gen)[:count]]).values
        x_p = xt.clone()
        mask = torch.zeros(xt.shape[0], dtype=torch.bool)
        self.alignment_history_: list[float] = []
        self.alignment_ = float("nan")
        if count == 0:
            warnings.warn(f"{name}: the budget {self.budget} gives no poison.", stacklevel=2)
        else:
            base = xt[idx.to(xt.device)].to(device=est.device, dtype=est.dtype)
            y_base = labels[idx].to(est.device)
            g_t = [g.detach() for g in _parameter_gradient(est, targets, adv, create_graph=False)]
            best, best_loss = base, math.inf
            for _ in range(self.restarts):
                delta, loss, hist = self._brew(base, y_base, g_t, gen)
                if loss < best_loss:
                    best, best_loss, self.alignment_history_ = base + delta, loss, hist
            self.alignment_ = 1.0 - best_loss
            x_p[idx.to(xt.device)] = best.to(device=xt.device, dtype=xt.dtype)
            mask[idx] = True
        self.poison_indices_ = idx.numpy()
        return kind.restore(x_p), _copy_like(y), _mask_out(mask, kind.is_tensor, xt.device)

    def _brew(
        self,
        base: torch.Tensor,
        y_base: torch.Tensor,
        g_t: list[torch.Tensor],
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, float, list[float]]:
        est = self.estimator
        eps = float(self.eps)
        lo, hi = est.clip_values if est.clip_values is not None else (-math.inf, math.inf)
        t_norm = torch.stack([(g * g).sum() for g in g_t]).sum().sqrt()
        start = (2 * torch.rand(base.shape, generator=gen, dtype=base.dtype) - 1) * eps
        delta = ((base + start.to(base.device)).clamp(lo, hi) - base).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=float(self.learning_rate))
        n = self.max_iter
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[n * 3 // 8, n * 5 // 8, n * 7 // 8], gamma=0.1
        )

        def matching_loss(d: torch.Tensor, graph: bool) -> torch.Tensor:
            g_p = _parameter_gradient(est, base + d, y_base, create_graph=graph)
            dot = torch.stack([(a * b).sum() for a, b in zip(g_t, g_p, strict=True)]).sum()
            p_norm = torch.stack([(g * g).sum() for g in g_p]).sum().sqrt()
            return 1.0 - dot / (t_norm * p_norm).clamp_min(1e-30)

        history = []
        for _ in tqdm(range(n), desc="GradientMatching", disable=not self.verbose):
            with torch.enable_grad():
                loss = matching_loss(delta, True)
                (grad,) = torch.autograd.grad(loss, delta)
            history.append(1.0 - float(loss.detach()))
            opt.zero_grad(set_to_none=True)
            delta.grad = grad.sign()
            opt.step()
            sched.step()
            with torch.no_grad():
                delta.copy_(((base + delta.clamp(-eps, eps)).clamp(lo, hi)) - base)
        delta = delta.detach()
        final = float(matching_loss(delta, False).detach())
        history.append(1.0 - final)
        return delta, final, history
