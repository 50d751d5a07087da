"""Torch twins of fitted scikit-learn models: the same functions, written in torch.

A twin is an ``nn.Sequential`` from flattened raw inputs to class scores whose softmax is the
estimator's probabilities. :func:`twin_candidates` builds the possible twins of a model (more
than one where the fitted attributes leave the function ambiguous) and :func:`reference_scores`
says what a twin must reproduce: ``predict_proba`` for probabilistic models, class scores
derived from ``decision_function`` for margin models (support vector machines), which have no
probabilities of their own.

Class scores of margin models (the design, documented in ``docs/estimators.md``):

* binary models: ``(0, d)`` with ``d`` the decision function (positive for ``classes_[1]``);
* linear one-vs-rest models (``LinearSVC``): the ``K`` decision values;
* one-vs-one kernel machines (``SVC``, ``NuSVC``) with ``K > 2`` classes: scikit-learn's own
  one-vs-rest decision function, ``votes + c / (3 (|c| + 1))`` with ``c`` the summed pairwise
  decision values of each class, computed from the ``K (K - 1) / 2`` pairwise decision values.
  When ``break_ties=False`` (the default) scikit-learn's ``predict`` breaks a tie of votes in
  favour of the first class (libsvm's rule) while the decision function prefers the higher
  confidence; the twin then lowers every other class tied at the top by one vote, a
  piecewise-constant change (no effect on gradients) that makes its argmax ``predict``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["reference_scores", "twin_candidates"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "logistic": nn.Sigmoid,
    "identity": nn.Identity,
}

#: Models whose twin computes ``predict_proba``.
PROBA_MODELS = ("LogisticRegression", "MLPClassifier", "GaussianNB")
#: Margin models (no probabilities): the twin computes class scores from ``decision_function``.
SCORE_MODELS = ("LinearSVC", "SVC", "NuSVC")
_KERNELS = ("linear", "poly", "rbf", "sigmoid")
#: Differentiable pipeline steps (feature selectors too: a selection is linear).
TRANSFORMERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "PCA")


def _const(values: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype)


def _dense(values: Any) -> np.ndarray:
    return np.asarray(values.toarray() if hasattr(values, "toarray") else values, np.float64)


class _Constants(nn.Module):
    """A module whose fitted constants are non-persistent buffers (no parameters: the twin is
    an internal copy, never trained)."""

    def _buffer(self, name: str, values: Any, dtype: torch.dtype) -> None:
        self.register_buffer(name, None if values is None else _const(values, dtype), False)


def _linear(weight: np.ndarray, bias: np.ndarray, dtype: torch.dtype) -> nn.Linear:
    # Built on the meta device: a normal nn.Linear would draw its initial weights from the
    # global torch RNG, which bastion never touches.
    layer = nn.Linear(weight.shape[1], weight.shape[0], device="meta", dtype=dtype)
    layer = layer.to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(_const(weight, dtype))
        layer.bias.copy_(_const(bias, dtype))
    layer.requires_grad_(False)
    return layer


class _BinaryLogits(nn.Module):
    """Turns a single score z into two-class logits (0, z): softmax gives (1 - s(z), s(z))."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=1)


