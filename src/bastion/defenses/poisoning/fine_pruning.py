"""Fine-Pruning (Liu, Dolan-Gavitt, Garg 2018): prune dormant channels, then fine-tune."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    NONE,
    Boolean,
    Constraint,
    Interval,
    RandomState,
    Satisfies,
    check_labels,
    check_x,
)
from bastion.attacks.poisoning._base import _Parametrized
from bastion.estimators.base import require_capabilities
from bastion.estimators.pytorch import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, NotFittedError

__all__ = ["FinePruning"]


class _NeuronMask:
    """Forward hook that multiplies a layer's output by a 0/1 mask over its dimension 1
    (the channels of a convolution, the units of a dense layer). Pruning a unit this way
    survives fine-tuning, unlike zeroing its weights."""

    def __init__(self, n_units: int, device: torch.device) -> None:
        self.keep = torch.ones(n_units, device=device)

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (output.ndim - 2)
        return output * self.keep.view(shape).to(output.dtype)


def _torch_classifier(estimator: Any, user: str) -> TorchClassifier:
    if not isinstance(estimator, TorchClassifier):
        require_capabilities(estimator, ("predict",), user)  # clearer message for raw modules
        raise EstimatorError(
            f"{user} modifies and retrains the network, so it needs a TorchClassifier; got "
            f"{type(estimator).__name__}."
        )
    return estimator


def _layer_name(clf: TorchClassifier, layer: str | int) -> str:
    return clf.resolve_layer(layer)  # raises a clear error for unknown names or indices


def _copy_with_mask(
    clf: TorchClassifier, layer: str, n_units: int
) -> tuple[TorchClassifier, _NeuronMask]:
    """A copy of ``clf`` (its own network) whose ``layer`` output passes through a mask."""
    model = copy.deepcopy(clf.model)
    hook = _NeuronMask(n_units, clf.device)
    dict(model.named_modules())[layer].register_forward_hook(hook)
    return _clone_classifier(clf, model), hook


def _clone_classifier(clf: TorchClassifier, model: nn.Module) -> TorchClassifier:
    return TorchClassifier(
        model,
        input_shape=clf.input_shape,
        nb_classes=clf.nb_classes,
        loss=clf.loss,
        clip_values=clf.clip_values,
        preprocessing=clf.preprocessing,
        device=clf.device,
    )


def _default_conv_layer(clf: TorchClassifier) -> str:
    """The output of the last convolution, after its activation when one follows it."""
    modules = list(clf.model.named_modules())[1:]
    conv = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.modules.conv._ConvNd)]
    if not conv:
        names = clf.layer_names
        if len(names) < 2:
            raise InputError(
                f"cannot pick a layer to prune in a network with layers {names}; pass layer=..."
            )
        return names[-2]
    i = conv[-1]
    activations = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)
    if i + 1 < len(modules) and isinstance(modules[i + 1][1], activations):
        return modules[i + 1][0]
    return modules[i][0]


def _accuracy(clf: TorchClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    with torch.no_grad():
        pred = torch.cat(
            [
                clf._predict_probabilities(x[i : i + batch_size]).argmax(1)
                for i in range(0, x.shape[0], batch_size)
            ]
        )
    return float((pred == y).float().mean())


def _mean_unit_activation(
    clf: TorchClassifier, layer: str, x: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Mean activation of each unit (channel) of ``layer`` over ``x`` (and space)."""
    total: torch.Tensor | None = None
    for i in range(0, x.shape[0], batch_size):
        act = clf.activations_tensor(x[i : i + batch_size], layer)
        act = act.reshape(act.shape[0], act.shape[1], -1).to(torch.float64).mean(dim=2).sum(dim=0)
        total = act if total is None else total + act
    assert total is not None
    return total / x.shape[0]


