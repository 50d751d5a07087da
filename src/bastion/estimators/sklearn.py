"""scikit-learn classifiers.

``LogisticRegression`` and ``MLPClassifier`` get an exact torch twin (the same function written in
torch), so their gradients are exact and attacks run at torch speed. Any other fitted classifier
with ``predict_proba`` is supported for prediction only.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion._tensor import as_device
from bastion._validation import invalid_parameter
from bastion.estimators.base import Classifier
from bastion.estimators.pytorch import TorchClassifier, _check_clip_values, _check_input_shape
from bastion.exceptions import EstimatorError, InputError

__all__ = ["SklearnClassifier"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "logistic": nn.Sigmoid,
    "identity": nn.Identity,
}


class _BinaryLogits(nn.Module):
    """Turns a single score z into two-class logits (0, z): softmax gives (1 - s(z), s(z))."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=1)


class _OneVsRestLogits(nn.Module):
    """One-vs-rest probabilities s(z_k) / sum_j s(z_j) are the softmax of log s(z)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.logsigmoid(z)


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    # Built on the meta device: a normal nn.Linear would draw its initial weights from the
    # global torch RNG, which bastion never touches.
    layer = nn.Linear(weight.shape[1], weight.shape[0], device="meta").to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return layer


def _twin_layers(model: Any, one_vs_rest: bool) -> list[tuple[str, nn.Module]]:
    name = type(model).__name__
    if name == "LogisticRegression":
        layers: list[tuple[str, nn.Module]] = [
            ("flatten", nn.Flatten()),
            ("linear", _linear(model.coef_, np.atleast_1d(model.intercept_))),
        ]
        if model.coef_.shape[0] == 1:
            layers.append(("binary", _BinaryLogits()))
        elif one_vs_rest:
            layers.append(("ovr", _OneVsRestLogits()))
        return layers
    if name == "MLPClassifier":
        layers = [("flatten", nn.Flatten())]
        n_layers = len(model.coefs_)
        for i, (w, b) in enumerate(zip(model.coefs_, model.intercepts_, strict=True)):
            last = i == n_layers - 1
            layers.append(("output" if last else f"hidden{i}", _linear(w.T, b)))
            if not last:
                layers.append((f"{model.activation}{i}", _ACTIVATIONS[model.activation]()))
        if model.coefs_[-1].shape[1] == 1:
            layers.append(("binary", _BinaryLogits()))
        return layers
    raise EstimatorError(f"no torch twin for {name}")  # pragma: no cover - guarded by caller


class SklearnClassifier(Classifier):
    """A fitted scikit-learn classifier as a bastion estimator.

    For ``LogisticRegression`` (binary, multinomial or one-vs-rest) and ``MLPClassifier``
    the estimator builds a torch twin that computes exactly the model's ``predict_proba``, so
    loss and class gradients are exact and gradient attacks apply. Any other fitted classifier
    with ``predict_proba`` is predict-only: gradient methods raise
    :class:`~bastion.exceptions.EstimatorError` (use a black-box attack).

    Classes are indexed ``0 .. nb_classes - 1`` in the order of ``model.classes_``; labels
    passed to bastion are those indices.

    Parameters
    ----------
    model : sklearn classifier
        Fitted, with ``predict_proba``.
    input_shape : tuple of int, optional
        Shape of one sample; default ``(n_features_in_,)``. Samples are flattened before they
        reach the model, so images can be attacked in their natural shape.
    clip_values : (float, float) or None
        Valid input range (default None: unbounded).
    device : str or torch.device, optional
        Where the torch twin computes (CPU by default).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.estimators import SklearnClassifier
    >>> x, y = load_iris(return_X_y=True)
    >>> clf = SklearnClassifier(LogisticRegression(max_iter=500).fit(x, y))
    >>> clf.loss_gradient(x[:2], y[:2]).shape
    (2, 4)
    """

    _GRADIENT_MODELS = ("LogisticRegression", "MLPClassifier")
    #: Tree models whose fitted trees :meth:`trees` exposes (the ``"trees"`` capability).
    _TREE_MODELS = (
        "DecisionTreeClassifier",
        "ExtraTreeClassifier",
        "RandomForestClassifier",
        "ExtraTreesClassifier",
        "GradientBoostingClassifier",
        "HistGradientBoostingClassifier",
        "AdaBoostClassifier",
    )
    #: What the torch twin's gradients give this estimator (the twin is an internal copy:
    #: surgery on it would not change the scikit-learn model, so no parameter gradients or
    #: pruning).
    _TWIN_CAPABILITIES = frozenset(
        {
            "predict",
            "logits",
            "loss_gradient",
            "class_gradient",
            "activations",
            "activation_gradient",
        }
    )

    def __init__(
        self,
        model: Any,
        *,
        input_shape: Sequence[int] | None = None,
        clip_values: tuple[float, float] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
            raise invalid_parameter(
                "model",
                owner,
                "a fitted scikit-learn classifier with predict_proba",
                type(model).__name__,
            )
        self.model = model
        self.classes_ = np.asarray(model.classes_)
        self.nb_classes = len(self.classes_)
        n_features = getattr(model, "n_features_in_", None)
        if input_shape is None:
            if n_features is None:
                raise invalid_parameter("input_shape", owner, "given for this model", None)
            input_shape = (int(n_features),)
        self.input_shape = _check_input_shape(input_shape, owner)
        if n_features is not None and math.prod(self.input_shape) != n_features:
            raise invalid_parameter(
                "input_shape", owner, f"a shape with {n_features} elements in all", input_shape
            )
        self.clip_values = _check_clip_values(clip_values, owner)
        self.device = as_device(device)
        self._twin: TorchClassifier | None = None
        self._build_twin()

    @property
    def capabilities(self) -> frozenset[str]:  # type: ignore[override]
        if self._twin is not None:
            return self._twin.capabilities & self._TWIN_CAPABILITIES | {"fit", "clone"}
        trees = {"trees"} if type(self.model).__name__ in self._TREE_MODELS else set()
        return frozenset({"predict", "fit", "clone", *trees})

    def trees(self) -> Any:
        """The fitted trees of a tree model, parsed into a
        :class:`~bastion.estimators.TreeEnsemble` (the ``"trees"`` capability: what the tree
        attacks read).

        Raises
        ------
        EstimatorError
            The model is not a tree model.
        """
        from bastion.estimators._trees import ensemble_from_sklearn
        from bastion.estimators.base import require_capabilities

        require_capabilities(self, ["trees"], f"{type(self).__name__}.trees")
        return ensemble_from_sklearn(self.model)

    def _build_twin(self) -> None:
        self._twin = None
        if type(self.model).__name__ not in self._GRADIENT_MODELS:
            return
        probe = self._probe_inputs()
        flat = probe.reshape(len(probe), -1)
        expected = torch.as_tensor(self.model.predict_proba(flat), dtype=torch.float32)
        candidates = [False, True] if type(self.model).__name__ == "LogisticRegression" else [False]
        for one_vs_rest in candidates:
            net = nn.Sequential(OrderedDict(_twin_layers(self.model, one_vs_rest)))
            twin = TorchClassifier(
                net,
                input_shape=self.input_shape,
                nb_classes=self.nb_classes,
                clip_values=None,
                device=self.device,
            )
            got = twin.predict(torch.as_tensor(probe, dtype=torch.float32)).cpu()
            if torch.allclose(got, expected, atol=1e-4, rtol=1e-3):
                self._twin = twin
                return
        raise EstimatorError(
            f"could not reproduce {type(self.model).__name__}.predict_proba in torch; use the "
            "model for prediction only: BlackBoxClassifier(model.predict_proba, ...)."
        )

    def _probe_inputs(self) -> np.ndarray:
        gen = np.random.default_rng(0)  # a local generator: the global NumPy RNG is untouched
        shape = (16, *self.input_shape)
        if self.clip_values is not None:
            lo, hi = self.clip_values
            return gen.uniform(lo, hi, size=shape)
        return gen.normal(size=shape)

    # ------------------------------------------------------------------ kernels

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        if self._twin is not None:
            return self._twin._predict_probabilities(x)
        flat = x.reshape(x.shape[0], -1).cpu().numpy()
        proba = self.model.predict_proba(flat)
        return torch.as_tensor(proba, dtype=torch.float32, device=x.device)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self._twin is not None  # guarded by capabilities
        return self._twin._logits(x)

    def _loss_gradient(self, x: torch.Tensor, y: torch.Tensor, return_outputs: bool) -> Any:
        assert self._twin is not None
        return self._twin._loss_gradient(x, y, return_outputs)

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        assert self._twin is not None
        return self._twin._class_gradient(x, label)

    def _objective_gradient(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self._twin is not None
        return self._twin._objective_gradient(x, objective)

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._twin is not None
        return self._twin._class_gradient_and_logits(x, label)

    def _activations(self, x: torch.Tensor, layer: str | int) -> torch.Tensor:
        assert self._twin is not None
        return self._twin._activations(x, layer)

    def _activation_gradient(
        self,
        x: torch.Tensor,
        layer: str | int,
        objective: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self._twin is not None
        return self._twin._activation_gradient(x, layer, objective)

    @property
    def layer_types(self) -> dict[str, str]:
        """The kind of each layer of the torch twin."""
        self._require("activations", "layer_types")
        assert self._twin is not None
        return self._twin.layer_types

    def clone(self, *, reinitialize: bool = False, random_state: Any = None) -> SklearnClassifier:
        """An independent estimator around a deep copy of the fitted model.

        ``reinitialize`` and ``random_state`` are accepted for the protocol's sake: a
        scikit-learn model's ``fit`` starts from scratch anyway (unless the model itself was
        built with ``warm_start=True``).
        """
        return SklearnClassifier(
            copy.deepcopy(self.model),
            input_shape=self.input_shape,
            clip_values=self.clip_values,
            device=self.device,
        )

    @property
    def layer_names(self) -> list[str]:
        """Layers of the torch twin (e.g. ``hidden0``, ``relu0``, ``output``)."""
        self._require("activations", "layer_names")
        assert self._twin is not None
        return self._twin.layer_names

    def fit(self, x: Any, y: Any, **fit_params: Any) -> SklearnClassifier:
        """Refit the scikit-learn model on ``(x, y)`` (labels as class indices) and rebuild the
        torch twin. Extra keyword arguments go to ``model.fit``."""
        xt, _ = self._input(x)
        yt = self._labels(y, xt.shape[0])
        missing = sorted(set(range(self.nb_classes)) - set(yt.unique().tolist()))
        if missing:
            raise InputError(
                f"y lacks the classes {missing}: refitting would change the class indices; "
                "wrap a model fitted on all classes instead."
            )
        flat = xt.reshape(xt.shape[0], -1).cpu().numpy()
        self.model.fit(flat, self.classes_[yt.cpu().numpy()], **fit_params)
        self._build_twin()
        return self

    def __repr__(self) -> str:
        return (
            f"SklearnClassifier(model={type(self.model).__name__}, input_shape={self.input_shape}, "
            f"nb_classes={self.nb_classes}, clip_values={self.clip_values}, "
            f"gradients={self._twin is not None})"
        )
