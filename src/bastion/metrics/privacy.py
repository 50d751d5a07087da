"""Privacy metrics: how well a membership inference attack separates members from non-members.

Privacy auditors judge an attack by its **true-positive rate at a very low false-positive
rate** (Carlini et al. 2022), not by accuracy or AUC: an attack that identifies a few members
with near certainty is a real privacy breach even when its average-case accuracy is close to
chance. :func:`tpr_at_fpr` is the headline; :func:`roc_auc` and :func:`membership_advantage`
(Yeom et al. 2018) summarise the average case, and :func:`plot_roc` draws the ROC curve on
log-log axes, where the low-FPR regime is visible.

Every function takes attack scores (higher means "more likely a member", as returned by
``infer`` of the attacks in :mod:`bastion.attacks.inference`) and the ground-truth membership.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError

__all__ = [
    "membership_advantage",
    "membership_report",
    "plot_roc",
    "roc_auc",
    "roc_curve",
    "tpr_at_fpr",
]


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError):  # a ragged list
        raise InputError(f"{name} must be a 1-d numeric array (one entry per sample).") from None


def _check(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_numpy(scores, "scores")
    m = _as_numpy(is_member, "is_member")
    if s.dtype.kind not in "biuf":
        raise InputError(f"scores must hold real numbers; got dtype {s.dtype}.")
    if s.ndim != 1 or m.ndim != 1:
        raise InputError(
            f"scores and is_member must be 1-d (one entry per sample); got shapes {s.shape} "
            f"and {m.shape}."
        )
    if s.shape[0] != m.shape[0]:
        raise InputError(f"scores has {s.shape[0]} entries but is_member has {m.shape[0]}.")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise InputError("is_member must hold booleans (or 0/1).")
        m = m.astype(bool)
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise InputError("scores contain NaN.")
    if m.all() or not m.any():
        raise InputError("is_member needs both members and non-members to draw a ROC curve.")
    return s, m


def roc_curve(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full ROC curve of a membership score.

    A sample is predicted a member when its score is at least the threshold. Every distinct
    score is a threshold (no point is dropped), in decreasing order, preceded by ``+inf``
    (nothing predicted a member: the point (0, 0)).

    Parameters
    ----------
    scores : array-like or torch.Tensor, shape (N,)
        Higher means more likely a member; ``+-inf`` allowed.
    is_member : bool array-like, shape (N,)
        Ground truth (both classes must occur).

    Returns
    -------
    fpr, tpr, thresholds : numpy.ndarray of float64
        Non-decreasing false- and true-positive rates, and the thresholds that give them.

    Examples
    --------
    >>> from bastion.metrics.privacy import roc_curve
    >>> fpr, tpr, thr = roc_curve([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    s, m = _check(scores, is_member)
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    # The last index of each run of equal scores: ties enter the curve together.
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tp = np.cumsum(m)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / m.sum()]
    fpr = np.r_[0.0, fp / (~m).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(scores: Any, is_member: Any) -> float:
    """Area under the ROC curve (trapezoidal, so ties count one half).

    It is the probability that a random member scores higher than a random non-member;
    0.5 is chance. An average-case number: report :func:`tpr_at_fpr` alongside.

    Examples
    --------
    >>> from bastion.metrics.privacy import roc_auc
    >>> roc_auc([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    0.75
    """
    fpr, tpr, _ = roc_curve(scores, is_member)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(scores: Any, is_member: Any, fpr: float | Sequence[float] = (0.001, 0.01)) -> Any:
    """True-positive rate at a given false-positive rate: the headline of a privacy audit.

    Semantics (no interpolation, conservative): the highest TPR over the thresholds whose FPR
    does not exceed ``fpr``, i.e. the ROC curve read as a step function, as in Carlini et al.'s
    evaluation code. With ``n`` non-members the FPR moves in steps of ``1/n``, so a target
    below ``1/n`` reads the TPR at FPR = 0 (the members that score above every non-member):
    use at least ``10 / fpr`` non-members for a stable reading.

    Parameters
    ----------
    scores : array-like or torch.Tensor, shape (N,)
        Higher means more likely a member.
    is_member : bool array-like, shape (N,)
    fpr : float or sequence of floats in [0, 1], default (0.001, 0.01)
        The false-positive rate(s) to read.

    Returns
    -------
    float for one ``fpr``, else numpy.ndarray of the same length as ``fpr``.

    Examples
    --------
    >>> from bastion.metrics.privacy import tpr_at_fpr
    >>> scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    >>> member = [True, True, False, True, False, False]
    >>> tpr_at_fpr(scores, member, fpr=0.0), tpr_at_fpr(scores, member, fpr=0.4)
    (0.6666666666666666, 1.0)
    """
    targets = np.atleast_1d(np.asarray(fpr, dtype=np.float64))
    if targets.ndim != 1 or not np.all((targets >= 0) & (targets <= 1)):
        raise InputError(f"fpr must be a float or a sequence of floats in [0, 1]; got {fpr!r}.")
    f, t, _ = roc_curve(scores, is_member)
    # f is non-decreasing and f[0] = 0: the last point with f <= target has the highest TPR.
    idx = np.searchsorted(f, targets, side="right") - 1
    out = t[idx]
    return float(out[0]) if np.ndim(fpr) == 0 else out


def membership_advantage(scores: Any, is_member: Any, threshold: float | None = None) -> float:
    """Membership advantage ``TPR - FPR`` (Yeom et al. 2018).

    Parameters
    ----------
    scores : array-like, shape (N,)
        Higher means more likely a member; a boolean verdict per sample works too (use
        ``threshold=0.5``).
    is_member : bool array-like, shape (N,)
    threshold : float or None
        Predict "member" when ``score >= threshold``. None: the best threshold, i.e. the
        maximum of ``TPR - FPR`` over the ROC curve (the Kolmogorov-Smirnov distance between
        the member and non-member score distributions).

    Examples
    --------
    >>> from bastion.metrics.privacy import membership_advantage
    >>> membership_advantage([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    0.5
    >>> membership_advantage([0.9, 0.8, 0.3, 0.1], [True, False, True, False], threshold=0.5)
    0.0
    """
    s, m = _check(scores, is_member)
    if threshold is None:
        fpr, tpr, _ = roc_curve(s, m)
        return float(np.max(tpr - fpr))
    pred = s >= threshold
    return float(pred[m].mean() - pred[~m].mean())


def membership_report(
    scores: Any, is_member: Any, fpr: Sequence[float] = (0.001, 0.01)
) -> dict[str, float]:
    """The numbers to report for one attack, the TPR at low FPR first.

    Returns
    -------
    dict
        ``"tpr@{f:g}fpr"`` for each ``f`` in ``fpr`` (e.g. ``"tpr@0.001fpr"``), then ``"auc"``,
        ``"advantage"`` (best threshold), ``"nb_members"`` and ``"nb_non_members"``.

    Examples
    --------
    >>> from bastion.metrics.privacy import membership_report
    >>> r = membership_report([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    >>> list(r)[:3], r["auc"]
    (['tpr@0.001fpr', 'tpr@0.01fpr', 'auc'], 0.75)
    """
    s, m = _check(scores, is_member)
    tprs = np.atleast_1d(tpr_at_fpr(s, m, fpr=list(fpr)))
    out: dict[str, float] = {f"tpr@{f:g}fpr": float(t) for f, t in zip(fpr, tprs, strict=True)}
    out["auc"] = roc_auc(s, m)
    out["advantage"] = membership_advantage(s, m)
    out["nb_members"] = float(m.sum())
    out["nb_non_members"] = float((~m).sum())
    return out


def plot_roc(
    scores: Any,
    is_member: Any,
    *,
    ax: Any = None,
    label: str | None = None,
    fpr_marks: Sequence[float] = (0.001, 0.01),
) -> Any:
    """Draw ROC curves on log-log axes (the low-FPR regime is where privacy is judged).

    Parameters
    ----------
    scores : array-like, or a mapping ``{name: scores}`` to draw several attacks
    is_member : bool array-like, shape (N,)
    ax : matplotlib Axes, optional
        Drawn into; a new figure otherwise. matplotlib is imported only here.
    label : str, optional
        Legend label for a single curve (the TPR at the first mark is appended).
    fpr_marks : sequence of float
        Vertical dotted lines at these FPRs.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt  # lazily: plotting is optional

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    curves = scores if isinstance(scores, Mapping) else {label or "attack": scores}
    _, m0 = _check(next(iter(curves.values())), is_member)
    floor = 0.5 / max(1, int((~m0).sum()))  # log axes cannot show 0
    for name, s in curves.items():
        fpr, tpr, _ = roc_curve(s, is_member)
        auc = roc_auc(s, is_member)
        first = float(tpr_at_fpr(s, is_member, fpr=fpr_marks[0])) if fpr_marks else None
        text = f"{name} (AUC {auc:.3f}" + (
            f", TPR@{fpr_marks[0]:g} {first:.3f})" if first is not None else ")"
        )
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=text)
    ax.plot([floor, 1], [floor, 1], ls="--", color="grey", lw=0.8)
    for f in fpr_marks:
        ax.axvline(f, ls=":", color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(loc="lower right", fontsize="small")
    return ax
