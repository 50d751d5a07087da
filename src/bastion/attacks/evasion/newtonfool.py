"""NewtonFool (Jang et al. 2017)."""

from __future__ import annotations

from typing import ClassVar

import torch

from bastion._validation import BATCH_SIZE, VERBOSE, Constraint, Interval
from bastion.attacks._batch import per_sample as _view
from bastion.attacks.base import MinimumNormAttack
from bastion.estimators.base import SupportsClassGradient

__all__ = ["NewtonFool"]


class NewtonFool(MinimumNormAttack):
    """NewtonFool: Newton-like steps that drive the probability of the true class down to
    ``1 / nb_classes``.

    With ``p(x)`` the probability of the label ``y`` and ``g`` its gradient, each step is
    ``x <- x - delta * g / ||g||^2`` with ``delta = min(eta * ||x_0|| * ||g||, p(x) - 1/K)``:
    a Newton step for the equation ``p(x) = 1/K``, its length bounded by ``eta`` relative to
    the input's norm. Samples stop as soon as they are misclassified (and leave the batch);
    samples never misclassified come back unchanged (minimum-norm template).

    Threat model: white-box (gradients of the class probabilities), untargeted. Norm: L2 (the
    attack does not take a budget; it finds small perturbations).

    Parameters
    ----------
    estimator : estimator with ``class_gradient``
    max_iter : int, default 100
    eta : float, default 0.01
        Bounds the step length: ``eta * ||x_0||_2 * ||g||_2`` of probability decrease.
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Jang, Wu and Jha, "Objective Metrics and Gradient Descent Algorithms for Adversarial
    Examples in Machine Learning", ACSAC 2017. https://doi.org/10.1145/3134600.3134635

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion import NewtonFool
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x_adv = NewtonFool(clf, max_iter=20).generate(torch.rand(5, 4))
    >>> x_adv.shape
    torch.Size([5, 4])
    """

    estimator: SupportsClassGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_iter": [Interval(int, 0, None)],
        "eta": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "class_gradient")
    #: NewtonFool is untargeted by definition.
    targeted = False

    def __init__(
        self,
        estimator: SupportsClassGradient,
        *,
        max_iter: int = 100,
        eta: float = 0.01,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.max_iter = max_iter
        self.eta = eta
        self.batch_size = batch_size
        self.verbose = verbose

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        est = self.estimator
        clip = est.clip_values
        inv_k = 1.0 / est.nb_classes
        x_norm = x.flatten(1).norm(dim=1)
        x_adv = x.clone()
        active = torch.arange(x.shape[0], device=x.device)
        for _step in range(self.max_iter):
            xa, ya = x_adv[active], y[active]

            def prob_of_label(z: torch.Tensor, ya: torch.Tensor = ya) -> torch.Tensor:
                return torch.softmax(z, dim=1).gather(1, ya.view(-1, 1)).squeeze(1)

            grad, p, logits = est.objective_gradient_tensor(xa, prob_of_label)
            # Misclassified samples stop here, before taking another step.
            still = logits.argmax(dim=1) == ya
            if not bool(still.all()):
                active, xa, grad, p = active[still], xa[still], grad[still], p[still]
            if active.numel() == 0:
                break
            if mask is not None:
                grad = grad * (mask[active] if mask.shape[0] > 1 else mask)
            g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = torch.minimum(self.eta * x_norm[active] * g_norm, (p - inv_k).clamp_min(0))
            step = -_view(delta / g_norm**2, grad) * grad
            x_new = xa + step
            if clip is not None:
                x_new = x_new.clamp(*clip)
            x_adv.index_copy_(0, active, x_new)
        return x_adv
