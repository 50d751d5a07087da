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
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch

from bastion._tensor import to_tensor
from bastion._validation import check_labels, check_x, invalid_parameter
from bastion.exceptions import BastionError, EstimatorError, InputError, ModelError

__all__ = [
    "CAPABILITIES",
    "Classifier",
    "EstimatorWrapper",
    "SupportsActivationGradient",
    "SupportsActivationGradientAndPredict",
    "SupportsActivations",
    "SupportsActivationsAndPredict",
    "SupportsClassGradient",
    "SupportsClone",
    "SupportsCloneFitAndPredict",
    "SupportsFit",
    "SupportsFitAndPredict",
    "SupportsLogits",
    "SupportsLossGradient",
    "SupportsParameterGradient",
    "SupportsPredict",
    "SupportsPrune",
    "SupportsTorchModule",
    "SupportsTorchModuleAndPredict",
    "require_capabilities",
]

#: Every capability an estimator may declare. ``predict``: probabilities; ``logits``: class
#: scores; ``loss_gradient`` / ``class_gradient``: input gradients of the loss, of the scores and
#: of any function of them; ``activations``: outputs of named layers; ``activation_gradient``:
#: input gradients of a function of a layer's output; ``parameter_gradient``: gradients of the
#: loss with respect to the model's parameters; ``fit``: training; ``clone``: an independent
#: (optionally re-initialised) copy; ``prune``: zeroing units of a layer (on a clone);
#: ``module``: the model as a ``torch.nn.Module`` from raw inputs (the estimator's input space,
#: its normalisation included) to logits, sharing the estimator's parameters, so that training
#: it trains the estimator (adversarial training). Only estimators that *are* a torch model
#: offer it; wrappers never forward it, since their module would not be the model they answer
#: for.
CAPABILITIES = (
    "predict",
    "logits",
    "loss_gradient",
    "class_gradient",
    "activations",
    "activation_gradient",
    "parameter_gradient",
    "fit",
    "clone",
    "prune",
    "module",
    "trees",
)

#: The type of the estimator a :meth:`SupportsClone.clone` is called on (and returns).
_E = TypeVar("_E")

# Attacks, defences and metrics annotate their estimators with the protocols below, so that a
# type checker tells a user which capabilities each one needs (at run time,
# ``require_capabilities`` checks the declared ``capabilities``). The logits and gradient
# protocols extend SupportsPredict (the attributes every estimator has); the others are mix-ins,
# which the ``...AndPredict`` protocols at the end combine with it.


@runtime_checkable
class SupportsPredict(Protocol):
    """Predict-only access: what a black-box (query) attack needs."""

    input_shape: tuple[int, ...]
    nb_classes: int
    clip_values: tuple[float, float] | None
    device: torch.device
    dtype: torch.dtype
    query_count: int

    @property
    def capabilities(self) -> frozenset[str]: ...

    def predict(self, x: Any, *, batch_size: int = ...) -> Any: ...

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SupportsLogits(SupportsPredict, Protocol):
    """Class scores before the softmax (without gradients through them)."""

    def logits(self, x: Any, *, batch_size: int = ...) -> Any: ...

    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SupportsLossGradient(SupportsPredict, Protocol):
    """Gradients of the training loss with respect to the input."""

    def loss_gradient(self, x: Any, y: Any) -> Any: ...

    def loss_gradient_tensor(
        self, x: torch.Tensor, y: torch.Tensor, *, return_outputs: bool = ...
    ) -> Any: ...


@runtime_checkable
class SupportsClassGradient(SupportsLogits, Protocol):
    """Gradients of the class scores (logits), or of any function of them, with respect to the
    input."""

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

    @property
    def layer_types(self) -> dict[str, str]: ...

    def get_activations(self, x: Any, layer: str | int, *, batch_size: int = ...) -> Any: ...

    def activations_tensor(self, x: torch.Tensor, layer: str | int) -> torch.Tensor: ...

    def resolve_layer(self, layer: Any) -> str: ...


