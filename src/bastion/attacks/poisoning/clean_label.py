"""Label-consistent (clean-label) backdoor poisoning (Turner, Tsipras and Madry, 2019).

Target-class training images are first made hard to learn with an adversarial perturbation
(PGD on a proxy model), then stamped with the trigger; their labels stay correct, so the
poisons survive a human inspection of the labels. A model that cannot fit the perturbed images
from their content learns to rely on the trigger instead.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    Constraint,
    Interval,
    RandomState,
    Satisfies,
    check_labels,
    invalid_parameter,
)
from bastion.attacks.base import BATCH_SIZE, BUDGET, NORM, VERBOSE
from bastion.attacks.poisoning._base import PoisoningAttack, _image_batch
from bastion.attacks.poisoning.triggers import Trigger
from bastion.estimators.base import require_capabilities
from bastion.exceptions import InputError

__all__ = ["CleanLabelBackdoor"]


def _class_labels(y: Any, n: int, nb_classes: int | None, owner: str) -> torch.Tensor:
    """Class indices (N,) int64 on the CPU from indices or one-hot rows; checked against x."""
    yt, _ = to_tensor(y, dtype=None)
    raw = yt.argmax(dim=1) if yt.ndim == 2 else yt
    if raw.ndim != 1:
        raise InputError(
            f"{owner}: y must be class indices (N,) or one-hot (N, K); got {tuple(yt.shape)}."
        )
    if raw.is_floating_point() and not bool((raw == raw.round()).all()):
        raise InputError(f"{owner}: y must hold integer class indices.")
    k = int(nb_classes) if nb_classes is not None else max(int(raw.max()) + 1 if n else 2, 2)
    return check_labels(raw.to(torch.int64).cpu(), n=n, nb_classes=k)


def _pick(labels: torch.Tensor, cls: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """``round(fraction * n_cls)`` indices of class ``cls`` chosen uniformly (sorted, CPU)."""
    members = torch.nonzero(labels == cls).flatten()
    count = math.floor(fraction * members.numel() + 0.5)
    idx = members[torch.randperm(members.numel(), generator=gen)[:count]]
    return torch.sort(idx).values


def _copy_like(y: Any) -> Any:
    return y.clone() if isinstance(y, torch.Tensor) else np.array(y, copy=True)


def _mask_out(mask: torch.Tensor, like_tensor: bool, device: Any) -> Any:
    return mask.to(device) if like_tensor else mask.numpy()


class CleanLabelBackdoor(PoisoningAttack):
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

    Parameters
    ----------
    estimator : estimator with ``loss_gradient``
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

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "trigger": [Satisfies(lambda t: isinstance(t, Trigger), "a Trigger instance")],
        "target": [Interval(int, 0, None)],
        "fraction": [Interval(float, 0, 1, closed="right")],
        "eps": BUDGET,
        "eps_step": BUDGET,
        "max_iter": [Interval(int, 0, None)],
        "norm": [NORM],
        "num_random_init": [Interval(int, 0, None)],
        "batch_size": BATCH_SIZE,
        "random_state": [RandomState()],
        "verbose": VERBOSE,
    }

    #: How the conformance suite builds it (see ``bastion.testing``): a 3-step PGD.
    _conformance: ClassVar[dict[str, Any]] = {
        "factory": lambda cls, p, **kw: cls(p.estimator, p.trigger, **kw),
        "params": {"target": 0, "fraction": 0.5, "eps": 0.1, "eps_step": 0.05, "max_iter": 3},
        "note": "PGD within eps, then the trigger is stamped; labels never change",
        "clean_label": True,
        "stamps_trigger": True,
        "budget": "eps",
    }

    def __init__(
        self,
        estimator: Any,
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

    def _validate(self) -> None:
        super()._validate()
        self.trigger._validate()
        require_capabilities(self.estimator, ("predict", "loss_gradient"), type(self).__name__)

    def apply_trigger(self, x: Any) -> Any:
        """Stamp the trigger on every sample of ``x`` (test inputs); same type out as in."""
        self.trigger._validate()
        return self.trigger.apply(x, random_state=self.random_state)

    def poison(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
        """Poison a training set without changing its labels.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Training images, within the estimator's ``clip_values``.
        y : array-like or torch.Tensor
            Class indices ``(N,)`` or one-hot ``(N, nb_classes)``.

        Returns
        -------
        x_p : same type as ``x``
            The images, with the chosen target-class samples perturbed and triggered.
        y_p : same type as ``y``
            A copy of ``y`` (labels are consistent with the content).
        poison_mask : bool array (NumPy for NumPy ``x``, a tensor on x's device otherwise)
            True where a sample was poisoned.
        """
        from bastion.attacks.evasion.projected_gradient import PGD

        self._validate()
        name = type(self).__name__
        est = self.estimator
        xt, kind = to_tensor(x, dtype=None)
        _image_batch(xt, name)
        labels = _class_labels(y, xt.shape[0], est.nb_classes, name)
        if self.target >= est.nb_classes:
            raise invalid_parameter(
                "target", name, f"a class in [0, {est.nb_classes - 1}]", self.target
            )
        gen = resolve_random_state(self.random_state, "cpu")
        idx = _pick(labels, int(self.target), float(self.fraction), gen)
        x_p = xt.clone()
        if idx.numel() == 0:
            warnings.warn(
                f"{name}: no sample was poisoned (fraction={self.fraction} of the target class "
                f"{self.target} rounds to zero samples).",
                stacklevel=2,
            )
        else:
            x_sel = xt[idx.to(xt.device)].to(device=est.device, dtype=est.dtype)
            pgd = PGD(
                est,
                eps=self.eps,
                eps_step=self.eps_step,
                max_iter=self.max_iter,
                norm=self.norm,
                num_random_init=self.num_random_init,
                batch_size=self.batch_size,
                random_state=gen,
                verbose=self.verbose,
            )
            x_adv = pgd.generate(x_sel, labels[idx].to(est.device))
            stamped = self.trigger._apply_tensor(x_adv, gen)
            x_p[idx.to(xt.device)] = stamped.to(device=xt.device, dtype=xt.dtype)
        mask = torch.zeros(xt.shape[0], dtype=torch.bool)
        mask[idx] = True
        self.poison_indices_ = idx.numpy()
        return kind.restore(x_p), _copy_like(y), _mask_out(mask, kind.is_tensor, xt.device)
