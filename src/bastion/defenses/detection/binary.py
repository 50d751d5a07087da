"""Binary detectors trained on clean against adversarial examples (Metzen et al. 2017)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from bastion._tensor import resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    LAYER,
    NONE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Satisfies,
)
from bastion.defenses.detection._base import InputDetector
from bastion.estimators.base import SupportsActivationsAndPredict, SupportsPredict

__all__ = ["BinaryActivationDetector", "BinaryInputDetector"]


class _Standardize(nn.Module):
    """``(a - mean) / std`` of flattened features (the detector network's first layer)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return (a.flatten(1) - self.mean) / self.std


def _hidden_ok(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )


class _BinaryDetector(InputDetector):
    """Shared work: adversarial examples from ``attack``, a small MLP (:class:`bastion.zoo.MLP`
    in a :class:`~bastion.estimators.TorchClassifier`) trained with its ``fit`` to tell clean
    (class 0) from adversarial (class 1) features, and the score ``z_1 - z_0`` (its log-odds of
    "adversarial")."""

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "attack": [Satisfies(lambda a: hasattr(a, "generate"), "an evasion attack"), NONE],
        "hidden": [Satisfies(_hidden_ok, "a sequence of positive ints")],
        "epochs": [Interval(int, 1, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    attack: Any
    hidden: Any
    epochs: int
    learning_rate: float
    random_state: Any

    def _needed_capabilities(self) -> tuple[str, ...]:
        if self.attack is None:
            return (*self._estimator_requirements, "loss_gradient")
        return self._estimator_requirements

    def _default_attack(self, seed: int) -> Any:
        from bastion.attacks.evasion import PGD

        clip = self.estimator.clip_values
        eps = 0.1 * (float(clip[1]) - float(clip[0])) if clip is not None else 0.1
        return PGD(self.estimator, eps=eps, eps_step=eps / 4, max_iter=20, random_state=seed)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """What the detector network sees (inputs, or a layer's activations)."""
        raise NotImplementedError

    def _network(self, features: torch.Tensor, seed: int) -> Any:
        """The detector network and its estimator, for features like ``features``."""
        raise NotImplementedError

    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        generator = resolve_random_state(self.random_state)
        seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (3,), generator=generator)]
        attack = self.attack if self.attack is not None else self._default_attack(seeds[0])
        labels = self._predicted(x) if y is None else y
        x_adv, _ = to_tensor(attack.generate(x, labels), device=x.device, dtype=x.dtype)
        data = torch.cat([self._features(x), self._features(x_adv)])
        target = torch.cat([torch.zeros(x.shape[0]), torch.ones(x.shape[0])]).long()
        self.detector_ = self._network(data, seeds[1])
        self.detector_.fit(
            data,
            target.to(data.device),
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            random_state=seeds[2],
            verbose=self.verbose,
        )
        # the clean scores for the default threshold, from the features already computed
        return self._feature_scores(data[: x.shape[0]], lambda f: f)

    def _feature_scores(self, x: torch.Tensor, features: Any) -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for s in range(0, x.shape[0], self.batch_size):
                z = self.detector_.logits_tensor(features(x[s : s + self.batch_size]))
                rows.append((z[:, 1] - z[:, 0]).to(torch.float64).cpu())
        return torch.cat(rows)

    def _score_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self._feature_scores(x, self._features)


class BinaryInputDetector(_BinaryDetector):
    """A binary classifier on the inputs, trained to tell clean from adversarial examples.

    ``fit(x, y)`` crafts an adversarial example of each clean input with ``attack`` and trains a
    small MLP (:class:`bastion.zoo.MLP`, wrapped in a
    :class:`~bastion.estimators.TorchClassifier` and trained with its ``fit``, Adam) on the
    clean inputs (class 0) and the adversarial ones (class 1). The score is the detector's
    log-odds of "adversarial", ``z_1 - z_0``. It is differentiable (the detector is a torch
    model of its own), so :meth:`guard` gives a classifier that gradient attacks can adapt to,
    as Metzen et al. did with their "dynamic adversary".

    Parameters
    ----------
    estimator : Classifier
        Needs ``predict`` (and ``loss_gradient`` for the default attack).
    attack : evasion attack, optional
        Crafts the adversarial training examples (``attack.generate(x, y)``); by default
        :class:`~bastion.attacks.evasion.PGD` on the estimator, L-inf, ``eps`` 0.1 of the
        width of ``clip_values`` (0.1 without them), ``eps_step = eps / 4``, 20 steps.
    hidden : sequence of int, default (64,)
        Widths of the detector's hidden layers.
    epochs : int, default 20
        Training passes over the clean and adversarial examples.
    learning_rate : float, default 1e-3
        Adam's learning rate.
    batch_size : int, default 64
        Samples per training step and per forward pass.
    random_state : None, int or torch.Generator
        Seeds the default attack, the detector's initialisation and the shuffling.
    verbose : bool, default False
        Show progress bars while training.

    Attributes
    ----------
    detector_ : TorchClassifier
        The trained detector (2 classes: clean, adversarial).

    References
    ----------
    Metzen, Genewein, Fischer and Bischoff, "On detecting adversarial perturbations", ICLR
    2017. https://arxiv.org/abs/1702.04267

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.detection import BinaryInputDetector
    >>> from bastion.zoo import MLP
    >>> clf = TorchClassifier(MLP(4, 2, hidden=(8,), random_state=0), input_shape=(4,),
    ...                       nb_classes=2)
    >>> x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    >>> det = BinaryInputDetector(clf, epochs=2, random_state=0).fit(x)
    >>> det.detect(x).is_adversarial.dtype
    torch.bool
    """

    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)

    estimator: SupportsPredict

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        attack: Any = None,
        hidden: Any = (64,),
        epochs: int = 20,
        learning_rate: float = 1e-3,
        batch_size: int = 64,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.attack = attack
        self.hidden = hidden
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    @property
    def differentiable(self) -> bool:
        return True

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _network(self, features: torch.Tensor, seed: int) -> Any:
        from bastion.estimators import TorchClassifier
        from bastion.zoo import MLP

        shape = tuple(self.estimator.input_shape)
        # in the estimator's dtype (the features are its inputs), e.g. float64
        net = MLP(math.prod(shape), 2, hidden=tuple(self.hidden), random_state=seed)
        net = net.to(features.dtype)
        return TorchClassifier(
            net,
            input_shape=shape,
            nb_classes=2,
            clip_values=self.estimator.clip_values,
            device=self.estimator.device,
        )

    def _score_vjp(
        self, x: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = weights.to(x.device)
        grad, _, z = self.detector_.objective_gradient_tensor(
            x, lambda z: w.to(z.dtype) * (z[:, 1] - z[:, 0])
        )
        return grad, (z[:, 1] - z[:, 0]).to(torch.float64).cpu()


class BinaryActivationDetector(_BinaryDetector):
    """A binary classifier on one layer's activations, trained to tell clean from adversarial
    examples (Metzen et al.'s detector subnetwork, as a separate model).

    As :class:`BinaryInputDetector`, with the detector reading the flattened output of
    ``layer`` (standardised by its mean and standard deviation over the training features)
    instead of the input. Needs the ``activations`` capability; the score is differentiable
    through ``activation_gradient`` where the estimator offers it, so :meth:`guard` then gives
    a classifier that gradient attacks can adapt to.

    Parameters
    ----------
    estimator : Classifier
        Needs ``predict`` and ``activations`` (and ``loss_gradient`` for the default attack).
    layer : int or str, default -2
        The layer read (a name of ``estimator.layer_names`` or an index; -2: the penultimate).
    attack, hidden, epochs, learning_rate, batch_size, random_state, verbose
        As in :class:`BinaryInputDetector`.

    Attributes
    ----------
    layer_ : str
    detector_ : TorchClassifier
        The trained detector on the layer's flattened features.

    References
    ----------
    Metzen, Genewein, Fischer and Bischoff, "On detecting adversarial perturbations", ICLR
    2017. https://arxiv.org/abs/1702.04267

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.detection import BinaryActivationDetector
    >>> from bastion.zoo import MLP
    >>> clf = TorchClassifier(MLP(4, 2, hidden=(8,), random_state=0), input_shape=(4,),
    ...                       nb_classes=2)
    >>> x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    >>> det = BinaryActivationDetector(clf, layer="relu1", epochs=2, random_state=0).fit(x)
    >>> det.score(x).shape
    torch.Size([40])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **_BinaryDetector._parameter_constraints,
        "layer": LAYER,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict", "activations")

    def __init__(
        self,
        estimator: SupportsActivationsAndPredict,
        *,
        layer: Any = -2,
        attack: Any = None,
        hidden: Any = (64,),
        epochs: int = 20,
        learning_rate: float = 1e-3,
        batch_size: int = 64,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.layer = layer
        self.attack = attack
        self.hidden = hidden
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    @property
    def differentiable(self) -> bool:
        return "activation_gradient" in self.estimator.capabilities

    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        self.layer_ = str(self.estimator.resolve_layer(self.layer))
        return super()._fit(x, y)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._flat_activations(x, self.layer_, pool=False).to(x.dtype)

    def _network(self, features: torch.Tensor, seed: int) -> Any:
        from bastion.estimators import TorchClassifier
        from bastion.zoo import MLP

        d = int(features.shape[1])
        std = features.std(0)
        scaler = _Standardize(features.mean(0), torch.where(std > 0, std, torch.ones_like(std)))
        self.network_ = nn.Sequential(
            scaler, MLP(d, 2, hidden=tuple(self.hidden), random_state=seed)
        ).to(features.device, features.dtype)
        return TorchClassifier(
            self.network_, input_shape=(d,), nb_classes=2, clip_values=None, device=features.device
        )

    def _score_vjp(
        self, x: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = weights.to(x.device)

        def objective(act: torch.Tensor) -> torch.Tensor:
            z = self.network_(act.flatten(1))
            return w.to(z.dtype) * (z[:, 1] - z[:, 0])

        grad, _, act = self.estimator.activation_gradient_tensor(x, self.layer_, objective)
        with torch.no_grad():
            z = self.network_(act.flatten(1))
        return grad, (z[:, 1] - z[:, 0]).to(torch.float64).cpu()
