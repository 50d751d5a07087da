"""The cheap recipes: Fast-FGSM ("fast is better than free"), free adversarial training
(minibatch replays), and adversarial training with any bastion attack."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch

from bastion._tensor import RandomStateLike
from bastion._validation import NONE, Constraint, Interval, Options, Satisfies
from bastion.attacks._lp import project_point
from bastion.defenses.training.adversarial._docs import fill_doc
from bastion.defenses.training.adversarial._inner import ce_objective, global_noise, pgd
from bastion.defenses.training.adversarial._loop import AdversarialTrainingLoop
from bastion.defenses.training.adversarial._state import (
    LOOP_CONSTRAINTS,
    NB_SUMS,
    RANDOM_START,
    _Batch,
    _Run,
    _step_sums,
    copy_state,
    cross_entropy,
)
from bastion.estimators.base import SupportsTorchModuleAndPredict
from bastion.exceptions import InvalidParameterError

__all__ = ["AdversarialTrainer", "FastFGSMTrainer", "FreeAdversarialTrainer"]

_EPS: list[Constraint] = [Interval(float, 0, None, closed="neither")]


class FastFGSMTrainer(AdversarialTrainingLoop):
    __doc__ = fill_doc(
        """Fast adversarial training with FGSM from a random start (Wong et al. 2020).

    Each step draws a uniform random start in the Linf ``eps``-box, takes one FGSM step of
    ``eps_step`` (default ``1.25 * eps``) from it, projects back, and trains on the result;
    the learning rate follows a cyclic schedule updated every step.

    Fast-FGSM can overfit catastrophically: within an epoch, the model learns to defeat the
    single-step attack while its PGD robustness collapses to zero. After each epoch the trainer
    checks, on the epoch's first training batch, PGD accuracy (10 steps of ``eps / 4`` from a
    random start) against the previous epoch's (Wong et al.'s criterion: a drop of more than
    ``overfit_drop``) and against the accuracy under the training attack (a gap of more than
    ``overfit_gap``: the FGSM examples no longer resemble the worst case). Either fires a
    ``RuntimeWarning``; with ``stop_on_overfit=True`` training stops and the weights of the
    last good epoch are restored. The records of ``history_`` carry ``check_pgd_accuracy``,
    ``check_fgsm_accuracy`` and ``overfit``.

    Paper settings (MNIST, the defaults): ``eps=0.3``, step ``0.375 = 1.25 eps``, 10 epochs
    of batches of 100, Adam with a cyclic learning rate peaking at 5e-3. CIFAR-10: ``eps=8/255``,
    step 10/255, 15 epochs, SGD (momentum 0.9, weight decay 5e-4) peaking at 0.2.

    Parameters
    ----------
    estimator : estimator with the ``module`` capability
    eps : float
        Linf training budget.
    eps_step : float or None
        FGSM step; ``None``: ``1.25 * eps``.
    num_random_init : {0, 1}
        1: the uniform random start that makes FGSM training work; 0: plain FGSM from ``x``
        (Goodfellow et al.), which overfits catastrophically with large steps.
    overfit_drop : float
        PGD accuracy drop (between two epochs) that signals catastrophic overfitting.
    overfit_gap : float
        Gap between FGSM and PGD accuracy that signals it.
    stop_on_overfit : bool
        Stop and restore the last good weights when it is detected (else only warn).
{loop}

