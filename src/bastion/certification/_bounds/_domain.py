"""Input sets of bound propagation: the Lp ball around each sample intersected with the
estimator's ``clip_values``, and the linear functions' exact or sound minima over them."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["InputDomain", "box_domain", "concretize_lower", "margin_spec"]


@dataclass(frozen=True)
class InputDomain:
    """The input set of each sample: an Linf or L2 ball around ``center`` intersected with the
    clip box.

    Attributes
    ----------
    lower, upper : torch.Tensor, shape (N, *input_shape)
        The box: the ball's bounding box intersected with ``clip_values`` (for ``norm="inf"``
        the set itself).
    center : torch.Tensor, shape (N, *input_shape)
        The samples.
    eps : torch.Tensor, shape (N,)
        The radius of each ball.
    norm : str or int
        ``"inf"`` or ``2``.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    center: torch.Tensor
    eps: torch.Tensor
    norm: str | int

    @property
    def is_l2(self) -> bool:
        return self.norm == 2

    def __len__(self) -> int:
        return int(self.center.shape[0])

    def subset(self, index: Any) -> InputDomain:
        """The domain of the samples ``index`` (a slice or an index tensor)."""
        return InputDomain(
            self.lower[index], self.upper[index], self.center[index], self.eps[index], self.norm
        )


def normalize_norm(norm: Any, owner: str = "bounds") -> str | int:
    """``"inf"`` (also ``float("inf")``, ``np.inf``) or ``2``; anything else raises."""
    if isinstance(norm, str) and norm == "inf":
        return "inf"
    if isinstance(norm, numbers.Real) and not isinstance(norm, bool):
        if float(norm) == float("inf"):
            return "inf"
        if float(norm) == 2:
            return 2
    raise InvalidParameterError(
        f"The 'norm' parameter of {owner} must be one of {{'inf', 2}}. Got {norm!r} instead."
    )


