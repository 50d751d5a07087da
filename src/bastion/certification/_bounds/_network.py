"""The traced network and its bound algorithms: IBP (Gowal et al. 2018), CROWN (Zhang et al.
2018), CROWN-IBP (Zhang et al. 2020) and alpha-CROWN (Xu et al. 2021)."""

from __future__ import annotations

import torch
from torch import nn

from bastion.certification._bounds._domain import InputDomain, concretize_lower
from bastion.certification._bounds._graph import GraphNode, trace
from bastion.certification._bounds._ops import Bounds, ReLU
from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["BoundNetwork"]


class BoundNetwork:
    """A torch module traced once into bound operators, with IBP and CROWN bounds.

    Parameters
    ----------
    module : torch.nn.Module
        Maps raw inputs ``(N, *input_shape)`` to logits ``(N, K)``. Its parameters are read
        live at each call, so training the module changes the bounds (and bounds are
        differentiable w.r.t. the parameters). Its train/eval mode never matters: BatchNorm
        always uses its running statistics (eval semantics) and Dropout is the identity.
    input_shape : tuple of int
    owner : str
        Named in errors.

    Raises
    ------
    ModelError
        The module uses a layer without a bound rule (named, with the supported ones).
    """

    def __init__(
        self, module: nn.Module, input_shape: tuple[int, ...], owner: str = "BoundNetwork"
    ) -> None:
        self.module = module
        self.input_shape = tuple(int(s) for s in input_shape)
        self.owner = owner
        self.nodes: list[GraphNode] = trace(module, self.input_shape, owner)
        n = len(self.nodes)
        users: list[list[int]] = [[] for _ in range(n)]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                users[j].append(i)
        #: Nodes whose bounds the relaxations need (inputs of ReLU / MaxPool).
        self.pre_nonlinear = sorted(
            {
                j
                for node in self.nodes
                if node.op is not None and node.op.nonlinear
                for j in node.inputs
            }
        )
        # Where IBP is exact on a box: the node is the input mapped through elementwise
        # affine operators and at most one operator that mixes elements (Linear, Conv2d,
        # AvgPool2d, Add), with no relaxation on the way; CROWN cannot improve on it there.
        mixing: list[int] = [0] * n
        relaxed: list[bool] = [False] * n
        for i, node in enumerate(self.nodes):
            if node.op is None:
                continue
            mixing[i] = max((mixing[j] for j in node.inputs), default=0) + int(
                not node.op.elementwise
            )
            relaxed[i] = node.op.nonlinear or any(relaxed[j] for j in node.inputs)
        self._ibp_exact = [not relaxed[i] and mixing[i] <= 1 for i in range(n)]
        self._relu_only = [
            bool(users[i]) and all(isinstance(self.nodes[u].op, ReLU) for u in users[i])
            for i in range(n)
        ]

    # ----------------------------------------------------------------- basics

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[-1].shape

    def _param(self) -> torch.Tensor | None:
        return next(iter(self.module.parameters()), None)

    def _prepare(self, domain: InputDomain) -> InputDomain:
        p = self._param()
        if p is None:
            return domain
        if domain.center.dtype == p.dtype and domain.center.device == p.device:
            return domain
        cast = lambda t: t.to(dtype=p.dtype, device=p.device)  # noqa: E731
        return InputDomain(
            cast(domain.lower),
            cast(domain.upper),
            cast(domain.center),
            cast(domain.eps),
            domain.norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output with eval semantics, computed by the bound operators."""
        vals: list[torch.Tensor] = []
        for node in self.nodes:
            if node.op is None:
                vals.append(x)
            else:
                vals.append(node.op.forward(*[vals[j] for j in node.inputs]))
        return vals[-1]

    # ----------------------------------------------------------------- IBP

    def interval(self, domain: InputDomain) -> Bounds:
        """Interval bounds (IBP, Gowal et al. 2018) of the output over the domain's box.

        Differentiable w.r.t. the module's parameters.

        Returns
        -------
        lower, upper : torch.Tensor, shape (N, *output_shape)
        """
        domain = self._prepare(domain)
        return self._all_bounds(domain, "ibp")[len(self.nodes) - 1]

    # ----------------------------------------------------------------- CROWN

    def _all_bounds(self, domain: InputDomain, intermediate: str) -> list[Bounds]:
        """Bounds of every node in order: IBP from the tightest bounds of the inputs, and for
        the inputs of relaxations with ``intermediate="crown"`` also CROWN's (backward from
        that node), keeping the tighter of the two per neuron (both are sound).

        CROWN runs only where it can help: on affine nodes (a ReLU's output bounds follow from
        its tightened input), not on a box where the node is an affine function of the input
        (IBP is then exact), and, for nodes read by ReLUs only, on the neurons that some
        sample of the batch has unstable under IBP."""
        return self._bounds_with(domain, intermediate)

    def _bounds_with(
        self,
        domain: InputDomain,
        intermediate: str,
        *,
        slopes: dict[int, dict[int, torch.Tensor]] | None = None,
        rows: dict[int, torch.Tensor] | None = None,
        previous: list[Bounds] | None = None,
    ) -> list[Bounds]:
        """:meth:`_all_bounds` with optimised lower ReLU slopes for each tightened node
        (``slopes[node]``: per ReLU, ``(N, 2 rows, *shape)``), fixed row selections
        (``rows``, filled in when empty) and earlier sound bounds to intersect with."""
        bounds: list[Bounds] = []
        pre = set(self.pre_nonlinear)
        for i, node in enumerate(self.nodes):
            if node.op is None:
                bounds.append((domain.lower, domain.upper))
                continue
            lo, up = node.op.interval(*[bounds[j] for j in node.inputs])
            exact_box = not domain.is_l2 and self._ibp_exact[i]
            if intermediate == "crown" and i in pre and not exact_box and not node.op.nonlinear:
                slope = slopes.get(i) if slopes is not None else None
                lo, up = self._tighten(i, lo, up, bounds, domain, slope, rows)
            if previous is not None:
                lo, up = torch.maximum(lo, previous[i][0]), torch.minimum(up, previous[i][1])
            bounds.append((lo, up))
        return bounds

    def _tighten(
        self,
        i: int,
        lo: torch.Tensor,
        up: torch.Tensor,
        bounds: list[Bounds],
        domain: InputDomain,
        slopes: dict[int, torch.Tensor] | None = None,
        rows_of: dict[int, torch.Tensor] | None = None,
    ) -> Bounds:
        """``(lo, up)`` intersected with CROWN's bounds of node ``i``."""
        n = lo.shape[0]
        flat_lo, flat_up = lo.reshape(n, -1), up.reshape(n, -1)
        if rows_of is not None and i in rows_of:
            rows = rows_of[i]
        elif self._relu_only[i]:
            rows = torch.nonzero(((flat_lo < 0) & (flat_up > 0)).any(0)).flatten()
        else:
            rows = torch.arange(flat_lo.shape[1], device=lo.device)
        if rows_of is not None:
            rows_of[i] = rows
        m = int(rows.numel())
        if m == 0:
            return lo, up
        shape = self.nodes[i].shape
        eye = torch.zeros((m, flat_lo.shape[1]), dtype=lo.dtype, device=lo.device)
        eye[torch.arange(m, device=lo.device), rows] = 1.0
        a = torch.cat([eye, -eye], 0).reshape(1, 2 * m, *shape).expand(n, -1, *shape)
        a_in, bias = self._backward(i, a, bounds, slopes)
        lb = concretize_lower(a_in, bias, domain)
        new_lo = flat_lo.clone()
        new_up = flat_up.clone()
        new_lo[:, rows] = torch.maximum(flat_lo[:, rows], lb[:, :m])
        new_up[:, rows] = torch.minimum(flat_up[:, rows], -lb[:, m:])
        return new_lo.reshape(lo.shape), new_up.reshape(up.shape)

    def _backward(
        self,
        start: int,
        a: torch.Tensor,
        bounds: list[Bounds],
        slopes: dict[int, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagate the coefficients ``a`` ``(N, S, *shape of start)`` back to the input:
        ``a @ node_start >= a_in @ x + bias`` over the domain. Coefficients of a node used
        twice (fan-out) accumulate."""
        pending: dict[int, torch.Tensor] = {start: a}
        n, s = a.shape[0], a.shape[1]
        bias: torch.Tensor = torch.zeros((n, s), dtype=a.dtype, device=a.device)
        a_in: torch.Tensor | None = None
        for i in range(start, -1, -1):
            coef = pending.pop(i, None)
            if coef is None:
                continue
            node = self.nodes[i]
            if node.op is None:
                a_in = coef
                continue
            slope = slopes.get(i) if slopes is not None else None
            ins, b = node.op.backward(coef, [bounds[j] for j in node.inputs], node.shape, slope)
            if not isinstance(b, float):
                bias = bias + b
            for j, aj in zip(node.inputs, ins, strict=True):
                pending[j] = pending[j] + aj if j in pending else aj
        if a_in is None:
            a_in = torch.zeros((n, s, *self.input_shape), dtype=a.dtype, device=a.device)
        return a_in, bias

    def _spec(self, spec: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        out_shape = self.output_shape
        k = 1
        for d in out_shape:
            k *= d
        if spec is None:
            eye = torch.eye(k, dtype=like.dtype, device=like.device)
            return eye.unsqueeze(0).expand(n, k, k)
        spec = torch.as_tensor(spec).to(dtype=like.dtype, device=like.device)
        if spec.ndim == 2:
            spec = spec.unsqueeze(0).expand(n, *spec.shape)
        spec = spec.reshape(spec.shape[0], spec.shape[1], -1)
        if spec.ndim != 3 or spec.shape[0] != n or spec.shape[2] != k:
            raise InputError(
                f"{self.owner}: spec must have shape (S, {k}) or ({n}, S, {k}); got "
                f"{tuple(spec.shape)}."
            )
        return spec

    def crown(
        self,
        domain: InputDomain,
        spec: torch.Tensor | None = None,
        intermediate: str = "crown",
        alpha: bool = False,
        *,
        alpha_iter: int = 20,
        alpha_lr: float = 0.1,
        alpha_intermediate: bool = True,
    ) -> Bounds:
        """Bounds of ``spec @ output`` by CROWN's backward linear relaxation.

        Parameters
        ----------
        domain : InputDomain
        spec : torch.Tensor, shape (N, S, K) or (S, K), optional
            Linear functions of the (flattened) output to bound; ``None``: the output itself.
        intermediate : {"crown", "ibp"}
            How the pre-activation bounds of the relaxations are found: by CROWN itself
            (backward from each layer, in order; the tighter of CROWN and IBP per neuron), or
            by IBP (CROWN-IBP, Zhang et al. 2020: CROWN only from the output). With "crown" the
            final bounds are also intersected with IBP's, so they are never looser.
        alpha : bool
            Optimise the lower ReLU slopes of the final pass (alpha-CROWN, Xu et al. 2021):
            one slope per neuron, sample and spec row, projected Adam ascent on the bound,
            initialised at CROWN's slopes, keeping each bound's best slopes (never looser than
            CROWN). With ``intermediate="crown"`` the slopes of the intermediate bounds'
            backward passes are optimised jointly (the intermediate bounds recomputed each
            step and kept at their tightest).
        alpha_iter, alpha_lr : int, float
            Adam steps and learning rate of alpha-CROWN.
        alpha_intermediate : bool
            ``False``: optimise the final pass's slopes only, over CROWN's intermediate
            bounds (faster, looser).

        Returns
        -------
        lower, upper : torch.Tensor, shape (N, S) (or (N, *output_shape) when spec is None)
            Differentiable w.r.t. the module's parameters.
        """
        if intermediate not in ("crown", "ibp"):
            raise InvalidParameterError(
                f"The 'intermediate' parameter of {self.owner} must be one of {{'crown', 'ibp'}}. "
                f"Got {intermediate!r} instead."
            )
        domain = self._prepare(domain)
        n = len(domain)
        bounds = self._all_bounds(domain, intermediate)
        c = self._spec(spec, n, domain.center)
        s = c.shape[1]
        out = len(self.nodes) - 1
        a = torch.cat([c, -c], 1).reshape(n, 2 * s, *self.output_shape)
        if alpha:
            lb = self._alpha_lower(
                domain, a, bounds, alpha_iter, alpha_lr, intermediate, alpha_intermediate
            )
        else:
            a_in, bias = self._backward(out, a, bounds, None)
            lb = concretize_lower(a_in, bias, domain)
        lo, up = lb[:, :s], -lb[:, s:]
        if intermediate == "crown":
            o_lo, o_up = bounds[out]
            o_lo, o_up = o_lo.reshape(n, 1, -1), o_up.reshape(n, 1, -1)
            i_lo = (c.clamp(min=0) * o_lo + c.clamp(max=0) * o_up).sum(-1)
            i_up = (c.clamp(min=0) * o_up + c.clamp(max=0) * o_lo).sum(-1)
            lo, up = torch.maximum(lo, i_lo), torch.minimum(up, i_up)
        if spec is None:
            lo, up = lo.reshape(n, *self.output_shape), up.reshape(n, *self.output_shape)
        return lo, up

    def _alpha_lower(
        self,
        domain: InputDomain,
        a: torch.Tensor,
        bounds: list[Bounds],
        alpha_iter: int,
        alpha_lr: float,
        intermediate: str,
        joint: bool,
    ) -> torch.Tensor:
        """alpha-CROWN's lower bounds of ``a @ output``: projected Adam on the lower ReLU
        slopes, starting from CROWN's, keeping each bound's best value.

        With ``joint`` (and CROWN intermediate bounds), the slopes of every intermediate
        bound's backward pass are optimised too, and the intermediate bounds recomputed at
        each step (kept at their tightest so far: each is sound), as Xu et al. (2021) do;
        otherwise only the final pass's slopes move, over fixed intermediate bounds.
        """
        out = len(self.nodes) - 1
        n, s2 = a.shape[0], a.shape[1]
        relus = [i for i, nd in enumerate(self.nodes) if isinstance(nd.op, ReLU)]
        joint = joint and intermediate == "crown"
        rows: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            start_bounds = (
                self._bounds_with(domain, intermediate, rows=rows)
                if joint
                else [(lo.detach(), up.detach()) for lo, up in bounds]
            )

        def initial(before: int, count: int) -> dict[int, torch.Tensor]:
            """CROWN's adaptive slopes of the ReLUs before node ``before``, per row."""
            out_slopes = {}
            for r in relus:
                if r >= before:
                    continue
                lo, up = start_bounds[self.nodes[r].inputs[0]]
                low = ReLU.relaxation(lo, up)[2]
                out_slopes[r] = low.unsqueeze(1).expand(n, count, *low.shape[1:]).clone()
            return out_slopes

        final = initial(out, s2)
        inter = {i: initial(i, 2 * int(r.numel())) for i, r in rows.items() if r.numel()}
        params = [t.requires_grad_(True) for t in final.values()]
        params += [t.requires_grad_(True) for d in inter.values() for t in d.values()]
        if not params:
            a_in, bias = self._backward(out, a, bounds, None)
            return concretize_lower(a_in, bias, domain)
        a_fixed = a.detach()
        dom = InputDomain(
            domain.lower.detach(),
            domain.upper.detach(),
            domain.center.detach(),
            domain.eps.detach(),
            domain.norm,
        )
        best = torch.full((n, s2), float("-inf"), dtype=a.dtype, device=a.device)
        best_final = {i: t.detach().clone() for i, t in final.items()}
        current = start_bounds
        # Adam (Kingma and Ba 2015), written out: torch.optim's first import costs seconds.
        moments = [(torch.zeros_like(t), torch.zeros_like(t)) for t in params]
        beta1, beta2 = 0.9, 0.999
        with torch.enable_grad():
            for step in range(alpha_iter + 1):
                if joint:
                    current = self._bounds_with(
                        dom, intermediate, slopes=inter, rows=rows, previous=start_bounds
                    )
                a_in, bias = self._backward(out, a_fixed, current, final)
                lb = concretize_lower(a_in, bias, dom)
                with torch.no_grad():
                    better = lb > best
                    best = torch.where(better, lb, best)
                    for i, t in final.items():
                        mask = better.reshape(n, s2, *([1] * (t.ndim - 2)))
                        best_final[i] = torch.where(mask, t, best_final[i])
                    if joint:  # the tightest intermediate bounds so far (all sound)
                        start_bounds = [(lo.detach(), up.detach()) for lo, up in current]
                if step == alpha_iter:
                    break
                grads = torch.autograd.grad(-lb.sum(), params, allow_unused=True)
                with torch.no_grad():
                    for p, g, (m1, m2) in zip(params, grads, moments, strict=True):
                        if g is None:
                            continue
                        m1.mul_(beta1).add_(g, alpha=1 - beta1)
                        m2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                        hat1 = m1 / (1 - beta1 ** (step + 1))
                        hat2 = m2 / (1 - beta2 ** (step + 1))
                        p.sub_(alpha_lr * hat1 / (hat2.sqrt() + 1e-8)).clamp_(0.0, 1.0)
        # One differentiable pass, over the tightest intermediate bounds with each row's best
        # final slopes; the result is the larger of it and the best bound seen (both sound),
        # with gradients through this pass.
        final_bounds = (
            [
                (torch.maximum(lo, blo), torch.minimum(up, bup))
                for (lo, up), (blo, bup) in zip(bounds, start_bounds, strict=True)
            ]
            if joint
            else bounds
        )
        a_in, bias = self._backward(out, a, final_bounds, best_final)
        lb = concretize_lower(a_in, bias, domain)
        return lb + (best - lb).clamp(min=0).detach()

    def __repr__(self) -> str:
        ops = ", ".join(type(nd.op).__name__ for nd in self.nodes if nd.op is not None)
        return f"BoundNetwork({self.owner}: input {self.input_shape} -> {ops})"
