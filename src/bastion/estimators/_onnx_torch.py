"""An ONNX graph rewritten as a torch module: the differentiable twin of an
:class:`~bastion.estimators.OnnxClassifier` built with ``gradients=True``.

The graph is read with the ``onnx`` package (parsing a protobuf runs no code) and replayed node by
node in torch, for the operators that classifiers are made of. Initializers become buffers of the
module in the dtype of the file (float32 or float64). Shape arithmetic (``Shape``, ``Gather``,
``Concat`` of int64 tensors feeding a ``Reshape``) is computed eagerly, so graphs exported from
``x.view(x.size(0), -1)`` convert as well as those with constant shapes.

The twin returns *logits*: when the graph's output is a ``Softmax`` over the class axis, the
twin stops before it (the softmax's input are logits with the same probabilities); when the graph
returns probabilities another way, the twin returns their logarithm (``softmax(log p) = p``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bastion.exceptions import EstimatorError, InputError

__all__ = ["SUPPORTED_OPERATORS", "OnnxTorchModule", "onnx_to_torch"]

_Op = Callable[["_Node", list[Any]], Any]


class _Node:
    """One ONNX node: its operator, input and output names and attributes (plain Python)."""

    def __init__(
        self, op: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any], opset: int
    ) -> None:
        self.op = op
        self.inputs = inputs
        self.outputs = outputs
        self.attrs = attrs
        self.opset = opset

    def get(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


def _ints(t: Any) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _binary(fn: Callable[[Any, Any], Any]) -> _Op:
    return lambda node, xs: fn(xs[0], xs[1])


def _div(node: _Node, xs: list[Any]) -> Any:
    a, b = xs
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates
    return a / b


def _gemm(node: _Node, xs: list[Any]) -> Any:
    a, b = xs[0], xs[1]
    if node.get("transA", 0):
        a = a.transpose(0, 1)
    if node.get("transB", 0):
        b = b.transpose(0, 1)
    out = node.get("alpha", 1.0) * (a @ b)
    if len(xs) > 2 and xs[2] is not None:
        out = out + node.get("beta", 1.0) * xs[2]
    return out


def _softmax_axis(node: _Node, x: torch.Tensor) -> int:
    axis = int(node.get("axis", -1 if node.opset >= 13 else 1))
    return axis % x.ndim


def _softmax_like(fn: Callable[..., torch.Tensor]) -> _Op:
    def run(node: _Node, xs: list[Any]) -> Any:
        x = xs[0]
        axis = _softmax_axis(node, x)
        if node.opset >= 13 or axis == x.ndim - 1:
            return fn(x, dim=axis)
        # Before opset 13 the input is flattened to 2-D at ``axis`` first.
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return run


def _pads(node: _Node, nd: int) -> tuple[list[int], list[int]]:
    """ONNX ``pads`` ``[b1, ..., bn, e1, ..., en]`` as (begins, ends)."""
    if node.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise EstimatorError(
            f"the ONNX {node.op} node {node.outputs[0]!r} uses auto_pad="
            f"{node.get('auto_pad')!r}; only explicit pads are supported by the torch twin."
        )
    pads = list(node.get("pads", [0] * 2 * nd))
    return pads[:nd], pads[nd:]


def _torch_pad(begins: list[int], ends: list[int]) -> list[int]:
    """F.pad's order: last dimension first, (begin, end) pairs."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        out += [b, e]
    return out


def _conv(node: _Node, xs: list[Any]) -> Any:
    x, w = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise EstimatorError(f"the torch twin supports 1-D and 2-D Conv only; got a {nd}-D one.")
    begins, ends = _pads(node, nd)
    padding: Any = begins
    if begins != ends:
        x = F.pad(x, _torch_pad(begins, ends))
        padding = 0
    conv = F.conv1d if nd == 1 else F.conv2d
    return conv(
        x,
        w,
        bias,
        stride=list(node.get("strides", [1] * nd)),
        padding=padding,
        dilation=list(node.get("dilations", [1] * nd)),
        groups=int(node.get("group", 1)),
    )