{attributes}

    References
    ----------
    Wong, Rice and Kolter, "Fast is better than free: Revisiting adversarial training",
    ICLR 2020. https://arxiv.org/abs/2001.03994

    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR
    2015. https://arxiv.org/abs/1412.6572

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import FastFGSMTrainer
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> clf = TorchClassifier(MLP(64, 10, random_state=0), input_shape=x.shape[1:],
    ...                       nb_classes=10)
    >>> trainer = FastFGSMTrainer(clf, eps=0.1, epochs=2, random_state=0).fit(x, y)
    >>> [round(r["learning_rate"], 4) for r in trainer.history_]  # cyclic
    [0.0045, 0.0003]
    """
    )

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **LOOP_CONSTRAINTS,
        "eps": _EPS,
        "eps_step": [NONE, *_EPS],
        "num_random_init": RANDOM_START,
        "overfit_drop": [Interval(float, 0, 1)],
        "overfit_gap": [Interval(float, 0, 1)],
        "stop_on_overfit": [Options([True, False])],
    }

    def __init__(
        self,
        estimator: SupportsTorchModuleAndPredict,
        *,
        eps: float = 0.3,
        eps_step: float | None = None,
        num_random_init: int = 1,
        overfit_drop: float = 0.2,
        overfit_gap: float = 0.5,
        stop_on_overfit: bool = False,
        epochs: int = 10,
        batch_size: int = 100,
        optimizer: str = "adam",
        learning_rate: float = 5e-3,
        schedule: str | None = "cyclic",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        validation_attack: Any = "pgd-20",
        checkpoint_dir: Any = None,
        random_state: RandomStateLike = 0,
        verbose: bool = False,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.eps_step = eps_step
        self.num_random_init = num_random_init
        self.overfit_drop = overfit_drop
        self.overfit_gap = overfit_gap
        self.stop_on_overfit = stop_on_overfit
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.schedule = schedule
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.validation_attack = validation_attack
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose
        self.amp = amp
        self.channels_last = channels_last

    def _budget(self) -> tuple[float, str]:
        return float(self.eps), "inf"

    def _fgsm(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch, purpose: str
    ) -> torch.Tensor:
        eps = float(self.eps)
        start = x
        if self.num_random_init:
            start = x + global_noise(
                "ball",
                batch.seed(purpose),
                (batch.n_global, *x.shape[1:]),
                batch.positions,
                eps=eps,
                norm="inf",
                device=x.device,
                dtype=x.dtype,
            )
        step = 1.25 * eps if self.eps_step is None else float(self.eps_step)
        return pgd(
            run.forward,
            x,
            start,
            ce_objective(y),
            eps=eps,
            eps_step=step,
            max_iter=1,
            norm="inf",
            clip_values=self.estimator.clip_values,
        )

    def _make_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        return self._fgsm(run, x, y, batch, "start")

    def _losses(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits = run.train_forward(x_adv)
        return cross_entropy(logits, y), logits, None

    def _begin(self, run: _Run) -> None:
        if "good_model" not in run.extra:
            run.extra["good_model"] = copy_state(run.module)

    def _end_epoch(self, run: _Run, epoch: int, record: dict[str, Any]) -> None:
        if run.first_batch is None:
            return
        x, y = run.first_batch
        batch = _Batch(epoch, -1, 0, None, run.base_seed)
        batch.n_global, batch.positions = int(x.shape[0]), None
        run.module.eval()
        eps = float(self.eps)
        start = x + global_noise(
            "ball",
            batch.seed("check"),
            x.shape,
            None,
            eps=eps,
            norm="inf",
            device=x.device,
            dtype=x.dtype,
        )
        x_pgd = pgd(
            run.forward,
            x,
            start,
            ce_objective(y),
            eps=eps,
            eps_step=eps / 4,
            max_iter=10,
            norm="inf",
            clip_values=self.estimator.clip_values,
        )
        x_fgsm = self._fgsm(run, x, y, batch, "check-fgsm")
        with torch.no_grad():
            counts = torch.stack(
                [
                    (run.forward(x_pgd).argmax(1) == y).sum(),
                    (run.forward(x_fgsm).argmax(1) == y).sum(),
                    torch.tensor(x.shape[0], device=x.device),
                ]
            ).to(torch.float64)
        run.dp.sum(counts)
        pgd_acc, fgsm_acc = float(counts[0] / counts[2]), float(counts[1] / counts[2])
        prev = run.extra.get("check_pgd_accuracy")
        overfit = (prev is not None and pgd_acc < float(prev) - self.overfit_drop) or (
            fgsm_acc - pgd_acc > self.overfit_gap
        )
        record.update(check_pgd_accuracy=pgd_acc, check_fgsm_accuracy=fgsm_acc, overfit=overfit)
        if not overfit:
            run.extra["check_pgd_accuracy"] = pgd_acc
            run.extra["good_model"] = copy_state(run.module)
            return
        action = (
            "training stops and the weights of the last good epoch are restored"
            if self.stop_on_overfit
            else "pass stop_on_overfit=True to stop and restore the last good weights, or use "
            "a smaller eps_step or the random start"
        )
        warnings.warn(
            f"FastFGSMTrainer: catastrophic overfitting at epoch {epoch}: PGD accuracy on a "
            f"training batch is {pgd_acc:.2f} (previous epoch: "
            f"{'n/a' if prev is None else f'{float(prev):.2f}'}) while FGSM accuracy is "
            f"{fgsm_acc:.2f}; the model resists only the single-step attack. {action}.",
            RuntimeWarning,
            stacklevel=4,
        )
        if self.stop_on_overfit:
            run.module.load_state_dict(run.extra["good_model"])
            run.stop = True


class FreeAdversarialTrainer(AdversarialTrainingLoop):
    __doc__ = fill_doc(
        """Free adversarial training (Shafahi et al. 2019): each minibatch is replayed
    ``replays`` times; every replay's backward pass gives both the weight gradient (one
    optimiser step) and the input gradient, which updates a perturbation by ``eps * sign``
    (clipped to the Linf ball): the adversarial examples cost nothing extra.

    The perturbation persists across the replays of a batch and on to the next batch (the
    paper's warm start), and is reset to zero at the start of each epoch (so a checkpoint needs
    no perturbation state). Here ``epochs`` counts passes over the data, each costing
    ``replays`` optimiser steps per batch: the paper trains ``N / m`` passes to match the cost
    of ``N`` natural epochs, so divide your epoch budget by ``replays`` yourself.

    Paper settings (CIFAR-10): ``eps=8/255``, ``replays=8`` (the default), N/m passes, SGD
    with learning rate 0.1, momentum 0.9 and weight decay 2e-4, piecewise decay. The budget
    default here is the MNIST ``eps=0.3`` of the other recipes.

    Parameters
    ----------
    estimator : estimator with the ``module`` capability
    eps : float
        Linf budget, also the perturbation's step.
    replays : int
        Replays ``m`` of each minibatch.
{loop}

