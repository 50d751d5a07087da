"""Estimator protocols and the shared base class.

An estimator wraps a model, whatever its framework, and speaks torch tensors. It works on two
levels:

* the **public methods** (``predict``, ``logits``, ``loss_gradient``, ``class_gradient``,
  ``get_activations``, ``fit``) take NumPy arrays or tensors, validate them, work in batches and
  give results back in the caller's type;
* the **tensor kernels** (``predict_tensor``, ``logits_tensor``, ``loss_gradient_tensor``,
  ``class_gradient_tensor``, ``activations_tensor``) take float tensors already on
  ``estimator.device`` and skip validation. Attacks call these inside their loops so that no
  conversion or check runs per step.

What an estimator can do is declared in ``capabilities``; an attack lists what it requires and
:func:`require_capabilities` raises an :class:`~bastion.exceptions.EstimatorError` naming what is
missing.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from bastion._tensor import to_tensor
from bastion._validation import check_labels, check_x, invalid_parameter
from bastion.exceptions import EstimatorError, InputError

__all__ = [
    "CAPABILITIES",
    "Classifier",
    "SupportsActivations",
    "SupportsClassGradient",
    "SupportsFit",
    "SupportsLossGradient",
    "SupportsPredict",
    "require_capabilities",
]

#: Every capability an estimator may declare.
CAPABILITIES = ("predict", "logits", "loss_gradient", "class_gradient", "activations", "fit")


@runtime_checkable
class SupportsPredict(Protocol):
    """Predict-only access: what a black-box (query) attack needs."""

    input_shape: tuple[int, ...]
    nb_classes: int
    clip_values: tuple[float, float] | None
    device: torch.device
    query_count: int

    def predict(self, x: Any, *, batch_size: int = ...) -> Any: ...

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SupportsLossGradient(SupportsPredict, Protocol):
    """Gradients of the training loss with respect to the input."""

    def loss_gradient(self, x: Any, y: Any) -> Any: ...

    def loss_gradient_tensor(
        self, x: torch.Tensor, y: torch.Tensor, *, return_outputs: bool = ...
    ) -> Any: ...


@runtime_checkable
class SupportsClassGradient(SupportsPredict, Protocol):
    """Gradients of the class scores (logits) with respect to the input."""

    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor: ...

    def class_gradient(self, x: Any, label: Any = ...) -> Any: ...

    def class_gradient_tensor(self, x: torch.Tensor, label: Any = ...) -> torch.Tensor: ...

    def class_gradient_and_logits_tensor(
        self, x: torch.Tensor, label: Any = ...
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def objective_gradient_tensor(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class SupportsActivations(Protocol):
    """Access to intermediate layers."""

    @property
    def layer_names(self) -> list[str]: ...

    def get_activations(self, x: Any, layer: str | int, *, batch_size: int = ...) -> Any: ...


@runtime_checkable
class SupportsFit(Protocol):
    """Training on labelled data."""

    def fit(self, x: Any, y: Any, **kwargs: Any) -> Any: ...


_GRADIENT_HINT = (
    "Gradient-based attacks need a differentiable estimator (TorchClassifier, or "
    "SklearnClassifier around LogisticRegression / MLPClassifier); for a model you can only "
    "query, use a black-box (score- or decision-based) attack instead"
)


def require_capabilities(estimator: Any, needed: Iterable[str], user: str) -> None:
    """Raise :class:`EstimatorError` unless ``estimator`` declares every capability in ``needed``.

    Parameters
    ----------
    estimator : object
        The estimator given to an attack or defence.
    needed : iterable of str
        Capabilities from :data:`CAPABILITIES`.
    user : str
        Name of the attack or defence, used in the message.
    """
    if isinstance(estimator, torch.nn.Module):
        raise EstimatorError(
            f"{user} needs a bastion estimator, got a raw torch.nn.Module "
            f"({type(estimator).__name__}). Wrap it first: "
            "TorchClassifier(model, input_shape=..., nb_classes=..., clip_values=...)."
        )
    caps = getattr(estimator, "capabilities", None)
    if caps is None:
        raise EstimatorError(
            f"{user} needs a bastion estimator, got {type(estimator).__name__}. Wrap the model "
            "in TorchClassifier, SklearnClassifier or BlackBoxClassifier."
        )
    missing = [c for c in needed if c not in caps]
    if missing:
        hint = _GRADIENT_HINT if any("gradient" in c for c in missing) else ""
        raise EstimatorError(
            f"{user} needs the estimator capability {', '.join(repr(m) for m in missing)}, "
            f"which {type(estimator).__name__} does not provide (it has: "
            f"{', '.join(sorted(caps))}). {hint}".rstrip()
            + ("." if hint else "")
        )


class Classifier(abc.ABC):
    """Base class of bastion classifiers.

    Subclasses implement the tensor kernels for their capabilities; this class supplies the
    validated, batched, type-preserving public methods and query accounting.

    Attributes
    ----------
    input_shape : tuple of int
        Shape of one sample (no batch dimension).
    nb_classes : int
        Number of classes.
    clip_values : (float, float) or None
        Valid input range; attacks keep adversarial examples inside it.
    device : torch.device
        Where the kernels compute.
    dtype : torch.dtype
        Floating dtype the kernels compute in (inputs are converted to it).
    query_count : int
        Number of samples whose outputs (probabilities or logits) were returned so far.
    gradient_count : int
        Number of samples for which gradients were computed so far.
    """

    #: Capabilities provided by this class (instances may narrow them).
    capabilities: frozenset[str] = frozenset({"predict"})
    _default_batch_size: ClassVar[int] = 256

    input_shape: tuple[int, ...]
    nb_classes: int
    clip_values: tuple[float, float] | None
    device: torch.device
    dtype: torch.dtype = torch.float32

    def __init__(self) -> None:
        self.query_count = 0
        self.gradient_count = 0

    def reset_counts(self) -> None:
        """Set ``query_count`` and ``gradient_count`` back to zero."""
        self.query_count = 0
        self.gradient_count = 0

    # ------------------------------------------------------------------ kernels
    # Every gradient and activation a kernel returns is contiguous in the usual (NCHW) order,
    # whatever memory layout the model computes in (a no-op copy when it already is).

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, nb_classes)`` for a float tensor on ``self.device``."""
        self.query_count += int(x.shape[0])
        return self._predict_probabilities(x)

    @abc.abstractmethod
    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for a batch (no counting, no validation)."""

    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable class scores ``(N, nb_classes)``; counted as queries."""
        self._require("logits", "logits_tensor")
        self.query_count += int(x.shape[0])
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_gradient_tensor(
        self, x: torch.Tensor, y: torch.Tensor, *, return_outputs: bool = False
    ) -> Any:
        """Gradient of the per-sample loss (summed over the batch) with respect to ``x``.

        With ``return_outputs=True`` returns ``(grad, loss_per_sample, logits)`` from the same
        forward pass, so attacks can track progress without another query.
        """
        self._require("loss_gradient", "loss_gradient_tensor")
        self.gradient_count += int(x.shape[0])
        out = self._loss_gradient(x, y, return_outputs)
        if return_outputs:
            return (out[0].contiguous(), *out[1:])
        return out.contiguous()

    def _loss_gradient(self, x: torch.Tensor, y: torch.Tensor, return_outputs: bool) -> Any:
        raise NotImplementedError

    def class_gradient_tensor(self, x: torch.Tensor, label: Any = None) -> torch.Tensor:
        """Gradients of the logits, in one backward pass.

        ``label=None``: all classes, ``(N, nb_classes, *input_shape)``; an int or an ``(N,)``
        tensor (one class per sample): ``(N, *input_shape)``; an ``(N, k)`` tensor (k classes per
        sample, e.g. an attack's candidates): ``(N, k, *input_shape)``.
        """
        self._require("class_gradient", "class_gradient_tensor")
        self.gradient_count += int(x.shape[0])
        return self._class_gradient(x, label).contiguous()

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        raise NotImplementedError

    def class_gradient_and_logits_tensor(
        self, x: torch.Tensor, label: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`class_gradient_tensor` and the logits at ``x``, from one forward pass where
        the estimator allows it (attacks that linearise the model at every step need both)."""
        self._require("class_gradient", "class_gradient_and_logits_tensor")
        self.gradient_count += int(x.shape[0])
        grad, logits = self._class_gradient_and_logits(x, label)
        return grad.contiguous(), logits

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Generic fallback: two passes. Estimators with an autograd graph override it.
        with torch.no_grad():
            logits = self._logits(x)
        return self._class_gradient(x, label), logits

    def objective_gradient_tensor(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient of a per-sample function of the logits, from one forward pass.

        ``objective(logits) -> (N,)`` (e.g. a margin, the DLR loss, a class probability). Returns
        ``(grad, value, logits)``; needs the ``class_gradient`` capability (gradients flow
        through the logits). Counted as gradients, like :meth:`loss_gradient_tensor`.
        """
        self._require("class_gradient", "objective_gradient_tensor")
        self.gradient_count += int(x.shape[0])
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self._logits(xr)
            value = objective(logits)
            (grad,) = torch.autograd.grad(value.sum(), xr)
        return grad.contiguous(), value.detach(), logits.detach()

    def activations_tensor(self, x: torch.Tensor, layer: str | int) -> torch.Tensor:
        """Output of ``layer`` for a batch."""
        self._require("activations", "activations_tensor")
        return self._activations(x, layer).contiguous()

    def _activations(self, x: torch.Tensor, layer: str | int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def layer_names(self) -> list[str]:
        """Names of the layers :meth:`get_activations` accepts."""
        self._require("activations", "layer_names")
        return []

    # ------------------------------------------------------------------ public API

    def _require(self, capability: str, what: str) -> None:
        if capability not in self.capabilities:
            require_capabilities(self, [capability], f"{type(self).__name__}.{what}")

    def _input(self, x: Any, name: str = "x") -> tuple[torch.Tensor, Any]:
        t, kind = to_tensor(x, device=self.device, dtype=self.dtype)
        check_x(t, input_shape=self.input_shape, clip_values=self.clip_values, name=name)
        return t, kind

    def _labels(self, y: Any, n: int) -> torch.Tensor:
        if y is None:
            raise InputError("y (labels) is required.")
        t, _ = to_tensor(y, device=self.device, dtype=None)
        return check_labels(t, n=n, nb_classes=self.nb_classes)

    @staticmethod
    def _check_batch_size(batch_size: int) -> int:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise invalid_parameter("batch_size", "predict", "an int in [1, inf)", batch_size)
        return batch_size

    def _batched(self, fn: Any, t: torch.Tensor, batch_size: int) -> torch.Tensor:
        bs = self._check_batch_size(batch_size)
        return torch.cat([fn(t[i : i + bs]) for i in range(0, t.shape[0], bs)])

    def predict(self, x: Any, *, batch_size: int = 256) -> Any:
        """Class probabilities for ``x``.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
        batch_size : int
            Samples per forward pass.

        Returns
        -------
        probabilities : same type as ``x``, shape (N, nb_classes)
        """
        t, kind = self._input(x)
        with torch.no_grad():
            out = self._batched(self.predict_tensor, t, batch_size)
        return kind.restore(out)

    def logits(self, x: Any, *, batch_size: int = 256) -> Any:
        """Class scores before the softmax, shape (N, nb_classes), in the caller's type."""
        self._require("logits", "logits")
        t, kind = self._input(x)
        with torch.no_grad():
            out = self._batched(self.logits_tensor, t, batch_size)
        return kind.restore(out)

    def loss_gradient(self, x: Any, y: Any) -> Any:
        """Gradient of the loss at ``(x, y)`` with respect to ``x`` (same shape and type as x).

        The loss is summed over samples, so each row is that sample's own gradient.
        """
        self._require("loss_gradient", "loss_gradient")
        t, kind = self._input(x)
        yt = self._labels(y, t.shape[0])
        return kind.restore(self.loss_gradient_tensor(t, yt))

    def class_gradient(self, x: Any, label: Any = None) -> Any:
        """Gradients of the logits with respect to ``x``, computed in one Jacobian call.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
        label : None, int or array of N ints
            ``None``: all classes, result shape ``(N, nb_classes, *input_shape)``; an int or
            one class per sample: result shape ``(N, *input_shape)``.
        """
        self._require("class_gradient", "class_gradient")
        t, kind = self._input(x)
        lab: Any = label
        if label is not None and not isinstance(label, int):
            lab = self._labels(label, t.shape[0])
        elif isinstance(label, int) and not 0 <= label < self.nb_classes:
            raise InputError(f"label {label} is outside [0, {self.nb_classes - 1}].")
        return kind.restore(self.class_gradient_tensor(t, lab))

    def get_activations(self, x: Any, layer: str | int, *, batch_size: int = 256) -> Any:
        """Outputs of ``layer`` (a name from :attr:`layer_names` or an index into it)."""
        self._require("activations", "get_activations")
        t, kind = self._input(x)
        with torch.no_grad():
            out = self._batched(lambda b: self.activations_tensor(b, layer), t, batch_size)
        return kind.restore(out)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_shape={self.input_shape}, nb_classes={self.nb_classes}, "
            f"clip_values={self.clip_values}, device={str(self.device)!r})"
        )
