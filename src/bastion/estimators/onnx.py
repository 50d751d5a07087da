"""ONNX models through ONNX Runtime: predict-only, or with gradients from a checked torch twin.

ONNX Runtime (``pip install onnxruntime``, or ``pip install bastion[onnx]``) is an optional
dependency, imported only when an :class:`OnnxClassifier` is built: ``import bastion`` never
imports it. An ONNX file is a protobuf graph of standard operators: loading one runs no code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion._tensor import as_device
from bastion._validation import Options, invalid_parameter, validate_params
from bastion.estimators.base import Classifier
from bastion.estimators.pytorch import (
    TorchClassifier,
    _check_clip_values,
    _check_input_shape,
    _check_nb_classes,
    _preprocessing_tensors,
)
from bastion.exceptions import EstimatorError, InputError, ModelError

__all__ = ["OnnxClassifier"]

_INSTALL = "pip install onnxruntime (or pip install 'bastion[onnx]')"
_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise EstimatorError(
            f"ONNX models run through ONNX Runtime, which is not installed: {_INSTALL}."
        ) from err
    return onnxruntime


def _ends_with_softmax(model_bytes: bytes, output_name: str) -> bool:
    """Whether the graph's output comes out of a Softmax node (probabilities, not logits);
    False when the ``onnx`` package is not there to read the graph."""
    try:
        import onnx
    except ImportError:
        return False
    try:
        graph = onnx.load_from_string(model_bytes).graph
    except Exception:  # a graph onnx cannot parse: ONNX Runtime has already accepted it
        return False
    return any(output_name in node.output and node.op_type == "Softmax" for node in graph.node)


class OnnxClassifier(Classifier):
    """An ONNX classification model, run by ONNX Runtime: predict-only, every query counted.

    The graph's first input takes a batch ``(N, *input_shape)`` (float32 or float64) and its
    first output gives ``(N, nb_classes)`` logits or probabilities. Batches are run as they
    come when the graph's batch dimension is dynamic, in chunks of its size when it is fixed.
    Normalisation (``preprocessing``) happens before the graph, so attacks work in input space.
    Without gradients (the default), only black-box (score- or decision-based) attacks apply;
    gradient methods raise :class:`~bastion.exceptions.EstimatorError`.

    With ``gradients=True`` the graph is converted once to a torch module (the *twin*; the
    operators, listed in ``docs/estimators.md``: Gemm, MatMul, Add/Sub/Mul/Div, Relu,
    LeakyRelu, Sigmoid, Tanh, Softmax, LogSoftmax, Conv, MaxPool, AveragePool,
    GlobalAveragePool, BatchNormalization, Flatten, Reshape, Transpose, Squeeze/Unsqueeze,
    Concat, Constant, Identity, Dropout, Clip, Pad, Shape, Gather, Cast, Slice, ReduceMean,
    ConstantOfShape)
    and checked against ONNX Runtime on 16 random inputs in ``clip_values`` and on
    ``check_inputs``: the estimator refuses to build when the two disagree by more than
    ``1e-4`` relative to the largest output (float32; ``1e-9`` for float64). float32
    rounding of a reduction over ``K`` terms in another order differs by about
    ``sqrt(K) * 6e-8`` relative, ``< 1e-5`` for the layer widths of classifiers, and ONNX
    Runtime's graph optimiser (Conv + BatchNormalization fusion) adds a few ulps per layer:
    ``1e-4`` leaves an order of magnitude for that and still rejects a wrong operator, whose
    errors are of the order of the outputs. Then ``logits``, ``loss_gradient`` and
    ``class_gradient`` come from the twin (the logits of a graph ending in ``Softmax`` are
    the softmax's input); ``predict`` stays ONNX Runtime's, the deployed model's own answer.
    Every query is counted either way.

    Parameters
    ----------
    model : str, path-like or bytes
        The ``.onnx`` file, or its contents.
    input_shape : tuple of int, optional
        Shape of one sample; default: read from the graph (an error when the graph leaves a
        dimension other than the batch symbolic).
    nb_classes : int, optional
        Number of classes; default: the graph's output width, else that of one forward pass.
    clip_values : (float, float) or None, default (0, 1)
        Valid input range.
    preprocessing : (mean, std) or None
        Normalisation ``(x - mean) / std`` applied before the graph; a per-channel sequence is
        broadcast over the spatial dimensions.
    output : {"auto", "logits", "probabilities"}, default "auto"
        What the graph returns. ``"auto"``: probabilities when the output is a ``Softmax``
        node's (read with the ``onnx`` package when installed), logits otherwise.
    device : str or torch.device, optional
        Where the returned tensors live; ``"cuda"`` also runs the graph with ONNX Runtime's
        CUDA provider when it is available (and the torch twin on that device).
    gradients : bool, default False
        Convert the graph to a torch twin, check it against ONNX Runtime, and offer the
        ``logits``, ``loss_gradient`` and ``class_gradient`` capabilities through it.
    check_inputs : array-like or tensor, optional
        Inputs ``(n, *input_shape)`` (e.g. the data to attack) on which the twin is checked
        against ONNX Runtime besides the random probes; only with ``gradients=True``.

    Raises
    ------
    EstimatorError
        When ONNX Runtime is not installed; with ``gradients=True``, when the graph has an
        operator the twin does not support (the message lists the supported ones) or the
        twin and ONNX Runtime disagree.
    InputError
        When the file cannot be read as an ONNX graph, or ``input_shape`` cannot be read from
        it and is not given.

    References
    ----------
    ONNX Runtime developers, "ONNX Runtime", https://onnxruntime.ai

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import OnnxClassifier
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> torch.onnx.export(net, (torch.rand(1, 4),), "net.onnx", dynamo=False,
    ...                   dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    ... # doctest: +SKIP
    >>> clf = OnnxClassifier("net.onnx")  # doctest: +SKIP
    >>> clf.predict(torch.rand(2, 4)).shape  # doctest: +SKIP
    torch.Size([2, 3])

    Gradients through the checked torch twin (the graph given as bytes; skipped like the
    lines above where the optional ``onnx`` extra may be missing):

    >>> import io
    >>> buf = io.BytesIO()
    >>> torch.onnx.export(net, (torch.rand(1, 4),), buf, dynamo=False,
    ...                   dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    ... # doctest: +SKIP
    >>> clf = OnnxClassifier(buf.getvalue(), gradients=True)  # doctest: +SKIP
    >>> clf.loss_gradient(torch.rand(2, 4), torch.tensor([0, 2])).shape  # doctest: +SKIP
    torch.Size([2, 4])
    """

    #: What the torch twin gives (an internal copy: no surgery, parameter gradients or fit).
    _TWIN_CAPABILITIES = frozenset({"predict", "logits", "loss_gradient", "class_gradient"})

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        input_shape: Sequence[int] | None = None,
        nb_classes: int | None = None,
        clip_values: tuple[float, float] | None = (0.0, 1.0),
        preprocessing: tuple[Any, Any] | None = None,
        output: str = "auto",
        device: str | torch.device | None = None,
        gradients: bool = False,
        check_inputs: Any = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        validate_params(
            owner, {"output": output}, {"output": [Options(["auto", "logits", "probabilities"])]}
        )
        if not isinstance(gradients, bool):
            raise invalid_parameter("gradients", owner, "True or False", gradients)
        if check_inputs is not None and not gradients:
            raise invalid_parameter(
                "check_inputs", owner, "None unless gradients=True", type(check_inputs).__name__
            )
        self.gradients = gradients
        self._twin: TorchClassifier | None = None
        if isinstance(model, bytes):
            model_bytes, source = model, "the ONNX bytes given"
        elif isinstance(model, (str, os.PathLike)):
            path = Path(model).expanduser()
            if not path.is_file():
                raise InputError(f"The ONNX model file {str(path)!r} does not exist.")
            model_bytes, source = path.read_bytes(), repr(str(path))
        else:
            raise invalid_parameter("model", owner, "a path or the bytes of an ONNX file", model)
        self.device = as_device(device)
        self.source = source
        self._ort_bytes = model_bytes
        self._ort_start()
        graph_input = self._ort_session.get_inputs()[0]
        self._ort_input = graph_input.name
        self._ort_dtype = _DTYPES.get(graph_input.type)
        if self._ort_dtype is None:
            raise InputError(
                f"The ONNX model {source} takes {graph_input.type} inputs; only float32 and "
                "float64 inputs (tensor(float), tensor(double)) are supported."
            )
        dims = list(graph_input.shape)
        batch = dims[0] if dims else None
        self._ort_batch = int(batch) if isinstance(batch, int) and batch > 0 else None
        self.graph_input_shape = tuple(d if isinstance(d, int) else None for d in dims[1:])
        if input_shape is None:
            if not dims or any(d is None for d in self.graph_input_shape):
                raise InputError(
                    f"The ONNX model {source} does not fix the shape of its input "
                    f"{graph_input.name!r} ({dims}); pass input_shape (--input-shape)."
                )
            input_shape = self.graph_input_shape  # type: ignore[assignment]
        self.input_shape = _check_input_shape(input_shape, owner)
        self.clip_values = _check_clip_values(clip_values, owner)
        self.dtype = torch.float32 if self._ort_dtype is np.float32 else torch.float64
        self.preprocessing = preprocessing
        self._norm = _preprocessing_tensors(
            preprocessing, self.input_shape, torch.device("cpu"), self.dtype, owner
        )
        graph_output = self._ort_session.get_outputs()[0]
        if output == "auto":
            output = (
                "probabilities" if _ends_with_softmax(model_bytes, graph_output.name) else "logits"
            )
        self.output = output
        if nb_classes is None:
            width = graph_output.shape[-1] if graph_output.shape else None
            if isinstance(width, int) and width > 0:
                nb_classes = width
            else:
                low = 0.0 if self.clip_values is None else self.clip_values[0]
                probe = np.full((1, *self.input_shape), low, dtype=self._ort_dtype)
                nb_classes = int(self._ort_scores(probe).shape[-1])
        self.nb_classes = _check_nb_classes(nb_classes, owner)
        if gradients:
            self._build_twin(check_inputs)

    @property
    def capabilities(self) -> frozenset[str]:  # type: ignore[override]
        return self._TWIN_CAPABILITIES if self._twin is not None else frozenset({"predict"})

    # ------------------------------------------------------------------ torch twin

    def _build_twin(self, check_inputs: Any) -> None:
        """Convert the graph to torch and check it against ONNX Runtime (see the class doc)."""
        from bastion.estimators._onnx_torch import onnx_to_torch

        owner = type(self).__name__
        net = onnx_to_torch(self._ort_bytes, output=self.output).to(self.device)
        twin = TorchClassifier(
            net,
            input_shape=self.input_shape,
            nb_classes=self.nb_classes,
            clip_values=self.clip_values,
            preprocessing=self.preprocessing,
            device=self.device,
        )
        twin.dtype = self.dtype  # a module of buffers only: TorchClassifier reads no parameter
        twin._norm = _preprocessing_tensors(
            self.preprocessing, self.input_shape, self.device, self.dtype, owner
        )
        gen = np.random.default_rng(0)  # a local generator: the global NumPy RNG is untouched
        lo, hi = self.clip_values if self.clip_values is not None else (-1.0, 1.0)
        probes = [gen.uniform(lo, hi, size=(16, *self.input_shape))]
        if check_inputs is not None:
            data = np.asarray(
                check_inputs.detach().cpu()
                if isinstance(check_inputs, torch.Tensor)
                else check_inputs,
                dtype=np.float64,
            )
            if data.shape[1:] != tuple(self.input_shape):
                raise InputError(
                    f"{owner}: check_inputs of shape {data.shape}; expected (n, "
                    f"{', '.join(map(str, self.input_shape))})."
                )
            probes.append(data)
        tol = 1e-4 if self.dtype == torch.float32 else 1e-9
        for probe in probes:
            x = torch.as_tensor(probe, dtype=self.dtype)
            xn = x if self._norm is None else (x - self._norm[0]) / self._norm[1]
            expected = self._ort_scores(np.ascontiguousarray(xn.numpy(), dtype=self._ort_dtype))
            try:
                with torch.no_grad():
                    z = twin._forward(x.to(self.device))
            except (EstimatorError, InputError):
                raise
            except Exception as err:
                raise EstimatorError(
                    f"{owner}: the torch twin of the ONNX graph failed on probe inputs "
                    f"({type(err).__name__}: {err}); use gradients=False (black-box attacks)."
                ) from err
            got = torch.softmax(z, dim=1) if self.output == "probabilities" else z
            got_np = got.detach().double().cpu().numpy()
            scale = max(1.0, float(np.abs(expected).max()))
            err_max = float(np.abs(got_np - expected).max()) if expected.size else 0.0
            if got_np.shape != expected.shape or err_max > tol * scale:
                raise EstimatorError(
                    f"{owner}: the torch twin of the ONNX graph disagrees with ONNX Runtime "
                    f"(largest difference {err_max:.3g}, tolerance {tol * scale:.3g} on "
                    f"outputs up to {scale:.3g}); gradients from it would not be the model's. "
                    "Use gradients=False with black-box attacks."
                )
        self._twin = twin

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self._twin is not None  # guarded by capabilities
        return self._twin._logits(x)

    def _loss_gradient(self, x: torch.Tensor, y: torch.Tensor, return_outputs: bool) -> Any:
        assert self._twin is not None
        return self._twin._loss_gradient(x, y, return_outputs)

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        assert self._twin is not None
        return self._twin._class_gradient(x, label)

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._twin is not None
        return self._twin._class_gradient_and_logits(x, label)

    def _objective_gradient(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self._twin is not None
        return self._twin._objective_gradient(x, objective)

    # ------------------------------------------------------------------ session

    def _ort_start(self) -> None:
        ort = _onnxruntime()
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings of the graph optimiser are not the user's
        try:
            self._ort_session = ort.InferenceSession(
                self._ort_bytes, sess_options=options, providers=providers
            )
        except Exception as err:  # onnxruntime raises its own exception types
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise InputError(
                f"{self.source} cannot be read as an ONNX model ({type(err).__name__}: {first})."
            ) from err

    def __getstate__(self) -> dict[str, Any]:
        # An InferenceSession does not pickle: ship the graph's bytes, rebuild it on arrival
        # (a Ray worker, a copy).
        state = dict(self.__dict__)
        state.pop("_ort_session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ort_start()

    # ------------------------------------------------------------------ kernels

    def _ort_scores(self, x: np.ndarray) -> np.ndarray:
        """The graph's output for a batch, run in chunks of the graph's fixed batch size
        (the last chunk padded by repeating its last sample) when it has one."""
        n = x.shape[0]
        size = self._ort_batch
        if size is None or size == n:
            return np.asarray(self._ort_session.run(None, {self._ort_input: x})[0])
        outs = []
        for i in range(0, n, size):
            chunk = x[i : i + size]
            m = chunk.shape[0]
            if m < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - m, axis=0)])
            outs.append(np.asarray(self._ort_session.run(None, {self._ort_input: chunk})[0])[:m])
        return np.concatenate(outs)

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        xc = x.detach().to("cpu", self.dtype)
        if self._norm is not None:
            xc = (xc - self._norm[0]) / self._norm[1]
        arr = np.ascontiguousarray(xc.numpy(), dtype=self._ort_dtype)
        out = self._ort_scores(arr)
        n = x.shape[0]
        if out.shape != (n, self.nb_classes) or not np.issubdtype(out.dtype, np.floating):
            raise ModelError(
                f"{type(self).__name__}: the ONNX model returned {out.dtype} scores of shape "
                f"{out.shape} for {n} samples; expected ({n}, {self.nb_classes}) (is "
                f"nb_classes={self.nb_classes} right?)."
            )
        scores = torch.as_tensor(out, dtype=torch.float32)
        probs = scores if self.output == "probabilities" else torch.softmax(scores, dim=1)
        return probs.to(self.device)

    def __repr__(self) -> str:
        return (
            f"OnnxClassifier(model={self.source}, input_shape={self.input_shape}, "
            f"nb_classes={self.nb_classes}, clip_values={self.clip_values}, "
            f"preprocessing={'None' if self.preprocessing is None else '(mean, std)'}, "
            f"output={self.output!r}, device={str(self.device)!r}"
            + (", gradients=True)" if self.gradients else ")")
        )