{attributes}

    References
    ----------
    Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor and Goldstein, "Adversarial
    Training for Free!", NeurIPS 2019. https://arxiv.org/abs/1904.12843

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import FreeAdversarialTrainer
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> clf = TorchClassifier(MLP(64, 10, random_state=0), input_shape=x.shape[1:],
    ...                       nb_classes=10)
    >>> trainer = FreeAdversarialTrainer(clf, eps=0.1, replays=2, epochs=1,
    ...                                  learning_rate=0.05, random_state=0).fit(x, y)
    >>> len(trainer.history_)
    1
    """
    )

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **LOOP_CONSTRAINTS,
        "eps": _EPS,
        "replays": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        estimator: SupportsTorchModuleAndPredict,
        *,
        eps: float = 0.3,
        replays: int = 8,
        epochs: int = 10,
        batch_size: int = 128,
        optimizer: str = "sgd",
        learning_rate: float = 0.1,
        schedule: str | None = "piecewise",
        momentum: float = 0.9,
        weight_decay: float = 2e-4,
        validation_attack: Any = "pgd-20",
        checkpoint_dir: Any = None,
        random_state: RandomStateLike = 0,
        verbose: bool = False,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.replays = replays
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.schedule = schedule
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.validation_attack = validation_attack
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose
        self.amp = amp
        self.channels_last = channels_last

    def _budget(self) -> tuple[float, str]:
        return float(self.eps), "inf"

    def _train_step(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        eps, clip = float(self.eps), self.estimator.clip_values
        eps_t = torch.tensor(eps, device=x.device, dtype=x.dtype)
        delta = run.extra.get("delta")
        if batch.index == 0 or delta is None or delta.shape[1:] != x.shape[1:]:
            delta = torch.zeros_like(x)
        elif delta.shape[0] != x.shape[0]:  # a batch of another size (the last one)
            delta = torch.cat([delta, torch.zeros_like(x)])[: x.shape[0]]
        run.module.train()
        scale = run.dp.loss_scale(batch.n_global)
        sums = torch.zeros(NB_SUMS, device=x.device, dtype=torch.float64)
        for _ in range(self.replays):
            x_adv = project_point(x + delta, x, eps_t, "inf", clip).requires_grad_(True)
            logits = run.train_forward(x_adv)
            loss_sum = cross_entropy(logits, y).sum()
            run.optimizer.zero_grad(set_to_none=True)
            self._backward(run, loss_sum * scale)
            grad = x_adv.grad
            self._optimizer_step(run)
            if grad is not None:
                delta = (delta + eps * grad.sign()).clamp(-eps, eps)
            sums += _step_sums(loss_sum, None, logits, y)
        run.extra["delta"] = delta.detach()
        return sums / self.replays

    def _end_epoch(self, run: _Run, epoch: int, record: dict[str, Any]) -> None:
        run.extra.pop("delta", None)


def _is_attack(value: Any) -> bool:
    return callable(getattr(value, "generate", None)) and hasattr(value, "estimator")


class AdversarialTrainer(AdversarialTrainingLoop):
    __doc__ = fill_doc(
        """Adversarial training with any bastion evasion attack, mixing clean and adversarial
    samples (Goodfellow et al. 2015).

    In every batch a fraction ``ratio`` of the samples (the first ones of the shuffled batch)
    is replaced by ``attack.generate(x, y)``, made with the model as it is at that step; the
    model trains on the mixture with the cross-entropy. ``ratio=0.5`` is, in expectation,
    Goodfellow et al.'s objective ``0.5 J(x) + 0.5 J(x_adv)``; ``ratio=1`` trains on
    adversarial examples only. The attack reaches the model through the estimator's public
    API (queries counted, eval mode), so any attack works, at the attack's own cost; its
    randomness is its own ``random_state``.

    The validation attack ``"pgd-K"`` and :meth:`evaluate` use the attack's ``eps`` and
    ``norm`` (an attack without ``eps`` needs an attack object, or None, for validation).

    Parameters
    ----------
    estimator : estimator with the ``module`` capability
    attack : bastion evasion attack
        Built on ``estimator`` itself (the model being trained).
    ratio : float in (0, 1]
        Fraction of each batch replaced by adversarial examples.
{loop}

