"""Virtual adversarial perturbations (Miyato et al.)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion._validation import BATCH_SIZE, BUDGET, RANDOM_STATE, VERBOSE, Constraint, Interval
from bastion.attacks._batch import per_sample as _view
from bastion.attacks.base import FixedBudgetAttack
from bastion.estimators.base import SupportsClassGradient

__all__ = ["VirtualAdversarialMethod"]


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    return v / _view(n, v)


class VirtualAdversarialMethod(FixedBudgetAttack):
    """Virtual adversarial perturbation: the L2 direction of radius ``eps`` that changes the
    model's output distribution most (in KL divergence), found without labels.

    The direction is the dominant eigenvector of the Hessian of
    ``r -> KL(p(x) || p(x + r))`` at ``r = 0``, estimated by ``max_iter`` power iterations, each
    one gradient evaluation at ``x + xi * d``: ``d <- normalise(grad_r KL(p(x) || p(x + xi d)))``
    from a random unit ``d``. Then ``x_adv = x + eps * d`` (projected onto the box). Labels are
    not used: the perturbation is "virtual", relative to the model's own predictions, which is
    why it also serves as a label-free smoothness regulariser (virtual adversarial training).

    Threat model: white-box (gradients through the logits), label-free. Norm: 2.

    Parameters
    ----------
    estimator : estimator with ``class_gradient``
    eps : float or array-like of float, default 2.0
        L2 radius, one value or one per sample.
    max_iter : int, default 1
        Power iterations (the paper finds one enough).
    xi : float, default 1e-3
        Finite-difference radius at which each power iteration evaluates the gradient.
    batch_size : int, default 128
    random_state : None, int or torch.Generator
        Seeds the initial random direction.
    verbose : bool, default False

    References
    ----------
    Miyato, Maeda, Koyama, Nakae and Ishii, "Distributional Smoothing with Virtual Adversarial
    Training", ICLR 2016. https://arxiv.org/abs/1507.00677

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion import VirtualAdversarialMethod
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = VirtualAdversarialMethod(clf, eps=0.5, random_state=0).generate(x)
    >>> bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
    True
    """

    estimator: SupportsClassGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "max_iter": [Interval(int, 1, None)],
        "xi": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "class_gradient")
    #: The perturbation is measured in L2.
    norm = 2

    def __init__(
        self,
        estimator: SupportsClassGradient,
        *,
        eps: Any = 2.0,
        max_iter: int = 1,
        xi: float = 1e-3,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.max_iter = max_iter
        self.xi = xi
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
        **_: torch.Tensor,
    ) -> torch.Tensor:
        est = self.estimator
        with torch.no_grad():
            log_p = torch.log_softmax(est.logits_tensor(x), dim=1)

        def kl_from_clean(z: torch.Tensor) -> torch.Tensor:
            return (log_p.exp() * (log_p - torch.log_softmax(z, dim=1))).sum(dim=1)

        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if mask is not None:
            d = d * mask
        d = _unit(d)
        for _step in range(self.max_iter):
            grad = est.objective_gradient_tensor(x + self.xi * d, kl_from_clean)[0]
            if mask is not None:
                grad = grad * mask
            d = _unit(grad)
        return x + eps * d
