"""Tensors across frameworks, and the base of estimators whose model differentiates itself.

Tensors cross between torch and JAX or TensorFlow through DLPack: the receiving framework
reads the sender's memory without a copy when both sit on the same device and the memory is
laid out as it needs (contiguous, aligned). Where DLPack cannot be used (a device the other
framework does not have, an unsupported dtype, an old framework), the tensor goes through a
NumPy copy on the host instead; the result is the same, only slower.

:class:`_PullbackClassifier` turns one framework kernel, *the model's outputs and a pullback*
(a function mapping cotangents of the outputs to cotangents of the input: ``jax.vjp``,
``tf.GradientTape.gradient`` with ``output_gradients``, ``torch.autograd.grad``) into every
gradient capability of :class:`~bastion.estimators.Classifier`, each from a single forward
pass of the model.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bastion._validation import Options, invalid_parameter, validate_params
from bastion.estimators.base import Classifier
from bastion.estimators.pytorch import (
    TorchClassifier,
    _check_clip_values,
    _check_input_shape,
    _check_nb_classes,
)
from bastion.exceptions import EstimatorError

#: A pullback: cotangents ``(k, N, nb_classes)`` of the model's outputs to the ``k``
#: corresponding input gradients ``(k, N, *input_shape)``.
Pullback = Callable[[torch.Tensor], torch.Tensor]


def import_framework(module: str, extra: str, what: str) -> Any:
    """Import an optional framework, or raise :class:`EstimatorError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise EstimatorError(
            f"{what} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'bastion[{extra}]'."
        ) from err


# ---------------------------------------------------------------------------- torch <-> JAX


def torch_to_jax(t: torch.Tensor) -> Any:
    """A JAX array of ``t``'s values: zero-copy by DLPack where possible, else via NumPy."""
    import jax
    import jax.numpy as jnp

    t = t.detach().contiguous()
    try:
        return jax.dlpack.from_dlpack(t)
    except Exception:  # a device JAX does not have, or a dtype DLPack cannot carry
        return jnp.asarray(t.cpu().numpy())


def jax_to_torch(a: Any, device: torch.device) -> torch.Tensor:
    """A torch tensor of a JAX array's values on ``device`` (zero-copy where possible)."""
    try:
        out = torch.from_dlpack(a)
    except Exception:  # np.asarray of a JAX array is read-only: copy it
        out = torch.from_numpy(np.array(a))
    return out.to(device)


# ---------------------------------------------------------------------------- torch <-> TF

_TF_ALIGNMENT = 64  # EIGEN_MAX_ALIGN_BYTES of TensorFlow's CPU builds (AVX-512)


def torch_to_tf(t: torch.Tensor) -> Any:
    """A TensorFlow tensor of ``t``'s values: zero-copy by DLPack where possible."""
    import tensorflow as tf

    t = t.detach().contiguous()
    # TensorFlow's kernels assume 64-byte aligned buffers (Eigen) and its DLPack import does
    # not check: an unaligned torch buffer (a small CPU tensor, a view with an offset) would
    # abort the process inside a kernel. Such tensors go through NumPy, which TensorFlow
    # copies into aligned memory.
    if t.data_ptr() % _TF_ALIGNMENT == 0:
        try:
            return tf.experimental.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(t))
        except Exception:  # a device TensorFlow does not have, a dtype it cannot take
            pass
    return tf.convert_to_tensor(t.cpu().numpy().copy())


def tf_to_torch(x: Any, device: torch.device) -> torch.Tensor:
    """A torch tensor of a TensorFlow tensor's values on ``device``."""
    import tensorflow as tf

    try:
        out = torch.utils.dlpack.from_dlpack(tf.experimental.dlpack.to_dlpack(x))
    except Exception:
        out = torch.from_numpy(np.array(x))
    return out.to(device)


# ---------------------------------------------------------------------------- the base


_OUTPUTS = ("logits", "probabilities")


def check_common(
    owner: str,
    *,
    input_shape: Any,
    nb_classes: Any,
    clip_values: Any,
    output: str,
    outputs: Sequence[str] = _OUTPUTS,
    loss: Any,
) -> tuple[tuple[int, ...], int, tuple[float, float] | None]:
    """Validate the parameters every framework estimator shares."""
    validate_params(owner, {"output": output}, {"output": [Options(list(outputs))]})
    if loss is not None and not callable(loss):
        raise invalid_parameter("loss", owner, "None or a callable loss(logits, y)", loss)
    return (
        _check_input_shape(input_shape, owner),
        _check_nb_classes(nb_classes, owner),
        _check_clip_values(clip_values, owner),
    )


class _PullbackClassifier(Classifier):
    """A classifier whose gradients come from its model's own automatic differentiation.

    A subclass implements :meth:`_outputs` (the model's outputs for a batch, as a torch tensor)
    and :meth:`_outputs_and_pullback`; ``output`` says whether the model returns logits or
    probabilities (then the logits are ``log p``, whose softmax is ``p``), ``loss`` is a torch
    function ``loss(logits, y)`` of the logits (cross-entropy by default).
    """

    capabilities = frozenset({"predict", "logits", "loss_gradient", "class_gradient"})

    output: str
    loss: Callable[..., torch.Tensor] | None

    def _setup_loss(self, loss: Callable[..., torch.Tensor] | None) -> None:
        self.loss = loss
        self._loss_fn = None if loss is None else TorchClassifier._make_loss(loss)

    def _per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._loss_fn is None:
            return F.cross_entropy(logits, y, reduction="none")
        return self._loss_fn(logits, y)

    @abc.abstractmethod
    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs ``(N, nb_classes)`` for a batch (no gradient)."""

    @abc.abstractmethod
    def _outputs_and_pullback(self, x: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        """The model's outputs and their pullback, from one forward pass."""

    # ------------------------------------------------------------------ outputs to logits

    def _log(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p`` (p floored at the dtype's smallest normal number) and ``d log p / d p``
        (zero where the floor applies)."""
        tiny = torch.finfo(p.dtype).tiny
        return torch.log(p.clamp_min(tiny)), torch.where(p > tiny, 1.0 / p, torch.zeros_like(p))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self._outputs(x)
        return self._log(out)[0] if self.output == "probabilities" else out

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        out = self._outputs(x)
        return out if self.output == "probabilities" else torch.softmax(out, dim=1)

    def _logits_and_pullback(self, x: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        out, pullback = self._outputs_and_pullback(x)
        out = self._check_scores(out, int(x.shape[0]), "model outputs")
        if self.output != "probabilities":
            return out, pullback
        logits, scale = self._log(out)
        return logits, lambda seeds: pullback(seeds * scale)

    # ------------------------------------------------------------------ gradient kernels

    def _logits_vjp(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        _, pullback = self._logits_and_pullback(x)
        return pullback(weights.unsqueeze(0))[0]

    def _objective_gradient(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # One forward pass: the objective is differentiated by torch on the (N, K) logits,
        # and the result pulled back through the model by its own framework.
        logits, pullback = self._logits_and_pullback(x)
        z = logits.detach().requires_grad_(True)
        with torch.enable_grad():
            value = objective(z)
            (weights,) = torch.autograd.grad(value.sum(), z)
        return pullback(weights.unsqueeze(0))[0], value.detach(), logits

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, pullback = self._logits_and_pullback(x)
        n, k = logits.shape
        if isinstance(label, int):
            seeds = torch.zeros_like(logits)
            seeds[:, label] = 1.0
            return pullback(seeds.unsqueeze(0))[0], logits
        if label is not None and label.ndim == 1:
            seeds = F.one_hot(label.to(logits.device), k).to(logits.dtype)
            return pullback(seeds.unsqueeze(0))[0], logits
        # Several classes per sample: every seed row at once (vmapped where the framework
        # batches pullbacks).
        classes = (
            torch.arange(k, device=logits.device).expand(n, k)
            if label is None
            else label.to(logits.device)
        )
        seeds = F.one_hot(classes, k).to(logits.dtype).transpose(0, 1)  # (k', N, K)
        return pullback(seeds.contiguous()).transpose(0, 1).contiguous(), logits

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        return self._class_gradient_and_logits(x, label)[0]

    def __getstate__(self) -> dict[str, Any]:
        # Compiled functions and framework handles do not pickle; they are rebuilt on use.
        state = dict(self.__dict__)
        for key in list(state):
            if key.startswith("_compiled"):
                state[key] = {} if isinstance(state[key], dict) else None
        return state
