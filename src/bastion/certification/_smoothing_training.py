"""Training for randomized smoothing: Gaussian noise augmentation (Cohen et al. 2019) and
SmoothAdv (Salman et al. 2019), on bastion's adversarial-training loop.

Both recipes are the shared loop (:class:`~bastion.defenses.training.adversarial._loop.
AdversarialTrainingLoop`: data, optimiser and schedule, checkpoints and bit-identical resume,
data parallelism, ``history_``) plus how a batch's training inputs are made. The noise of a
batch is drawn for the whole global batch from a generator seeded per (epoch, batch), so a
resumed or data-parallel run sees the same noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bastion._tensor import RandomStateLike, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    NONE,
    Constraint,
    Interval,
    check_labels,
)
from bastion.certification._smoothing import RandomizedSmoothing
from bastion.defenses.training.adversarial._inner import ce_objective, pgd
from bastion.defenses.training.adversarial._loop import AdversarialTrainingLoop
from bastion.defenses.training.adversarial._state import (
    LOOP_CONSTRAINTS,
    _Batch,
    _Run,
    cross_entropy,
)
from bastion.estimators.base import SupportsTorchModuleAndPredict

__all__ = ["GaussianNoiseTrainer", "SmoothAdvTrainer", "SmoothingEvaluation"]

_SIGMA: list[Constraint] = [Interval(float, 0, None, closed="neither")]
_LOOP = {k: v for k, v in LOOP_CONSTRAINTS.items() if k != "validation_attack"}

_LOOP_DOC = """
    epochs, batch_size, optimizer, learning_rate, schedule, momentum, weight_decay :
        The loop's optimisation settings, as in
        :class:`~bastion.defenses.training.MadryPGDTrainer`.
    checkpoint_dir : path or None
        ``last.pt`` and ``best.pt``; ``fit(..., resume=True)`` continues an interrupted run
        bit-identically (on the CPU).
    random_state : None, int or torch.Generator
        Seeds the shuffling and every batch's noise (per epoch and batch).
    verbose, amp, channels_last :
        As in :class:`~bastion.defenses.training.MadryPGDTrainer`.

    Attributes
    ----------
    history_ : list of dict
        One record per epoch: ``loss``, ``train_robust_accuracy`` (the base classifier's
        accuracy on the noisy training inputs it was trained on), ``train_clean_accuracy``
        (NaN: no forward pass runs on the clean batch just to log), with validation data
        ``val_clean_accuracy`` (the base classifier on clean inputs) and
        ``val_robust_accuracy`` (the base classifier on one seeded noisy copy of each input,
        ``sigma`` noise: the quantity the smoothed classifier's accuracy follows; the best
        epoch is chosen by it), ``seconds``, ``learning_rate``.
    best_epoch_ : int
