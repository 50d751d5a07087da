"""The mixed-integer program of :class:`~bastion.attacks.evasion.TreeEnsembleMILPAttack`
(Kantchelian, Tygar and Joseph 2016): built once per ensemble, solved per sample by HiGHS."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bastion.estimators._trees import Tree, TreeEnsemble


def _into_interval(
    x0: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, left_if: str
) -> torch.Tensor:
    """The point of the cell nearest ``x0`` (per feature), representable in ``x0``'s dtype.

    The cell is ``lower < x <= upper`` (``left_if="le"``) or ``lower <= x < upper`` (``"lt"``);
    bounds are float64, and the open side is met by the next representable value.
    """
    lo = lower.to(x0.dtype)
    hi = upper.to(x0.dtype)
    inf = torch.full_like(lo, torch.inf)
    if left_if == "le":  # x > lower, x <= upper
        lo = torch.where(lo.double() <= lower, torch.nextafter(lo, inf), lo)
        hi = torch.where(hi.double() > upper, torch.nextafter(hi, -inf), hi)
    else:  # x >= lower, x < upper
        lo = torch.where(lo.double() < lower, torch.nextafter(lo, inf), lo)
        hi = torch.where(hi.double() >= upper, torch.nextafter(hi, -inf), hi)
    return torch.minimum(torch.maximum(x0, lo), hi)


class Program:
    """The parts of Kantchelian's program that do not depend on the sample."""

    def __init__(self, ens: TreeEnsemble) -> None:
        from scipy import sparse

        self.ens = ens
        # Predicates: the distinct thresholds of each feature, in increasing order.
        pairs: dict[int, set[float]] = {}
        for tree in ens.trees:
            for f, t in zip(tree.feature, tree.threshold, strict=True):
                if f >= 0:
                    pairs.setdefault(int(f), set()).add(float(t))
        feats, thrs = [], []
        for f in sorted(pairs):
            for t in sorted(pairs[f]):
                feats.append(f)
                thrs.append(t)
        self.pred_feature = np.asarray(feats, dtype=np.int64)
        self.pred_threshold = np.asarray(thrs, dtype=np.float64)
        index = {(f, t): q for q, (f, t) in enumerate(zip(feats, thrs, strict=True))}
        n_pred = len(feats)

        leaf_offset = n_pred
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        lo_b: list[float] = []
        hi_b: list[float] = []
        r = 0
        leaf_values = []

        def add(c: list[int], v: list[float], lo: float, hi: float) -> None:
            nonlocal r
            rows.append(np.full(len(c), r))
            cols.append(np.asarray(c))
            vals.append(np.asarray(v, dtype=np.float64))
            lo_b.append(lo)
            hi_b.append(hi)
            r += 1

        # Ordering of each feature's predicates.
        for q in range(n_pred - 1):
            if feats[q] == feats[q + 1]:
                add([q, q + 1], [1.0, -1.0], -np.inf, 0.0)
        for tree in ens.trees:
            leaves = tree.leaves
            col_of = {int(n): leaf_offset + j for j, n in enumerate(leaves)}
            leaf_values.append(tree.value[leaves])
            add(list(col_of.values()), [1.0] * len(leaves), 1.0, 1.0)
            below = _leaves_below(tree)
            for node in np.flatnonzero(tree.feature >= 0):
                q = index[(int(tree.feature[node]), float(tree.threshold[node]))]
                left = [col_of[n] for n in below[int(tree.left[node])]]
                right = [col_of[n] for n in below[int(tree.right[node])]]
                add([*left, q], [1.0] * len(left) + [-1.0], -np.inf, 0.0)
                add([*right, q], [1.0] * len(right) + [1.0], -np.inf, 1.0)
            leaf_offset += len(leaves)
        self.n_pred = n_pred
        self.n_leaves = leaf_offset - n_pred
        self.n_vars = leaf_offset + 1  # the last variable is the L-inf distance d
        self.leaf_values = np.concatenate(leaf_values, axis=0)  # (L, K)
        self.static = sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(r, self.n_vars),
        )
        self.static_lo = np.asarray(lo_b)
        self.static_hi = np.asarray(hi_b)

    def solve(
        self,
        x: torch.Tensor,
        y: int,
        *,
        targeted: bool,
        l1: bool,
        margin: float,
        clip: tuple[float, float] | None,
        frozen: np.ndarray | None,
        time_limit: float,
    ) -> tuple[torch.Tensor | None, float, bool]:
        """The nearest adversarial point of one sample, its distance, and whether the solver
        proved it minimal."""
        from scipy import sparse
        from scipy.optimize import Bounds, LinearConstraint, milp

        ens = self.ens
        dtype = torch.float32 if ens.input_dtype == "float32" else torch.float64
        x0 = x.to(dtype).double().cpu().numpy()
        f, t = self.pred_feature, self.pred_threshold
        xf = x0[f]
        left_now = xf <= t if ens.left_if == "le" else xf < t  # the predicates' current values
        cost = np.abs(t - xf)

        # Variable bounds: predicates the box or the mask fix, leaves in [0, 1], d >= 0.
        p_lo = np.zeros(self.n_pred)
        p_hi = np.ones(self.n_pred)
        if clip is not None:
            lo, hi = clip
            can_right = t < hi if ens.left_if == "le" else t <= hi
            can_left = t >= lo if ens.left_if == "le" else t > lo
            p_lo[~can_right] = 1.0
            p_hi[~can_left] = 0.0
        if frozen is not None:
            fixed = frozen[f]
            p_lo[fixed] = p_hi[fixed] = left_now[fixed].astype(np.float64)
        if np.any(p_lo > p_hi):  # pragma: no cover - x0 lies in the box
            return None, float("inf"), True
        lb = np.concatenate([p_lo, np.zeros(self.n_leaves), [0.0]])
        ub = np.concatenate([p_hi, np.ones(self.n_leaves), [np.inf]])
        integrality = np.concatenate([np.ones(self.n_pred), np.zeros(self.n_leaves + 1)])

        # The distance. L-inf: d >= cost * [threshold crossed], one row per predicate.
        c = np.zeros(self.n_vars)
        const = 0.0
        rows: list[tuple[Any, Any, Any]] = []
        if l1:
            ub[-1] = 0.0
            gap = _telescoped_gaps(f, t, xf, left_now)
            # crossing a threshold above x (left_now) sets p to 0: cost gap * (1 - p)
            c[: self.n_pred] = np.where(left_now, -gap, gap)
            const = float(gap[left_now].sum())
        else:
            c[-1] = 1.0
            q = np.arange(self.n_pred)
            coef_p = np.where(left_now, cost, -cost)
            dist_rows = sparse.csr_matrix(
                (
                    np.concatenate([np.ones(self.n_pred), coef_p]),
                    (
                        np.concatenate([q, q]),
                        np.concatenate([np.full(self.n_pred, self.n_vars - 1), q]),
                    ),
                ),
                shape=(self.n_pred, self.n_vars),
            )
            rows.append((dist_rows, np.where(left_now, cost, 0.0), np.full(self.n_pred, np.inf)))

        k = ens.n_classes
        goals = [y] if targeted else [j for j in range(k) if j != y]
        best_point: np.ndarray | None = None
        best = np.inf
        optimal = True
        start = time.monotonic()
        for goal in goals:
            others = [j for j in range(k) if j != goal] if targeted else [y]
            score_rows = []
            score_lo = []
            for other in others:
                row = np.zeros(self.n_vars)
                row[self.n_pred : self.n_pred + self.n_leaves] = (
                    self.leaf_values[:, goal] - self.leaf_values[:, other]
                )
                score_rows.append(row)
                score_lo.append(margin - (ens.base[goal] - ens.base[other]))
            extra: list[tuple[Any, Any, Any]] = [
                (sparse.csr_matrix(np.asarray(score_rows)), np.asarray(score_lo), np.inf)
            ]
            if np.isfinite(best):  # only a better point is of interest
                extra.append((sparse.csr_matrix(c[None, :]), -np.inf, best - const))
            a = sparse.vstack([self.static] + [m for m, _, _ in rows + extra]).tocsr()
            lo_all = np.concatenate(
                [self.static_lo] + [np.broadcast_to(v, (m.shape[0],)) for m, v, _ in rows + extra]
            )
            hi_all = np.concatenate(
                [self.static_hi] + [np.broadcast_to(v, (m.shape[0],)) for m, _, v in rows + extra]
            )
            left = time_limit - (time.monotonic() - start)
            if left <= 0:
                optimal = False
                break
            res = milp(
                c,
                constraints=LinearConstraint(a, lo_all, hi_all),
                integrality=integrality,
                bounds=Bounds(lb, ub),
                options={"time_limit": left, "mip_rel_gap": 0.0, "presolve": True},
            )
            if res.status == 1:  # time or iteration limit
                optimal = False
            if res.x is None:
                continue
            value = float(res.fun) + const
            if value < best:
                best, best_point = value, res.x
        if best_point is None:
            return None, float("inf"), optimal
        point = self._cell_point(x, best_point[: self.n_pred] > 0.5, clip)
        return self._fewer_changes(x, point, y, targeted, margin), best, optimal

    def _adversarial(self, x: torch.Tensor, y: int, targeted: bool, margin: float) -> bool:
        s = self.ens.decision_scores(x.reshape(1, -1))[0]
        rest = torch.cat([s[:y], s[y + 1 :]])
        gap = s[y] - rest.max() if targeted else rest.max() - s[y]
        return bool(gap >= margin - 1e-9)

    def _fewer_changes(
        self, x: torch.Tensor, point: torch.Tensor, y: int, targeted: bool, margin: float
    ) -> torch.Tensor:
        """Put back, one at a time (largest change first), every feature the decision does not
        need: an L-inf optimum leaves the features below the bound free, and the solver may
        move them for nothing. The distance never grows."""
        if not self._adversarial(point, y, targeted, margin):
            return point  # the template's check reports it
        out = point.clone()
        delta = (point - x).abs()
        for f in torch.argsort(delta, descending=True).tolist():
            if delta[f] == 0:
                break
            trial = out.clone()
            trial[f] = x[f]
            if self._adversarial(trial, y, targeted, margin):
                out = trial
        return out

    def _cell_point(
        self, x: torch.Tensor, goes_left: np.ndarray, clip: tuple[float, float] | None
    ) -> torch.Tensor:
        """The point nearest ``x`` in the cell the predicates define, in ``x``'s dtype."""
        n = x.numel()
        lower = np.full(n, -np.inf)
        upper = np.full(n, np.inf)
        if clip is not None:
            lower[:] = np.nextafter(clip[0], -np.inf) if self.ens.left_if == "le" else clip[0]
            upper[:] = clip[1] if self.ens.left_if == "le" else np.nextafter(clip[1], np.inf)
        f, t = self.pred_feature, self.pred_threshold
        np.minimum.at(upper, f[goes_left], t[goes_left])
        np.maximum.at(lower, f[~goes_left], t[~goes_left])
        dev = x.device
        return _into_interval(
            x,
            torch.as_tensor(lower, device=dev),
            torch.as_tensor(upper, device=dev),
            self.ens.left_if,
        )


