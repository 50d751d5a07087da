"""JAX and Flax models: gradients by ``jax.vjp``, tensors across by DLPack.

JAX (``pip install 'bastion[jax]'``) is an optional dependency, imported only when a
:class:`JaxClassifier` computes: ``import bastion`` never imports it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bastion._tensor import as_device
from bastion._validation import invalid_parameter
from bastion.estimators._dlpack import (
    Pullback,
    _PullbackClassifier,
    check_common,
    import_framework,
    jax_to_torch,
    torch_to_jax,
)
from bastion.estimators.pytorch import _preprocessing_tensors

__all__ = ["JaxClassifier"]


def _jax() -> Any:
    return import_framework("jax", "jax", "JaxClassifier")


def _params_dtype(params: Any) -> torch.dtype:
    """float64 when every floating leaf of ``params`` is float64, float32 otherwise."""
    jax = _jax()
    kinds = {
        np.dtype(leaf.dtype)
        for leaf in jax.tree_util.tree_leaves(params)
        if hasattr(leaf, "dtype") and np.issubdtype(np.dtype(leaf.dtype), np.floating)
    }
    return torch.float64 if kinds == {np.dtype(np.float64)} else torch.float32


def _default_device() -> torch.device:
    """The torch device where JAX's default device is (the CPU unless JAX runs on a GPU that
    torch sees too)."""
    first = _jax().devices()[0]
    if first.platform == "gpu" and torch.cuda.is_available():
        return torch.device("cuda", first.id)
    return torch.device("cpu")


class _JaxEngine:
    """The jit-compiled forward pass, forward-with-pullback and batched pullback of
    ``apply_fn(params, x)`` (normalisation included), compiled once per input shape."""

    def __init__(
        self,
        apply_fn: Callable[[Any, Any], Any],
        norm: tuple[torch.Tensor, torch.Tensor] | None,
        x64: bool,
        device: torch.device,
    ) -> None:
        jax = _jax()
        self.x64, self.device = x64, device
        with self.context():
            stats = None if norm is None else tuple(torch_to_jax(t) for t in norm)

            def model(params: Any, x: Any) -> Any:
                if stats is not None:
                    x = (x - stats[0]) / stats[1]
                return apply_fn(params, x)

            def forward_vjp(params: Any, x: Any) -> Any:
                return jax.vjp(lambda xx: model(params, xx), x)

            def pull(vjp: Any, seeds: Any) -> Any:
                return jax.vmap(lambda s: vjp(s)[0])(seeds)

            self.forward = jax.jit(model)
            self.forward_vjp = jax.jit(forward_vjp)
            self.pull = jax.jit(pull)

    def context(self) -> Any:
        # float64 needs JAX's x64 mode: switched on for this estimator's own calls only
        # (a thread-local context), never globally.
        if not self.x64:
            return contextlib.nullcontext()
        jax = _jax()
        enable: Any = getattr(jax, "enable_x64", None)
        if enable is None:  # older JAX has it under experimental
            enable = importlib.import_module("jax.experimental").enable_x64
        return enable(True)

    def outputs(self, params: Any, x: torch.Tensor) -> torch.Tensor:
        with self.context():
            return jax_to_torch(self.forward(params, torch_to_jax(x)), self.device)

    def outputs_and_pullback(self, params: Any, x: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        with self.context():
            out, vjp = self.forward_vjp(params, torch_to_jax(x))

        def pullback(seeds: torch.Tensor) -> torch.Tensor:
            with self.context():
                grads = self.pull(vjp, torch_to_jax(seeds.to(x.dtype)))
                return jax_to_torch(grads, self.device)

        return jax_to_torch(out, self.device), pullback


class JaxClassifier(_PullbackClassifier):
    """A JAX (or Flax) classification model as a bastion estimator.

    The model is a pure function ``apply_fn(params, x)`` from a batch ``(N, *input_shape)``
    to scores ``(N, nb_classes)``: a Flax module's ``model.apply``, or any JAX function.
    Every attack, defence and certificate that needs predictions, logits, loss or class
    gradients works on it unchanged: gradients are JAX's own (``jax.vjp``), every kernel is
    jit-compiled once per input shape, the class gradients of all classes come from one
    vmapped pullback (the rows of the Jacobian at once), and tensors cross between torch and
    JAX by DLPack (zero-copy on a shared device; through NumPy where DLPack cannot be used).

    The estimator computes in the precision of ``params``: float64 when all their floating
    leaves are float64 (JAX's x64 mode is then switched on around the estimator's own calls
    only, with ``jax.enable_x64``, never globally), float32 otherwise.

    Parameters
    ----------
    apply_fn : callable
        ``apply_fn(params, x) -> scores``, traceable by ``jax.jit``.
    params : pytree
        The model's parameters (read at every call: replace :attr:`params` to update them).
    input_shape : tuple of int
        Shape of one sample, without the batch dimension, in the layout ``apply_fn`` takes.
    nb_classes : int
        Number of classes (>= 2).
    clip_values : (float, float) or None, default None
        Valid input range.
    preprocessing : (mean, std) or None
        Normalisation ``(x - mean) / std`` applied (in JAX) before ``apply_fn``.
    output : {"logits", "probabilities"}, default "logits"
        What ``apply_fn`` returns; for probabilities the logits are ``log p``.
    loss : callable, optional
        A torch function ``loss(logits, y)`` of the logits; default: cross-entropy.
    device : str or torch.device, optional
        Where the returned tensors live; default: the device JAX computes on.

    References
    ----------
    Bradbury et al., "JAX: composable transformations of Python+NumPy programs", 2018.
    http://github.com/jax-ml/jax

    Examples
    --------
    >>> import jax.numpy as jnp  # doctest: +SKIP
    >>> from bastion.estimators import JaxClassifier  # doctest: +SKIP
    >>> params = {"w": jnp.ones((4, 3)) / 4, "b": jnp.zeros(3)}  # doctest: +SKIP
    >>> clf = JaxClassifier(lambda p, x: x @ p["w"] + p["b"], params,
    ...                     input_shape=(4,), nb_classes=3)  # doctest: +SKIP
    >>> clf.class_gradient(np.ones((2, 4), np.float32)).shape  # doctest: +SKIP
    (2, 3, 4)
    """

    def __init__(
        self,
        apply_fn: Callable[[Any, Any], Any],
        params: Any,
        *,
        input_shape: Sequence[int],
        nb_classes: int,
        clip_values: tuple[float, float] | None = None,
        preprocessing: tuple[Any, Any] | None = None,
        output: str = "logits",
        loss: Callable[..., torch.Tensor] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not callable(apply_fn):
            raise invalid_parameter(
                "apply_fn", owner, "a function apply_fn(params, x)", type(apply_fn).__name__
            )
        self.input_shape, self.nb_classes, self.clip_values = check_common(
            owner,
            input_shape=input_shape,
            nb_classes=nb_classes,
            clip_values=clip_values,
            output=output,
            loss=loss,
        )
        self.apply_fn = apply_fn
        self.params = params
        self.output = output
        self._setup_loss(loss)
        self.dtype = _params_dtype(params)
        self.device = _default_device() if device is None else as_device(device)
        self.preprocessing = preprocessing
        self._norm = _preprocessing_tensors(
            preprocessing, self.input_shape, torch.device("cpu"), self.dtype, owner
        )
        self._compiled: _JaxEngine | None = None

    def _engine(self) -> _JaxEngine:
        if self._compiled is None:
            self._compiled = _JaxEngine(
                self.apply_fn, self._norm, self.dtype == torch.float64, self.device
            )
        return self._compiled

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self._engine().outputs(self.params, x)

    def _outputs_and_pullback(self, x: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        return self._engine().outputs_and_pullback(self.params, x)

    def __repr__(self) -> str:
        name = getattr(self.apply_fn, "__qualname__", type(self.apply_fn).__name__)
        return (
            f"JaxClassifier(apply_fn={name}, input_shape={self.input_shape}, "
            f"nb_classes={self.nb_classes}, clip_values={self.clip_values}, "
            f"preprocessing={'None' if self.preprocessing is None else '(mean, std)'}, "
            f"output={self.output!r}, device={str(self.device)!r})"
        )