"""


@dataclass(frozen=True)
class SmoothingEvaluation:
    """What :meth:`GaussianNoiseTrainer.evaluate` measures.

    Attributes
    ----------
    clean_accuracy : float
        The base classifier's accuracy on the clean inputs.
    certified_accuracy : dict of float to float
        Certified accuracy of the smoothed classifier at each radius (Cohen et al.'s CERTIFY;
        an abstention counts as wrong); at radius 0 it is the smoothed classifier's accuracy.
    sigma, alpha : float
    n0, n, nb_samples : int
    """

    clean_accuracy: float
    certified_accuracy: dict[float, float]
    sigma: float
    n0: int
    n: int
    alpha: float
    nb_samples: int


def _gaussian(
    seed: int, shape: tuple[int, ...], positions: torch.Tensor | None, sigma: float, like: Any
) -> torch.Tensor:
    """``sigma * N(0, I)`` for a global batch of ``shape``, rows ``positions`` kept."""
    gen = torch.Generator(device=like.device)
    gen.manual_seed(seed)
    noise = torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype) * sigma
    return noise if positions is None else noise[positions]


class _SmoothingRecipe(AdversarialTrainingLoop):
    """What both recipes share: the noise level, validation under noise and evaluation by
    certification."""

    #: No validation attack: validation measures the base classifier under noise.
    validation_attack = None
    sigma: float

    def _budget(self) -> tuple[float, str]:
        return math.nan, "2"

    def _validate_epoch(self, run: _Run, val: Any, epoch: int) -> dict[str, float]:
        run.module.eval()
        sums = torch.zeros(3, device=run.device, dtype=torch.float64)  # clean, noisy, n
        for b, (xg, yg) in enumerate(val.batches(None)):
            batch = _Batch(epoch, b, int(xg.shape[0]), None, run.base_seed)
            pos = run.dp.shard(batch.n_global, xg.device)
            x, y = (xg, yg) if pos is None else (xg[pos], yg[pos])
            noise = _gaussian(batch.seed("validation"), tuple(xg.shape), pos, float(self.sigma), x)
            with torch.no_grad():
                sums[0] += (run.forward(x).argmax(1) == y).sum()
                sums[1] += (run.forward(x + noise).argmax(1) == y).sum()
            sums[2] += x.shape[0]
        run.dp.sum(sums)
        n = max(float(sums[2]), 1.0)
        return {"val_clean_accuracy": float(sums[0]) / n, "val_robust_accuracy": float(sums[1]) / n}

    def evaluate(  # type: ignore[override]
        self,
        x: Any,
        y: Any,
        *,
        radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        random_state: RandomStateLike = 0,
    ) -> SmoothingEvaluation:
        """Certified accuracy of the smoothed trained model at a few L2 radii.

        Runs :meth:`RandomizedSmoothing.certify` at the training ``sigma`` (a modest ``n``
        by default: the paper certifies with ``n=100_000``, which gives larger radii) and the
        base classifier's clean accuracy.

        Parameters
        ----------
        x, y : array-like or torch.Tensor
            Test samples and labels.
        radii : tuple of float
            Where the certified accuracy is reported.
        n0, n, alpha, batch_size :
            As in :meth:`RandomizedSmoothing.certify`.
        random_state : None, int or torch.Generator, default 0

        Returns
        -------
        SmoothingEvaluation
        """
        from bastion.metrics.certification import certified_accuracy

        est = self.estimator
        rs = RandomizedSmoothing(est, sigma=self.sigma, random_state=random_state)
        pred, radius = rs.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size)
        t, _ = to_tensor(x, device=est.device, dtype=est.dtype)
        yt, _ = to_tensor(y, device=est.device, dtype=None)
        labels = check_labels(yt, n=int(t.shape[0]), nb_classes=int(est.nb_classes))
        with torch.no_grad():
            probs = torch.cat(
                [est.predict_tensor(t[i : i + batch_size]) for i in range(0, len(t), batch_size)]
            )
        clean = float((probs.argmax(1) == labels).double().mean())
        pred_t, _ = to_tensor(pred, dtype=None)
        rad_t, _ = to_tensor(radius, dtype=torch.float64)
        y_cpu = labels.cpu()
        curve = {
            float(r): certified_accuracy(pred_t.cpu(), rad_t.cpu(), y_cpu, radius=float(r))
            for r in radii
        }
        return SmoothingEvaluation(
            clean_accuracy=clean,
            certified_accuracy=curve,
            sigma=float(self.sigma),
            n0=int(n0),
            n=int(n),
            alpha=float(alpha),
            nb_samples=int(t.shape[0]),
        )


class GaussianNoiseTrainer(_SmoothingRecipe):
    __doc__ = f"""Gaussian noise augmentation (Cohen et al. 2019): train the base classifier of
    randomized smoothing on ``x + N(0, sigma^2 I)``.

    Each step draws one noise vector per training sample (for the global batch, from a seed of
    the epoch and batch) and minimises the cross-entropy of the noisy batch; the noise is not
    clipped to ``clip_values`` (as in the paper: the smoothed classifier queries the base
    classifier at unclipped noisy points). Train with the ``sigma`` you will certify with.

    Paper settings (CIFAR-10): ResNet-110, SGD with momentum 0.9, learning rate 0.1 divided by
    10 every 30 epochs for 90 epochs, batch 256, weight decay 1e-4; ``sigma`` in
    {{0.12, 0.25, 0.5, 1.0}}. The defaults follow them, with the loop's ``"piecewise"`` schedule
    (divided by 10 at 50% and 75% of the epochs).

    Parameters
    ----------
    estimator : estimator with the ``module`` capability
        A :class:`~bastion.estimators.TorchClassifier`: its model is trained in place.
    sigma : float
        The noise level (> 0).
{_LOOP_DOC.strip(chr(10))}

    References
    ----------
    Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019. https://arxiv.org/abs/1902.02918

    Examples
    --------
    >>> from bastion.certification import GaussianNoiseTrainer
    >>> from bastion.datasets import load_digits
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP
    >>> (x, y), (x_test, y_test) = load_digits(size=8)
    >>> clf = TorchClassifier(MLP(64, 10, random_state=0), input_shape=x.shape[1:],
    ...                       nb_classes=10, clip_values=(0, 1))
    >>> trainer = GaussianNoiseTrainer(clf, sigma=0.25, epochs=2, optimizer="adam",
    ...                                learning_rate=1e-2, schedule=None, random_state=0)
    >>> trainer = trainer.fit(x, y)
    >>> result = trainer.evaluate(x_test[:20], y_test[:20], n=200)
    >>> 0.0 <= result.certified_accuracy[0.25] <= result.certified_accuracy[0.0] <= 1.0
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {**_LOOP, "sigma": _SIGMA}

    def __init__(
        self,
        estimator: SupportsTorchModuleAndPredict,
        *,
        sigma: float = 0.25,
        epochs: int = 90,
        batch_size: int = 256,
        optimizer: str = "sgd",
        learning_rate: float = 0.1,
        schedule: str | None = "piecewise",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        checkpoint_dir: Any = None,
        random_state: RandomStateLike = 0,
        verbose: bool = False,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.estimator = estimator
        self.sigma = sigma
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.schedule = schedule
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose
        self.amp = amp
        self.channels_last = channels_last

    def _make_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        shape = (batch.n_global, *x.shape[1:])
        return x + _gaussian(batch.seed("noise"), shape, batch.positions, float(self.sigma), x)

    def _losses(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits = run.train_forward(x_adv)
        return cross_entropy(logits, y), logits, None


def soft_smoothed_log_probs(forward: Any, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``log((1/m) sum_j softmax(forward(x + noise[:, j])))``, shape ``(B, K)``: the log of
    the soft smoothed classifier's probabilities, estimated with the ``m`` noise draws
    ``noise`` of shape ``(B, m, *x.shape[1:])`` (Salman et al.'s ``F``, differentiable in
    ``x``)."""
    b, m = noise.shape[:2]
    logits = forward((x[:, None] + noise).flatten(0, 1)).float()
    log_p = F.log_softmax(logits, dim=1).view(b, m, -1)
    return torch.logsumexp(log_p, dim=1) - math.log(m)


def smooth_adv_pgd(
    forward: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    *,
    eps: float,
    eps_step: float,
    max_iter: int,
    clip_values: tuple[float, float] | None,
) -> torch.Tensor:
    """SmoothAdv's attack (Salman et al. 2019, ``SmoothAdv_PGD``): L2 PGD from ``x`` that
    maximises the cross-entropy of the soft smoothed classifier estimated with the fixed noise
    draws ``noise`` (``(B, m, *x.shape[1:])``), inside the ``eps``-ball intersected with
    ``clip_values``."""

    def smoothed(z: torch.Tensor) -> torch.Tensor:
        return soft_smoothed_log_probs(forward, z, noise)

    return pgd(
        smoothed,
        x,
        x,
        ce_objective(y),
        eps=eps,
        eps_step=eps_step,
        max_iter=max_iter,
        norm="2",
        clip_values=clip_values,
    )


class SmoothAdvTrainer(_SmoothingRecipe):
    __doc__ = f"""SmoothAdv (Salman et al. 2019): adversarial training of the smoothed
    classifier.

    Each step draws ``nb_noise_samples`` (``m``) noise vectors ``N(0, sigma^2 I)`` per training
    sample, finds an adversarial point ``x'`` with ``max_iter`` L2 PGD steps on the
    cross-entropy of the *soft* smoothed classifier ``(1/m) sum_j softmax(f(x' + delta_j))``
    (from ``x``, inside the ``eps``-ball and ``clip_values``, the model in eval mode), then
    minimises the mean cross-entropy of ``f(x' + delta_j)`` over the same ``m`` noise draws
    (the paper's "multi-noise" training with ``m_train = m``). ``eps_warmup`` ramps ``eps``
    (and the step) up linearly over the first epochs, as the paper's warm-up does (10 epochs
    on CIFAR-10).

    Paper settings (CIFAR-10): ``eps`` in {{0.25, 0.5, 1, 2}}, ``max_iter`` in {{1, 2, 4, 8,
    10}}, ``m`` in {{1, 2, 4, 8}}, step ``2 * eps / max_iter`` (the default of ``eps_step``),
    150 epochs of SGD at 0.1 divided by 10 every 50, batch 256. The defaults here: ``eps``
    0.5, 2 steps, ``m`` 2.

    Parameters
    ----------
    estimator : estimator with the ``module`` capability
        A :class:`~bastion.estimators.TorchClassifier`: its model is trained in place.
    sigma : float
        The noise level (> 0).
    eps : float
        The L2 budget of the attack (> 0).
    eps_step : float or None
        The L2 length of a PGD step; ``None``: ``2 * eps / max_iter``.
    max_iter : int
        PGD steps per batch.
    nb_noise_samples : int
        Noise draws per training sample (``m``), for the attack and the loss
        (``num_noise_samples`` is accepted as an old name, with a ``DeprecationWarning``).
    eps_warmup : int
        Epochs over which ``eps`` ramps up linearly, step by step; 0: the full budget at once.
{_LOOP_DOC.strip(chr(10))}

    References
    ----------
    Salman, Yang, Li, Zhang, Zhang, Razenshteyn and Bubeck, "Provably Robust Deep Learning via
    Adversarially Trained Smoothed Classifiers", NeurIPS 2019. https://arxiv.org/abs/1906.04584

    Examples
    --------
    >>> from bastion.certification import SmoothAdvTrainer
    >>> from bastion.datasets import load_digits
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> clf = TorchClassifier(MLP(64, 10, random_state=0), input_shape=x.shape[1:],
    ...                       nb_classes=10, clip_values=(0, 1))
    >>> trainer = SmoothAdvTrainer(clf, sigma=0.25, eps=0.25, max_iter=1, epochs=1,
    ...                            optimizer="adam", learning_rate=1e-2, random_state=0)
    >>> len(trainer.fit(x, y).history_)
    1
    """

    #: ``num_noise_samples`` (the issue's name) is accepted for ``nb_noise_samples``.
    _renamed: ClassVar[dict[str, Any]] = {
        "lr": "learning_rate",
        "num_noise_samples": "nb_noise_samples",
    }
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **_LOOP,
        "sigma": _SIGMA,
        "eps": [Interval(float, 0, None, closed="neither")],
        "eps_step": [Interval(float, 0, None, closed="neither"), NONE],
        "max_iter": [Interval(int, 1, None)],
        "nb_noise_samples": BATCH_SIZE,
        "eps_warmup": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        estimator: SupportsTorchModuleAndPredict,
        *,
        sigma: float = 0.25,
        eps: float = 0.5,
        eps_step: float | None = None,
        max_iter: int = 2,
        nb_noise_samples: int = 2,
        eps_warmup: int = 0,
        epochs: int = 150,
        batch_size: int = 256,
        optimizer: str = "sgd",
        learning_rate: float = 0.1,
        schedule: str | None = "piecewise",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        checkpoint_dir: Any = None,
        random_state: RandomStateLike = 0,
        verbose: bool = False,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.estimator = estimator
        self.sigma = sigma
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.nb_noise_samples = nb_noise_samples
        self.eps_warmup = eps_warmup
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.schedule = schedule
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose
        self.amp = amp
        self.channels_last = channels_last

    def _budget(self) -> tuple[float, str]:
        return float(self.eps), "2"

    def _train_budget(self, batch: _Batch) -> tuple[float, float]:
        eps = float(self.eps)
        step = 2.0 * eps / int(self.max_iter) if self.eps_step is None else float(self.eps_step)
        warmup = int(self.eps_warmup)
        if warmup and batch.progress < warmup:
            frac = batch.progress / warmup
            return eps * frac, step * frac
        return eps, step

    def _make_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        m = int(self.nb_noise_samples)
        shape = (batch.n_global, m, *x.shape[1:])
        noise = _gaussian(batch.seed("noise"), shape, batch.positions, float(self.sigma), x)
        run.extra["noise"] = noise
        eps, step = self._train_budget(batch)
        return smooth_adv_pgd(
            run.forward,
            x,
            y,
            noise,
            eps=eps,
            eps_step=step,
            max_iter=int(self.max_iter),
            clip_values=self.estimator.clip_values,
        )

    def _losses(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        noise = run.extra["noise"]
        b, m = noise.shape[:2]
        logits = run.train_forward((x_adv[:, None] + noise).flatten(0, 1)).view(b, m, -1)
        per_sample = cross_entropy(logits.flatten(0, 1), y.repeat_interleave(m)).view(b, m)
        return per_sample.mean(dim=1), logits.detach().mean(dim=1), None
