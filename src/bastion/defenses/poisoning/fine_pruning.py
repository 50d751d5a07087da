"""Fine-Pruning (Liu, Dolan-Gavitt, Garg 2018): prune dormant channels, then fine-tune."""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, ClassVar, Protocol

import torch
from tqdm.auto import tqdm

from bastion._tensor import RandomStateLike, resolve_random_state
from bastion._validation import (
    BATCH_SIZE,
    OPTIONAL_LAYER,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
)
from bastion.defenses.poisoning.base import PoisonDefense
from bastion.estimators.base import (
    SupportsActivationsAndPredict,
    SupportsClone,
    SupportsFit,
    SupportsPredict,
    SupportsPrune,
)
from bastion.exceptions import InputError

__all__ = ["FinePruning"]

#: Layer kinds (``estimator.layer_types``) that are convolutions, and activations that may
#: follow one.
_CONVOLUTION = re.compile(r"(Lazy)?Conv(Transpose)?[123]d")
_ACTIVATIONS = frozenset({"ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Tanh", "Sigmoid"})


class _SupportsFinePruning(
    SupportsActivationsAndPredict, SupportsClone, SupportsPrune, SupportsFit, Protocol
):
    """Activations to rank the units, a clone to prune them in and training to fine-tune it."""


class FinePruning(PoisonDefense):
    """Remove a backdoor by pruning dormant channels of the last convolution and fine-tuning.

    Backdoor behaviour tends to live in neurons that clean inputs leave dormant. Fine-pruning
    measures the mean activation of each channel of the last convolutional layer on clean
    data, prunes the channels in increasing order of activation while the clean accuracy
    stays within ``accuracy_drop`` of the original (the paper stops at a 4% drop), then
    fine-tunes the pruned network on the clean data so that the remaining neurons, which the
    attacker may have co-opted, unlearn the trigger.

    The work is done on ``estimator.clone()``: channels are pruned with the clone's
    ``prune(layer, units)`` (they stay at zero during fine-tuning) and the clone is
    fine-tuned with its ``fit``. The original estimator and its model are not modified: the
    defended model is the clone, in ``estimator_``.

    Threat model: the defender holds the (possibly backdoored) network and a small set of
    clean, correctly labelled data; no knowledge of the trigger or the target.

    Parameters
    ----------
    estimator : Classifier
        The model to repair; needs the ``predict``, ``activations``, ``clone``, ``prune`` and
        ``fit`` capabilities (e.g. a :class:`~bastion.estimators.TorchClassifier`).
    layer : str, int or None, default=None
        Layer whose output channels are pruned; ``None`` takes the last convolution of
        ``estimator.layer_types`` (its activation's output when an activation layer follows
        it), or the penultimate layer of a network without convolutions.
    accuracy_drop : float, default=0.04
        Largest allowed drop of the clean accuracy caused by pruning, in ``[0, 1)``.
    max_prune_ratio : float, default=0.9
        Never prune more than this fraction of the channels, in ``(0, 1)``.
    epochs : int, default=5
        Fine-tuning epochs on the clean data (0: prune only).
    learning_rate : float, default=1e-3
        Adam's learning rate for fine-tuning.
    batch_size : int, default=128
        Samples per forward pass and per fine-tuning step.
    random_state : None, int or torch.Generator, default=None
        Seeds the shuffling of the fine-tuning data.
    verbose : bool, default=False
        Show progress bars.

    Attributes
    ----------
    estimator_ : Classifier
        The pruned and fine-tuned clone of the estimator.
    layer_ : str
        The pruned layer.
    pruned_channels_ : numpy.ndarray of int
        Indices of the pruned channels, in pruning order.
    prune_ratio_ : float
        Fraction of the layer's channels pruned.
    accuracy_original_, accuracy_pruned_, accuracy_fine_tuned_ : float
        Clean accuracy (on the data given to :meth:`fit`) of the original, pruned, and
        pruned then fine-tuned model.

    References
    ----------
    K. Liu, B. Dolan-Gavitt, S. Garg. "Fine-Pruning: Defending Against Backdooring Attacks
    on Deep Neural Networks." RAID 2018. https://arxiv.org/abs/1805.12185

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.poisoning.fine_pruning import FinePruning
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=2)
    >>> x, y = torch.rand(20, 1, 4, 4), torch.arange(20) % 2
    >>> defence = FinePruning(clf, epochs=1, random_state=0).fit(x, y)
    >>> defence.layer_, 0.0 <= defence.prune_ratio_ <= 0.9
    ('1', True)
    """

    estimator: _SupportsFinePruning

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "layer": OPTIONAL_LAYER,
        "accuracy_drop": [Interval(float, 0, 1, closed="left")],
        "max_prune_ratio": [Interval(float, 0, 1, closed="neither")],
        "epochs": [Interval(int, 0, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = (
        "predict",
        "activations",
        "clone",
        "prune",
        "fit",
    )

    def __init__(
        self,
        estimator: _SupportsFinePruning,
        *,
        layer: str | int | None = None,
        accuracy_drop: float = 0.04,
        max_prune_ratio: float = 0.9,
        epochs: int = 5,
        learning_rate: float = 1e-3,
        batch_size: int = 128,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.layer = layer
        self.accuracy_drop = accuracy_drop
        self.max_prune_ratio = max_prune_ratio
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, x_clean: Any, y_clean: Any) -> FinePruning:
        """Prune and fine-tune a copy of the estimator on clean data.

        Parameters
        ----------
        x_clean : array-like or torch.Tensor, shape (N, *input_shape)
            Clean inputs held by the defender (used to rank channels, to check the accuracy
            while pruning and to fine-tune).
        y_clean : array-like or torch.Tensor
            Their correct labels (class indices or one-hot).

        Returns
        -------
        self
        """
        self._validate()
        x = self._x(x_clean, "x_clean")
        y = self._labels(y_clean, x.shape[0], "y_clean").to(x.device)
        layer = self.layer_ = self._layer()
        mean_act = self._unit_activations(x, layer, self.batch_size).mean(dim=0)
        pruned = self.estimator.clone()
        self.accuracy_original_ = self._accuracy(self.estimator, x, y)
        order = torch.argsort(mean_act, stable=True)
        n_pruned, self.accuracy_pruned_ = self._prune(pruned, layer, order, x, y)
        self.pruned_channels_ = order[:n_pruned].cpu().numpy()
        self.prune_ratio_ = n_pruned / order.shape[0]
        if self.epochs:
            pruned.fit(
                x,
                y,
                epochs=self.epochs,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                random_state=resolve_random_state(self.random_state, "cpu"),
                verbose=self.verbose,
            )
        self.accuracy_fine_tuned_ = self._accuracy(pruned, x, y)
        if n_pruned == 0:
            warnings.warn(
                "FinePruning pruned no channel: the first one already dropped the clean "
                f"accuracy by more than accuracy_drop={self.accuracy_drop}.",
                stacklevel=2,
            )
        self.estimator_ = pruned
        return self

    def _default_layer(self) -> str:
        """The output of the last convolution, after its activation when one follows it;
        the penultimate layer of a network without convolutions."""
        names = list(self.estimator.layer_names)
        kinds = self.estimator.layer_types
        conv = [i for i, name in enumerate(names) if _CONVOLUTION.fullmatch(kinds.get(name, ""))]
        if not conv:
            return super()._default_layer()
        i = conv[-1]
        if i + 1 < len(names) and kinds.get(names[i + 1]) in _ACTIVATIONS:
            return str(names[i + 1])
        return str(names[i])

    def _accuracy(self, estimator: SupportsPredict, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self._predicted(estimator, x, self.batch_size) == y).float().mean())

    def _prune(
        self,
        pruned: _SupportsFinePruning,
        layer: str,
        order: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> tuple[int, float]:
        """Prune the units of ``layer`` of the clone ``pruned`` in ``order`` while the clean
        accuracy stays within ``accuracy_drop``; returns the number pruned and the accuracy."""
        base = acc = self.accuracy_original_
        limit = math.floor(self.max_prune_ratio * order.shape[0])
        n_pruned = 0
        for k in tqdm(range(limit), desc="FinePruning", disable=not self.verbose):
            pruned.prune(layer, order[: k + 1])
            trial = self._accuracy(pruned, x, y)
            if trial < base - self.accuracy_drop:
                pruned.prune(layer, order[:k])  # one channel too many: the last good network
                break
            n_pruned, acc = k + 1, trial
        return n_pruned, acc

    def evaluate(
        self, x_test: Any, y_test: Any, x_triggered: Any = None, target: Any = None
    ) -> dict[str, float]:
        """Clean accuracy, and attack success when triggered inputs are given, before and
        after the defence.

        Parameters
        ----------
        x_test, y_test : array-like or torch.Tensor
            Clean test data and labels.
        x_triggered : array-like or torch.Tensor, optional
            Test inputs carrying the trigger (their true class should not be the target).
        target : int or array-like of int, optional
            The attacker's target class(es) for ``x_triggered``.

        Returns
        -------
        dict
            ``clean_accuracy_before``, ``clean_accuracy_after`` and, with triggered inputs,
            ``attack_success_before``, ``attack_success_after``.
        """
        from bastion.metrics.poisoning import attack_success_rate, clean_accuracy

        self._check_fitted("estimator_", "fit(x_clean, y_clean)")
        bs = self.batch_size
        out = {
            "clean_accuracy_before": clean_accuracy(self.estimator, x_test, y_test, batch_size=bs),
            "clean_accuracy_after": clean_accuracy(self.estimator_, x_test, y_test, batch_size=bs),
        }
        if x_triggered is not None:
            if target is None:
                raise InputError("evaluate needs the target class with x_triggered.")
            out["attack_success_before"] = attack_success_rate(
                self.estimator, x_triggered, target, batch_size=bs
            )
            out["attack_success_after"] = attack_success_rate(
                self.estimator_, x_triggered, target, batch_size=bs
            )
        return out