def _leaves_below(tree: Tree) -> dict[int, list[int]]:
    """For each node, the leaves of its subtree."""
    below: dict[int, list[int]] = {}
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if tree.feature[node] >= 0:
            stack += [int(tree.left[node]), int(tree.right[node])]
    for node in reversed(order):
        if tree.feature[node] < 0:
            below[node] = [node]
        else:
            below[node] = below[int(tree.left[node])] + below[int(tree.right[node])]
    return below


def _telescoped_gaps(
    f: np.ndarray, t: np.ndarray, xf: np.ndarray, left_now: np.ndarray
) -> np.ndarray:
    """The L1 cost of crossing each threshold beyond the previous one: for the thresholds
    above ``x_f`` in increasing order, ``t_1 - x_f, t_2 - t_1, ...``; below, in decreasing
    order, ``x_f - t_1, t_1 - t_2, ...`` (predicates are sorted by feature, then
    threshold)."""
    gap = np.zeros_like(t)
    for feat in np.unique(f):
        idx = np.flatnonzero(f == feat)
        x_val = xf[idx[0]]
        above = idx[left_now[idx]]  # increasing thresholds
        below = idx[~left_now[idx]][::-1]  # decreasing thresholds
        if above.size:
            gap[above] = np.diff(np.concatenate([[x_val], t[above]]))
        if below.size:
            gap[below] = -np.diff(np.concatenate([[x_val], t[below]]))
    return gap
