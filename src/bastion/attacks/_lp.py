"""Lp geometry shared by evasion attacks: norms, steepest-ascent steps, exact projections and
uniform sampling in balls.

Perturbations are tensors ``(B, *input_shape)``; budgets are tensors broadcastable to them, of
shape ``(B, 1, ..., 1)``, so a per-sample ``eps`` costs nothing extra.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bastion.attacks._batch import per_sample as _view

__all__ = [
    "canonical_norm",
    "lp_norm",
    "project_lp",
    "project_lp_box",
    "project_point",
    "random_in_ball",
    "steepest_direction",
]

_BISECTION_STEPS = 40


def canonical_norm(norm: Any) -> str:
    """``"inf"``/``np.inf``/``float('inf')`` -> ``"inf"``; 0, 1, 2 -> ``"0"``, ``"1"``, ``"2"``."""
    if isinstance(norm, str):
        return "inf" if norm.lower() == "inf" else norm
    if isinstance(norm, float) and math.isinf(norm) and norm > 0:
        return "inf"
    return str(int(norm))


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _budget_vector(eps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A budget broadcastable to ``like`` as a vector ``(B,)``."""
    return eps.expand((like.shape[0],) + (1,) * (like.ndim - 1)).reshape(-1)


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm ``(B,)`` of a batch of perturbations."""
    flat = _flat(delta)
    if norm == "inf":
        return flat.abs().amax(dim=1)
    if norm == "2":
        return flat.norm(p=2, dim=1)
    if norm == "1":
        return flat.abs().sum(dim=1)
    if norm == "0":
        return (flat != 0).sum(dim=1).to(delta.dtype)
    raise ValueError(f"unknown norm {norm!r}")


def steepest_direction(
    grad: torch.Tensor,
    norm: str,
    *,
    x: torch.Tensor | None = None,
    clip_values: tuple[float, float] | None = None,
    l1_sparsity: float = 0.99,
) -> torch.Tensor:
    """Unit-norm direction of steepest ascent of a linear function with gradient ``grad``.

    * ``inf``: ``sign(grad)``.
    * ``2``: ``grad / ||grad||_2`` (zero where the gradient is zero).
    * ``1``: the sparse step of Tramer and Boneh (2019): the signs of the coordinates whose
      magnitude is at least the ``l1_sparsity`` quantile, scaled to unit L1 norm. Coordinates
      that sit on the box boundary and whose gradient points outside it are excluded, so the
      step is not wasted on them.
    """
    if norm == "inf":
        return grad.sign()
    if norm == "2":
        n = _view(_flat(grad).norm(p=2, dim=1), grad)
        return grad / n.clamp_min(1e-12)
    if norm == "1":
        g = grad
        if x is not None and clip_values is not None:
            lo, hi = clip_values
            blocked = ((x <= lo) & (g < 0)) | ((x >= hi) & (g > 0))
            g = g.masked_fill(blocked, 0.0)
        mag = _flat(g).abs()
        d = mag.shape[1]
        k = min(d, max(1, math.floor(l1_sparsity * d) + 1))
        thresh = mag.kthvalue(k, dim=1, keepdim=True).values if k < d else mag.amax(1, True)
        chosen = (mag >= thresh) & (mag > 0)
        e = chosen.to(g.dtype) * _flat(g).sign()
        e = e / chosen.sum(dim=1, keepdim=True).clamp_min(1).to(g.dtype)
        return e.reshape(grad.shape)
    raise ValueError(f"unknown norm {norm!r}")


def project_lp(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Euclidean projection of each perturbation onto its Lp ball of radius ``eps``.

    ``eps`` is broadcastable to ``delta`` with one value per sample. L1 uses the exact
    sort-based algorithm of Duchi et al. (2008).
    """
    if norm == "inf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    if norm == "2":
        n = _view(lp_norm(delta, "2"), delta)
        return delta * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)
    if norm == "1":
        flat = _flat(delta)
        e = _budget_vector(eps, delta).unsqueeze(1)
        abs_v = flat.abs()
        inside = abs_v.sum(dim=1, keepdim=True) <= e
        mu, _ = abs_v.sort(dim=1, descending=True)
        cums = mu.cumsum(dim=1) - e
        ar = torch.arange(1, flat.shape[1] + 1, device=delta.device, dtype=delta.dtype)
        rho = ((mu - cums / ar) > 0).to(delta.dtype).mul(ar).argmax(dim=1, keepdim=True)
        theta = cums.gather(1, rho) / (rho + 1).to(delta.dtype)
        out = flat.sign() * (abs_v - theta.clamp_min(0)).clamp_min(0)
        return torch.where(inside, flat, out).reshape(delta.shape)
    raise ValueError(f"unknown norm {norm!r}")