def eps_tensor(eps: Any, n: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``eps`` (a float or one value per sample) as a tensor of shape ``(n,)``."""
    if isinstance(eps, bool):
        raise InvalidParameterError(
            f"The 'eps' parameter of bounds must be a float in [0, inf). Got {eps!r} instead."
        )
    try:
        t = torch.as_tensor(
            eps.detach() if isinstance(eps, torch.Tensor) else eps, dtype=torch.float64
        )
    except (TypeError, ValueError, RuntimeError):
        raise InvalidParameterError(
            "The 'eps' parameter of bounds must be a float in [0, inf) or one per sample. "
            f"Got {eps!r} instead."
        ) from None
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise InvalidParameterError(
            "The 'eps' parameter of bounds must be a float in [0, inf) or one value per sample "
            f"(shape ({n},)). Got shape {tuple(t.shape)} instead."
        )
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise InvalidParameterError(
            "The 'eps' parameter of bounds must be a float in [0, inf) (finite, non-negative). "
            f"Got {eps!r} instead."
        )
    return t.to(dtype=dtype, device=device)


def box_domain(
    x: torch.Tensor,
    eps: Any,
    norm: Any = "inf",
    clip_values: tuple[float, float] | None = None,
) -> InputDomain:
    """The input domain of the Lp ball of radius ``eps`` around each row of ``x``,
    intersected with ``clip_values``.

    Parameters
    ----------
    x : torch.Tensor, shape (N, *input_shape)
    eps : float or tensor of shape (N,)
    norm : {"inf", 2}
    clip_values : (float, float), optional

    Returns
    -------
    InputDomain
    """
    norm = normalize_norm(norm)
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise InputError("x must be a floating-point tensor of shape (N, *input_shape).")
    x = x.detach()
    e = eps_tensor(eps, int(x.shape[0]), dtype=x.dtype, device=x.device)
    r = e.reshape(-1, *([1] * (x.ndim - 1)))
    lower, upper = x - r, x + r
    if clip_values is not None:
        lo, hi = float(clip_values[0]), float(clip_values[1])
        lower, upper = lower.clamp(min=lo), upper.clamp(max=hi)
        # A sample on the clip boundary up to rounding: keep the box non-empty.
        lower = torch.minimum(lower, x)
        upper = torch.maximum(upper, x)
    return InputDomain(lower, upper, x, e, norm)


def margin_spec(
    y: torch.Tensor,
    nb_classes: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The margin specification: for each sample the rows ``e_y - e_j`` for ``j != y``.

    Parameters
    ----------
    y : torch.Tensor of int, shape (N,)
    nb_classes : int
    dtype : torch.dtype, optional
        Default float32.
    device : torch.device, optional
        Default ``y``'s device.

    Returns
    -------
    torch.Tensor, shape (N, nb_classes - 1, nb_classes)
        ``C @ logits`` gives the margins ``z_y - z_j``.
    """
    y = torch.as_tensor(y).to(device if device is not None else None).long()
    n, k = int(y.shape[0]), int(nb_classes)
    dev = y.device
    eye = torch.eye(k, dtype=dtype or torch.float32, device=dev)
    full = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (N, K, K): row j = e_y - e_j
    keep = torch.arange(k, device=dev).unsqueeze(0) != y.unsqueeze(1)  # (N, K)
    return full[keep].reshape(n, k - 1, k)


def competitors(y: torch.Tensor, nb_classes: int) -> torch.Tensor:
    """The class ``j`` of each row of :func:`margin_spec`, shape ``(N, K - 1)``."""
    k = int(nb_classes)
    classes = torch.arange(k, device=y.device).expand(y.shape[0], k)
    keep = classes != y.unsqueeze(1)
    return classes[keep].reshape(y.shape[0], k - 1)


def _flat(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.reshape(n, -1)


def concretize_lower(a: torch.Tensor, bias: torch.Tensor, domain: InputDomain) -> torch.Tensor:
    """A sound lower bound of ``a @ x + bias`` over the domain, per sample and row.

    ``a`` has shape ``(N, S, *input_shape)``, ``bias`` ``(N, S)``. Over a box the bound is
    exact (``a @ center - |a| @ radius``). Over the L2 ball intersected with the box it is the
    best of the box bound, the ball bound ``a @ x0 - eps ||a||_2`` and the Lagrangian dual
    ``max_lambda>=0 min_{x in box} a @ x + lambda (||x - x0||^2 - eps^2)``, which is sound for
    every multiplier (weak duality); lambda is found by a golden-section search on its
    logarithm (the dual is concave), then the bound is evaluated differentiably at it.
    """
    n, s = int(a.shape[0]), int(a.shape[1])
    af = a.reshape(n, s, -1)
    lo, up = _flat(domain.lower, n).unsqueeze(1), _flat(domain.upper, n).unsqueeze(1)
    mid, rad = (up + lo) / 2, (up - lo) / 2
    box = (af * mid).sum(-1) - (af.abs() * rad).sum(-1)
    if not domain.is_l2:
        return box + bias
    x0 = _flat(domain.center, n).unsqueeze(1)
    eps = domain.eps.reshape(n, 1)
    anorm = af.norm(dim=-1)
    ball = (af * x0).sum(-1) - eps * anorm
    best = torch.maximum(box, ball)

    def dual(lam: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        lam3 = lam.unsqueeze(-1)
        xs = torch.minimum(torch.maximum(x0 - coef / (2 * lam3), lo), up)
        return (coef * xs).sum(-1) + lam * (((xs - x0) ** 2).sum(-1) - eps**2)

    with torch.no_grad():
        ad = af.detach()
        lam0 = (anorm.detach() / (2 * eps.clamp_min(1e-12))).clamp_min(1e-12)
        t_lo, t_hi = torch.log(lam0) - 12.0, torch.log(lam0) + 3.0
        ratio = (5**0.5 - 1) / 2
        c = t_hi - ratio * (t_hi - t_lo)
        d = t_lo + ratio * (t_hi - t_lo)
        fc, fd = dual(c.exp(), ad), dual(d.exp(), ad)
        for _ in range(20):
            # Golden section: keep the part holding the maximum and evaluate one new point.
            left = fc > fd  # the maximum lies in [t_lo, d]
            t_hi = torch.where(left, d, t_hi)
            t_lo = torch.where(left, t_lo, c)
            probe = torch.where(left, t_hi - ratio * (t_hi - t_lo), t_lo + ratio * (t_hi - t_lo))
            f_probe = dual(probe.exp(), ad)
            c, fc, d, fd = (
                torch.where(left, probe, d),
                torch.where(left, f_probe, fd),
                torch.where(left, c, probe),
                torch.where(left, fc, f_probe),
            )
        lam = torch.where(fc > fd, c, d).exp()
    finite = eps > 0
    dual_val = dual(lam, af)
    best = torch.where(finite, torch.maximum(best, dual_val), best)
    return best + bias
