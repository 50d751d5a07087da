"""Keras 3 models on any of Keras's backends (JAX, torch, TensorFlow).

Keras 3 chooses its backend once, when it is first imported (the ``KERAS_BACKEND``
environment variable, else ``~/.keras/keras.json``, else TensorFlow). A
:class:`KerasClassifier` differentiates the model with that backend's own automatic
differentiation: ``jax.vjp`` of the model's ``stateless_call`` (jit-compiled), torch autograd
(a Keras model on the torch backend *is* a ``torch.nn.Module``), or a ``tf.GradientTape``.
Keras (``pip install 'bastion[keras]'``) is imported only when a KerasClassifier is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bastion._tensor import as_device
from bastion._validation import invalid_parameter
from bastion.estimators._dlpack import (
    Pullback,
    _PullbackClassifier,
    check_common,
    import_framework,
)
from bastion.estimators.pytorch import _preprocessing_tensors
from bastion.exceptions import InputError

__all__ = ["KerasClassifier"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _keras() -> Any:
    return import_framework("keras", "keras", "KerasClassifier")


def _ends_with_softmax(model: Any) -> bool:
    layers = getattr(model, "layers", None) or []
    if not layers:
        return False
    last = layers[-1]
    activation = getattr(last, "activation", None)
    return type(last).__name__ == "Softmax" or getattr(activation, "__name__", "") == "softmax"


def _model_shape(model: Any, attr: str) -> tuple[Any, ...] | None:
    try:
        shape = getattr(model, attr)
    except (AttributeError, ValueError, RuntimeError):  # a subclassed model not yet built
        return None
    return tuple(shape) if isinstance(shape, (tuple, list)) else None


def _keras_dtype(model: Any, variables: list[Any]) -> torch.dtype:
    """float64 when the variables are float64 and the model's declared inputs (if any) are
    too (a float32 ``keras.Input`` rounds every input to float32 first), float32 otherwise."""
    if not variables or str(variables[0].dtype) != "float64":
        return torch.float32
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # a subclassed model has no symbolic inputs
        inputs = []
    if any(str(getattr(t, "dtype", "float64")) != "float64" for t in inputs):
        return torch.float32
    return torch.float64


def _torch_backend_keeps_float64() -> bool:
    """Whether Keras's torch backend computes float64 operations in float64. Keras 3.15 does
    not: its ``result_type`` of two torch float64 dtypes is float32, so ``ops.matmul`` (every
    ``Dense`` layer) rounds to float32 and casts back. The estimator then says float32, the
    precision its gradients really have (finite differences in float64 would disagree)."""
    import keras

    dtypes = importlib.import_module("keras.src.backend.common.dtypes")
    del keras
    try:
        return str(dtypes.result_type(torch.float64, torch.float64)) == "float64"
    except Exception:  # a Keras without this helper: trust its dtypes
        return True


def _symbolic_inputs(model: Any) -> bool:
    try:
        return bool(model.inputs) and bool(model.layers)
    except (AttributeError, ValueError):  # a subclassed model
        return False


class _KerasTorchEngine:
    """A Keras model on the torch backend: torch autograd through ``model(x)``."""

    def __init__(
        self, model: Any, norm: tuple[torch.Tensor, torch.Tensor] | None, device: torch.device
    ) -> None:
        self.model, self.device = model, device
        self.norm = None if norm is None else (norm[0].to(device), norm[1].to(device))

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        return self.model(x, training=False)

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._call(x).detach().to(self.device)

    def outputs_and_pullback(self, x: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self._call(xr)

        def pullback(seeds: torch.Tensor) -> torch.Tensor:
            seeds = seeds.to(out.device, out.dtype)
            rows = [
                torch.autograd.grad(out, xr, grad_outputs=seeds[r], retain_graph=True)[0]
                for r in range(seeds.shape[0])
            ]
            return torch.stack(rows).to(self.device)

        return out.detach().to(self.device), pullback


class KerasClassifier(_PullbackClassifier):
    """A Keras 3 classification model as a bastion estimator, on any Keras backend.

    Every attack, defence and certificate that needs predictions, logits, loss or class
    gradients works on it unchanged. Gradients come from the backend Keras runs on:

    * **JAX**: ``jax.vjp`` of the model's ``stateless_call`` (inference mode), jit-compiled
      once per input shape; the variables' current values are read at every call; all classes'
      gradients come from one vmapped pullback; tensors cross by DLPack;
    * **torch**: the model is a ``torch.nn.Module``; torch autograd, no conversion at all;
    * **TensorFlow**: a ``tf.GradientTape`` around the eager call (as
      :class:`~bastion.estimators.TensorFlowClassifier`); tensors cross by DLPack. With
      ``trace=True`` (opt-in) the call is a ``tf.function`` instead.

    The estimator computes in the dtype of the model's variables (build the layers with
    ``dtype="float64"`` for double precision; on JAX this also needs JAX's x64 mode,
    ``JAX_ENABLE_X64=1``, or Keras creates float32 variables).

    Parameters
    ----------
    model : keras.Model
        Maps a batch ``(N, *input_shape)`` to scores ``(N, nb_classes)``.
    input_shape : tuple of int, optional
        Shape of one sample; default: the model's ``input_shape`` without the batch.
    nb_classes : int, optional
        Number of classes; default: the width of the model's output.
    clip_values : (float, float) or None, default None
        Valid input range.
    preprocessing : (mean, std) or None
        Normalisation ``(x - mean) / std`` applied before the model.
    output : {"auto", "logits", "probabilities"}, default "auto"
        What the model returns. ``"auto"``: probabilities when its last layer is a softmax
        (a ``Softmax`` layer or ``activation="softmax"``), logits otherwise. For probabilities
        the logits are ``log p``.
    loss : callable, optional
        A torch function ``loss(logits, y)`` of the logits; default: cross-entropy.
    device : str or torch.device, optional
        Where the returned tensors live; default: where the backend computes.
    trace : bool, default False
        TensorFlow backend only. ``False`` calls the model eagerly, exactly once per forward
        pass the work needs. ``True`` (opt-in) calls it through a ``tf.function`` (traced once
        per input signature, batch size left free; its gradient is the traced function's),
        which removes Keras's per-layer Python overhead (PGD on a small MLP: about 2x
        faster). A traced model runs its Python code at trace time only: side effects in
        ``call`` (a call counter, logging, a remote call) then happen once per trace, not
        once per query. The variables' current values are read at every call. (The JAX
        backend always compiles; the torch backend has no tracing here.)

    Raises
    ------
    EstimatorError
        When Keras is not installed.
    InvalidParameterError
        When ``trace`` is not a bool, or is True on a backend other than TensorFlow.

    References
    ----------
    Chollet et al., "Keras", 2015. https://keras.io

    Examples
    --------
    >>> import keras  # doctest: +SKIP
    >>> from bastion.estimators import KerasClassifier  # doctest: +SKIP
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])  # doctest: +SKIP
    >>> clf = KerasClassifier(model, clip_values=(0, 1))  # doctest: +SKIP
    >>> clf.class_gradient(np.ones((2, 4), np.float32)).shape  # doctest: +SKIP
    (2, 3, 4)
    """

    def __init__(
        self,
        model: Any,
        *,
        input_shape: Sequence[int] | None = None,
        nb_classes: int | None = None,
        clip_values: tuple[float, float] | None = None,
        preprocessing: tuple[Any, Any] | None = None,
        output: str = "auto",
        loss: Callable[..., torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        trace: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        keras = _keras()
        if not isinstance(trace, bool):
            raise invalid_parameter("trace", owner, "a bool", trace)
        if not isinstance(model, keras.Model):
            raise invalid_parameter("model", owner, "a keras.Model", type(model).__name__)
        if input_shape is None:
            shape = _model_shape(model, "input_shape")
            if shape is None or any(d is None for d in shape[1:]):
                raise InputError(
                    f"{owner}: the model does not say its input shape ({shape}); pass input_shape."
                )
            input_shape = shape[1:]
        if nb_classes is None:
            shape = _model_shape(model, "output_shape")
            if shape is None or not isinstance(shape[-1], int):
                raise InputError(
                    f"{owner}: the model does not say its output width ({shape}); pass nb_classes."
                )
            nb_classes = shape[-1]
        self.input_shape, self.nb_classes, self.clip_values = check_common(
            owner,
            input_shape=input_shape,
            nb_classes=nb_classes,
            clip_values=clip_values,
            output=output,
            outputs=("auto", "logits", "probabilities"),
            loss=loss,
        )
        self.model = model
        self.output = output
        if output == "auto":
            self.output = "probabilities" if _ends_with_softmax(model) else "logits"
        self._setup_loss(loss)
        self.backend = str(keras.config.backend())
        if self.backend not in ("jax", "torch", "tensorflow"):
            raise InputError(
                f"{owner}: Keras runs on the {self.backend!r} backend; bastion differentiates "
                "models on the 'jax', 'torch' and 'tensorflow' backends."
            )
        if trace and self.backend != "tensorflow":
            raise invalid_parameter(
                "trace", owner, f"False on the {self.backend!r} backend (TensorFlow only)", trace
            )
        self.trace = trace
        variables = list(model.trainable_variables)
        self.dtype = _keras_dtype(model, variables)
        if self.backend == "torch" and not _torch_backend_keeps_float64():
            self.dtype = torch.float32
        if device is not None:
            self.device = as_device(device)
        elif self.backend == "torch" and variables:
            self.device = torch.device(variables[0].value.device)
        elif self.backend == "jax":
            from bastion.estimators.jax import _default_device

            self.device = _default_device()
        else:
            self.device = torch.device("cpu")
        self.preprocessing = preprocessing
        self._norm = _preprocessing_tensors(
            preprocessing, self.input_shape, torch.device("cpu"), self.dtype, owner
        )
        self._compiled: Any = None
        self._compiled_layers: dict[str, Any] = {}
        if _symbolic_inputs(model):
            # A functional or Sequential model knows each layer's symbolic output: its
            # activations are a sub-model away.
            self.capabilities = self.capabilities | {"activations"}

    # ------------------------------------------------------------------ backends

    def _params(self) -> Any:
        return (
            [v.value for v in self.model.trainable_variables],
            [v.value for v in self.model.non_trainable_variables],
        )

    def _engine(self) -> Any:
        if self._compiled is None:
            model = self.model
            if self.backend == "jax":
                from bastion.estimators.jax import _JaxEngine

                def apply_fn(params: Any, x: Any) -> Any:
                    return model.stateless_call(params[0], params[1], x, training=False)[0]

                self._compiled = _JaxEngine(
                    apply_fn, self._norm, self.dtype == torch.float64, self.device
                )
            elif self.backend == "torch":
                self._compiled = _KerasTorchEngine(model, self._norm, self.device)
            else:
                from bastion.estimators.tensorflow import _TfEngine

                def call(x: Any) -> Any:
                    return model(x, training=False)

                if self.trace:
                    tf = import_framework("tensorflow", "tensorflow", "KerasClassifier")
                    call = tf.function(call, reduce_retracing=True)
                self._compiled = _TfEngine(call, self._norm, self.device)
        return self._compiled

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "jax":
            return self._engine().outputs(self._params(), x)
        return self._engine().outputs(x)

    def _outputs_and_pullback(self, x: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        if self.backend == "jax":
            return self._engine().outputs_and_pullback(self._params(), x)
        return self._engine().outputs_and_pullback(x)

    # ------------------------------------------------------------------ layers

    @property
    def layer_names(self) -> list[str]:
        """Names of the model's layers, in order (functional and Sequential models)."""
        self._require("activations", "layer_names")
        return [layer.name for layer in self.model.layers]

    @property
    def layer_types(self) -> dict[str, str]:
        """The class name of each layer (``"Dense"``, ``"Conv2D"`` ...), by layer name."""
        self._require("activations", "layer_types")
        return {layer.name: type(layer).__name__ for layer in self.model.layers}

    def _activations(self, x: torch.Tensor, layer: str | int) -> torch.Tensor:
        name = self.resolve_layer(layer)
        sub = self._compiled_layers.get(name)
        if sub is None:
            keras = _keras()
            sub = keras.Model(self.model.inputs, self.model.get_layer(name).output)
            self._compiled_layers[name] = sub
        if self._norm is not None:
            x = (x - self._norm[0].to(x.device)) / self._norm[1].to(x.device)
        if self.backend == "torch":
            with torch.no_grad():
                return sub(x, training=False).detach().to(self.device)
        if self.backend == "jax":
            from bastion.estimators._dlpack import jax_to_torch, torch_to_jax

            with self._engine().context():
                return jax_to_torch(sub(torch_to_jax(x), training=False), self.device)
        from bastion.estimators._dlpack import tf_to_torch, torch_to_tf

        return tf_to_torch(sub(torch_to_tf(x), training=False), self.device)

    def __repr__(self) -> str:
        return (
            f"KerasClassifier(model={type(self.model).__name__}, backend={self.backend!r}, "
            f"input_shape={self.input_shape}, nb_classes={self.nb_classes}, "
            f"clip_values={self.clip_values}, "
            f"preprocessing={'None' if self.preprocessing is None else '(mean, std)'}, "
            f"output={self.output!r}, device={str(self.device)!r}"
            + (", trace=True)" if self.trace else ")")
        )
