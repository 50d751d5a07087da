"""The multi-step adversarial training recipes (Madry PGD, TRADES, MART, with adversarial
weight perturbation): each one is the shared loop plus how its training batch's adversarial
examples are made and its loss.

Every recipe's docstring states the paper's settings; its defaults are those of the paper's
MNIST experiments where it has them (the ``eps`` of 0.3 in [0, 1] pixels), else its CIFAR-10
ones, as stated. The loop's parameters (optimiser, schedule, validation, checkpoints,
randomness, mixed precision) are documented once, in :class:`MadryPGDTrainer`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bastion._tensor import RandomStateLike
from bastion._validation import Constraint, Interval
from bastion.defenses.training.adversarial._docs import fill_doc
from bastion.defenses.training.adversarial._inner import (
    ce_objective,
    global_noise,
    kl_objective,
    pgd,
)
from bastion.defenses.training.adversarial._loop import AdversarialTrainingLoop
from bastion.defenses.training.adversarial._state import (
    BUDGET_CONSTRAINTS,
    LOOP_CONSTRAINTS,
    RANDOM_START,
    _Batch,
    _Run,
    cross_entropy,
)
from bastion.estimators.base import SupportsTorchModuleAndPredict

__all__ = ["MARTTrainer", "MadryPGDTrainer", "TRADESTrainer", "mart_loss", "trades_loss"]

_AWP: dict[str, list[Constraint]] = {
    "awp_gamma": [Interval(float, 0, None)],
    "awp_warmup": [Interval(int, 0, None)],
}

_EPS_WARMUP: dict[str, list[Constraint]] = {"eps_warmup": [Interval(int, 0, None)]}


class _PGDRecipe(AdversarialTrainingLoop):
    """The parts Madry, TRADES and MART share: a PGD inner maximisation with a random start,
    and (Madry, TRADES) adversarial weight perturbation."""

    _start_noise: ClassVar[str] = "ball"
    eps: float
    eps_step: float
    max_iter: int
    norm: Any
    num_random_init: int
    awp_gamma: float
    awp_warmup: int
    eps_warmup: int

    def _train_budget(self, batch: _Batch) -> tuple[float, float]:
        """The training attack's ``(eps, eps_step)`` at this step: the full budget, or during
        the first ``eps_warmup`` epochs that budget scaled by the training progress (a linear
        ramp, updated every step, from ``1 / batches`` of the budget up to all of it)."""
        eps, step = float(self.eps), float(self.eps_step)
        warmup = int(getattr(self, "eps_warmup", 0))
        if warmup and batch.progress < warmup:
            frac = batch.progress / warmup
            return eps * frac, step * frac
        return eps, step

    def _awp_gamma(self, epoch: int) -> float:
        gamma = float(getattr(self, "awp_gamma", 0.0))
        return gamma if epoch >= int(getattr(self, "awp_warmup", 0)) else 0.0

    def _start_point(self, x: torch.Tensor, batch: _Batch) -> torch.Tensor:
        if not self.num_random_init:
            return x
        _, norm = self._budget()
        eps, _ = self._train_budget(batch)
        return x + global_noise(
            self._start_noise,
            batch.seed("start"),
            (batch.n_global, *x.shape[1:]),
            batch.positions,
            eps=eps,
            norm=norm,
            device=x.device,
            dtype=x.dtype,
        )

    def _inner(
        self, run: _Run, x: torch.Tensor, start: torch.Tensor, objective: Any, batch: _Batch
    ) -> torch.Tensor:
        _, norm = self._budget()
        eps, eps_step = self._train_budget(batch)
        return pgd(
            run.forward,
            x,
            start,
            objective,
            eps=eps,
            eps_step=eps_step,
            max_iter=self.max_iter,
            norm=norm,
            clip_values=self.estimator.clip_values,
        )


class MadryPGDTrainer(_PGDRecipe):
    __doc__ = fill_doc(
        """PGD adversarial training (Madry et al. 2018): minimise the cross-entropy of the
    worst-case examples PGD finds in the ``eps``-ball around each training sample.

    Each step makes the batch's examples with ``max_iter`` PGD steps from a uniform random
    start in the ball (the model in eval mode, gradients with respect to the inputs only),
    then trains on them alone. With ``awp_gamma > 0``, each step also perturbs the weights
    adversarially (AT-AWP, Wu et al. 2020): every multi-dimensional weight moves by
    ``awp_gamma * ||w|| * g / ||g||`` along the gradient ``g`` of the training loss (one step
    of the paper's proxy model, normalised layer by layer), the training gradient is taken
    there, and the exact weights are restored before the optimiser step.

    Paper settings: MNIST ``eps=0.3``, 40 steps of 0.01 from a random start (the defaults);
    CIFAR-10 ``eps=8/255``, 7 steps of 2/255. The optimisation defaults are those of the
    CIFAR-10 recipe of Rice et al. 2020 (SGD, momentum 0.9, learning rate 0.1 with piecewise
    decay, weight decay 5e-4); Madry's MNIST model trained with Adam at 1e-4 for about 100
    epochs. AWP: ``awp_gamma=0.01`` for AT in Wu et al. (0.005 with TRADES), no warm-up.

    Parameters
    ----------
    estimator : estimator with the ``module`` capability
        A :class:`~bastion.estimators.TorchClassifier`: its model is trained in place.
    eps : float
        Training budget (> 0), no larger than the ``clip_values`` range allows.
    eps_step : float
        PGD step (Linf: per coordinate; L2: its length).
    max_iter : int
        PGD steps per batch.
    norm : {"inf", 2}
    num_random_init : {0, 1}
        1: start from a uniform random point of the ball (Madry); 0: from the sample (BIM).
    awp_gamma : float
        Adversarial weight perturbation's relative size; 0 turns it off.
    awp_warmup : int
        Epochs trained without AWP first. AWP from the first step can hold a model that
        starts from scratch at chance (the perturbation undoes each step before the model
        leaves the plateau): warm up for an epoch or two there, as Wu et al. do for TRADES.
    eps_warmup : int
        Epochs over which the training budget (``eps`` and ``eps_step`` together) ramps up
        linearly, step by step, from ``eps / batches`` to ``eps`` (Gowal et al. 2018 and many
        MNIST recipes); 0: the full budget from the first step. Validation and
        :meth:`evaluate` always use the full ``eps``.
{loop}

{attributes}

    References
    ----------
    Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083

{rice}

{wu}

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import MadryPGDTrainer
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP
    >>> (x, y), (x_test, y_test) = load_digits(size=8)
    >>> clf = TorchClassifier(MLP(64, 10, random_state=0), input_shape=x.shape[1:],
    ...                       nb_classes=10)
    >>> trainer = MadryPGDTrainer(clf, eps=0.1, eps_step=0.05, max_iter=3, epochs=2,
    ...                           learning_rate=0.05, random_state=0)
    >>> trainer = trainer.fit(x, y, validation_data=(x_test[:100], y_test[:100]))
    >>> sorted(trainer.history_[-1])[:3]
    ['epoch', 'learning_rate', 'loss']
    >>> trainer.best_epoch_ in (0, 1)
    True
    """
    )

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **LOOP_CONSTRAINTS,
        **BUDGET_CONSTRAINTS,
        **_AWP,
        **_EPS_WARMUP,
        "num_random_init": RANDOM_START,
    }

    def __init__(
        self,
        estimator: SupportsTorchModuleAndPredict,
        *,
        eps: float = 0.3,
        eps_step: float = 0.01,
        max_iter: int = 40,
        norm: Any = "inf",
        num_random_init: int = 1,
        awp_gamma: float = 0.0,
        awp_warmup: int = 0,
        eps_warmup: int = 0,
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
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.norm = norm
        self.num_random_init = num_random_init
        self.awp_gamma = awp_gamma
        self.awp_warmup = awp_warmup
        self.eps_warmup = eps_warmup
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

    def _make_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        return self._inner(run, x, self._start_point(x, batch), ce_objective(y), batch)

    def _losses(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits = run.train_forward(x_adv)
        return cross_entropy(logits, y), logits, None


def trades_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-sample TRADES loss ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))``
    (gradients flow through both terms, as in the reference implementation)."""
    kl = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="none"
    ).sum(1)
    return cross_entropy(logits_clean, y) + beta * kl


