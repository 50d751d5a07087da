"""Pointwise differential training privacy (PDTP): per-sample leakage by leave-one-out.

PDTP (Long, Bindschaedler & Gunter, 2017) measures how much one training record changes the
model: retrain without the record and compare the two models' class probabilities. A record
whose removal changes the output a lot is one the model has memorised, and one a membership
attack can single out. It needs one retraining per record, so it is meant for small models
(scikit-learn, small networks) or a subset of ``indexes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.base import clone

from bastion._tensor import to_tensor
from bastion._validation import Interval, Options, check_x, validate_params
from bastion.exceptions import EstimatorError, InputError

__all__ = ["PDTPResult", "pdtp"]


class PDTPResult(NamedTuple):
    """Per-record PDTP leakage (higher: more leakage), one value per requested index."""

    average: np.ndarray
    worst: np.ndarray
    std: np.ndarray


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


# The models pdtp compares are bastion estimators or scikit-learn models (predict_proba):
# no estimator protocol covers both.
def _probabilities(model: Any, x: np.ndarray) -> np.ndarray:
    if hasattr(model, "capabilities"):  # a bastion estimator
        return _numpy(model.predict(x.astype(np.float32)))
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(x))
    raise EstimatorError(
        f"pdtp needs models with class probabilities (a bastion estimator or a scikit-learn "
        f"model with predict_proba); got {type(model).__name__}."
    )


def _input_shape(model: Any) -> tuple[int, ...] | None:
    """The shape of one record ``model`` takes, where it says."""
    if hasattr(model, "input_shape"):  # a bastion estimator
        return tuple(model.input_shape)
    n = getattr(model, "n_features_in_", None)
    return None if n is None else (int(n),)


def pdtp(
    target: Any,  # a bastion estimator or a scikit-learn model, as learner returns
    learner: Any,
    x: Any,
    y: Any,
    *,
    indexes: Sequence[int] | None = None,
    num_iter: int = 1,
    comparison: str = "ratio",
    compare_on: str = "record",
    bins: int = 100,
) -> PDTPResult:
    """Pointwise differential training privacy of each training record.

    For each record ``i`` in ``indexes``, a model is trained on ``x`` without row ``i`` and its
    class probabilities are compared with the target's: with ``comparison="ratio"`` the leakage
    is the largest ratio ``max(p / p', p' / p)`` over the classes, with ``"difference"`` the
    largest ``|p - p'|``. Probabilities are first rounded to the centres of ``bins`` equal bins
    (as in ART), so that ratios stay finite and tiny numerical differences do not count.
    ``compare_on="record"`` compares the outputs on record ``i`` itself (the paper's
    definition); ``"all"`` takes the largest change over every row of ``x`` (ART's choice).
    With a randomised learner, ``num_iter`` repeats the retraining and the result gives the
    mean, the worst and the standard deviation over repetitions.

    Parameters
    ----------
    target : fitted model
        The model trained on all of ``x``: a bastion estimator or a scikit-learn classifier with
        ``predict_proba``.
    learner : unfitted scikit-learn classifier or callable
        How to retrain: a scikit-learn estimator (cloned for each retraining) or a function
        ``learner(x, y) -> fitted model`` (for torch models, e.g. one that trains a fresh
        network and returns a :class:`~bastion.estimators.TorchClassifier`).
    x, y : array-like or torch.Tensor
        The full training set of ``target`` and its labels (class indices).
    indexes : sequence of int, optional
        Records to evaluate (all by default).
    num_iter : int, default=1
        Retrainings per record.
    comparison : {"ratio", "difference"}, default="ratio"
    compare_on : {"record", "all"}, default="record"
    bins : int, default=100
        Number of probability bins.

    Returns
    -------
    PDTPResult
        ``(average, worst, std)``, NumPy arrays with one value per record of ``indexes``.

    Raises
    ------
    InputError
        For records that are not a non-empty, finite, numeric array of the target's input
        shape, labels that do not match them, or ``indexes`` outside the rows.
    EstimatorError
        For a target (or a retrained model) without class probabilities.

    References
    ----------
    Y. Long, V. Bindschaedler, C. A. Gunter. "Towards Measuring Membership Privacy."
    https://arxiv.org/abs/1712.09136

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> from bastion.metrics.pdtp import pdtp
    >>> x, y = load_iris(return_X_y=True)
    >>> tree = DecisionTreeClassifier(random_state=0).fit(x, y)
    >>> leak = pdtp(tree, DecisionTreeClassifier(random_state=0), x, y, indexes=[0, 70, 83])
    >>> leak.average.shape
    (3,)
    """
    validate_params(
        "pdtp",
        {"num_iter": num_iter, "comparison": comparison, "compare_on": compare_on, "bins": bins},
        {
            "num_iter": [Interval(int, 1, None)],
            "comparison": [Options(["ratio", "difference"])],
            "compare_on": [Options(["record", "all"])],
            "bins": [Interval(int, 2, None)],
        },
    )
    xt, _ = to_tensor(x, dtype=torch.float64)
    yt, _ = to_tensor(y, dtype=None)
    if xt.ndim < 2 or yt.ndim == 0 or yt.shape[0] != xt.shape[0]:
        raise InputError(
            f"x ({tuple(xt.shape)}) and y ({tuple(yt.shape)}) must have one row per record."
        )
    check_x(xt, input_shape=_input_shape(target), clip_values=None)
    if yt.is_floating_point() and not bool(torch.isfinite(yt).all()):
        raise InputError("y contains NaN or infinite labels.")
    xa, ya = xt.cpu().numpy(), yt.cpu().numpy()
    if ya.ndim == 2:
        ya = ya.argmax(axis=1)
    rows = np.arange(xa.shape[0]) if indexes is None else np.asarray(indexes, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= xa.shape[0]:
        raise InputError(f"indexes must be row numbers of x in [0, {xa.shape[0] - 1}].")
    fit: Callable[[np.ndarray, np.ndarray], Any]
    if callable(learner) and not hasattr(learner, "fit"):
        fit = learner
    else:
        fit = lambda xs, ys: clone(learner).fit(xs, ys)  # noqa: E731

    def binned(p: np.ndarray) -> np.ndarray:
        return (np.clip(np.floor(p * bins), 0, bins - 1) + 0.5) / bins

    base = binned(_probabilities(target, xa))
    scores = np.empty((rows.size, num_iter))
    keep = np.ones(xa.shape[0], dtype=bool)
    for j, i in enumerate(rows):  # one retraining per record: inherent to leave-one-out
        keep[i] = False
        for it in range(num_iter):
            model = fit(xa[keep], ya[keep])
            probe = xa[i : i + 1] if compare_on == "record" else xa
            alt = binned(_probabilities(model, probe))
            ref = base[i : i + 1] if compare_on == "record" else base
            if comparison == "ratio":
                scores[j, it] = max((ref / alt).max(), (alt / ref).max())
            else:
                scores[j, it] = np.abs(ref - alt).max()
        keep[i] = True
    return PDTPResult(scores.mean(axis=1), scores.max(axis=1), scores.std(axis=1))
