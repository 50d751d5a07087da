"""One bound rule per operator: its concrete forward pass, its interval (IBP) forward rule and
its CROWN backward rule, composed over the traced graph by :class:`BoundNetwork`.

Backward rules work on lower bounds only: ``A`` has shape ``(N, S, *out_shape)`` (one row per
bounded linear function) and a rule returns the coefficients of its inputs and the constant
it adds, such that ``A @ out >= sum_i A_i @ in_i + bias`` over the inputs' bounds (upper
bounds are lower bounds of ``-A``). Affine operators are exact; ReLU and MaxPool relax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Bounds = tuple[torch.Tensor, torch.Tensor]

__all__ = [
    "Add",
    "AvgPool2d",
    "BatchNorm",
    "Bounds",
    "Conv2d",
    "ElementwiseAffine",
    "Linear",
    "LinearOp",
    "MaxPool2d",
    "Op",
    "ReLU",
    "Reshape",
]


def _sum_rows(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension after ``(N, S)``."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


def _scaled_box(
    lo: torch.Tensor, up: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> Bounds:
    """The exact image of the box ``[lo, up]`` under ``x * scale + shift`` (elementwise,
    broadcast): center and radius, the radius scaled by ``|scale|``."""
    c = (up + lo) / 2 * scale + shift
    r = (up - lo) / 2 * scale.abs()
    return c - r, c + r


class Op:
    """An operator of the graph (one node): the rules every operator defines."""

    #: Whether the backward rule needs the bounds of the inputs (a relaxation).
    nonlinear: bool = False
    #: Whether each output element depends on one input element only (IBP stays exact).
    elementwise: bool = False
    name: str = "op"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def interval(self, *bounds: Bounds) -> Bounds:
        raise NotImplementedError

    def backward(
        self,
        a: torch.Tensor,
        bounds: Sequence[Bounds],
        out_shape: tuple[int, ...],
        slope: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        raise NotImplementedError


class LinearOp(Op):
    """A single-input affine operator ``f(x) = L(x) + b``: IBP in centre/radius form (Gowal
    et al. 2018) through ``L`` and ``|L|``, backward through the adjoint of ``L``."""

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``L(x)`` (no offset)."""
        raise NotImplementedError

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``|L|(x)``: the operator with the absolute values of its coefficients."""
        raise NotImplementedError

    def offset(self) -> torch.Tensor | float:
        """``b``, broadcastable to the output of a sample batch (``0`` when none)."""
        return 0.0

    def adjoint(self, a: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        """``L^T`` applied to each row of ``a`` ``(M, *out_shape)`` -> ``(M, *in_shape)``.

        The generic rule: the vector-Jacobian product of the (linear) operator, kept in the
        autograd graph so that bounds stay differentiable w.r.t. the parameters."""
        with torch.enable_grad():
            z = torch.zeros((a.shape[0], *in_shape), dtype=a.dtype, device=a.device)
            z.requires_grad_(True)
            out = self.linear(z)
            (g,) = torch.autograd.grad(out, z, a, create_graph=True)
        return g

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.linear(xs[0]) + self.offset()

    def interval(self, *bounds: Bounds) -> Bounds:
        lo, up = bounds[0]
        mid, rad = (up + lo) / 2, (up - lo) / 2
        c = self.linear(mid) + self.offset()
        r = self.abs_linear(rad)
        return c - r, c + r

    def backward(
        self,
        a: torch.Tensor,
        bounds: Sequence[Bounds],
        out_shape: tuple[int, ...],
        slope: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        n, s = a.shape[0], a.shape[1]
        in_shape = tuple(bounds[0][0].shape[1:])
        a_in = self.adjoint(a.reshape(n * s, *out_shape), in_shape).reshape(n, s, *in_shape)
        b = self.offset()
        if isinstance(b, float) and b == 0.0:
            return [a_in], 0.0
        bias = _sum_rows(a * torch.as_tensor(b, dtype=a.dtype, device=a.device).unsqueeze(0))
        return [a_in], bias


class Linear(LinearOp):
    """``nn.Linear`` (reads the module's current parameters each time)."""

    name = "Linear"

    def __init__(self, module: nn.Linear) -> None:
        self.module = module

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.module.weight)

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.module.weight.abs())

    def offset(self) -> torch.Tensor | float:
        b = self.module.bias
        return 0.0 if b is None else b

    def adjoint(self, a: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        return a @ self.module.weight

    def interval(self, *bounds: Bounds) -> Bounds:
        lo, up = bounds[0]
        w = self.module.weight
        c = F.linear((up + lo) * 0.5, w, self.module.bias)
        r = F.linear((up - lo) * 0.5, w.abs())
        return c - r, c + r


class Conv2d(LinearOp):
    """``nn.Conv2d`` (zero padding; any stride, dilation, groups)."""

    name = "Conv2d"

    def __init__(self, module: nn.Conv2d) -> None:
        self.module = module

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        m = self.module
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.module.weight)

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.module.weight.abs())

    def offset(self) -> torch.Tensor | float:
        b = self.module.bias
        return 0.0 if b is None else b.reshape(-1, 1, 1)

    def adjoint(self, a: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        m = self.module
        if isinstance(m.padding, str):  # "same" / "valid": the generic adjoint
            return super().adjoint(a, in_shape)
        stride, pad, dil = m.stride, m.padding, m.dilation
        k = m.kernel_size
        # Output padding so that the transposed convolution recovers the input size exactly.
        op = []
        for i, size in enumerate(in_shape[1:]):
            full = (a.shape[-2:][i] - 1) * stride[i] - 2 * pad[i] + dil[i] * (k[i] - 1) + 1
            op.append(size - full)
        return F.conv_transpose2d(
            a,
            m.weight,
            None,
            stride,
            pad,
            tuple(op),
            m.groups,
            dil,
        )


class BatchNorm(LinearOp):
    """``nn.BatchNorm1d/2d`` with its running statistics (eval semantics, always): a
    per-channel scale and shift."""

    elementwise = True
    name = "BatchNorm"

    def __init__(self, module: nn.modules.batchnorm._BatchNorm) -> None:
        self.module = module

    def _shape(self, ndim: int) -> tuple[int, ...]:
        return (-1,) + (1,) * (ndim - 2)

    def _scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        var = m.running_var
        mean = m.running_mean
        assert var is not None and mean is not None  # checked when traced
        scale = 1.0 / torch.sqrt(var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        shift = -mean * scale
        if m.bias is not None:
            shift = shift + m.bias
        return scale, shift

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._scale_shift()[0].reshape(self._shape(x.ndim))

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._scale_shift()[0].abs().reshape(self._shape(x.ndim))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        scale, shift = self._scale_shift()
        shp = self._shape(xs[0].ndim)
        return xs[0] * scale.reshape(shp) + shift.reshape(shp)

    def interval(self, *bounds: Bounds) -> Bounds:
        lo, up = bounds[0]
        scale, shift = self._scale_shift()
        shp = self._shape(lo.ndim)
        return _scaled_box(lo, up, scale.reshape(shp), shift.reshape(shp))

    def backward(
        self,
        a: torch.Tensor,
        bounds: Sequence[Bounds],
        out_shape: tuple[int, ...],
        slope: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        scale, shift = self._scale_shift()
        shp = self._shape(a.ndim - 1)  # (N, S, C, ...) -> channel dim 2
        return [a * scale.reshape(shp)], _sum_rows(a * shift.reshape(shp))


class Reshape(LinearOp):
    """``flatten`` / ``view`` / ``reshape`` (batch dimension kept)."""

    elementwise = True
    name = "Reshape"

    def __init__(self, out_shape: tuple[int, ...]) -> None:
        self.out_shape = out_shape

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def adjoint(self, a: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        return a.reshape(a.shape[0], *in_shape)

    def interval(self, *bounds: Bounds) -> Bounds:
        lo, up = bounds[0]
        return self.linear(lo), self.linear(up)


class AvgPool2d(LinearOp):
    """``nn.AvgPool2d`` / ``nn.AdaptiveAvgPool2d`` (non-negative weights, so ``|L| = L``);
    adjoint by autograd."""

    name = "AvgPool2d"

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class ElementwiseAffine(LinearOp):
    """``x * scale + shift`` with constants (normalisation ``(x - mean) / std``, ``x * c``,
    ``x + c``, ``c - x``); ``coefficients`` gives ``(scale, shift)`` when called, so parameters
    and buffers are read live."""

    elementwise = True
    name = "ElementwiseAffine"

    def __init__(
        self,
        coefficients: Callable[[], tuple[Any, Any]],
        out_shape: tuple[int, ...],
    ) -> None:
        self.coefficients = coefficients
        self.out_shape = out_shape

    def _coef(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.coefficients()
        scale = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
        shift = torch.as_tensor(shift, dtype=like.dtype, device=like.device)
        return scale, shift

    def _full(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A constant as one value per element of a sample, shape ``out_shape``."""
        nd = len(self.out_shape)
        while t.ndim > nd and t.shape[0] == 1:
            t = t[0]
        return t.expand(self.out_shape)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        scale, _ = self._coef(x)
        return x * self._full(scale, x)

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        scale, _ = self._coef(x)
        return x * self._full(scale, x).abs()

    def offset(self) -> torch.Tensor | float:
        _, shift = self.coefficients()
        if isinstance(shift, (int, float)) and shift == 0:
            return 0.0
        t = torch.as_tensor(shift)
        return self._full(t, t)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        x = xs[0]
        scale, shift = self._coef(x)
        return x * self._full(scale, x) + self._full(shift, x)

    def interval(self, *bounds: Bounds) -> Bounds:
        lo, up = bounds[0]
        scale, shift = self._coef(lo)
        return _scaled_box(lo, up, self._full(scale, lo), self._full(shift, lo))

    def backward(
        self,
        a: torch.Tensor,
        bounds: Sequence[Bounds],
        out_shape: tuple[int, ...],
        slope: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        scale, shift = self._coef(a)
        return [a * self._full(scale, a)], _sum_rows(a * self._full(shift, a))


class Add(Op):
    """The sum of two graph tensors (residual connections): exact, coefficients copied to
    both inputs (a tensor broadcast to the other's shape is summed back)."""

    name = "Add"

    def __init__(self, in_shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        self.in_shapes = in_shapes

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0] + xs[1]

    def interval(self, *bounds: Bounds) -> Bounds:
        return bounds[0][0] + bounds[1][0], bounds[0][1] + bounds[1][1]

    def _reduce(self, a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        out_nd = a.ndim - 2
        target = (1,) * (out_nd - len(shape)) + tuple(shape)
        pairs = enumerate(zip(target, a.shape[2:], strict=True))
        dims = [i + 2 for i, (t, o) in pairs if t == 1 and o != 1]
        if dims:
            a = a.sum(dim=dims, keepdim=True)
        return a.reshape(a.shape[0], a.shape[1], *shape)

    def backward(
        self,
        a: torch.Tensor,
        bounds: Sequence[Bounds],
        out_shape: tuple[int, ...],
        slope: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        return [self._reduce(a, self.in_shapes[0]), self._reduce(a, self.in_shapes[1])], 0.0


class ReLU(Op):
    """ReLU with the triangle relaxation of CROWN (Zhang et al. 2018): for an unstable neuron
    (``l < 0 < u``) the upper line ``u / (u - l) (x - l)`` and a lower line ``alpha x`` with
    ``alpha`` in [0, 1] (CROWN's adaptive choice ``1 if u >= -l else 0``, or optimised slopes
    in alpha-CROWN)."""

    nonlinear = True
    elementwise = True
    name = "ReLU"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.relu(xs[0])

    def interval(self, *bounds: Bounds) -> Bounds:
        lo, up = bounds[0]
        return torch.relu(lo), torch.relu(up)

    @staticmethod
    def relaxation(lo: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(upper slope, upper intercept, default lower slope, unstable mask)``."""
        unstable = (lo < 0) & (up > 0)
        active = lo >= 0
        denom = torch.where(unstable, up - lo, torch.ones_like(up))
        up_slope = torch.where(unstable, up / denom, active.to(up.dtype))
        up_int = torch.where(unstable, -up_slope * lo, torch.zeros_like(up))
        low_slope = torch.where(unstable, (up >= -lo).to(up.dtype), active.to(up.dtype))
        return up_slope, up_int, low_slope, unstable

    def backward(
        self,
        a: torch.Tensor,
        bounds: Sequence[Bounds],
        out_shape: tuple[int, ...],
        slope: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        lo, up = bounds[0]
        up_slope, up_int, low_slope, unstable = self.relaxation(lo, up)
        up_slope, up_int = up_slope.unsqueeze(1), up_int.unsqueeze(1)
        low = low_slope.unsqueeze(1)
        if slope is not None:  # (N, S, *shape) optimised slopes, used where unstable
            low = torch.where(unstable.unsqueeze(1), slope, low)
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        a_in = pos * low + neg * up_slope
        return [a_in], _sum_rows(neg * up_int)


class MaxPool2d(Op):
    """``nn.MaxPool2d`` (``ceil_mode=False``): lower bound by the window's input with the
    largest lower bound; upper bound by that input when it dominates the window (its lower
    bound is at least every other upper bound: exact), else by the window's largest upper
    bound (a constant). Sound, and exact on dominated windows."""

    nonlinear = True
    name = "MaxPool2d"

    def __init__(self, module: nn.MaxPool2d) -> None:
        self.module = module

        def pair(v: Any) -> tuple[int, int]:
            return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))

        self.kernel = pair(module.kernel_size)
        self.stride = pair(module.stride if module.stride is not None else module.kernel_size)
        self.padding = pair(module.padding)
        self.dilation = pair(module.dilation)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(
            xs[0], self.kernel, self.stride, self.padding, self.dilation, ceil_mode=False
        )

    def interval(self, *bounds: Bounds) -> Bounds:
        lo, up = bounds[0]
        return self.forward(lo), self.forward(up)

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        """``(N, C, k, L)``: the window elements of each output position."""
        n, c = t.shape[0], t.shape[1]
        ph, pw = self.padding
        t = F.pad(t, (pw, pw, ph, ph), value=float("-inf"))
        cols = F.unfold(t, self.kernel, dilation=self.dilation, stride=self.stride)
        k = self.kernel[0] * self.kernel[1]
        return cols.reshape(n, c, k, -1)

    def backward(
        self,
        a: torch.Tensor,
        bounds: Sequence[Bounds],
        out_shape: tuple[int, ...],
        slope: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        lo, up = bounds[0]
        n, s = a.shape[0], a.shape[1]
        c, h, w = lo.shape[1], lo.shape[2], lo.shape[3]
        lw, uw = self._windows(lo), self._windows(up)  # (N, C, k, L)
        k = lw.shape[2]
        best = lw.argmax(dim=2, keepdim=True)  # (N, C, 1, L)
        best_lo = lw.gather(2, best)
        others = uw.scatter(2, best, float("-inf")).amax(dim=2, keepdim=True)
        dominated = (best_lo >= others).squeeze(2)  # (N, C, L)
        u_max = uw.amax(dim=2)  # (N, C, L)
        af = a.reshape(n, s, c, -1)  # (N, S, C, L)
        dom = dominated.unsqueeze(1)
        coef = torch.where((af >= 0) | dom, af, torch.zeros_like(af))
        const = torch.where((af < 0) & ~dom, af * u_max.unsqueeze(1), torch.zeros_like(af))
        onehot = torch.zeros((n, 1, c, k, af.shape[-1]), dtype=a.dtype, device=a.device)
        onehot = onehot.scatter(3, best.unsqueeze(1), 1.0)
        cols = (coef.unsqueeze(3) * onehot).reshape(n * s, c * k, -1)
        ph, pw = self.padding
        padded = F.fold(
            cols, (h + 2 * ph, w + 2 * pw), self.kernel, dilation=self.dilation, stride=self.stride
        )
        a_in = padded[:, :, ph : ph + h, pw : pw + w].reshape(n, s, c, h, w)
        return [a_in], const.reshape(n, s, -1).sum(-1)