{attributes}

    References
    ----------
    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR
    2015. https://arxiv.org/abs/1412.6572

    Examples
    --------
    >>> from bastion.attacks.evasion import FGSM
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import AdversarialTrainer
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> clf = TorchClassifier(MLP(64, 10, random_state=0), input_shape=x.shape[1:],
    ...                       nb_classes=10)
    >>> trainer = AdversarialTrainer(clf, FGSM(clf, eps=0.1), ratio=0.5, epochs=1,
    ...                              learning_rate=0.05, random_state=0).fit(x, y)
    >>> len(trainer.history_)
    1
    """
    )

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **LOOP_CONSTRAINTS,
        "attack": [Satisfies(_is_attack, "a bastion evasion attack")],
        "ratio": [Interval(float, 0, 1, closed="right")],
    }

    def __init__(
        self,
        estimator: SupportsTorchModuleAndPredict,
        attack: Any,
        *,
        ratio: float = 0.5,
        epochs: int = 20,
        batch_size: int = 128,
        optimizer: str = "sgd",
        learning_rate: float = 0.1,
        schedule: str | None = "piecewise",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        validation_attack: Any = "pgd-20",
        checkpoint_dir: Any = None,
        random_state: RandomStateLike = 0,
        verbose: bool = False,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.estimator = estimator
        self.attack = attack
        self.ratio = ratio
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.schedule = schedule
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.validation_attack = validation_attack
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose
        self.amp = amp
        self.channels_last = channels_last

    def _budget(self) -> tuple[float, str]:
        eps = getattr(self.attack, "eps", None)
        eps = float(eps) if isinstance(eps, (int, float)) else math.nan
        norm = str(getattr(self.attack, "norm", "inf"))
        return eps, "inf" if norm in ("inf", "Infinity") else norm

    def _check_setup(self) -> None:
        self._validate()
        if self.attack.estimator is not self.estimator:
            raise InvalidParameterError(
                "The 'attack' parameter of AdversarialTrainer must be built on the trainer's "
                "own estimator (the model being trained); this attack's estimator is "
                f"another object ({type(self.attack.estimator).__name__})."
            )
        super()._check_setup()

    def _make_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        k = round(float(self.ratio) * batch.n_global)
        pos = batch.positions
        chosen = (pos < k) if pos is not None else torch.arange(x.shape[0], device=x.device) < k
        if not bool(chosen.any()):
            return x
        out = x.clone()
        out[chosen] = self.attack.generate(x[chosen], y[chosen])
        return out

    def _losses(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits = run.train_forward(x_adv)
        return cross_entropy(logits, y), logits, None