def mart_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-sample MART loss: the boosted cross-entropy of the adversarial example,
    ``CE(f(x'), y) - log(1 - max_{k != y} p_k(x'))``, plus ``beta * KL(p(x) || p(x'))``
    weighted by ``1 - p_y(x)`` (Wang et al. 2020, eq. 9; the constants of their code)."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = adv_probs.topk(2, dim=1).indices
    other = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    margin = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), other, reduction="none")
    bce = cross_entropy(logits_adv, y) + margin
    nat_probs = F.softmax(logits_clean, dim=1)
    true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
    return bce + beta * kl * (1.0000001 - true_probs)


class TRADESTrainer(_PGDRecipe):
    __doc__ = fill_doc(
        """TRADES (Zhang et al. 2019): trade natural accuracy for robustness with the loss
    ``CE(f(x), y) + beta * KL(f(x) || f(x'))``, where ``x'`` maximises the KL divergence in the
    ``eps``-ball.

    The inner maximisation starts from ``x + 0.001 * N(0, 1)`` and takes ``max_iter`` steps
    on the KL divergence to the clean prediction, with the model in eval mode (as the
    reference code does); the loss then runs in train mode, its gradient flowing through both
    the clean and the adversarial outputs. ``awp_gamma`` adds adversarial weight perturbation
    (TRADES-AWP, Wu et al. 2020: ``awp_gamma=0.005`` in the paper, after 10 warm-up epochs on
    CIFAR-10) on the TRADES loss.

    Paper settings: ``beta=6.0`` (the headline trade-off, the default); MNIST ``eps=0.3``,
    40 steps of 0.01 (the defaults; the MNIST script of the reference code uses ``beta=1``);
    CIFAR-10 ``eps=0.031``, 10 steps of 0.007, SGD with learning rate 0.1, momentum 0.9 and
    weight decay 2e-4.

    Parameters
    ----------
    estimator : estimator with the ``module`` capability
    eps, eps_step, max_iter, norm :
        As in :class:`MadryPGDTrainer`.
    beta : float
        Weight of the robust (KL) term.
    num_random_init : {0, 1}
        1: start from ``x + 0.001 * N(0, 1)``; 0: from ``x`` (where the KL gradient is zero).
    awp_gamma, awp_warmup, eps_warmup :
        As in :class:`MadryPGDTrainer`.
{loop}

{attributes}

    References
    ----------
    Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan, "Theoretically Principled Trade-off between
    Robustness and Accuracy", ICML 2019. https://arxiv.org/abs/1901.08573

{wu}

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import TRADESTrainer
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> clf = TorchClassifier(MLP(64, 10, random_state=0), input_shape=x.shape[1:],
    ...                       nb_classes=10)
    >>> trainer = TRADESTrainer(clf, eps=0.1, eps_step=0.05, max_iter=3, epochs=1,
    ...                         learning_rate=0.05, random_state=0).fit(x, y)
    >>> len(trainer.history_)
    1
    """
    )

    _start_noise: ClassVar[str] = "normal"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **LOOP_CONSTRAINTS,
        **BUDGET_CONSTRAINTS,
        **_AWP,
        **_EPS_WARMUP,
        "beta": [Interval(float, 0, None)],
        "num_random_init": RANDOM_START,
    }

    def __init__(
        self,
        estimator: SupportsTorchModuleAndPredict,
        *,
        eps: float = 0.3,
        eps_step: float = 0.01,
        max_iter: int = 40,
        norm: Any = "inf",
        beta: float = 6.0,
        num_random_init: int = 1,
        awp_gamma: float = 0.0,
        awp_warmup: int = 0,
        eps_warmup: int = 0,
        epochs: int = 20,
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
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.norm = norm
        self.beta = beta
        self.num_random_init = num_random_init
        self.awp_gamma = awp_gamma
        self.awp_warmup = awp_warmup
        self.eps_warmup = eps_warmup
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

    def _make_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        with torch.no_grad():
            p_clean = F.softmax(run.forward(x), dim=1)
        return self._inner(run, x, self._start_point(x, batch), kl_objective(p_clean), batch)

    def _losses(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits, logits_adv = run.train_forward_pair(x, x_adv)
        return trades_loss(logits, logits_adv, y, float(self.beta)), logits_adv, logits


class MARTTrainer(_PGDRecipe):
    __doc__ = fill_doc(
        """MART (Wang et al. 2020): misclassification-aware adversarial training.

    The examples come from PGD on the cross-entropy started at ``x + 0.001 * N(0, 1)`` (model
    in eval mode); the loss is the boosted cross-entropy of the adversarial example
    (cross-entropy plus ``-log(1 - max_{k != y} p_k(x'))``) plus ``beta`` times the KL
    divergence between the clean and adversarial predictions, weighted per sample by
    ``1 - p_y(x)``, so misclassified samples weigh more (eq. 9 of the paper, with the
    constants of the reference code).

    Paper settings: ``beta=6.0`` (the default); CIFAR-10 ``eps=8/255``, 10 steps of 2/255,
    SGD with learning rate 0.01, momentum 0.9, weight decay 3.5e-3 (the optimisation
    defaults). The budget defaults are the MNIST ones of Madry et al. (``eps=0.3``, 40 steps
    of 0.01), as for the other recipes.

    Parameters
    ----------
    estimator : estimator with the ``module`` capability
    eps, eps_step, max_iter, norm :
        As in :class:`MadryPGDTrainer`.
    beta : float
        Weight of the misclassification-aware KL term.
    num_random_init : {0, 1}
        1: start from ``x + 0.001 * N(0, 1)``; 0: from ``x``.
    eps_warmup : int
        As in :class:`MadryPGDTrainer`.
{loop}

{attributes}

    References
    ----------
    Wang, Zou, Yi, Bailey, Ma and Gu, "Improving Adversarial Robustness Requires Revisiting
    Misclassified Examples", ICLR 2020. https://openreview.net/forum?id=rklOg6EFwS

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import MARTTrainer
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> clf = TorchClassifier(MLP(64, 10, random_state=0), input_shape=x.shape[1:],
    ...                       nb_classes=10)
    >>> trainer = MARTTrainer(clf, eps=0.1, eps_step=0.05, max_iter=3, epochs=1,
    ...                       learning_rate=0.05, random_state=0).fit(x, y)
    >>> trainer.best_epoch_
    0
    """
    )

    _start_noise: ClassVar[str] = "normal"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **LOOP_CONSTRAINTS,
        **BUDGET_CONSTRAINTS,
        **_EPS_WARMUP,
        "beta": [Interval(float, 0, None)],
        "num_random_init": RANDOM_START,
    }

    def __init__(
        self,
        estimator: SupportsTorchModuleAndPredict,
        *,
        eps: float = 0.3,
        eps_step: float = 0.01,
        max_iter: int = 40,
        norm: Any = "inf",
        beta: float = 6.0,
        num_random_init: int = 1,
        eps_warmup: int = 0,
        epochs: int = 20,
        batch_size: int = 128,
        optimizer: str = "sgd",
        learning_rate: float = 0.01,
        schedule: str | None = "piecewise",
        momentum: float = 0.9,
        weight_decay: float = 3.5e-3,
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
        self.max_iter = max_iter
        self.norm = norm
        self.beta = beta
        self.num_random_init = num_random_init
        self.eps_warmup = eps_warmup
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

    def _make_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        return self._inner(run, x, self._start_point(x, batch), ce_objective(y), batch)

    def _losses(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits, logits_adv = run.train_forward_pair(x, x_adv)
        return mart_loss(logits, logits_adv, y, float(self.beta)), logits_adv, logits
