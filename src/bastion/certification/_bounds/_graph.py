"""Tracing a torch module (torch.fx) into a list of bound operators in topological order.

fx flattens ``nn.Sequential`` containers and follows user modules (residual blocks with
``out + identity``); the leaves (modules of ``torch.nn``) and the functions and methods called
on tensors become :mod:`._ops` operators. Values that do not depend on the input are either
constants (tensors: buffers and parameters, read live each time they are used) or static Python
values (shapes, computed once on a dummy batch).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from bastion.certification._bounds import _ops
from bastion.exceptions import ModelError

__all__ = ["SUPPORTED", "GraphNode", "trace"]

#: What the bound rules support, as listed in the unsupported-layer error.
SUPPORTED = (
    "nn.Linear, nn.Conv2d (zero padding), nn.ReLU / F.relu / torch.relu / Tensor.relu, "
    "nn.BatchNorm1d/2d (running statistics), nn.Flatten / torch.flatten / view / reshape, "
    "nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d (ceil_mode=False), nn.Identity, "
    "nn.Dropout, the sum of two tensors (residual connections), and elementwise affine "
    "operations with constants "
    "(x + c, x - c, c - x, x * c, x / c, -x)"
)


@dataclass
class GraphNode:
    """One operator of the traced graph: its rule, the indices of its inputs (earlier nodes;
    node 0 is the network's input), its output shape per sample and its name."""

    op: _ops.Op | None
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str


_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_RELU = {F.relu, torch.relu, torch.relu_}
_METHOD_ARITH = {"add": _ADD, "sub": _SUB, "mul": _MUL, "div": _DIV}
_ALIAS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


class _Leaves(fx.Tracer):
    """Leaves: the modules of ``torch.nn`` (except containers), as fx's default."""


@dataclass
class _Var:
    index: int


@dataclass
class _Const:
    get: Callable[[], Any]


def _unsupported(owner: str, name: str, what: str) -> ModelError:
    return ModelError(
        f"{owner}: the layer {name!r} ({what}) has no bound rule. Supported: {SUPPORTED}."
    )


def _const_value(v: Any) -> Any:
    return v.get() if isinstance(v, _Const) else v


def trace(module: nn.Module, input_shape: tuple[int, ...], owner: str) -> list[GraphNode]:
    """The operators of ``module`` in topological order; the last node is the output.

    Raises
    ------
    ModelError
        The module cannot be traced by torch.fx (data-dependent control flow), or uses an
        operation without a bound rule (named with its qualified name and type).
    """
    try:
        graph = _Leaves().trace(module)
    except Exception as err:
        raise ModelError(
            f"{owner}: torch.fx cannot trace the model ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); bound propagation needs a model without "
            "data-dependent control flow."
        ) from err
    param = next(iter(module.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    nodes: list[GraphNode] = []
    values: list[torch.Tensor] = []  # dummy value of each graph node
    env: dict[str, Any] = {}  # fx node name -> _Var | _Const | static value
    output: Any = None

    def add(op: _ops.Op | None, inputs: tuple[int, ...], value: torch.Tensor, name: str) -> _Var:
        nodes.append(GraphNode(op, inputs, tuple(value.shape[1:]), name))
        values.append(value)
        return _Var(len(nodes) - 1)

    def arg(a: Any) -> Any:
        if isinstance(a, fx.Node):
            return env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(arg(b) for b in a)
        return a

    def static(a: Any) -> Any:
        """A static value (dummy values of graph tensors substituted)."""
        if isinstance(a, _Var):
            return values[a.index]
        if isinstance(a, _Const):
            return a.get()
        if isinstance(a, (list, tuple)):
            return type(a)(static(b) for b in a)
        return a

    def affine(
        var: _Var, scale: Callable[[], Any], shift: Callable[[], Any], name: str, what: str
    ) -> _Var:
        op = _ops.ElementwiseAffine(lambda: (scale(), shift()), nodes[var.index].shape)
        x = values[var.index]
        s, b = scale(), shift()
        try:
            out = x * torch.as_tensor(s, dtype=x.dtype) + torch.as_tensor(b, dtype=x.dtype)
        except RuntimeError as err:
            raise _unsupported(owner, name, what) from err
        if out.shape != x.shape:
            raise _unsupported(owner, name, f"{what} broadcasting the input to a new shape")
        return add(op, (var.index,), op.forward(x), name)

    def arithmetic(kind: str, a: Any, b: Any, name: str, what: str) -> Any:
        va, vb = isinstance(a, _Var), isinstance(b, _Var)
        if not va and not vb:
            fn = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}.get(
                kind, operator.truediv
            )
            if isinstance(a, _Const) or isinstance(b, _Const):
                return _Const(lambda: fn(_const_value(a), _const_value(b)))
            return fn(a, b)
        if va and vb:
            if kind != "add":
                raise _unsupported(owner, name, f"{what} of two input-dependent tensors")
            xa, xb = values[a.index], values[b.index]
            out = xa + xb
            if out.shape != xa.shape and out.shape != xb.shape:
                raise _unsupported(owner, name, f"{what} broadcasting both operands")
            op = _ops.Add((nodes[a.index].shape, nodes[b.index].shape))
            return add(op, (a.index, b.index), op.forward(xa, xb), name)
        var, other = (a, b) if va else (b, a)
        c = lambda: _const_value(other)  # noqa: E731
        one, zero = (lambda: 1.0), (lambda: 0.0)
        if kind == "add":
            return affine(var, one, c, name, what)
        if kind == "sub":
            if va:
                return affine(var, one, lambda: -torch.as_tensor(c()), name, what)
            return affine(var, lambda: -1.0, c, name, what)
        if kind == "mul":
            return affine(var, c, zero, name, what)
        if not va:
            raise _unsupported(owner, name, f"{what} by an input-dependent tensor")
        return affine(var, lambda: 1.0 / torch.as_tensor(c()), zero, name, what)

    def reshape(var: _Var, fn: Callable[..., torch.Tensor], name: str, rest: Any = ()) -> _Var:
        x = values[var.index]
        out = fn(x, *rest)
        if out.shape[0] != x.shape[0]:
            raise _unsupported(owner, name, "a reshape that mixes samples of the batch")
        return add(_ops.Reshape(tuple(out.shape[1:])), (var.index,), out, name)

    with torch.no_grad():
        for node in graph.nodes:
            what = f"{node.op} {node.target!r}"
            if node.op == "placeholder":
                if nodes:
                    raise ModelError(f"{owner}: the model must take one input tensor.")
                x0 = torch.zeros((2, *input_shape), dtype=dtype, device=device)
                env[node.name] = add(None, (), x0, "input")
                continue
            if node.op == "get_attr":
                path = str(node.target)
                env[node.name] = _Const(functools.partial(_get_attr, module, path))
                continue
            if node.op == "output":
                output = arg(node.args[0])
                continue
            args = [arg(a) for a in node.args]
            kwargs = {k: arg(v) for k, v in node.kwargs.items()}
            depends = any(isinstance(a, _Var) for a in [*args, *kwargs.values()])
            if node.op == "call_module":
                sub = module.get_submodule(str(node.target))
                qual = f"{node.target} ({type(sub).__module__}.{type(sub).__qualname__})"
                env[node.name] = _module_node(
                    sub, str(node.target), qual, args, values, nodes, add, owner, reshape
                )
                continue
            name = node.name
            target = node.target
            if not depends:
                # Static (shapes) or constant (tensors of buffers/parameters) values.
                has_const = any(isinstance(a, _Const) for a in [*args, *kwargs.values()])
                fn: Callable[..., Any]
                if node.op == "call_method" and isinstance(target, str):
                    fn = functools.partial(_call_method, target)
                else:
                    fn = target
                if has_const:
                    env[node.name] = _Const(
                        functools.partial(_call_static, fn, static, list(args), dict(kwargs))
                    )
                else:
                    env[node.name] = fn(*static(args), **static(kwargs))
                continue
            first: Any = args[0] if args else None
            if not isinstance(first, _Var) and not _is_arith(node.op, target):
                raise _unsupported(
                    owner, name, f"{what} whose first argument is not the input-dependent tensor"
                )
            if node.op == "call_method":
                method = str(target)
                if method in ("size", "dim") or (method == "__getattribute__"):
                    env[node.name] = getattr(values[first.index], method)(*static(args[1:]))
                    continue
                if method == "relu":
                    env[node.name] = add(
                        _ops.ReLU(), (first.index,), torch.relu(values[first.index]), name
                    )
                    continue
                if method in ("view", "reshape", "flatten"):
                    rest, kw = static(args[1:]), static(kwargs)
                    env[node.name] = reshape(
                        first, functools.partial(_call_method, method, **kw), name, rest
                    )
                    continue
                if method in ("contiguous", "clone", "detach"):
                    env[node.name] = first
                    continue
                if method in _METHOD_ARITH and len(args) == 2 and not kwargs:
                    env[node.name] = arithmetic(method, args[0], args[1], name, what)
                    continue
                raise _unsupported(owner, name, f"the tensor method .{method}()")
            # call_function
            if target in (getattr, operator.getitem) and isinstance(first, _Var):
                if target is getattr and args[1] in ("shape",):
                    env[node.name] = values[first.index].shape
                    continue
                raise _unsupported(
                    owner, name, f"{getattr(target, '__name__', target)} on a tensor"
                )
            if target in _RELU:
                env[node.name] = add(
                    _ops.ReLU(), (first.index,), torch.relu(values[first.index]), name
                )
                continue
            if target is torch.flatten:
                rest, kw = static(args[1:]), static(kwargs)
                env[node.name] = reshape(
                    first, functools.partial(_call_function, torch.flatten, **kw), name, rest
                )
                continue
            if target is torch.reshape:
                rest = static(args[1:])
                env[node.name] = reshape(
                    first, functools.partial(_call_function, torch.reshape), name, rest
                )
                continue
            if target in (F.dropout, F.dropout1d, F.dropout2d):
                env[node.name] = first
                continue
            if target is operator.neg or target is torch.neg:
                env[node.name] = affine(first, lambda: -1.0, lambda: 0.0, name, what)
                continue
            kind = next(
                (
                    k
                    for k, group in (("add", _ADD), ("sub", _SUB), ("mul", _MUL), ("div", _DIV))
                    if target in group
                ),
                None,
            )
            if kind is not None and len(args) == 2 and not kwargs:
                env[node.name] = arithmetic(kind, args[0], args[1], name, what)
                continue
            tname = getattr(target, "__qualname__", None) or repr(target)
            tmod = getattr(target, "__module__", None) or ""
            raise _unsupported(owner, name, f"the function {tmod}.{tname}".lstrip("."))
    if not isinstance(output, _Var):
        raise ModelError(
            f"{owner}: the model's output must be one tensor computed from its input "
            f"(got {type(output).__name__})."
        )
    if output.index != len(nodes) - 1:
        # Move the output last: the nodes after it do not contribute.
        nodes = nodes[: output.index + 1]
    return nodes


def _is_arith(op: str, target: Any) -> bool:
    if op == "call_method":
        return target in _METHOD_ARITH
    return any(target in g for g in (_ADD, _SUB, _MUL, _DIV))


def _call_method(name: str, obj: Any, *args: Any, **kwargs: Any) -> Any:
    return getattr(obj, name)(*args, **kwargs)


def _call_function(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def _call_static(
    fn: Callable[..., Any],
    static: Callable[[Any], Any],
    args: list[Any],
    kwargs: dict[str, Any],
) -> Any:
    return fn(*[static(a) for a in args], **{k: static(v) for k, v in kwargs.items()})


def _get_attr(module: nn.Module, path: str) -> Any:
    obj: Any = module
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _module_node(
    sub: nn.Module,
    target: str,
    qual: str,
    args: list[Any],
    values: list[torch.Tensor],
    nodes: list[GraphNode],
    add: Callable[..., Any],
    owner: str,
    reshape: Callable[..., Any],
) -> Any:
    """The bound operator of a leaf module call."""
    if len(args) != 1 or not isinstance(args[0], _Var):
        raise _unsupported(owner, target, f"{qual} called on other than one input tensor")
    x = args[0]
    xv = values[x.index]
    if isinstance(sub, _ALIAS_MODULES):
        return x
    op: _ops.Op
    if isinstance(sub, nn.Linear):
        op = _ops.Linear(sub)
    elif isinstance(sub, nn.Conv2d):
        if sub.padding_mode != "zeros":
            raise _unsupported(owner, target, f"{qual} with padding_mode={sub.padding_mode!r}")
        op = _ops.Conv2d(sub)
    elif isinstance(sub, nn.ReLU):
        op = _ops.ReLU()
    elif isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if sub.running_mean is None or sub.running_var is None:
            raise _unsupported(owner, target, f"{qual} without running statistics")
        op = _ops.BatchNorm(sub)
    elif isinstance(sub, (nn.Flatten, nn.Unflatten)):
        return reshape(x, sub, target)
    elif isinstance(sub, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        op = _ops.AvgPool2d(sub)
    elif isinstance(sub, nn.MaxPool2d):
        if sub.ceil_mode or sub.return_indices:
            raise _unsupported(owner, target, f"{qual} with ceil_mode or return_indices")
        op = _ops.MaxPool2d(sub)
    else:
        raise _unsupported(owner, target, qual)
    try:
        out = op.forward(xv)
    except Exception as err:
        raise ModelError(
            f"{owner}: the layer {target!r} ({qual}) fails on the input shape "
            f"{tuple(xv.shape[1:])}: {err}"
        ) from err
    return add(op, (x.index,), out, target)
