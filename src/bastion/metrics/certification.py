"""Certified accuracy: the fraction of samples whose certified prediction is right and whose
certified radius reaches a given radius (Cohen et al. 2019's curves of certified accuracy
against the L2 radius)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bastion._tensor import to_tensor
from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["CertifiedAccuracyCurve", "certified_accuracy", "certified_accuracy_curve"]


@dataclass(frozen=True)
class CertifiedAccuracyCurve:
    """Certified accuracy at each radius; unpacks as ``radii, accuracy``.

    Attributes
    ----------
    radii : numpy.ndarray of float64, increasing
    accuracy : numpy.ndarray of float64, non-increasing
    """

    radii: np.ndarray
    accuracy: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.radii
        yield self.accuracy


def _integers(value: Any, name: str, minimum: int) -> torch.Tensor:
    t, _ = to_tensor(value, dtype=None)
    t = t.cpu()
    if t.ndim != 1:
        raise InputError(f"{name} must be 1-d, of shape (N,); got shape {tuple(t.shape)}.")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{name} must hold integer class indices, got dtype {t.dtype}.")
    if t.is_floating_point() and (
        not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all())
    ):
        raise InputError(f"{name} must hold integer class indices (NaN or fractions found).")
    t = t.to(torch.int64)
    if t.numel() and int(t.min()) < minimum:
        raise InputError(
            f"{name} has values from {int(t.min())}, outside the allowed range [{minimum}, inf)"
            + (" (-1 means abstain)." if minimum == -1 else ".")
        )
    return t


def _inputs(pred: Any, certified_radius: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, radius)``: whether each certified prediction is right, and its radius."""
    p = _integers(pred, "pred", -1)
    yt = _integers(y, "y", 0)
    r, _ = to_tensor(certified_radius, dtype=torch.float64)
    r = r.cpu()
    if r.ndim != 1:
        raise InputError(f"radius must be 1-d, of shape (N,); got shape {tuple(r.shape)}.")
    if not (p.shape[0] == r.shape[0] == yt.shape[0]):
        raise InputError(
            "pred, radius and y must have one entry per sample: got "
            f"{p.shape[0]} predictions, {r.shape[0]} radii and {yt.shape[0]} labels."
        )
    if p.shape[0] == 0:
        raise InputError("pred, radius and y are empty: no samples to measure.")
    if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise InputError("radius must hold finite values >= 0 (certified L2 radii).")
    return (p == yt) & (p != -1), r


def _check_radius(radius: Any, name: str = "radius") -> float:
    ok = isinstance(radius, (int, float, np.floating, np.integer)) and not isinstance(radius, bool)
    if not ok or not np.isfinite(float(radius)) or float(radius) < 0:
        raise InvalidParameterError(
            f"The {name!r} parameter of certified_accuracy must be a float in [0, inf). "
            f"Got {radius!r} instead."
        )
    return float(radius)


def certified_accuracy(pred: Any, certified_radius: Any, y: Any, *, radius: float = 0.0) -> float:
    """The fraction of samples certified correct at L2 radius ``radius``.

    A sample counts when its certified prediction equals its label and its certified radius is
    at least ``radius``; an abstention (``pred == -1``) counts as wrong.

    Parameters
    ----------
    pred : array-like or torch.Tensor of int, shape (N,)
        Certified predictions (-1: abstain), e.g. from
        :meth:`~bastion.certification.RandomizedSmoothing.certify`.
    certified_radius : array-like or torch.Tensor of float, shape (N,)
        Their certified radii (>= 0).
    y : array-like or torch.Tensor of int, shape (N,)
        True labels.
    radius : float, default 0
        The radius to certify at (>= 0).

    Returns
    -------
    float

    Examples
    --------
    >>> from bastion.metrics import certified_accuracy
    >>> certified_accuracy([0, 1, -1, 2], [0.6, 0.2, 0.0, 0.9], [0, 1, 1, 0], radius=0.5)
    0.25
    """
    r0 = _check_radius(radius)
    correct, r = _inputs(pred, certified_radius, y)
    return float((correct & (r >= r0)).double().mean())


def certified_accuracy_curve(
    pred: Any, certified_radius: Any, y: Any, *, radii: Sequence[float] | None = None
) -> CertifiedAccuracyCurve:
    """Certified accuracy against the L2 radius.

    Parameters
    ----------
    pred, certified_radius, y :
        As in :func:`certified_accuracy`.
    radii : sequence of float, optional
        Where to measure (>= 0, sorted on output). ``None``: 0 and every distinct certified
        radius of a correct sample, the points where the step function drops (its exact
        shape).

    Returns
    -------
    CertifiedAccuracyCurve
        ``radii, accuracy = certified_accuracy_curve(...)``.

    Examples
    --------
    >>> from bastion.metrics import certified_accuracy_curve
    >>> radii, acc = certified_accuracy_curve([0, 1, -1], [0.5, 0.2, 0.0], [0, 1, 1])
    >>> radii.tolist(), [round(a, 3) for a in acc.tolist()]
    ([0.0, 0.2, 0.5], [0.667, 0.667, 0.333])
    """
    correct, r = _inputs(pred, certified_radius, y)
    if radii is None:
        grid = torch.unique(torch.cat([torch.zeros(1, dtype=torch.float64), r[correct]]))
    else:
        try:
            values = [_check_radius(v, "radii") for v in radii]
        except TypeError:
            raise InvalidParameterError(
                f"The 'radii' parameter of certified_accuracy_curve must be a sequence of "
                f"floats in [0, inf). Got {radii!r} instead."
            ) from None
        if not values:
            raise InvalidParameterError(
                "The 'radii' parameter of certified_accuracy_curve must be a non-empty "
                "sequence of floats in [0, inf). Got [] instead."
            )
        grid = torch.tensor(sorted(values), dtype=torch.float64)
    acc = (correct[None, :] & (r[None, :] >= grid[:, None])).double().mean(dim=1)
    return CertifiedAccuracyCurve(radii=grid.numpy(), accuracy=acc.numpy())
