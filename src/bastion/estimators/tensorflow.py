"""TensorFlow models: gradients by ``tf.GradientTape``, tensors across by DLPack.

TensorFlow (``pip install 'bastion[tensorflow]'``) is an optional dependency, imported only
when a :class:`TensorFlowClassifier` computes: ``import bastion`` never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from bastion._tensor import as_device
from bastion._validation import NONE, Options, invalid_parameter, validate_params
from bastion.estimators._dlpack import (
    Pullback,
    _PullbackClassifier,
    check_common,
    import_framework,
    tf_to_torch,
    torch_to_tf,
)
from bastion.estimators.pytorch import _preprocessing_tensors

__all__ = ["TensorFlowClassifier"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _tf() -> Any:
    return import_framework("tensorflow", "tensorflow", "TensorFlowClassifier")


def _is_keras(model: Any) -> bool:
    """Whether ``model`` is a Keras layer or model (called with ``training=False``)."""
    return any(c.__module__.split(".")[0] in ("keras", "tf_keras") for c in type(model).__mro__)


def _variables_dtype(model: Any) -> torch.dtype | None:
    """The dtype of the model's first floating variable, if it has any."""
    for var in list(getattr(model, "trainable_variables", None) or []):
        name = str(getattr(getattr(var, "dtype", None), "name", getattr(var, "dtype", "")))
        if name in _DTYPES:
            return _DTYPES[name]
    return None


class _TfEngine:
    """The forward pass of ``call`` (normalisation included) and its pullback by a
    ``tf.GradientTape`` recorded during that same forward pass."""

    def __init__(
        self,
        call: Callable[[Any], Any],
        norm: tuple[torch.Tensor, torch.Tensor] | None,
        device: torch.device,
    ) -> None:
        self.call, self.device = call, device
        self.stats = None if norm is None else tuple(torch_to_tf(t) for t in norm)

    def _model(self, x: Any) -> Any:
        if self.stats is not None:
            x = (x - self.stats[0]) / self.stats[1]
        return self.call(x)

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        return tf_to_torch(self._model(torch_to_tf(x)), self.device)

    def outputs_and_pullback(self, x: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        tf = _tf()
        xt = torch_to_tf(x)
        # Persistent: the pullback may run once per requested class row on the same forward.
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            out = self._model(xt)

        def pullback(seeds: torch.Tensor) -> torch.Tensor:
            seeds = seeds.to(x.dtype)
            rows = [
                tape.gradient(
                    out,
                    xt,
                    output_gradients=torch_to_tf(seeds[r]),
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
                for r in range(seeds.shape[0])
            ]
            return torch.stack([tf_to_torch(g, self.device) for g in rows])

        return tf_to_torch(out, self.device), pullback


class TensorFlowClassifier(_PullbackClassifier):
    """A TensorFlow classification model as a bastion estimator.

    The model is any callable from a batch ``(N, *input_shape)`` (a ``tf.Tensor``) to scores
    ``(N, nb_classes)``: a ``tf.Module`` with ``__call__``, a ``tf.function``, a Keras model on
    the TensorFlow backend (called with ``training=False``), or a plain function of TensorFlow
    operations. Gradients are TensorFlow's own: one ``tf.GradientTape`` records each forward
    pass, and loss, class and objective gradients are pulled back through it
    (``output_gradients``), so each needs one forward pass; all classes' gradients reuse that
    tape. Tensors cross between torch and TensorFlow by DLPack (zero-copy where TensorFlow
    accepts the memory, else through NumPy).

    The model runs eagerly, exactly once per forward pass the work needs (a model with Python
    side effects sees each query once). For speed, pass a ``tf.function`` of it: tracing is
    then the user's choice, not the estimator's.

    Parameters
    ----------
    model : callable
        ``model(x) -> scores``.
    input_shape : tuple of int
        Shape of one sample, without the batch dimension, in the model's layout.
    nb_classes : int
        Number of classes (>= 2).
    clip_values : (float, float) or None, default None
        Valid input range.
    preprocessing : (mean, std) or None
        Normalisation ``(x - mean) / std`` applied (in TensorFlow) before the model.
    output : {"logits", "probabilities"}, default "logits"
        What the model returns; for probabilities the logits are ``log p``.
    loss : callable, optional
        A torch function ``loss(logits, y)`` of the logits; default: cross-entropy.
    dtype : {"float32", "float64"}, optional
        The precision the model computes in; default: that of the model's first trainable
        variable, float32 when it has none.
    device : str or torch.device, optional
        Where the returned tensors live; default: the CPU.

    References
    ----------
    Abadi et al., "TensorFlow: a system for large-scale machine learning", OSDI 2016.
    https://arxiv.org/abs/1605.08695

    Examples
    --------
    >>> import tensorflow as tf  # doctest: +SKIP
    >>> from bastion.estimators import TensorFlowClassifier  # doctest: +SKIP
    >>> w = tf.Variable(tf.ones((4, 3)) / 4)  # doctest: +SKIP
    >>> clf = TensorFlowClassifier(lambda x: tf.matmul(x, w), input_shape=(4,),
    ...                            nb_classes=3)  # doctest: +SKIP
    >>> clf.loss_gradient(np.ones((2, 4), np.float32), [0, 1]).shape  # doctest: +SKIP
    (2, 4)
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        input_shape: Sequence[int],
        nb_classes: int,
        clip_values: tuple[float, float] | None = None,
        preprocessing: tuple[Any, Any] | None = None,
        output: str = "logits",
        loss: Callable[..., torch.Tensor] | None = None,
        dtype: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _tf()  # a missing TensorFlow is said now, not at the first query
        if not callable(model):
            raise invalid_parameter("model", owner, "a callable model(x)", type(model).__name__)
        validate_params(owner, {"dtype": dtype}, {"dtype": [NONE, Options(list(_DTYPES))]})
        self.input_shape, self.nb_classes, self.clip_values = check_common(
            owner,
            input_shape=input_shape,
            nb_classes=nb_classes,
            clip_values=clip_values,
            output=output,
            loss=loss,
        )
        self.model = model
        self.output = output
        self._setup_loss(loss)
        self.dtype = (
            _DTYPES[dtype] if dtype is not None else _variables_dtype(model) or torch.float32
        )
        self.device = torch.device("cpu") if device is None else as_device(device)
        self.preprocessing = preprocessing
        self._norm = _preprocessing_tensors(
            preprocessing, self.input_shape, torch.device("cpu"), self.dtype, owner
        )
        self._compiled: _TfEngine | None = None

    def _engine(self) -> _TfEngine:
        if self._compiled is None:
            _tf()
            model = self.model
            keras = _is_keras(model)

            def call(x: Any) -> Any:
                return model(x, training=False) if keras else model(x)

            self._compiled = _TfEngine(call, self._norm, self.device)
        return self._compiled

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self._engine().outputs(x)

    def _outputs_and_pullback(self, x: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        return self._engine().outputs_and_pullback(x)

    def __repr__(self) -> str:
        name = getattr(self.model, "__qualname__", type(self.model).__name__)
        return (
            f"TensorFlowClassifier(model={name}, input_shape={self.input_shape}, "
            f"nb_classes={self.nb_classes}, clip_values={self.clip_values}, "
            f"preprocessing={'None' if self.preprocessing is None else '(mean, std)'}, "
            f"output={self.output!r}, device={str(self.device)!r})"
        )
