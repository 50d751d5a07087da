"""Complete verification of small ReLU networks by mixed-integer linear programming (Tjeng,
Xiao and Tedrake 2019), solved with SciPy's HiGHS (:func:`scipy.optimize.milp`).

Every node of the traced network becomes an affine expression of the program's variables (the
input, then one continuous variable per unstable ReLU or undecided max-pool). Affine operators
are applied to the expression's coefficient matrix (the operator applied to an identity basis:
fine for small networks, quadratic in their width). A ReLU with pre-activation bounds
``l < 0 < u`` (the tightest of CROWN and IBP) gets the big-M encoding

    y >= 0,  y >= x,  y <= x - l (1 - a),  y <= u a,  a in {0, 1};

stable ReLUs are eliminated (``y = x`` or ``y = 0``). A max-pool window gets ``y >= x_i`` for
every input that can be the maximum, and ``y <= x_i + (U - l_i)(1 - a_i)`` with one binary per
input, ``sum a_i = 1``. The input set is the Linf ball intersected with the clip box. For each
competitor ``j`` (the most threatening first, by CROWN's bounds) the program minimises
``z_y - z_j``; a negative optimum is a counterexample, checked by a forward pass of the model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds as ScipyBounds
from scipy.optimize import LinearConstraint, milp
from scipy.sparse import csr_matrix
from torch import nn

from bastion.certification._bounds import BoundNetwork, box_domain
from bastion.certification._bounds._ops import Add, LinearOp, MaxPool2d, ReLU

__all__ = ["MilpOutcome", "MilpVerifier"]

#: Relative widening of the pre-activation bounds before they become big-M constants, so that
#: rounding in the bound computation cannot cut off a reachable point.
_WIDEN = 1e-7


@dataclass
class MilpOutcome:
    """The answer of the program for one sample.

    Attributes
    ----------
    status : str
        ``"verified"``, ``"falsified"`` or ``"unknown"`` (time limit).
    margin_lower : float
        A sound lower bound of the minimal margin (the solver's dual bounds, or CROWN's for
        competitors not solved).
    minimum : float
        The smallest optimum found (exact minimal margin when every competitor was solved to
        optimality, ``stop_at_negative=False``).
    counterexample : numpy array or None
        The input of the falsifying point (checked by a forward pass), flattened.
    argmin : numpy array or None
        The input where ``minimum`` is reached.
    optima : dict
        The optimum of each competitor solved.
    seconds : float
    """

    status: str
    margin_lower: float
    minimum: float
    counterexample: np.ndarray | None
    argmin: np.ndarray | None
    optima: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


class _Program:
    """Variables (bounds, integrality) and rows ``lo <= a @ v <= hi`` of a MILP."""

    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[np.ndarray, float, float]] = []

    @property
    def size(self) -> int:
        return len(self.lb)

    def new(self, lb: float, ub: float, integer: bool = False) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(int(integer))
        return self.size - 1

    def row(self, coef: np.ndarray, lo: float, hi: float) -> None:
        self.rows.append((coef, lo, hi))

    def matrices(self) -> tuple[csr_matrix, np.ndarray, np.ndarray]:
        n = self.size
        data, cols, ptr = [], [], [0]
        for coef, _, _ in self.rows:
            nz = np.nonzero(coef)[0]
            cols.append(nz)
            data.append(coef[nz])
            ptr.append(ptr[-1] + len(nz))
        a = csr_matrix(
            (
                np.concatenate(data) if data else np.zeros(0),
                np.concatenate(cols) if cols else np.zeros(0, dtype=int),
                np.array(ptr),
            ),
            shape=(len(self.rows), n),
        )
        lo = np.array([r[1] for r in self.rows])
        hi = np.array([r[2] for r in self.rows])
        return a, lo, hi


def _pad(m: np.ndarray, width: int) -> np.ndarray:
    if m.shape[1] == width:
        return m
    return np.concatenate([m, np.zeros((m.shape[0], width - m.shape[1]))], axis=1)


class MilpVerifier:
    """The exact mixed-integer program of a traced ReLU network (small networks only).

    Parameters
    ----------
    module : torch.nn.Module
        Maps raw inputs to logits; copied once to the CPU in float64 and eval mode for the
        program and for checking counterexamples (the caller's module is left as it is).
    input_shape : tuple of int
    owner : str
    """

    def __init__(
        self, module: nn.Module, input_shape: tuple[int, ...], owner: str = "verify"
    ) -> None:
        self.input_shape = tuple(input_shape)
        self.owner = owner
        model = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
        self.net = BoundNetwork(model, self.input_shape, owner)
        self.model = self.net.module

    # ------------------------------------------------------------------ encoding

    def encode(
        self, x: torch.Tensor, eps: float, clip: tuple[float, float] | None
    ) -> tuple[_Program, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The program of one sample: ``(program, output matrix, output offset, box lower,
        box upper)``; the output is ``matrix @ v + offset``."""
        x64 = x.detach().to(torch.float64).cpu().reshape(1, *self.input_shape)
        dom = box_domain(x64, eps, "inf", clip)
        with torch.no_grad():
            bounds = self.net._all_bounds(self.net._prepare(dom), "crown")
        prog = _Program()
        lo_in = dom.lower.reshape(-1).numpy()
        up_in = dom.upper.reshape(-1).numpy()
        d = lo_in.size
        for i in range(d):
            prog.new(float(lo_in[i]), float(up_in[i]))
        exprs: list[tuple[np.ndarray, np.ndarray]] = [(np.eye(d), np.zeros(d))]
        for node in self.net.nodes:
            if node.op is None:
                continue
            op = node.op
            ins = [exprs[j] for j in node.inputs]
            in_shapes = [self.net.nodes[j].shape for j in node.inputs]
            if isinstance(op, LinearOp):
                m, c = ins[0]
                with torch.no_grad():
                    basis = torch.as_tensor(m.T.copy()).reshape(m.shape[1], *in_shapes[0])
                    mo = op.linear(basis).reshape(m.shape[1], -1).numpy().T
                    co = op.forward(torch.as_tensor(c).reshape(1, *in_shapes[0])).reshape(-1)
                exprs.append((mo, co.numpy()))
            elif isinstance(op, Add):
                w = prog.size
                (ma, ca), (mb, cb) = ins
                exprs.append((_pad(ma, w) + _pad(mb, w), ca + cb))
            elif isinstance(op, ReLU):
                lo, up = (t.reshape(-1).numpy() for t in bounds[node.inputs[0]])
                exprs.append(self._relu(prog, ins[0], lo, up))
            elif isinstance(op, MaxPool2d):
                lo, up = (t.reshape(-1).numpy() for t in bounds[node.inputs[0]])
                exprs.append(self._maxpool(prog, op, ins[0], lo, up, in_shapes[0]))
            else:  # pragma: no cover - every traced operator is one of the above
                raise TypeError(f"no MILP encoding for {type(op).__name__}")
        m, c = exprs[-1]
        return prog, _pad(m, prog.size), c, lo_in, up_in

    @staticmethod
    def _widen(lo: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return lo - _WIDEN * (1 + np.abs(lo)), up + _WIDEN * (1 + np.abs(up))

    def _relu(
        self, prog: _Program, expr: tuple[np.ndarray, np.ndarray], lo: np.ndarray, up: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        m, c = expr
        lo, up = self._widen(lo, up)
        rows: list[np.ndarray] = []
        offs: list[float] = []
        for k in range(m.shape[0]):
            if lo[k] >= 0:
                rows.append(m[k])
                offs.append(float(c[k]))
                continue
            if up[k] <= 0:
                rows.append(np.zeros(0))
                offs.append(0.0)
                continue
            y = prog.new(0.0, float(up[k]))
            a = prog.new(0.0, 1.0, integer=True)
            w = prog.size
            mk = _pad(m[k : k + 1], w)[0]
            e_y, e_a = np.zeros(w), np.zeros(w)
            e_y[y], e_a[a] = 1.0, 1.0
            prog.row(e_y - mk, float(c[k]), np.inf)  # y >= x
            prog.row(e_y - mk - lo[k] * e_a, -np.inf, float(c[k] - lo[k]))  # y <= x - l(1 - a)
            prog.row(e_y - up[k] * e_a, -np.inf, 0.0)  # y <= u a
            rows.append(e_y)
            offs.append(0.0)
        w = prog.size
        out = np.stack([_pad(r.reshape(1, -1), w)[0] if r.size else np.zeros(w) for r in rows])
        return out, np.array(offs)

    def _maxpool(
        self,
        prog: _Program,
        op: MaxPool2d,
        expr: tuple[np.ndarray, np.ndarray],
        lo: np.ndarray,
        up: np.ndarray,
        in_shape: tuple[int, ...],
    ) -> tuple[np.ndarray, np.ndarray]:
        m, c = expr
        lo, up = self._widen(lo, up)
        index = torch.arange(m.shape[0], dtype=torch.float64).reshape(1, *in_shape)
        ph, pw = op.padding
        padded = torch.nn.functional.pad(index, (pw, pw, ph, ph), value=-1.0)
        cols = torch.nn.functional.unfold(padded, op.kernel, dilation=op.dilation, stride=op.stride)
        ch = in_shape[0]
        kk = op.kernel[0] * op.kernel[1]
        windows = cols.reshape(ch, kk, -1).permute(0, 2, 1).reshape(-1, kk).long().numpy()
        rows: list[np.ndarray] = []
        offs: list[float] = []
        for win in windows:
            win = win[win >= 0]
            best_lo = lo[win].max()
            cand = win[up[win] >= best_lo]
            top = cand[np.argmax(lo[cand])]
            others = cand[cand != top]
            if others.size == 0 or lo[top] >= up[others].max():
                rows.append(m[top])
                offs.append(float(c[top]))
                continue
            big = float(up[cand].max())
            y = prog.new(float(best_lo), big)
            sel = [prog.new(0.0, 1.0, integer=True) for _ in cand]
            w = prog.size
            e_y = np.zeros(w)
            e_y[y] = 1.0
            total = np.zeros(w)
            for i, a in zip(cand, sel, strict=True):
                mi = _pad(m[i : i + 1], w)[0]
                e_a = np.zeros(w)
                e_a[a] = 1.0
                total[a] = 1.0
                prog.row(e_y - mi, float(c[i]), np.inf)  # y >= x_i
                gap = big - float(lo[i])
                prog.row(
                    e_y - mi + gap * e_a, -np.inf, float(c[i]) + gap
                )  # y <= x_i + gap (1 - a_i)
            prog.row(total, 1.0, 1.0)
            rows.append(e_y)
            offs.append(0.0)
        w = prog.size
        out = np.stack([_pad(r.reshape(1, -1), w)[0] for r in rows])
        return out, np.array(offs)

    # ------------------------------------------------------------------ solving

    def margin(self, x: np.ndarray, y: int) -> float:
        """``z_y - max_{j != y} z_j`` of the model at ``x`` (a forward pass)."""
        with torch.no_grad():
            z = self.model(torch.as_tensor(x, dtype=torch.float64).reshape(1, *self.input_shape))[0]
        others = torch.cat([z[:y], z[y + 1 :]])
        return float(z[y] - others.max())

    def solve(
        self,
        x: torch.Tensor,
        y: int,
        eps: float,
        clip: tuple[float, float] | None,
        *,
        time_limit: float | None = None,
        crown_lower: torch.Tensor | None = None,
        stop_at_negative: bool = True,
    ) -> MilpOutcome:
        """Solve the program of one sample for each competitor class.

        ``crown_lower`` (the CROWN lower bounds of the margins, one per competitor in class
        order) orders the competitors and bounds those left unsolved. With
        ``stop_at_negative=False`` every competitor is solved (the exact minimal margin: what
        the tests compare with a brute force).
        """
        start = time.perf_counter()
        prog, mo, co, lo_in, up_in = self.encode(x, eps, clip)
        a, rlo, rhi = prog.matrices()
        k = mo.shape[0]
        comps = [j for j in range(k) if j != y]
        lower = {j: -np.inf for j in comps}
        if crown_lower is not None:
            cl = crown_lower.detach().double().cpu().numpy()
            for r, j in enumerate(comps):
                lower[j] = float(cl[r])
            comps.sort(key=lambda j: lower[j])
        constraints = [LinearConstraint(a, rlo, rhi)] if a.shape[0] else []
        bnds = ScipyBounds(np.array(prog.lb), np.array(prog.ub))
        integrality = np.array(prog.integer)
        d = lo_in.size
        optima: dict[int, float] = {}
        minimum, argmin = np.inf, None
        counter = None
        for j in comps:
            options: dict[str, Any] = {"disp": False, "mip_rel_gap": 1e-9}
            if time_limit is not None:
                left = time_limit - (time.perf_counter() - start)
                if left <= 0:
                    break
                options["time_limit"] = left
            obj = mo[y] - mo[j]
            res = milp(
                obj, integrality=integrality, bounds=bnds, constraints=constraints, options=options
            )
            const = float(co[y] - co[j])
            dual = getattr(res, "mip_dual_bound", None)
            if res.status == 0:
                value = float(res.fun) + const
                optima[j] = value
                bound = float(dual) + const if dual is not None and np.isfinite(dual) else value
                lower[j] = max(lower[j], min(bound, value))
            else:
                if dual is not None and np.isfinite(dual):
                    lower[j] = max(lower[j], float(dual) + const)
                value = float(res.fun) + const if res.x is not None else np.inf
            if res.x is not None and value < minimum:
                minimum, argmin = value, np.clip(res.x[:d], lo_in, up_in)
            if res.x is not None and value < 0:
                cand = np.clip(res.x[:d], lo_in, up_in)
                if self.margin(cand, y) < 0:
                    counter = cand
                    if stop_at_negative:
                        break
        bound = min(lower.values()) if lower else np.inf
        if counter is not None:
            status = "falsified"
        elif bound > 0:
            status = "verified"
        else:
            status = "unknown"
        return MilpOutcome(
            status=status,
            margin_lower=float(bound),
            minimum=float(minimum),
            counterexample=None if counter is None else counter.reshape(self.input_shape),
            argmin=argmin,
            optima=optima,
            seconds=time.perf_counter() - start,
        )
