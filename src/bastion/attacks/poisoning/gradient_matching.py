"""Gradient-matching poisoning ("Witches' Brew", Geiping et al. 2021).

Small, bounded perturbations of a few correctly labelled training images are optimised so that
the training gradient they produce points the same way as the gradient that would teach the
model the attacker's goal (a target image classified as an adversarial class). Training from
scratch on the poisoned set then follows that gradient and misclassifies the target.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import torch
from tqdm.auto import tqdm

from bastion._tensor import RandomStateLike
from bastion._validation import RANDOM_STATE, VERBOSE, Constraint, Interval, Satisfies
from bastion.attacks.poisoning._base import PoisoningAttack, _is_array, _pick, _target_images
from bastion.estimators.base import SupportsParameterGradient, SupportsPredict

__all__ = ["GradientMatching"]


def _dot(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Inner product of two parameter gradients (one tensor per parameter)."""
    return torch.stack([(u * v).sum() for u, v in zip(a, b, strict=True)]).sum()


class _SupportsParameterGradientAndPredict(SupportsParameterGradient, SupportsPredict, Protocol):
    """Parameter gradients, and the input shape, range and device of the estimator."""


class GradientMatching(PoisoningAttack):
    """Witches' Brew: poisons whose training gradient aligns with the adversarial gradient.

    With ``g_t = grad_theta L(f(x_t), y_adv)`` the gradient for the target image ``x_t`` and
    its adversarial label ``y_adv``, the perturbations ``delta`` of the poisons (training
    images of the class ``target_label``, correctly labelled) minimise the gradient-matching
    loss

    ``1 - cos(g_t, grad_theta (1/P) sum_i L(f(x_i + delta_i), y_i))``

    subject to ``||delta_i||_inf <= eps`` and ``x_i + delta_i`` in ``clip_values``. As in the
    paper, the optimiser is signed Adam (Adam fed with the sign of the gradient), the step size
    drops by 10x at 3/8, 5/8 and 7/8 of ``max_iter``, and ``num_random_init`` random starts keep the
    perturbation of lowest loss. The differentiable data augmentation of the paper is not
    applied.

    Threat model: clean-label, targeted data poisoning; the adversary knows the architecture
    and a model trained on clean data (the victim retrains from scratch on the poisoned set),
    and perturbs a small budget of training images within ``eps``.

    ``poison(x, y)`` takes the training set ``(N, *input_shape)`` inside the estimator's
    ``clip_values`` and its labels; it returns ``y`` unchanged.

    Parameters
    ----------
    estimator : estimator with ``parameter_gradient``
        A model trained on clean data (the surrogate the gradients come from, e.g. a
        :class:`~bastion.estimators.TorchClassifier`): the training gradients and their
        derivative with respect to the poisons come from ``parameter_gradient_tensor``.
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
    num_random_init : int, default=1
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

    estimator: _SupportsParameterGradientAndPredict

    _renamed: ClassVar[dict[str, Any]] = {"restarts": "num_random_init"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target": [Satisfies(_is_array, "a finite array (one or more images)")],
        "target_label": [Interval(int, 0, None)],
        "budget": [Interval(float, 0, 1, closed="right")],
        "eps": [Interval(float, 0, None, closed="neither")],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "max_iter": [Interval(int, 0, None)],
        "num_random_init": [Interval(int, 1, None)],
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("parameter_gradient",)
    _sample_ndim = None  # any input shape: (N, *input_shape)
    _class_parameters = ("target_label",)

    def __init__(
        self,
        estimator: _SupportsParameterGradientAndPredict,
        target: Any,
        *,
        target_label: int,
        budget: float = 0.01,
        eps: float = 16 / 255,
        learning_rate: float = 0.01,
        max_iter: int = 250,
        num_random_init: int = 1,
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
        self.num_random_init = num_random_init
        self.random_state = random_state
        self.verbose = verbose

    def _why_nothing(self) -> str:
        return f"the budget {self.budget} gives no poison of class {self.target_label}"

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        est = self.estimator
        targets = _target_images(self.target, est, type(self).__name__, single=False)
        adv = torch.full((targets.shape[0],), int(self.target_label), device=est.device)
        members = int((y == int(self.target_label)).sum())
        count = min(math.floor(self.budget * x.shape[0] + 0.5), members)
        idx = _pick(y, int(self.target_label), count, generator)
        self.alignment_history_: list[float] = []
        self.alignment_ = float("nan")
        if not count:
            return idx, x[:0], None
        base = x[idx.to(x.device)].to(device=est.device, dtype=est.dtype)
        y_base = y[idx].to(est.device)
        g_t = tuple(g.detach() for g in est.parameter_gradient_tensor(targets, adv))
        best, best_loss = base, math.inf
        for _ in range(self.num_random_init):
            delta, loss, hist = self._brew(base, y_base, g_t, generator)
            if loss < best_loss:
                best, best_loss, self.alignment_history_ = base + delta, loss, hist
        self.alignment_ = 1.0 - best_loss
        return idx, best, None

    def _brew(
        self,
        base: torch.Tensor,
        y_base: torch.Tensor,
        g_t: tuple[torch.Tensor, ...],
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, float, list[float]]:
        est = self.estimator
        eps = float(self.eps)
        lo, hi = est.clip_values if est.clip_values is not None else (-math.inf, math.inf)
        t_norm = _dot(g_t, g_t).sqrt()
        start = (2 * torch.rand(base.shape, generator=gen, dtype=base.dtype) - 1) * eps
        delta = ((base + start.to(base.device)).clamp(lo, hi) - base).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=float(self.learning_rate))
        n = self.max_iter
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[n * 3 // 8, n * 5 // 8, n * 7 // 8], gamma=0.1
        )

        def matching_loss(d: torch.Tensor, graph: bool) -> torch.Tensor:
            # With graph=True the poisons' gradient stays differentiable in d.
            g_p = est.parameter_gradient_tensor(base + d, y_base, create_graph=graph)
            p_norm = _dot(g_p, g_p).sqrt()
            return 1.0 - _dot(g_t, g_p) / (t_norm * p_norm).clamp_min(1e-30)

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