def _max_pool(node: _Node, xs: list[Any]) -> Any:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise EstimatorError("the torch twin does not support MaxPool's Indices output.")
    x = xs[0]
    kernel = list(node.get("kernel_shape"))
    nd = len(kernel)
    begins, ends = _pads(node, nd)
    padding: Any = begins
    if begins != ends or any(2 * b > k for b, k in zip(begins, kernel, strict=True)):
        x = F.pad(x, _torch_pad(begins, ends), value=-math.inf)
        padding = 0
    pool = F.max_pool1d if nd == 1 else F.max_pool2d
    return pool(
        x,
        kernel,
        stride=list(node.get("strides", [1] * nd)),
        padding=padding,
        dilation=list(node.get("dilations", [1] * nd)),
        ceil_mode=bool(node.get("ceil_mode", 0)),
    )


def _avg_pool(node: _Node, xs: list[Any]) -> Any:
    x = xs[0]
    kernel = list(node.get("kernel_shape"))
    nd = len(kernel)
    begins, ends = _pads(node, nd)
    include = bool(node.get("count_include_pad", 0))
    padding: Any = begins
    if begins != ends:
        if not include and any(begins + ends):
            raise EstimatorError(
                "the torch twin supports AveragePool with asymmetric pads only when "
                "count_include_pad=1."
            )
        x = F.pad(x, _torch_pad(begins, ends))
        padding = 0
    pool = F.avg_pool1d if nd == 1 else F.avg_pool2d
    return pool(
        x,
        kernel,
        stride=list(node.get("strides", [1] * nd)),
        padding=padding,
        ceil_mode=bool(node.get("ceil_mode", 0)),
        count_include_pad=include,
    )


def _batch_norm(node: _Node, xs: list[Any]) -> Any:
    x, scale, bias, mean, var = xs[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(node.get("epsilon", 1e-5)))


def _flatten(node: _Node, xs: list[Any]) -> Any:
    x = xs[0]
    axis = int(node.get("axis", 1)) % (x.ndim + 1) if x.ndim else 0
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(node: _Node, xs: list[Any]) -> Any:
    x, shape = xs[0], _ints(xs[1])
    if not node.get("allowzero", 0):  # 0 copies the input's dimension
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _axes(node: _Node, xs: list[Any]) -> list[int] | None:
    if len(xs) > 1 and xs[1] is not None:
        return _ints(xs[1])
    axes = node.get("axes")
    return None if axes is None else list(axes)


def _squeeze(node: _Node, xs: list[Any]) -> Any:
    x, axes = xs[0], _axes(node, xs)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(a % x.ndim for a in axes)) if axes else x


def _unsqueeze(node: _Node, xs: list[Any]) -> Any:
    x, axes = xs[0], _axes(node, xs)
    if axes is None:
        raise EstimatorError("an ONNX Unsqueeze node without axes is malformed.")
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _clip(node: _Node, xs: list[Any]) -> Any:
    x = xs[0]
    if node.opset < 11:
        low, high = node.get("min"), node.get("max")
    else:
        low = xs[1] if len(xs) > 1 else None
        high = xs[2] if len(xs) > 2 else None
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype, device=x.device))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype, device=x.device))
    return x


def _pad(node: _Node, xs: list[Any]) -> Any:
    mode = node.get("mode", "constant")
    if mode != "constant":
        raise EstimatorError(f"the torch twin supports Pad in 'constant' mode only; got {mode!r}.")
    x = xs[0]
    if node.opset < 11:
        pads, value = list(node.get("pads")), float(node.get("value", 0.0))
    else:
        pads = _ints(xs[1])
        value = float(xs[2].item()) if len(xs) > 2 and xs[2] is not None else 0.0
        if len(xs) > 3 and xs[3] is not None:
            raise EstimatorError("the torch twin does not support Pad's axes input.")
    nd = x.ndim
    return F.pad(x, _torch_pad(pads[:nd], pads[nd:]), value=value)


