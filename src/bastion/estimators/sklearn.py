"""scikit-learn classifiers.

Models with a torch twin (the same function written in torch, checked against the model when
the estimator is built) get exact gradients, and attacks run at torch speed:
``LogisticRegression``, ``MLPClassifier``, ``GaussianNB`` (probabilities), ``LinearSVC``,
``SVC`` and ``NuSVC`` (class scores from the decision function), and ``Pipeline``s of
differentiable transformers (``StandardScaler``, ``MinMaxScaler``, ``MaxAbsScaler``, ``PCA``,
feature selectors) ending in one of them. Any other fitted classifier with ``predict_proba``
is supported for prediction only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bastion._tensor import as_device
from bastion._validation import invalid_parameter
from bastion.estimators._sklearn_twins import (
    SCORE_MODELS,
    has_twin,
    reference_scores,
    twin_candidates,
)
from bastion.estimators.base import Classifier
from bastion.estimators.pytorch import TorchClassifier, _check_clip_values, _check_input_shape
from bastion.exceptions import EstimatorError, InputError, ModelError

__all__ = ["SklearnClassifier"]

_DTYPES = (torch.float32, torch.float64)


class SklearnClassifier(Classifier):
    """A fitted scikit-learn classifier as a bastion estimator.

    For the models below the estimator builds a torch *twin* that computes the model's function
    exactly, and checks it against the model on probe inputs (raising
    :class:`~bastion.exceptions.EstimatorError` if it differs), so loss and class gradients are
    exact and gradient attacks apply:

    * ``LogisticRegression`` (binary, multinomial or one-vs-rest), ``MLPClassifier`` and
      ``GaussianNB``: the logits are such that their softmax is ``predict_proba``;
    * ``LinearSVC``, ``SVC`` and ``NuSVC`` (kernels ``"linear"``, ``"rbf"``, ``"poly"``,
      ``"sigmoid"``), which have no probabilities of their own: the logits are class scores
      from the decision function (``(0, d)`` for two classes; for more, the one-vs-rest
      ``decision_function`` of ``LinearSVC``, and for the one-vs-one SVMs scikit-learn's
      one-vs-rest ``decision_function``, votes plus a confidence in (-1/3, 1/3), with libsvm's
      tie rule applied when ``break_ties=False``), and the probabilities are their softmax: a
      calibration-free surrogate whose argmax is ``model.predict``. Platt-scaled
      ``predict_proba`` (``SVC(probability=True)``) is not used;
    * a ``Pipeline`` of differentiable transformers (``StandardScaler``, ``MinMaxScaler``,
      ``MaxAbsScaler``, ``PCA`` with or without whitening, feature selectors such as
      ``SelectKBest``, ``"passthrough"``) ending in one of the models above: the twin applies
      the transforms in torch, so the model is attacked in the raw feature space.

    Any other fitted classifier (or pipeline, e.g. with a ``OneHotEncoder``) with
    ``predict_proba`` is predict-only: gradient methods raise
    :class:`~bastion.exceptions.EstimatorError` (use a black-box attack). Tree models (not in a
    pipeline) expose their trees (the ``"trees"`` capability).

    Classes are indexed ``0 .. nb_classes - 1`` in the order of ``model.classes_``; labels
    passed to bastion are those indices.

    Parameters
    ----------
    model : sklearn classifier or Pipeline
        Fitted; with ``predict_proba``, or one of the models with a twin.
    input_shape : tuple of int, optional
        Shape of one sample; default ``(n_features_in_,)``. Samples are flattened before they
        reach the model, so images can be attacked in their natural shape.
    clip_values : (float, float) or None
        Valid input range (default None: unbounded).
    device : str or torch.device, optional
        Where the torch twin computes (CPU by default).
    dtype : torch.float32 or torch.float64, default torch.float32
        Precision of the twin (inputs are converted to it). scikit-learn computes in float64:
        ``torch.float64`` reproduces the model to rounding (about 1e-12), float32 to about 1e-5
        relative, which may not be enough for a model whose scores are large (e.g. Gaussian
        naive Bayes on unscaled features far from the data).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.estimators import SklearnClassifier
    >>> x, y = load_iris(return_X_y=True)
    >>> clf = SklearnClassifier(LogisticRegression(max_iter=500).fit(x, y))
    >>> clf.loss_gradient(x[:2], y[:2]).shape
    (2, 4)

    A support vector machine on standardised features, attacked in the raw feature space:

    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.svm import SVC
    >>> import torch
    >>> svm = make_pipeline(StandardScaler(), SVC()).fit(x, y)
    >>> clf = SklearnClassifier(svm, dtype=torch.float64)
    >>> bool((clf.predict(x).argmax(1) == svm.predict(x)).all())
    True
    >>> clf.class_gradient(x[:2]).shape
    (2, 3, 4)
    """

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
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        fitted = hasattr(model, "classes_")
        if not fitted or not (hasattr(model, "predict_proba") or has_twin(model)):
            raise invalid_parameter(
                "model",
                owner,
                "a fitted scikit-learn classifier with predict_proba, or a fitted "
                f"{', '.join(SCORE_MODELS)} (or a Pipeline of differentiable transformers "
                "ending in one)",
                type(model).__name__ if fitted else f"an unfitted {type(model).__name__}",
            )
        if dtype not in _DTYPES:
            raise invalid_parameter("dtype", owner, "torch.float32 or torch.float64", dtype)
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
        self.dtype = dtype
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
        """Build the torch twin and check it reproduces the model on probe inputs: the
        probabilities of a probabilistic model, the class scores (and ``predict``) of a margin
        model."""
        self._twin = None
        candidates = twin_candidates(self.model, self.dtype)
        if not candidates:
            return
        probe = self._probe_inputs()
        flat = probe.reshape(len(probe), -1)
        kind, expected = reference_scores(self.model, flat)
        labels = np.searchsorted(self.classes_, np.asarray(self.model.predict(flat)))
        # Tolerances for rounding, not for a different function: scikit-learn computes parts
        # of a model fitted on float32 data in float32 (e.g. GaussianNB's variance terms).
        rtol, atol = (1e-5, 1e-6) if self.dtype == torch.float64 else (1e-3, 1e-4)
        x = torch.as_tensor(probe, dtype=self.dtype, device=self.device)
        for net in candidates:
            twin = TorchClassifier(
                net.to(self.device),
                input_shape=self.input_shape,
                nb_classes=self.nb_classes,
                clip_values=None,
                device=self.device,
            )
            twin.dtype = self.dtype  # a twin of buffers only (GaussianNB) has no parameter
            try:
                with torch.no_grad():
                    z = twin._logits(x)
            except (RuntimeError, EstimatorError, ModelError, ValueError):
                continue  # e.g. a zero class prior: -inf scores
            got = (torch.softmax(z, dim=1) if kind == "proba" else z).double().cpu().numpy()
            scale = 1.0 if kind == "proba" else max(1.0, float(np.abs(expected).max()))
            close = np.allclose(got, expected, rtol=rtol, atol=atol * scale)
            if close and (kind == "proba" or np.array_equal(got.argmax(1), labels)):
                self._twin = twin
                return
        raise EstimatorError(
            f"could not reproduce {type(self.model).__name__} in torch; use the model for "
            "prediction only: BlackBoxClassifier(model.predict_proba, ...)."
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
        return torch.as_tensor(proba, dtype=self.dtype, device=x.device)

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
            dtype=self.dtype,
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
            f"dtype={self.dtype}, gradients={self._twin is not None})"
        )