@runtime_checkable
class SupportsActivationGradient(SupportsActivations, Protocol):
    """Gradients of a function of a layer's output with respect to the input (feature-space
    attacks: feature collision, hidden-trigger and clean-label poisons)."""

    def activation_gradient_tensor(
        self,
        x: torch.Tensor,
        layer: str | int,
        objective: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class SupportsParameterGradient(Protocol):
    """Gradients of the training loss with respect to the model's trainable parameters (and,
    with ``create_graph=True``, their derivative with respect to the input)."""

    def parameter_gradient_tensor(
        self, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = ...
    ) -> tuple[torch.Tensor, ...]: ...


@runtime_checkable
class SupportsFit(Protocol):
    """Training on labelled data."""

    def fit(self, x: Any, y: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class SupportsClone(Protocol):
    """An independent copy of the estimator (its own model), optionally re-initialised."""

    def clone(self: _E, *, reinitialize: bool = ..., random_state: Any = ...) -> _E: ...


@runtime_checkable
class SupportsPrune(Protocol):
    """Zeroing the outputs of chosen units (channels, neurons) of a layer: model surgery done
    on a :meth:`~SupportsClone.clone`, never on the user's model."""

    def prune(self, layer: str | int, units: Any) -> None: ...


@runtime_checkable
class SupportsTorchModule(Protocol):
    """The model as a ``torch.nn.Module`` mapping raw inputs (in ``clip_values``, before the
    estimator's normalisation) to logits, sharing the estimator's parameters: what the trainers
    that update the model in place (adversarial training) need."""

    def torch_module(self) -> torch.nn.Module: ...


@runtime_checkable
class SupportsActivationsAndPredict(SupportsActivations, SupportsPredict, Protocol):
    """Intermediate layers and predictions: what the activation-based poison detectors need."""


@runtime_checkable
class SupportsActivationGradientAndPredict(SupportsActivationGradient, SupportsPredict, Protocol):
    """Feature-space gradients and predictions: what the feature-space poisons need."""


@runtime_checkable
class SupportsFitAndPredict(SupportsFit, SupportsPredict, Protocol):
    """Training and predictions: what a model-extraction thief needs."""


@runtime_checkable
class SupportsCloneFitAndPredict(SupportsClone, SupportsFit, SupportsPredict, Protocol):
    """A copy (or a re-initialised one) trained on other data: what the defences that retrain
    the model need."""


@runtime_checkable
class SupportsTorchModuleAndPredict(SupportsTorchModule, SupportsPredict, Protocol):
    """A trainable torch module and predictions: what the adversarial trainers need."""


_GRADIENT_HINT = (
    "Gradient-based attacks need a differentiable estimator (TorchClassifier, or "
    "SklearnClassifier around LogisticRegression / MLPClassifier); for a model you can only "
    "query, use a black-box (score- or decision-based) attack instead"
)
#: Added to the hint for a tree model (an estimator with the "trees" capability).
_TREE_HINT = (
    ". This is a tree model: attack its trees with DecisionTreeAttack (one tree) or "
    "TreeEnsembleMILPAttack (exact minimal perturbation), or query it with HopSkipJump"
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
        if hint and "trees" in caps:
            hint += _TREE_HINT
        raise EstimatorError(
            f"{user} needs the estimator capability {', '.join(repr(m) for m in missing)}, "
            f"which {type(estimator).__name__} does not provide (it has: "
            f"{', '.join(sorted(caps))}). {hint}".rstrip()
            + ("." if hint else "")
        )


#: Errors that keep their type when raised inside a model: bastion's own, and running out of
#: memory (callers catch it to retry with smaller batches).
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    BastionError,
    MemoryError,
    getattr(torch, "OutOfMemoryError", MemoryError),
)


#: A :class:`Classifier` whose :meth:`~Classifier.clone` returns its own type.
_C = TypeVar("_C", bound="Classifier")


def _cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(z, y, reduction="none")


class Classifier(abc.ABC):
    """Base class of bastion classifiers.

    Subclasses implement the tensor kernels for their capabilities; this class supplies the
    validated, batched, type-preserving public methods, query accounting, and the checks that
    every answer of the model is usable.

    A new framework needs only ``_predict_probabilities`` (predict-only), plus ``_logits`` and
    ``_logits_vjp`` (the vector-Jacobian product of the logits) for every gradient capability:
    loss, class and objective gradients are derived from them here. Frameworks with a fused
    forward-and-backward pass (torch) override those kernels for speed.

    Every public kernel checks what the model returned: a model that raises while computing a
    batch, or returns NaN/infinite values or a shape other than the one expected (a wrong
    ``nb_classes`` or ``input_shape``), raises :class:`~bastion.exceptions.ModelError` naming
    the estimator and the batch. Queries are counted once they are answered.

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

    # ------------------------------------------------------------------ checks of the model

    def _run(self, what: str, x: torch.Tensor, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, with any error the model raises turned into a :class:`ModelError`
        that names the estimator, what was computed and the batch."""
        try:
            return fn(*args)
        except _PASS_THROUGH:
            raise
        except Exception as err:
            raise ModelError(
                f"{type(self).__name__}: the model raised {type(err).__name__} while computing "
                f"{what} for a batch of shape {tuple(x.shape)}: {err} (check that "
                f"input_shape={tuple(self.input_shape)} and nb_classes={self.nb_classes} "
                "match the model)."
            ) from err

    def _check_finite(self, t: torch.Tensor, what: str) -> None:
        if t.numel() == 0:
            return
        # Two reductions (NaN propagates through both; +-inf shows in one) cost a fraction of
        # ``isfinite(t).all()``, which allocates a mask as large as t (0.1 against 2.4 ms on a
        # 256x3x32x32 gradient): the fast path of every call.
        low, high = torch.aminmax(t.detach())
        if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
            return
        finite = torch.isfinite(t)
        n = t.shape[0]
        rows = (~finite).reshape(n, -1).any(dim=1).nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
        raise ModelError(
            f"{type(self).__name__}: the model returned NaN or infinite {what} for {len(rows)} "
            f"of the {n} samples of a batch (rows {shown}); attacks cannot use such outputs."
        )

    def _check_scores(self, out: Any, n: int, what: str) -> torch.Tensor:
        """``out`` must be a finite float tensor of shape ``(n, nb_classes)``."""
        expected = (n, self.nb_classes)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(
                f"{type(self).__name__}: the model returned {what} of shape {got} for a batch of "
                f"{n} samples; expected {expected} (is nb_classes={self.nb_classes} right?)."
            )
        if not out.is_floating_point():
            raise ModelError(
                f"{type(self).__name__}: the model returned {what} of dtype {out.dtype}; "
                "expected floating-point scores."
            )
        self._check_finite(out, what)
        return out

    def _check_gradient(self, g: Any, x: torch.Tensor, what: str) -> torch.Tensor:
        """``g`` must be a finite tensor with ``x``'s batch size first and ``x``'s sample shape
        last (any class dimensions in between)."""
        sample = tuple(x.shape[1:])
        ok = isinstance(g, torch.Tensor) and g.shape[:1] == x.shape[:1]
        ok = ok and tuple(g.shape[g.ndim - len(sample) :]) == sample
        if not ok:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ModelError(
                f"{type(self).__name__}: {what} of shape {got} for inputs of shape "
                f"{tuple(x.shape)}; expected the batch size first and the sample shape last."
            )
        self._check_finite(g, what)
        return g.contiguous()

    # ------------------------------------------------------------------ kernels
    # Every gradient and activation a kernel returns is contiguous in the usual (NCHW) order,
    # whatever memory layout the model computes in (a no-op copy when it already is).

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, nb_classes)`` for a float tensor on ``self.device``."""
        out = self._run("probabilities", x, self._predict_probabilities, x)
        self._check_scores(out, int(x.shape[0]), "probabilities")
        self.query_count += int(x.shape[0])
        return out

    @abc.abstractmethod
    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for a batch (no counting, no validation)."""

    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(N, nb_classes)``; counted as queries.

        Gradients of (functions of) the scores come from :meth:`objective_gradient_tensor` and
        the other gradient kernels, never from autograd through this output: an estimator of
        another framework returns scores without a torch graph.
        """
        self._require("logits", "logits_tensor")
        out = self._run("logits", x, self._logits, x)
        self._check_scores(out, int(x.shape[0]), "logits")
        self.query_count += int(x.shape[0])
        return out

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _logits_vjp(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k weights[n, k] * d logits[n, k] / d x[n]`` for each sample: the one kernel a
        framework with its own autodiff implements for every gradient capability."""
        raise NotImplementedError

    def _per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of each sample (cross-entropy unless the estimator says)."""
        return _cross_entropy(logits, y)

    def loss_gradient_tensor(
        self, x: torch.Tensor, y: torch.Tensor, *, return_outputs: bool = False
    ) -> Any:
        """Gradient of the per-sample loss (summed over the batch) with respect to ``x``.

        With ``return_outputs=True`` returns ``(grad, loss_per_sample, logits)`` from the same
        forward pass, so attacks can track progress without another query.
        """
        self._require("loss_gradient", "loss_gradient_tensor")
        out = self._run("loss gradients", x, self._loss_gradient, x, y, return_outputs)
        if return_outputs:
            grad = self._check_gradient(out[0], x, "loss gradients")
            self._check_scores(out[2], int(x.shape[0]), "logits")
            self.gradient_count += int(x.shape[0])
            return (grad, *out[1:])
        grad = self._check_gradient(out, x, "loss gradients")
        self.gradient_count += int(x.shape[0])
        return grad

    def _loss_gradient(self, x: torch.Tensor, y: torch.Tensor, return_outputs: bool) -> Any:
        grad, loss, logits = self._objective_gradient(x, lambda z: self._per_sample_loss(z, y))
        return (grad, loss, logits) if return_outputs else grad

    def class_gradient_tensor(self, x: torch.Tensor, label: Any = None) -> torch.Tensor:
        """Gradients of the logits, in one backward pass where the estimator allows it.

        ``label=None``: all classes, ``(N, nb_classes, *input_shape)``; an int or an ``(N,)``
        tensor (one class per sample): ``(N, *input_shape)``; an ``(N, k)`` tensor (k classes per
        sample, e.g. an attack's candidates): ``(N, k, *input_shape)``.
        """
        self._require("class_gradient", "class_gradient_tensor")
        out = self._run("class gradients", x, self._class_gradient, x, label)
        grad = self._check_gradient(out, x, "class gradients")
        self.gradient_count += int(x.shape[0])
        return grad

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        return self._class_gradient_and_logits(x, label)[0]

    def class_gradient_and_logits_tensor(
        self, x: torch.Tensor, label: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`class_gradient_tensor` and the logits at ``x``, from one forward pass where
        the estimator allows it (attacks that linearise the model at every step need both)."""
        self._require("class_gradient", "class_gradient_and_logits_tensor")
        grad, logits = self._run("class gradients", x, self._class_gradient_and_logits, x, label)
        grad = self._check_gradient(grad, x, "class gradients")
        self._check_scores(logits, int(x.shape[0]), "logits")
        self.gradient_count += int(x.shape[0])
        return grad, logits

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Generic: one vector-Jacobian product per requested class row.
        with torch.no_grad():
            logits = self._logits(x)
        eye = torch.eye(self.nb_classes, device=logits.device, dtype=logits.dtype)
        if isinstance(label, int) or (isinstance(label, torch.Tensor) and label.ndim == 1):
            rows = eye[label].expand(x.shape[0], -1) if isinstance(label, int) else eye[label]
            return self._logits_vjp(x, rows), logits
        cls = (
            torch.arange(self.nb_classes, device=logits.device).expand(x.shape[0], -1)
            if label is None
            else label
        )
        grads = [self._logits_vjp(x, eye[cls[:, r]]) for r in range(cls.shape[1])]
        return torch.stack(grads, dim=1), logits

    def objective_gradient_tensor(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient of a per-sample function of the logits, from one forward pass.

        ``objective(logits) -> (N,)`` (e.g. a margin, the DLR loss, a class probability), a
        differentiable torch function. Returns ``(grad, value, logits)``; needs the
        ``class_gradient`` capability. Counted as gradients, like :meth:`loss_gradient_tensor`.
        Attacks that optimise a transformed variable (CW's ``tanh`` space, a trigger's mask and
        pattern) take this gradient with respect to the input and apply the chain rule
        themselves.
        """
        self._require("class_gradient", "objective_gradient_tensor")
        grad, value, logits = self._run(
            "objective gradients", x, self._objective_gradient, x, objective
        )
        grad = self._check_gradient(grad, x, "objective gradients")
        self._check_scores(logits, int(x.shape[0]), "logits")
        self.gradient_count += int(x.shape[0])
        return grad, value, logits

    def _objective_gradient(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Generic: the objective's gradient with respect to the logits (torch autograd on a
        # (N, K) tensor), pulled back to the input by the model's vector-Jacobian product.
        with torch.no_grad():
            logits = self._logits(x)
        z = logits.detach().requires_grad_(True)
        with torch.enable_grad():
            value = objective(z)
            (weights,) = torch.autograd.grad(value.sum(), z)
        return self._logits_vjp(x, weights), value.detach(), logits.detach()

    def activations_tensor(self, x: torch.Tensor, layer: str | int) -> torch.Tensor:
        """Output of ``layer`` for a batch."""
        self._require("activations", "activations_tensor")
        out = self._run(f"the activations of layer {layer!r}", x, self._activations, x, layer)
        if not isinstance(out, torch.Tensor) or out.shape[:1] != x.shape[:1]:
            raise ModelError(
                f"{type(self).__name__}: layer {layer!r} gave no per-sample output for a "
                f"batch of shape {tuple(x.shape)}."
            )
        if out.is_floating_point():
            self._check_finite(out, f"activations of layer {layer!r}")
        return out.contiguous()

    def _activations(self, x: torch.Tensor, layer: str | int) -> torch.Tensor:
        raise NotImplementedError

    def activation_gradient_tensor(
        self,
        x: torch.Tensor,
        layer: str | int,
        objective: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient with respect to ``x`` of a per-sample function of ``layer``'s output.

        ``objective(activations) -> (N,)``, a differentiable torch function of the layer's
        output (shape ``(N, ...)``). Returns ``(grad, value, activations)`` from one forward
        pass; counted as gradients.
        """
        self._require("activation_gradient", "activation_gradient_tensor")
        grad, value, acts = self._run(
            f"gradients through layer {layer!r}",
            x,
            self._activation_gradient,
            x,
            layer,
            objective,
        )
        grad = self._check_gradient(grad, x, f"gradients through layer {layer!r}")
        self.gradient_count += int(x.shape[0])
        return grad, value, acts

    def _activation_gradient(
        self,
        x: torch.Tensor,
        layer: str | int,
        objective: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def parameter_gradient_tensor(
        self, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Gradient of the mean loss over ``(x, y)`` with respect to each trainable parameter.

        With ``create_graph=True`` the result keeps its graph, so an attacker can differentiate
        a function of it with respect to an ``x`` that requires grad (gradient matching).
        Counted as gradients.
        """
        self._require("parameter_gradient", "parameter_gradient_tensor")
        grads = self._run("parameter gradients", x, self._parameter_gradient, x, y, create_graph)
        for g in grads:
            if not bool(torch.isfinite(g.detach()).all()):
                raise ModelError(
                    f"{type(self).__name__}: NaN or infinite parameter gradients for a batch "
                    f"of shape {tuple(x.shape)}."
                )
        self.gradient_count += int(x.shape[0])
        return tuple(grads)

    def _parameter_gradient(
        self, x: torch.Tensor, y: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @property
    def layer_names(self) -> list[str]:
        """Names of the layers :meth:`get_activations` accepts."""
        self._require("activations", "layer_names")
        return []

    @property
    def layer_types(self) -> dict[str, str]:
        """The kind of each layer of :attr:`layer_names` (e.g. ``"Conv2d"``, ``"ReLU"``), where
        the estimator knows it (defences use it to choose a default layer)."""
        self._require("activations", "layer_types")
        return {}

    # ------------------------------------------------------------------ training and surgery
    # Estimators with these capabilities override the methods; the others answer with the
    # EstimatorError every missing capability gives.

    def fit(self, x: Any, y: Any, **kwargs: Any) -> Any:
        """Train the model on ``(x, y)`` (estimators with the ``fit`` capability)."""
        self._require("fit", "fit")
        raise NotImplementedError  # pragma: no cover - a subclass declaring "fit" overrides it

    def clone(self: _C, *, reinitialize: bool = False, random_state: Any = None) -> _C:
        """An independent copy of the estimator (estimators with the ``clone`` capability)."""
        self._require("clone", "clone")
        raise NotImplementedError  # pragma: no cover

    def prune(self, layer: str | int, units: Any) -> None:
        """Zero units of a layer's output (estimators with the ``prune`` capability)."""
        self._require("prune", "prune")
        raise NotImplementedError  # pragma: no cover

    def torch_module(self) -> torch.nn.Module:
        """The model as a module from raw inputs to logits (the ``module`` capability)."""
        self._require("module", "torch_module")
        raise NotImplementedError  # pragma: no cover

    def resolve_layer(self, layer: Any) -> str:
        """The name of ``layer`` (a name of :attr:`layer_names` or an index into it).

        Raises
        ------
        InputError
            For an unknown name or an index out of range.
        """
        names = list(self.layer_names)
        if isinstance(layer, bool) or not isinstance(layer, (str, int)):
            raise invalid_parameter("layer", type(self).__name__, "a layer name or index", layer)
        if isinstance(layer, int):
            if not -len(names) <= layer < len(names):
                raise InputError(
                    f"layer index {layer} is out of range for {len(names)} layers: {names}."
                )
            return names[layer]
        if layer not in names:
            raise InputError(f"unknown layer {layer!r}; available layers: {names}.")
        return layer

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
        self.resolve_layer(layer)
        with torch.no_grad():
            out = self._batched(lambda b: self.activations_tensor(b, layer), t, batch_size)
        return kind.restore(out)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_shape={self.input_shape}, nb_classes={self.nb_classes}, "
            f"clip_values={self.clip_values}, device={str(self.device)!r})"
        )


class EstimatorWrapper(Classifier):
    """Base of estimators that wrap an estimator: defences, EOT, guarded models.

    The wrapper takes the wrapped estimator's ``input_shape``, ``nb_classes``,
    ``clip_values``, ``device`` and ``dtype``, and offers the capabilities of the wrapped
    estimator that it lists in ``forwarded`` (explicitly: a defence that hides gradients
    forwards only ``predict``). Every kernel forwards to the wrapped estimator's public kernel,
    so both count the queries and gradients they answer; a subclass overrides the kernels whose
    meaning it changes.

    Parameters
    ----------
    estimator : Classifier
        The estimator to wrap.
    """

    #: The capabilities this wrapper offers when the wrapped estimator has them.
    forwarded: ClassVar[frozenset[str]] = frozenset({"predict"})
    #: The wrapped estimator. Any protocol: each kernel forwards to it only where it declares
    #: the capability (``_require``), which no single static type can say.
    estimator: Any

    def __init__(self, estimator: SupportsPredict) -> None:
        super().__init__()
        require_capabilities(estimator, ["predict"], type(self).__name__)
        self.estimator = estimator
        self.input_shape = tuple(estimator.input_shape)
        self.nb_classes = int(estimator.nb_classes)
        self.clip_values = estimator.clip_values
        self.device = estimator.device
        self.dtype = getattr(estimator, "dtype", torch.float32)
        self.capabilities = frozenset(estimator.capabilities) & self.forwarded

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self.estimator.predict_tensor(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.estimator.logits_tensor(x)

    def _loss_gradient(self, x: torch.Tensor, y: torch.Tensor, return_outputs: bool) -> Any:
        return self.estimator.loss_gradient_tensor(x, y, return_outputs=return_outputs)

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        return self.estimator.class_gradient_tensor(x, label)

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.estimator.class_gradient_and_logits_tensor(x, label)

    def _objective_gradient(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.estimator.objective_gradient_tensor(x, objective)

    def _activations(self, x: torch.Tensor, layer: str | int) -> torch.Tensor:
        return self.estimator.activations_tensor(x, layer)

    def _activation_gradient(
        self,
        x: torch.Tensor,
        layer: str | int,
        objective: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.estimator.activation_gradient_tensor(x, layer, objective)

    def _parameter_gradient(
        self, x: torch.Tensor, y: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, ...]:
        return self.estimator.parameter_gradient_tensor(x, y, create_graph=create_graph)

    @property
    def layer_names(self) -> list[str]:
        self._require("activations", "layer_names")
        return list(self.estimator.layer_names)

    @property
    def layer_types(self) -> dict[str, str]:
        self._require("activations", "layer_types")
        return dict(self.estimator.layer_types)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.estimator!r})"