def project_lp_box(
    delta: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    norm: str,
    clip_values: tuple[float, float] | None,
) -> torch.Tensor:
    """Exact Euclidean projection of ``delta`` onto ``{d : ||d||_p <= eps, lo <= x + d <= hi}``.

    For Linf the two sets are boxes and clamping is exact. For L2 and L1 the projection is
    ``clip(v / (1 + mu))`` and ``clip(soft_threshold(v, lam))`` respectively, with the
    multiplier found by bisection (the KKT conditions separate per coordinate); it is computed
    only for samples where clipping the box alone leaves the ball.
    """
    if clip_values is None:
        return project_lp(delta, eps, norm)
    lo, hi = clip_values
    a, b = lo - x, hi - x  # a <= 0 <= b when x is inside the box
    boxed = torch.minimum(torch.maximum(delta, a), b)
    if norm == "inf":
        return torch.minimum(torch.maximum(boxed, -eps), eps).clamp(min=a, max=b)
    if norm not in ("1", "2"):
        raise ValueError(f"unknown norm {norm!r}")
    eps_v = _budget_vector(eps, delta)
    outside = lp_norm(boxed, norm) > eps_v
    if not bool(outside.any()):
        return boxed
    idx = outside.nonzero().squeeze(1)
    v, ai, bi, ei = delta[idx], a[idx], b[idx], eps_v[idx]
    if norm == "2":
        # ||clip(t v)|| grows with t in [0, 1]: find the largest t with norm <= eps.
        t_lo = torch.zeros_like(ei)
        t_hi = torch.ones_like(ei)
        for _ in range(_BISECTION_STEPS):
            t = (t_lo + t_hi) / 2
            d = torch.minimum(torch.maximum(_view(t, v) * v, ai), bi)
            ok = lp_norm(d, "2") <= ei
            t_lo = torch.where(ok, t, t_lo)
            t_hi = torch.where(ok, t_hi, t)
        proj = torch.minimum(torch.maximum(_view(t_lo, v) * v, ai), bi)
    else:
        # ||clip(soft(v, lam))||_1 shrinks as lam grows: find the smallest lam with norm <= eps.
        lam_lo = torch.zeros_like(ei)
        lam_hi = _flat(v).abs().amax(dim=1)
        for _ in range(_BISECTION_STEPS):
            lam = (lam_lo + lam_hi) / 2
            d = v.sign() * (v.abs() - _view(lam, v)).clamp_min(0)
            d = torch.minimum(torch.maximum(d, ai), bi)
            ok = lp_norm(d, "1") <= ei
            lam_hi = torch.where(ok, lam, lam_hi)
            lam_lo = torch.where(ok, lam_lo, lam)
        d = v.sign() * (v.abs() - _view(lam_hi, v)).clamp_min(0)
        proj = torch.minimum(torch.maximum(d, ai), bi)
    return boxed.index_copy(0, idx, proj)


def project_point(
    x_cand: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    norm: str,
    clip_values: tuple[float, float] | None,
) -> torch.Tensor:
    """The point of ``{z : ||z - x||_p <= eps, lo <= z <= hi}`` nearest to ``x_cand``.

    Same as ``x + project_lp_box(x_cand - x, ...)``; for Linf it works on points directly,
    with fewer input-sized temporaries (this runs once per step of every iterative attack).
    """
    if norm == "inf":
        out = torch.minimum(torch.maximum(x_cand, x - eps), x + eps)
        return out.clamp(*clip_values) if clip_values is not None else out
    return x + project_lp_box(x_cand - x, x, eps, norm, clip_values)


def random_in_ball(
    shape: tuple[int, ...] | torch.Size,
    eps: torch.Tensor,
    norm: str,
    generator: torch.Generator,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Samples drawn uniformly from the Lp ball of radius ``eps`` (one per row of ``shape``)."""
    b = shape[0]
    d = math.prod(shape[1:])
    if norm == "inf":
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return (2 * u - 1) * eps
    if norm == "2":
        g = torch.randn((b, d), generator=generator, device=device, dtype=dtype)
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        r = torch.rand((b, 1), generator=generator, device=device, dtype=dtype) ** (1.0 / d)
        return (g * r).reshape(shape) * eps
    if norm == "1":
        # (E_1..E_d) / (E_1 + ... + E_{d+1}) with exponential E is uniform on the simplex
        # {u >= 0, sum u <= 1}; random signs make it uniform on the L1 ball.
        e = torch.empty((b, d + 1), device=device, dtype=dtype).exponential_(generator=generator)
        u = e[:, :d] / e.sum(dim=1, keepdim=True)
        s = torch.randint(0, 2, (b, d), generator=generator, device=device).to(dtype) * 2 - 1
        return (u * s).reshape(shape) * eps
    raise ValueError(f"random start is not defined for norm {norm!r}")