def _gather(node: _Node, xs: list[Any]) -> Any:
    x, idx = xs
    axis = int(node.get("axis", 0)) % x.ndim
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


def _reduce_mean(node: _Node, xs: list[Any]) -> Any:
    x = xs[0]
    axes = _axes(node, xs)  # an attribute before opset 18, an input from it
    keep = bool(node.get("keepdims", 1))
    if not axes:
        if node.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.ndim))
    return x.mean(dim=tuple(axes), keepdim=keep)


def _slice(node: _Node, xs: list[Any]) -> Any:
    x = xs[0]
    if node.opset < 10:
        starts, ends = list(node.get("starts")), list(node.get("ends"))
        axes = list(node.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(xs[1]), _ints(xs[2])
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.ndim
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        elif step < 0:  # ONNX clamps to [0, dim - 1] and [-1, dim - 1] going backwards
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        else:
            raise EstimatorError("an ONNX Slice node with a zero step is malformed.")
        idx = torch.arange(start, end, step, device=x.device)
        x = torch.index_select(x, axis, idx)
    return x


def _constant_of_shape(node: _Node, xs: list[Any]) -> Any:
    value = node.get("value")
    fill = torch.as_tensor(np.array(value if value is not None else np.zeros(1, np.float32)))
    return torch.full(
        _ints(xs[0]), fill.reshape(-1)[0].item(), dtype=fill.dtype, device=xs[0].device
    )


_ONNX_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}


def _cast(node: _Node, xs: list[Any]) -> Any:
    to = int(node.get("to"))
    if to not in _ONNX_DTYPES:
        raise EstimatorError(f"the torch twin does not support Cast to ONNX type {to}.")
    return xs[0].to(_ONNX_DTYPES[to])


_OPS: dict[str, _Op] = {
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(lambda a, b: a + b),
    "Sub": _binary(lambda a, b: a - b),
    "Mul": _binary(lambda a, b: a * b),
    "Div": _div,
    "Relu": lambda node, xs: torch.relu(xs[0]),
    "LeakyRelu": lambda node, xs: F.leaky_relu(xs[0], float(node.get("alpha", 0.01))),
    "Sigmoid": lambda node, xs: torch.sigmoid(xs[0]),
    "Tanh": lambda node, xs: torch.tanh(xs[0]),
    "Softmax": _softmax_like(torch.softmax),
    "LogSoftmax": _softmax_like(torch.log_softmax),
    "Conv": _conv,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": lambda node, xs: xs[0].mean(dim=tuple(range(2, xs[0].ndim)), keepdim=True),
    "BatchNormalization": _batch_norm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda node, xs: xs[0].permute(
        list(node.get("perm", range(xs[0].ndim - 1, -1, -1)))
    ),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda node, xs: torch.cat(
        [x for x in xs if x is not None], dim=int(node.get("axis"))
    ),
    "Identity": lambda node, xs: xs[0],
    "Dropout": lambda node, xs: xs[0],  # inference: the identity
    "Clip": _clip,
    "Pad": _pad,
    "Shape": lambda node, xs: torch.tensor(
        list(xs[0].shape), dtype=torch.int64, device=xs[0].device
    ),
    "Gather": _gather,
    "Cast": _cast,
    "ReduceMean": _reduce_mean,
    "Slice": _slice,
    "ConstantOfShape": _constant_of_shape,
}

#: The ONNX operators the torch twin reproduces (``Constant`` nodes are folded in).
SUPPORTED_OPERATORS: tuple[str, ...] = tuple(sorted([*_OPS, "Constant"]))


def _attribute(attr: Any) -> Any:
    from onnx import helper, numpy_helper

    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "raw_data") or hasattr(value, "float_data"):  # a TensorProto
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


