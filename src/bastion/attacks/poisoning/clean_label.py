"""Label-consistent (clean-label) backdoor poisoning (Turner, Tsipras and Madry, 2019).

Target-class training images are first made hard to learn with an adversarial perturbation
(PGD on a proxy model), then stamped with the trigger; their labels stay correct, so the
poisons survive a human inspection of the labels. A model that cannot fit the perturbed images
from their content learns to rely on the trigger instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion._tensor import RandomStateLike
from bastion._validation import (
    BATCH_SIZE,
    BUDGET,
    NORM,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
)
from bastion.attacks.poisoning._base import _pick, _share
from bastion.attacks.poisoning.triggers import TRIGGER, Trigger, _TriggerAttack
from bastion.estimators.base import SupportsLossGradient

__all__ = ["CleanLabelBackdoor"]


class CleanLabelBackdoor(_TriggerAttack):
    """Label-consistent backdoor: adversarially perturb target-class images, then add the trigger.

    A fraction of the training images **of the target class** is perturbed with PGD
    (untargeted, on their true label) against a proxy model, within an ``eps``-ball, so that
    their natural features no longer explain their label; the trigger is then stamped on them.
    Labels are never changed (``y_p == y``). A model trained on the poisoned set associates the
    trigger with the target class; at test time the trigger (:meth:`apply_trigger`) sends inputs
    of other classes to the target class.

    Threat model: clean-label data poisoning; the adversary controls part of the training
    images (not their labels) and has white-box access to a proxy model (ideally adversarially
    trained, as in the paper), not necessarily the victim.

    ``poison(x, y)`` takes images ``(N, *input_shape)`` (channel-first, ``(C, H, W)``) inside
    the estimator's ``clip_values``, and labels as class indices or one-hot rows; it returns
    ``y`` unchanged.

    Parameters
    ----------
    estimator : estimator with ``predict`` and ``loss_gradient``
        The proxy model used to compute the adversarial perturbations.
    trigger : Trigger
        The backdoor trigger (:class:`PatchTrigger`, :class:`BlendTrigger` ...). The paper uses
        a small pattern in the four corners, possibly at reduced amplitude.
    target : int
        The target class: its samples are poisoned, and triggered inputs should go to it.
    fraction : float, default=0.5
        Fraction of the target-class samples that are poisoned, in ``(0, 1]``.
    eps : float, default=0.3
        Perturbation budget of PGD (Linf by default; Turner et al. use 8/255 to 16/255 on
        CIFAR-10, larger budgets work better).
    eps_step : float, default=0.05
        PGD step size.
    max_iter : int, default=20
        PGD iterations.
    norm : {"inf", 2, 1}, default="inf"
    num_random_init : int, default=1
        PGD random starts.
    batch_size : int, default=128
    random_state : None, int or torch.Generator, default=None
        Chooses the poisoned samples and seeds PGD and the trigger.
    verbose : bool, default=False

    Attributes
    ----------
    poison_indices_ : numpy.ndarray of int
        Indices of the poisoned samples after :meth:`poison`.

    References
    ----------
    A. Turner, D. Tsipras, A. Madry. "Label-Consistent Backdoor Attacks." arXiv:1912.02771,
    2019. https://arxiv.org/abs/1912.02771

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.poisoning import PatchTrigger
    >>> from bastion.attacks.poisoning.clean_label import CleanLabelBackdoor
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=2)
    >>> x, y = torch.rand(10, 1, 4, 4) * 0.5, torch.arange(10) % 2
    >>> attack = CleanLabelBackdoor(clf, PatchTrigger(size=1), target=1, fraction=0.4,
    ...                             eps=0.1, max_iter=5, random_state=0)
    >>> x_p, y_p, mask = attack.poison(x, y)
    >>> int(mask.sum()), bool(torch.equal(y_p, y)), float(x_p[mask][:, 0, 3, 3].min())
    (2, True, 1.0)
    """

    estimator: SupportsLossGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "trigger": TRIGGER,
        "target": [Interval(int, 0, None)],
        "fraction": [Interval(float, 0, 1, closed="right")],
        "eps": BUDGET,
        "eps_step": BUDGET,
        "max_iter": [Interval(int, 0, None)],
        "norm": [NORM],
        "num_random_init": [Interval(int, 0, None)],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    # What the PGD it runs needs.
    _estimator_requirements = ("predict", "loss_gradient")
    _class_parameters = ("target",)

    def __init__(
        self,
        estimator: SupportsLossGradient,
        trigger: Trigger,
        *,
        target: int,
        fraction: float = 0.5,
        eps: float = 0.3,
        eps_step: float = 0.05,
        max_iter: int = 20,
        norm: Any = "inf",
        num_random_init: int = 1,
        batch_size: int = 128,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.trigger = trigger
        self.target = target
        self.fraction = fraction
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.norm = norm
        self.num_random_init = num_random_init
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _why_nothing(self) -> str:
        return f"fraction={self.fraction} of the target class {self.target} rounds to zero samples"

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        from bastion.attacks.evasion.projected_gradient import PGD

        est = self.estimator
        target = int(self.target)
        idx = _pick(y, target, _share(y, target, float(self.fraction)), generator)
        if not idx.numel():
            return idx, x[:0], None
        pgd = PGD(
            est,
            eps=self.eps,
            eps_step=self.eps_step,
            max_iter=self.max_iter,
            norm=self.norm,
            num_random_init=self.num_random_init,
            batch_size=self.batch_size,
            random_state=generator,
            verbose=self.verbose,
        )
        x_adv = pgd.generate(x[idx.to(x.device)].to(device=est.device, dtype=est.dtype), y[idx])
        return idx, self.trigger._apply_tensor(x_adv, generator), None