class _OneVsRestLogits(nn.Module):
    """One-vs-rest probabilities s(z_k) / sum_j s(z_j) are the softmax of log s(z)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.logsigmoid(z)


class _GaussianLogLikelihood(_Constants):
    """Joint log-likelihood of Gaussian naive Bayes, ``log P(k) + sum_j log N(x_j; theta_kj,
    var_kj)``, in scikit-learn's order of operations (its softmax is ``predict_proba``)."""

    offset: torch.Tensor
    theta: torch.Tensor
    var: torch.Tensor

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        super().__init__()
        var = np.asarray(model.var_, np.float64)
        with np.errstate(divide="ignore"):  # a zero prior: -inf, refused by the probe check
            log_prior = np.log(np.asarray(model.class_prior_, np.float64))
        self._buffer("offset", log_prior - 0.5 * np.sum(np.log(2.0 * np.pi * var), axis=1), dtype)
        self._buffer("theta", model.theta_, dtype)
        self._buffer("var", var, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quad = ((x.unsqueeze(1) - self.theta) ** 2 / self.var).sum(dim=2)
        return self.offset - 0.5 * quad


class _Kernel(_Constants):
    """``K(x, s)`` against every support vector ``s``: ``(N, n_support)``, libsvm's kernels."""

    support: torch.Tensor
    support_sq: torch.Tensor

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.kind = str(model.kernel)
        self.gamma = float(model._gamma)
        self.coef0 = float(model.coef0)
        self.degree = int(model.degree)
        sv = _dense(model.support_vectors_)
        self._buffer("support", sv, dtype)
        self._buffer("support_sq", np.sum(sv * sv, axis=1), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dot = x @ self.support.T
        if self.kind == "linear":
            return dot
        if self.kind == "rbf":
            sq = (x * x).sum(dim=1, keepdim=True) + self.support_sq - 2.0 * dot
            return torch.exp(-self.gamma * sq.clamp_min(0.0))
        if self.kind == "poly":
            return (self.gamma * dot + self.coef0) ** self.degree
        return torch.tanh(self.gamma * dot + self.coef0)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, gamma={self.gamma}, coef0={self.coef0}, degree={self.degree}"


def _pairwise_weights(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` with ``K(x, SV) @ W + b`` the decision values of the class pairs ``(i, j)``,
    ``i < j``, in scikit-learn's order (positive: class ``i``).

    libsvm's one-vs-one coefficients: the value of pair ``(i, j)`` sums the support vectors of
    class ``i`` with coefficients from row ``j - 1`` of ``dual_coef_`` and those of class ``j``
    with coefficients from row ``i``. For two classes scikit-learn flips the signs of the public
    ``dual_coef_`` and ``intercept_`` (positive: ``classes_[1]``), so one column suffices.
    """
    coef = _dense(model.dual_coef_)
    intercept = np.asarray(model.intercept_, np.float64)
    n_classes = len(model.classes_)
    if n_classes == 2:
        return coef.T, intercept
    starts = np.concatenate([[0], np.cumsum(model.n_support_)])
    weights = np.zeros((coef.shape[1], n_classes * (n_classes - 1) // 2))
    p = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
            weights[si, p] = coef[j - 1, si]
            weights[sj, p] = coef[i, sj]
            p += 1
    return weights, intercept


def _pair_matrices(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first, second)``: ``(P, K)`` indicators of the first and second class of each pair."""
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    first = np.zeros((len(pairs), n_classes))
    second = np.zeros((len(pairs), n_classes))
    for p, (i, j) in enumerate(pairs):
        first[p, i] = 1.0
        second[p, j] = 1.0
    return first, second


class _OneVsOneScores(_Constants):
    """Class scores from pairwise decision values ``d`` (positive: the pair's first class):
    scikit-learn's one-vs-rest decision function ``votes + c / (3 (|c| + 1))``, where a pair
    votes for its first class when ``d >= 0`` and ``c`` sums each class's decision values
    (``+d`` as first class, ``-d`` as second). With ``first_wins`` the other classes tied at
    the most votes lose one vote, so that the argmax is libsvm's vote winner (the first)."""

    first: torch.Tensor
    second: torch.Tensor

    def __init__(self, n_classes: int, first_wins: bool, dtype: torch.dtype) -> None:
        super().__init__()
        first, second = _pair_matrices(n_classes)
        self._buffer("first", first, dtype)
        self._buffer("second", second, dtype)
        self.first_wins = first_wins

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        wins = (d >= 0).to(d.dtype)
        votes = wins @ self.first + (1.0 - wins) @ self.second
        confidence = d @ (self.first - self.second)
        scores = votes + confidence / (3.0 * (confidence.abs() + 1.0))
        if self.first_wins:
            top = votes == votes.amax(dim=1, keepdim=True)
            winner = votes.argmax(dim=1, keepdim=True)  # the first of the tied classes
            cls = torch.arange(votes.shape[1], device=d.device)
            scores = scores - (top & (cls != winner)).to(d.dtype)
        return scores

    def extra_repr(self) -> str:
        return f"first_wins={self.first_wins}"


class _Standardise(_Constants):
    """``(x - mean) / scale`` (StandardScaler; either part may be absent) or ``x / scale``
    (MaxAbsScaler)."""

    mean: torch.Tensor | None
    scale: torch.Tensor | None

    def __init__(self, mean: Any, scale: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self._buffer("mean", mean, dtype)
        self._buffer("scale", scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - self.mean
        if self.scale is not None:
            x = x / self.scale
        return x


class _MinMax(_Constants):
    """``x * scale + min`` (MinMaxScaler), clipped to the feature range when ``clip=True``."""

    scale: torch.Tensor
    offset: torch.Tensor

    def __init__(self, step: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self._buffer("scale", step.scale_, dtype)
        self._buffer("offset", step.min_, dtype)
        self.clip = tuple(float(v) for v in step.feature_range) if step.clip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.offset
        return x if self.clip is None else x.clamp(self.clip[0], self.clip[1])


class _Project(_Constants):
    """PCA: ``x @ C.T - mean @ C.T``, divided by the component scales when whitening (as
    scikit-learn computes it, tiny scales raised to machine epsilon)."""

    components: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor | None

    def __init__(self, step: Any, dtype: torch.dtype) -> None:
        super().__init__()
        components = np.asarray(step.components_, np.float64)
        mean = np.asarray(step.mean_, np.float64)
        self._buffer("components", components, dtype)
        self._buffer("shift", mean @ components.T, dtype)
        scale = None
        if step.whiten:
            scale = np.sqrt(np.asarray(step.explained_variance_, np.float64))
            scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
        self._buffer("scale", scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.components.T - self.shift
        return x if self.scale is None else x / self.scale


class _Select(_Constants):
    """The features a fitted selector keeps (SelectKBest, VarianceThreshold, ...)."""

    index: torch.Tensor

    def __init__(self, support: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(np.flatnonzero(support)), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


def _transform(step: Any, dtype: torch.dtype) -> nn.Module | None:
    """The torch form of a fitted differentiable transformer, or None."""
    from sklearn.feature_selection import SelectorMixin

    name = type(step).__name__
    if step is None or step == "passthrough":
        return nn.Identity()
    if name == "StandardScaler":
        mean = step.mean_ if step.with_mean else None
        return _Standardise(mean, step.scale_ if step.with_std else None, dtype)
    if name == "MaxAbsScaler":
        return _Standardise(None, step.scale_, dtype)
    if name == "MinMaxScaler":
        return _MinMax(step, dtype)
    if name == "PCA":
        return _Project(step, dtype)
    if isinstance(step, SelectorMixin):
        return _Select(np.asarray(step.get_support(), dtype=bool))
    return None


def _final_model(model: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """The last step of a (nested) pipeline and the transformer steps before it, flattened
    (``(model, [])`` for a model that is not a pipeline)."""
    if type(model).__name__ != "Pipeline":
        return model, []
    steps: list[tuple[str, Any]] = []
    for name, step in model.steps[:-1]:
        if type(step).__name__ == "Pipeline":
            final, inner = _final_model(step)
            steps += [(f"{name}_{n}", s) for n, s in inner] + [
                (f"{name}_{step.steps[-1][0]}", final)
            ]
        else:
            steps.append((name, step))
    final, inner = _final_model(model.steps[-1][1])
    prefix = model.steps[-1][0]
    return final, steps + [(f"{prefix}_{n}", s) for n, s in inner]


def final_estimator(model: Any) -> Any:
    """The model at the end of a (nested) pipeline; the model itself otherwise."""
    return _final_model(model)[0]


def _model_layers(model: Any, one_vs_rest: bool, dtype: torch.dtype) -> list[tuple[str, Any]]:
    name = type(model).__name__
    if name in ("LogisticRegression", "LinearSVC"):
        layers: list[tuple[str, nn.Module]] = [
            ("linear", _linear(model.coef_, np.atleast_1d(model.intercept_), dtype))
        ]
        if model.coef_.shape[0] == 1:
            layers.append(("binary", _BinaryLogits()))
        elif one_vs_rest:
            layers.append(("ovr", _OneVsRestLogits()))
        return layers
    if name == "MLPClassifier":
        layers = []
        n_layers = len(model.coefs_)
        for i, (w, b) in enumerate(zip(model.coefs_, model.intercepts_, strict=True)):
            last = i == n_layers - 1
            layers.append(("output" if last else f"hidden{i}", _linear(w.T, b, dtype)))
            if not last:
                layers.append((f"{model.activation}{i}", _ACTIVATIONS[model.activation]()))
        if model.coefs_[-1].shape[1] == 1:
            layers.append(("binary", _BinaryLogits()))
        return layers
    if name == "GaussianNB":
        return [("log_likelihood", _GaussianLogLikelihood(model, dtype))]
    # SVC, NuSVC
    weights, intercept = _pairwise_weights(model)
    layers = [("kernel", _Kernel(model, dtype)), ("pairwise", _linear(weights.T, intercept, dtype))]
    n_classes = len(model.classes_)
    if n_classes == 2:
        layers.append(("binary", _BinaryLogits()))
    else:
        first_wins = not (model.break_ties and model.decision_function_shape == "ovr")
        layers.append(("ovr", _OneVsOneScores(n_classes, first_wins, dtype)))
    return layers


def has_twin(model: Any) -> bool:
    """Whether :func:`twin_candidates` can build a twin of ``model`` (a fitted model, or a
    pipeline of differentiable transformers ending in one)."""
    final, steps = _final_model(model)
    if not all(_transform(step, torch.float64) is not None for _, step in steps):
        return False
    name = type(final).__name__
    if name in ("SVC", "NuSVC"):
        return final.kernel in _KERNELS
    if name == "MLPClassifier":
        return final.activation in _ACTIVATIONS
    return name in PROBA_MODELS or name in SCORE_MODELS


def twin_candidates(model: Any, dtype: torch.dtype) -> list[nn.Sequential]:
    """The possible twins of ``model`` (the first that reproduces it wins)."""
    if not has_twin(model):
        return []
    final, steps = _final_model(model)
    used = {name for name, _ in steps}
    flatten = "flatten" if "flatten" not in used else "flatten_"
    front: list[tuple[str, nn.Module]] = [(flatten, nn.Flatten())]
    for name, step in steps:
        module = _transform(step, dtype)
        assert module is not None  # has_twin checked it
        front.append((_safe(name), module))
    variants = [False, True] if type(final).__name__ == "LogisticRegression" else [False]
    out = []
    for one_vs_rest in variants:
        layers = _model_layers(final, one_vs_rest, dtype)
        if steps:  # the model's own layers under its step name
            tail: list[tuple[str, nn.Module]] = [
                (_safe(model.steps[-1][0]), nn.Sequential(OrderedDict(layers)))
            ]
        else:
            tail = layers
        out.append(nn.Sequential(OrderedDict(front + tail)))
    return out


def _safe(name: str) -> str:
    """A pipeline step name usable as a module name (not an attribute of nn.Sequential)."""
    name = name.replace(".", "_") or "step"
    return name + "_" if hasattr(nn.Sequential(), name) else name


def ovo_to_ovr(pairwise: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's one-vs-rest decision function of pairwise decision values."""
    first, second = _pair_matrices(n_classes)
    wins = (pairwise >= 0).astype(np.float64)
    votes = wins @ first + (1.0 - wins) @ second
    confidence = pairwise @ (first - second)
    return votes + confidence / (3.0 * (np.abs(confidence) + 1.0))


def reference_scores(model: Any, flat: np.ndarray) -> tuple[str, np.ndarray]:
    """What a twin must reproduce on ``flat``: ``("proba", predict_proba)`` for probabilistic
    models, ``("scores", class scores)`` for margin models (see the module docstring)."""
    final = final_estimator(model)
    name = type(final).__name__
    if name not in SCORE_MODELS:
        return "proba", np.asarray(model.predict_proba(flat), np.float64)
    dec = np.asarray(model.decision_function(flat), np.float64)
    n_classes = len(final.classes_)
    if n_classes == 2:
        return "scores", np.stack([np.zeros_like(dec), dec.reshape(-1)], axis=1)
    if name == "LinearSVC":
        return "scores", dec
    if final.decision_function_shape == "ovo":
        dec = ovo_to_ovr(dec, n_classes)
    if not final.break_ties or final.decision_function_shape == "ovo":
        votes = np.rint(dec)  # |confidence term| < 1/3
        top = votes == votes.max(axis=1, keepdims=True)
        winner = votes.argmax(axis=1)[:, None]
        dec = dec - (top & (np.arange(n_classes) != winner))
    return "scores", dec