class OnnxTorchModule(nn.Module):
    """An ONNX graph replayed node by node in torch; maps the graph's first input to logits.

    Built by :func:`onnx_to_torch`. Initializers and constants are buffers (``c0``, ``c1``, ...)
    so ``.to(device)`` moves them; the graph's node list is plain data.
    """

    def __init__(
        self,
        nodes: list[_Node],
        constants: dict[str, np.ndarray],
        input_name: str,
        output_name: str,
        log_output: bool,
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.input_name = input_name
        self.output_name = output_name
        self.log_output = log_output
        self._constant_names: dict[str, str] = {}
        for i, (name, value) in enumerate(constants.items()):
            key = f"c{i}"
            self.register_buffer(key, torch.as_tensor(np.array(value)))
            self._constant_names[name] = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {"": None, self.input_name: x}
        for name, key in self._constant_names.items():
            env[name] = getattr(self, key)
        for node in self.nodes:
            args = [env[name] for name in node.inputs]
            out = _OPS[node.op](node, args)
            env[node.outputs[0]] = out
        out = env[self.output_name]
        if self.log_output:  # probabilities without a final Softmax: log p are logits
            out = torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
        return out


def onnx_to_torch(model_bytes: bytes, *, output: str) -> OnnxTorchModule:
    """Convert an ONNX classifier to a torch module that returns its logits.

    Parameters
    ----------
    model_bytes : bytes
        The ``.onnx`` file's contents.
    output : {"logits", "probabilities"}
        What the graph's first output is. For probabilities the twin returns the input of the
        final ``Softmax`` when the output is one (over the last axis), else ``log`` of them.

    Raises
    ------
    EstimatorError
        The graph has an operator (or an attribute of one) the twin does not support; the
        message names it and lists the supported operators.
    InputError
        The bytes are not an ONNX graph the ``onnx`` package can read.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:  # pragma: no cover - onnx is installed with bastion[onnx]
        raise EstimatorError(
            "gradients=True reads the ONNX graph with the onnx package: pip install onnx."
        ) from err
    try:
        proto = onnx.load_from_string(model_bytes)
    except Exception as err:
        raise InputError(f"the ONNX graph cannot be parsed by the onnx package: {err}") from err
    opset = max(
        (int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=1
    )
    graph = proto.graph
    unsupported = sorted(
        {n.op_type for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS}
        - {"Constant"}
    )
    if unsupported:
        raise EstimatorError(
            f"the ONNX graph uses operator(s) {', '.join(unsupported)} that the torch twin of "
            f"gradients=True does not support (supported: {', '.join(SUPPORTED_OPERATORS)}). "
            "Use the model predict-only (gradients=False) with black-box attacks "
            "(score-based such as Square or decision-based such as HopSkipJump)."
        )
    constants: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in graph.initializer
    }
    init_names = set(constants)
    inputs = [i.name for i in graph.input if i.name not in init_names]
    if not inputs:
        raise InputError("the ONNX graph has no input.")
    nodes: list[_Node] = []
    for n in graph.node:
        attrs = {a.name: _attribute(a) for a in n.attribute}
        if n.op_type == "Constant":
            if "value" not in attrs:
                raise EstimatorError(
                    "the torch twin supports Constant nodes with a tensor 'value' only; got "
                    f"{sorted(attrs)}."
                )
            constants[n.output[0]] = np.asarray(attrs["value"])
            continue
        nodes.append(_Node(n.op_type, list(n.input), list(n.output), attrs, opset))
    output_name = graph.output[0].name
    log_output = False
    if output == "probabilities":
        last = next((n for n in nodes if output_name in n.outputs), None)
        rank = len(graph.output[0].type.tensor_type.shape.dim)
        axis = None if last is None else last.get("axis", -1 if opset >= 13 else 1)
        if (
            last is not None
            and last.op == "Softmax"
            and axis is not None
            and axis in (-1, rank - 1)
        ):
            nodes = [n for n in nodes if n is not last]
            output_name = last.inputs[0]
        else:
            log_output = True
    return OnnxTorchModule(nodes, constants, inputs[0], output_name, log_output)
