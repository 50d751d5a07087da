"""STRIP (Gao et al. 2019): triggered inputs keep their prediction when blended with others."""

from __future__ import annotations

from statistics import NormalDist
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from bastion._tensor import resolve_random_state
from bastion._validation import (
    BATCH_SIZE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Options,
)
from bastion.defenses.poisoning.base import DetectionResult, PoisonDetector
from bastion.estimators.base import SupportsPredict
from bastion.exceptions import InputError

__all__ = ["STRIP"]


class STRIP(PoisonDetector):
    """Run-time detection of trojaned inputs by STRong Intentional Perturbation.

    A backdoored model classifies any input carrying the trigger as the target class, whatever
    else the image shows. STRIP superimposes each input with ``nb_samples`` images drawn at
    random from a held-out clean set and measures the entropy of the model's predictions on
    the blends, averaged over them. A clean input loses its identity in the blends (high
    entropy); a triggered one keeps being classified as the target (low entropy).

    The paper superimposes by adding the two images with saturation (OpenCV's
    ``addWeighted(x, 1, x_clean, 1, 0)`` on 8-bit images), ``clip(x + x_clean)``: the
    trigger keeps its full intensity. ``superimpose="blend"`` mixes instead,
    ``(1 - alpha) * x + alpha * x_clean``, which dims the trigger (on the 8x8 digits with
    a 2x2 patch it misses more than half of the triggered inputs).

    :meth:`fit` calibrates the decision threshold on clean inputs: it fits a normal
    distribution to their entropies and takes its ``false_rejection_rate`` quantile (the
    paper's rule), so that about that fraction of clean inputs is rejected. :meth:`detect`
    then flags the inputs whose entropy falls below the threshold.

    All ``batch_size * nb_samples`` blends of a batch go through the model in one call.

    Threat model: the defender has black-box (prediction) access to the deployed model and a
    small set of clean inputs; the attack is an input-agnostic trigger.

    Parameters
    ----------
    estimator : Classifier
        The (possibly backdoored) model; needs the ``predict`` capability only.
    nb_samples : int, default=20
        Clean images blended with each input (the paper uses 100 for CIFAR, finds 20 enough
        for a good separation).
    superimpose : {"add", "blend"}, default="add"
        ``"add"``: ``x + x_clean`` clipped to ``clip_values`` (the paper's); ``"blend"``:
        ``(1 - alpha) * x + alpha * x_clean``.
    alpha : float, default=0.5
        Weight of the clean image for ``superimpose="blend"``, in ``(0, 1)``.
    false_rejection_rate : float, default=0.01
        Target fraction of clean inputs flagged, in ``(0, 1)``.
    batch_size : int, default=64
        Inputs per model call (each expanded into ``nb_samples`` blends).
    random_state : None, int or torch.Generator, default=None
        Draws the clean images blended with each input; an int makes ``fit`` and ``detect``
        reproducible.
    verbose : bool, default=False
        Show a progress bar.

    Attributes
    ----------
    overlay_ : torch.Tensor
        The clean images blended with the inputs (the ``x_clean`` given to :meth:`fit`).
    clean_entropy_ : numpy.ndarray
        Normalised entropy of every clean input seen by :meth:`fit`.
    entropy_mean_, entropy_std_ : float
        Parameters of the normal distribution fitted to ``clean_entropy_``.
    threshold_ : float
        Inputs with a lower entropy are flagged.

    References
    ----------
    Y. Gao, C. Xu, D. Wang, S. Chen, D. C. Ranasinghe, S. Nepal. "STRIP: A Defence Against
    Trojan Attacks on Deep Neural Networks." ACSAC 2019. https://arxiv.org/abs/1902.06531

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.poisoning.strip import STRIP
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=3)
    >>> strip = STRIP(clf, nb_samples=8, random_state=0).fit(torch.rand(50, 1, 4, 4))
    >>> result = strip.detect(torch.rand(10, 1, 4, 4))
    >>> result.scores.shape, result.is_poison.dtype
    ((10,), dtype('bool'))
    """

    estimator: SupportsPredict

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "nb_samples": [Interval(int, 1, None)],
        "superimpose": [Options(["add", "blend"])],
        "alpha": [Interval(float, 0, 1, closed="neither")],
        "false_rejection_rate": [Interval(float, 0, 1, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        nb_samples: int = 20,
        superimpose: str = "add",
        alpha: float = 0.5,
        false_rejection_rate: float = 0.01,
        batch_size: int = 64,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.nb_samples = nb_samples
        self.superimpose = superimpose
        self.alpha = alpha
        self.false_rejection_rate = false_rejection_rate
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ work

    def _entropy(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mean entropy (nats) of the predictions on ``nb_samples`` blends of each input."""
        pool, n_s, a = self.overlay_, self.nb_samples, float(self.alpha)
        clip = self.estimator.clip_values
        out = torch.empty(x.shape[0], dtype=torch.float64)
        with (
            torch.no_grad(),
            tqdm(total=x.shape[0], desc="STRIP", unit="sample", disable=not self.verbose) as bar,
        ):
            for i in range(0, x.shape[0], self.batch_size):
                xb = x[i : i + self.batch_size]
                b = xb.shape[0]
                idx = torch.randint(0, pool.shape[0], (b, n_s), generator=generator)
                other = pool[idx.to(pool.device)]
                if self.superimpose == "add":
                    blends = xb.unsqueeze(1) + other
                    if clip is not None:
                        blends = blends.clamp(float(clip[0]), float(clip[1]))
                else:
                    blends = (1 - a) * xb.unsqueeze(1) + a * other
                probs = self.estimator.predict_tensor(blends.reshape(b * n_s, *xb.shape[1:]))
                probs = probs.to(torch.float64).reshape(b, n_s, -1)
                ent = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=2)
                out[i : i + b] = ent.mean(dim=1).cpu()
                bar.update(b)
        return out

    def fit(self, x_clean: Any) -> STRIP:
        """Keep the clean images for blending and calibrate the threshold on them.

        Each clean input is blended with ``nb_samples`` images of the same set, its entropy
        computed, a normal distribution fitted to the entropies and the threshold set at its
        ``false_rejection_rate`` quantile.

        Parameters
        ----------
        x_clean : array-like or torch.Tensor, shape (N, *input_shape)
            Held-out clean inputs (at least 2).

        Returns
        -------
        self
        """
        self._validate()
        xt = self._x(x_clean, "x_clean")
        if xt.shape[0] < 2:
            raise InputError("STRIP.fit needs at least 2 clean inputs.")
        self.overlay_ = xt
        gen = resolve_random_state(self.random_state, "cpu")
        ent = self._entropy(xt, gen)
        self.clean_entropy_ = ent.numpy()
        self.entropy_mean_ = float(ent.mean())
        self.entropy_std_ = float(ent.std())
        if self.entropy_std_ > 0:
            dist = NormalDist(self.entropy_mean_, self.entropy_std_)
            self.threshold_ = dist.inv_cdf(self.false_rejection_rate)
        else:
            self.threshold_ = self.entropy_mean_
        return self

    def detect(self, x: Any, y: Any = None) -> DetectionResult:
        """Flag the inputs whose blends keep a low-entropy prediction.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Inputs to screen (e.g. at run time, or a training set).
        y : array-like or torch.Tensor, optional
            Their labels; only used to report per class.

        Returns
        -------
        DetectionResult
            ``scores`` is the negative mean entropy (higher: more suspicious); ``is_poison``
            where the entropy is below ``threshold_``; ``report[c]`` gives, per label ``c``
            when ``y`` is given, the count, the number flagged and the mean entropy.
        """
        self._validate()
        self._check_fitted("threshold_", "fit(x_clean)")
        xt = self._x(x)
        labels = None if y is None else self._labels(y, xt.shape[0]).numpy()
        gen = resolve_random_state(self.random_state, "cpu")
        ent = self._entropy(xt, gen).numpy()
        is_poison = ent < self.threshold_
        report = {}
        if labels is not None:
            report = self._class_report(
                labels,
                is_poison,
                lambda c, sel: {
                    "mean_entropy": float(ent[sel].mean()),
                    "threshold": float(self.threshold_),
                },
            )
        return DetectionResult(
            is_poison=is_poison,
            scores=-ent,
            report=report,
            method="STRIP",
            labels=labels,
        )
