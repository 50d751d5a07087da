"""Functionally equivalent extraction of a one-hidden-layer ReLU network (Jagielski et al.)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bastion._params import Parametrized
from bastion._tensor import resolve_random_state
from bastion._validation import RANDOM_STATE, Constraint, Interval, Satisfies
from bastion.estimators.base import require_capabilities
from bastion.exceptions import BastionError, InvalidParameterError, ModelError

__all__ = ["FunctionallyEquivalentExtraction"]


def _same(a: torch.Tensor, c: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """Do two slope vectors agree in every output, within ``thr``?"""
    return ((a - c).abs() <= thr).all(-1)


def _is_victim(value: Any) -> bool:
    return callable(value) or hasattr(value, "predict_tensor")


def _victim_scores(raw: Any, n: int, owner: str) -> torch.Tensor:
    """A callable victim's answer to ``n`` queries as finite float64 scores ``(n, m)``; a
    :class:`~bastion.exceptions.ModelError` for anything else."""
    try:
        out = torch.as_tensor(raw.detach() if isinstance(raw, torch.Tensor) else np.asarray(raw))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ModelError(
            f"{owner}: the victim returned {type(raw).__name__} values that are not numeric "
            f"scores ({str(err).splitlines()[0][:120]})."
        ) from None
    if out.dtype == torch.bool or out.is_complex():
        raise ModelError(f"{owner}: the victim returned {out.dtype} values, not real scores.")
    if out.ndim not in (1, 2) or out.shape[0] != n:
        raise ModelError(
            f"{owner}: the victim returned shape {tuple(out.shape)} for {n} queries; expected "
            f"({n}, m) or ({n},) scores."
        )
    out = out.to(torch.float64).reshape(n, -1)
    if not bool(torch.isfinite(out).all()):
        raise ModelError(f"{owner}: the victim returned NaN or infinite scores.")
    return out


class FunctionallyEquivalentExtraction(Parametrized):
    """Functionally equivalent extraction (Jagielski et al. 2020) of a 1-hidden-layer ReLU net.

    The victim computes ``f(x) = W2 relu(W1 x + b1) + b2``. Along any line ``x0 + t v``, ``f``
    is piecewise linear, with a kink where a hidden unit's pre-activation crosses zero (a
    *critical point*). The attack

    1. queries ``f`` on a grid along random lines and locates each kink exactly, by
       intersecting the linear pieces on either side (a grid cell whose neighbours are
       linear holds one kink; the location is checked with one more query);
    2. at each critical point, measures the gradient of ``f`` on both sides by finite
       differences (``2 (d + 1)`` queries): the jump is ``W2[:, j] w_j^T``, which gives the
       unit's weight row up to scale, and the critical point gives its bias;
    3. fits the output layer by least squares on random queries, with each unit's
       pre-activation as extra features: a unit recovered with the wrong sign shows up as a
       linear term equal to minus its output weight (``relu(z) = relu(-z) + z``), which fixes
       the sign; a final fit gives ``W2`` and ``b2``.

    The result equals the victim up to a permutation of the hidden units and a positive
    scaling of each (rows of ``W1_`` have unit norm; ``W2_`` absorbs the scale).

    Threat model: black-box, score-based, with the victim's raw output scores (logits). A
    predict-only estimator is used through centred log-probabilities ``log p - mean(log p)``,
    which are the logits up to a per-sample shift (softmax-equivalent). Precision needs the
    victim to compute in float64; in float32 raise ``tol``.

    Parameters
    ----------
    victim : estimator or callable
        A bastion estimator (its logits are used when it has the ``logits`` capability, else
        its probabilities) or a function ``f(x) -> scores`` on float64 tensors of shape
        ``(N, input_dim)`` returning ``(N, m)`` or ``(N,)``.
    nb_neurons : int
        Number of hidden units (at most the input dimension, which makes the signs
        identifiable from the linear terms).
    input_dim : int, optional
        Input dimension; required for a callable victim (an estimator's is read from it).
    grid_size : int, default 256
        Queries per line.
    lines_per_round : int, default 4
        Lines searched per round; rounds continue until ``nb_neurons`` units are found.
    max_rounds : int, default 10
    line_length : float, default 10.0
        Lines run over ``t`` in ``[-line_length, line_length]`` from starts drawn from
        ``N(0, scale^2)``, in directions of unit norm.
    scale : float, default 1.0
        Spread of the line starts and of the points the output layer is fitted on.
    tol : float, default 1e-7
        Relative tolerance of "two slopes are equal".
    random_state : None, int or torch.Generator

    Attributes
    ----------
    W1_, b1_, W2_, b2_ : torch.Tensor (float64)
        Recovered weights: ``W1_`` is ``(h, d)`` with unit rows, ``W2_`` is ``(m, h)``.
    model_ : torch.nn.Sequential
        ``Linear(d, h), ReLU(), Linear(h, m)`` holding the recovered weights.
    queries_ : int
        Victim queries spent.
    residual_ : float
        Largest absolute error of the recovered model on the output-layer fit points.

    References
    ----------
    Jagielski, Carlini, Berthelot, Kurakin and Papernot, "High accuracy and high fidelity
    extraction of neural networks", USENIX Security 2020. https://arxiv.org/abs/1909.01838

    Examples
    --------
    >>> import torch
    >>> from bastion.attacks.extraction import FunctionallyEquivalentExtraction
    >>> g = torch.Generator().manual_seed(0)
    >>> W1 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    >>> b1 = torch.randn(4, generator=g, dtype=torch.float64)
    >>> W2 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    >>> f = lambda x: torch.relu(x @ W1.T + b1) @ W2.T
    >>> fee = FunctionallyEquivalentExtraction(f, nb_neurons=4, input_dim=6, random_state=0)
    >>> model = fee.extract()
    >>> x = torch.randn(5, 6, dtype=torch.float64)
    >>> bool(torch.allclose(model(x), f(x), atol=1e-6))
    True
    """

    _renamed: ClassVar[dict[str, Any]] = {"num_neurons": "nb_neurons"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "victim": [Satisfies(_is_victim, "a bastion estimator or a callable f(x) -> scores")],
        "nb_neurons": [Interval(int, 1, None)],
        "input_dim": [Interval(int, 1, None), Satisfies(lambda v: v is None, "None")],
        "grid_size": [Interval(int, 8, None)],
        "lines_per_round": [Interval(int, 1, None)],
        "max_rounds": [Interval(int, 1, None)],
        "line_length": [Interval(float, 0, None, closed="neither")],
        "scale": [Interval(float, 0, None, closed="neither")],
        "tol": [Interval(float, 0, None, closed="neither")],
        "random_state": RANDOM_STATE,
    }

    def __init__(
        self,
        victim: Any,  # an estimator with predict, or a callable returning scores
        *,
        nb_neurons: int,
        input_dim: int | None = None,
        grid_size: int = 256,
        lines_per_round: int = 4,
        max_rounds: int = 10,
        line_length: float = 10.0,
        scale: float = 1.0,
        tol: float = 1e-7,
        random_state: Any = None,
    ) -> None:
        self.victim = victim
        self.nb_neurons = nb_neurons
        self.input_dim = input_dim
        self.grid_size = grid_size
        self.lines_per_round = lines_per_round
        self.max_rounds = max_rounds
        self.line_length = line_length
        self.scale = scale
        self.tol = tol
        self.random_state = random_state

    # ------------------------------------------------------------------ oracle

    def _oracle(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
        owner = type(self).__name__
        victim = self.victim
        if hasattr(victim, "predict_tensor"):
            require_capabilities(victim, ["predict"], owner)
            shape = tuple(victim.input_shape)
            d = math.prod(shape)
            use_logits = "logits" in victim.capabilities
            dtype = getattr(victim, "dtype", torch.float32)

            def f(x: torch.Tensor) -> torch.Tensor:
                xin = x.reshape(-1, *shape).to(victim.device, dtype)
                with torch.no_grad():
                    if use_logits:
                        out = victim.logits_tensor(xin).to(torch.float64)
                    else:
                        logp = victim.predict_tensor(xin).to(torch.float64).clamp_min(1e-300)
                        out = logp.log() - logp.log().mean(1, keepdim=True)
                self._calls += x.shape[0]  # counted once answered
                return out

            return f, d
        if self.input_dim is None:
            raise InvalidParameterError(
                f"The 'input_dim' parameter of {owner} must be an int in [1, inf) when the "
                "victim is a callable. Got None instead."
            )

        def g(x: torch.Tensor) -> torch.Tensor:
            try:
                with torch.no_grad():
                    raw = victim(x)
            except BastionError:
                raise
            except Exception as err:
                raise ModelError(
                    f"{owner}: the victim raised {type(err).__name__} on {x.shape[0]} queries: "
                    f"{err}"
                ) from err
            out = _victim_scores(raw, x.shape[0], owner)
            self._calls += x.shape[0]  # counted once answered
            return out

        return g, int(self.input_dim)

    def _spent(self) -> int:
        return self._calls

    # ------------------------------------------------------------------ attack

    def extract(self, x_pool: Any = None) -> Any:
        """Recover the victim's weights; return the recovered model.

        Parameters
        ----------
        x_pool : any, optional
            Ignored: the attack crafts its own queries (accepted so that every extraction
            attack is called the same way).

        Returns
        -------
        TorchClassifier or torch.nn.Sequential
            For an estimator victim, a float64 :class:`TorchClassifier` around :attr:`model_`
            (same ``input_shape``, ``nb_classes`` and ``clip_values``); for a callable,
            :attr:`model_` itself.

        Raises
        ------
        ModelError
            When the victim raises or answers anything but finite scores, one row per query
            (checked for a callable victim as an estimator checks its model), or when fewer
            than ``nb_neurons`` hidden units are found.
        """
        self._validate()
        self._calls = 0
        f, d = self._oracle()
        h = self.nb_neurons
        if h > d:
            raise InvalidParameterError(
                f"The 'nb_neurons' parameter of {type(self).__name__} must be at most the "
                f"input dimension ({d}) for the signs to be identifiable. Got {h} instead."
            )
        gen = resolve_random_state(self.random_state, "cpu")
        try:
            w, b = self._find_units(f, d, gen)
            self.W1_, self.b1_, self.W2_, self.b2_ = self._output_layer(f, w, b, d, gen)
        finally:
            self.queries_ = self._spent()
        model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, self.W2_.shape[0]))
        model = model.to(torch.float64)
        with torch.no_grad():
            for layer, weight, bias in (
                (model[0], self.W1_, self.b1_),
                (model[2], self.W2_, self.b2_),
            ):
                assert isinstance(layer, nn.Linear)
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
        self.model_ = model.eval()
        if hasattr(self.victim, "predict_tensor") and self.W2_.shape[0] >= 2:
            from bastion.estimators import TorchClassifier

            shape = tuple(self.victim.input_shape)
            net = nn.Sequential(nn.Flatten(), model) if len(shape) > 1 else model
            return TorchClassifier(
                net,
                input_shape=shape,
                nb_classes=self.W2_.shape[0],
                clip_values=self.victim.clip_values,
            )
        return model

    def _find_units(
        self, f: Callable[[torch.Tensor], torch.Tensor], d: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Critical points along random lines -> unit weight rows and biases."""
        dt64 = torch.float64
        found_w: list[torch.Tensor] = []
        found_b: list[torch.Tensor] = []
        G, L, T = self.grid_size, self.lines_per_round, float(self.line_length)
        t = torch.linspace(-T, T, G, dtype=dt64)
        step = float(t[1] - t[0])
        for _ in range(self.max_rounds):
            x0 = self.scale * torch.randn(L, d, generator=gen, dtype=dt64)
            v = torch.randn(L, d, generator=gen, dtype=dt64)
            v = v / v.norm(dim=1, keepdim=True)
            pts = x0[:, None] + t[None, :, None] * v[:, None]
            F = f(pts.reshape(L * G, d)).reshape(L, G, -1)
            s = (F[:, 1:] - F[:, :-1]) / step  # slope of each cell, (L, G-1, m)
            thr = self.tol * (s.abs().amax(dim=(1, 2), keepdim=True) + 1.0)
            # cell i holds one kink: cells i-2, i-1 agree, cells i+1, i+2 agree, and the two
            # sides differ
            ok = _same(s[:, :-4], s[:, 1:-3], thr) & _same(s[:, 3:-1], s[:, 4:], thr)
            ok &= ~_same(s[:, 1:-3], s[:, 3:-1], thr)
            li, ci = ok.nonzero(as_tuple=True)
            if li.numel() == 0:
                continue
            cell = ci + 2
            sl, sr = s[li, cell - 1], s[li, cell + 1]
            ch = (sl - sr).abs().argmax(1)
            ar = torch.arange(li.numel())
            fl, fr = F[li, cell, ch], F[li, cell + 1, ch]
            tl, tr = t[cell], t[cell + 1]
            slc, src = sl[ar, ch], sr[ar, ch]
            tk = (fr - fl - src * tr + slc * tl) / (slc - src)
            inside = (tk >= tl) & (tk <= tr)
            li, tk, sl, fl, tl = li[inside], tk[inside], sl[inside], F[li, cell][inside], tl[inside]
            if li.numel() == 0:
                continue
            xk = x0[li] + tk[:, None] * v[li]
            # one query checks the kink: f there must lie on the left piece
            fk = f(xk)
            pred = fl + sl * (tk - tl)[:, None]
            good = ((fk - pred).abs() <= 1e3 * self.tol * (fk.abs() + 1.0)).all(1)
            xk, vk = xk[good], v[li[good]]
            if xk.shape[0] == 0:
                continue
            w, b = self._unit_at(f, xk, vk, step, d)
            for wi, bi in zip(w, b, strict=True):
                known = any(
                    float((wi - w0).abs().max()) < 1e-4 and abs(float(bi - b0)) < 1e-4
                    for w0, b0 in zip(found_w, found_b, strict=True)
                )
                if not known:
                    found_w.append(wi)
                    found_b.append(bi)
            if len(found_w) >= self.nb_neurons:
                break
        if len(found_w) < self.nb_neurons:
            raise ModelError(
                f"{type(self).__name__} found {len(found_w)} of {self.nb_neurons} hidden "
                "units; raise max_rounds or line_length (or check nb_neurons, and that the "
                "victim is a one-hidden-layer ReLU network)."
            )
        if len(found_w) > self.nb_neurons:
            warnings.warn(
                f"{type(self).__name__} found {len(found_w)} candidate units for "
                f"nb_neurons={self.nb_neurons}; keeping the first ones.",
                RuntimeWarning,
                stacklevel=3,
            )
        h = self.nb_neurons
        return torch.stack(found_w[:h]), torch.stack(found_b[:h])

    def _unit_at(
        self,
        f: Callable[[torch.Tensor], torch.Tensor],
        xk: torch.Tensor,
        v: torch.Tensor,
        step: float,
        d: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight row (unit norm, canonical sign) and bias of the unit critical at each xk."""
        eps = step / 4
        delta = eps * 1e-3
        c = xk.shape[0]
        sides = torch.stack([xk + eps * v, xk - eps * v], 1)  # (c, 2, d)
        probes = sides[:, :, None, :] + torch.cat(
            [torch.zeros(1, d, dtype=xk.dtype), delta * torch.eye(d, dtype=xk.dtype)]
        )  # (c, 2, d+1, d)
        out = f(probes.reshape(-1, d)).reshape(c, 2, d + 1, -1)
        grads = (out[:, :, 1:] - out[:, :, :1]) / delta  # (c, 2, d, m)
        jump = (grads[:, 0] - grads[:, 1]).transpose(1, 2)  # (c, m, d)
        row = jump.norm(dim=2).argmax(1)
        w = jump[torch.arange(c), row]
        w = w / w.norm(dim=1, keepdim=True)
        # canonical sign (largest component positive) so duplicates compare equal
        lead = w.gather(1, w.abs().argmax(1, keepdim=True))
        w = w * lead.sign()
        return w, -(w * xk).sum(1)

    def _output_layer(
        self,
        f: Callable[[torch.Tensor], torch.Tensor],
        w: torch.Tensor,
        b: torch.Tensor,
        d: int,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h = w.shape[0]
        n = 4 * (2 * h + 1)
        x = self.scale * torch.randn(n, d, generator=gen, dtype=torch.float64)
        y = f(x)
        z = x @ w.T + b
        ones = torch.ones(n, 1, dtype=torch.float64)
        theta = torch.linalg.lstsq(torch.cat([z.relu(), z, ones], 1), y).solution
        alpha, beta = theta[:h], theta[h : 2 * h]
        # relu(z) = relu(-z) + z: a unit recovered with the wrong sign leaves beta = -alpha
        flipped = (beta + alpha).norm(dim=1) < beta.norm(dim=1)
        sign = torch.where(flipped, -1.0, 1.0).to(torch.float64)
        w, b = w * sign[:, None], b * sign
        z = x @ w.T + b
        theta = torch.linalg.lstsq(torch.cat([z.relu(), ones], 1), y).solution
        self.residual_ = float((torch.cat([z.relu(), ones], 1) @ theta - y).abs().max())
        return w, b, theta[:h].T.contiguous(), theta[h].contiguous()