class FinePruning(_Parametrized):
    """Remove a backdoor by pruning dormant channels of the last convolution and fine-tuning.

    Backdoor behaviour tends to live in neurons that clean inputs leave dormant. Fine-pruning
    measures the mean activation of each channel of the last convolutional layer on clean
    data, prunes the channels in increasing order of activation while the clean accuracy
    stays within ``accuracy_drop`` of the original (the paper stops at a 4% drop), then
    fine-tunes the pruned network on the clean data so that the remaining neurons, which the
    attacker may have co-opted, unlearn the trigger.

    Pruned channels are masked by a forward hook on the layer (they stay at zero during
    fine-tuning). The original estimator is not modified: the defended model is a new
    :class:`~bastion.estimators.TorchClassifier` in ``estimator_``.

    Threat model: the defender holds the (possibly backdoored) network and a small set of
    clean, correctly labelled data; no knowledge of the trigger or the target.

    Parameters
    ----------
    estimator : TorchClassifier
        The model to repair.
    layer : str, int or None, default=None
        Layer whose output channels are pruned; ``None`` takes the last convolution (its
        activation's output when an activation module follows it), or the penultimate
        layer of a network without convolutions.
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
    estimator_ : TorchClassifier
        The pruned and fine-tuned model.
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

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "layer": [
            NONE,
            Satisfies(
                lambda v: isinstance(v, (str, int)) and not isinstance(v, bool),
                "a layer name or index",
            ),
        ],
        "accuracy_drop": [Interval(float, 0, 1, closed="left")],
        "max_prune_ratio": [Interval(float, 0, 1, closed="neither")],
        "epochs": [Interval(int, 0, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
        "random_state": [RandomState()],
        "verbose": [Boolean()],
    }

    def __init__(
        self,
        estimator: Any,
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

    @classmethod
    def _param_names(cls) -> list[str]:
        return [n for n in super()._param_names() if n != "estimator"]

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
        clf = _torch_classifier(self.estimator, "FinePruning")
        x, y = _clean_data(clf, x_clean, y_clean)
        layer = _layer_name(clf, self.layer) if self.layer is not None else _default_conv_layer(clf)
        bs = self.batch_size
        with torch.no_grad():
            mean_act = _mean_unit_activation(clf, layer, x, bs)
        n_units = mean_act.shape[0]
        pruned, hook = _copy_with_mask(clf, layer, n_units)
        base = _accuracy(clf, x, y, bs)
        order = torch.argsort(mean_act, stable=True)
        limit = math.floor(self.max_prune_ratio * n_units)
        n_pruned, acc = 0, base
        for k in tqdm(range(limit), desc="FinePruning", disable=not self.verbose):
            hook.keep[order[k]] = 0.0
            trial = _accuracy(pruned, x, y, bs)
            if trial < base - self.accuracy_drop:
                hook.keep[order[k]] = 1.0  # one channel too many: keep the last good network
                break
            n_pruned, acc = k + 1, trial
        self.layer_ = layer
        self.pruned_channels_ = order[:n_pruned].cpu().numpy()
        self.prune_ratio_ = n_pruned / n_units
        self.accuracy_original_ = base
        self.accuracy_pruned_ = acc
        if self.epochs:
            gen = resolve_random_state(self.random_state, "cpu")
            pruned.fit(
                x,
                y,
                epochs=self.epochs,
                batch_size=bs,
                lr=self.learning_rate,
                random_state=gen,
                verbose=self.verbose,
            )
        self.accuracy_fine_tuned_ = _accuracy(pruned, x, y, bs)
        if n_pruned == 0:
            warnings.warn(
                "FinePruning pruned no channel: the first one already dropped the clean "
                f"accuracy by more than accuracy_drop={self.accuracy_drop}.",
                stacklevel=2,
            )
        self.estimator_ = pruned
        return self

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

        if not hasattr(self, "estimator_"):
            raise NotFittedError("FinePruning is not fitted: call fit(x_clean, y_clean) first.")
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


def _clean_data(clf: Any, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt, _ = to_tensor(x, device=clf.device, dtype=clf.dtype)
    check_x(xt, input_shape=clf.input_shape, clip_values=clf.clip_values)
    if y is None:
        raise InputError("the clean labels y are required.")
    yt, _ = to_tensor(y, dtype=None)
    labels = check_labels(yt.cpu(), n=xt.shape[0], nb_classes=clf.nb_classes)
    return xt, labels.to(clf.device)
