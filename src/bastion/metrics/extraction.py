"""Metrics of model extraction: how faithful a stolen copy is, how accurate, at what cost."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bastion._tensor import to_tensor
from bastion._validation import check_labels, invalid_parameter
from bastion.estimators.base import SupportsPredict, require_capabilities
from bastion.exceptions import InputError

__all__ = ["accuracy_vs_queries", "fidelity", "thief_accuracy"]


def _outputs(estimator: SupportsPredict, x: Any, batch_size: int) -> np.ndarray:
    out = estimator.predict(x, batch_size=batch_size)
    return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def _labels_of(estimator: SupportsPredict, x: Any, batch_size: int) -> np.ndarray:
    return _outputs(estimator, x, batch_size).argmax(axis=1)


def fidelity(
    victim: SupportsPredict, thief: SupportsPredict, x: Any, *, batch_size: int = 256
) -> float:
    """Fraction of ``x`` on which the thief predicts the victim's label (label agreement).

    Fidelity is the extraction goal of Jagielski et al. (2020): how often the copy agrees with
    the victim on held-out data, right or wrong. The victim's predictions here are counted as
    queries on its ``query_count``, like any other.

    Parameters
    ----------
    victim, thief : estimator
        Anything with ``predict`` returning class probabilities (or one-hot rows).
    x : array-like or torch.Tensor, shape (N, *input_shape)
        Held-out data (not the attacker's queries).
    batch_size : int, default 256

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.metrics.extraction import fidelity
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3)
    >>> fidelity(clf, clf, torch.rand(10, 4))
    1.0
    """
    require_capabilities(victim, ["predict"], "fidelity (victim)")
    require_capabilities(thief, ["predict"], "fidelity (thief)")
    k_victim, k_thief = getattr(victim, "nb_classes", None), getattr(thief, "nb_classes", None)
    if k_victim is not None and k_thief is not None and k_victim != k_thief:
        raise InputError(
            f"fidelity compares the labels of models of the same classes; the victim has "
            f"nb_classes={k_victim}, the thief {k_thief}."
        )
    a, b = _labels_of(victim, x, batch_size), _labels_of(thief, x, batch_size)
    return float(np.mean(a == b))


def thief_accuracy(thief: SupportsPredict, x: Any, y: Any, *, batch_size: int = 256) -> float:
    """Test accuracy of the stolen model on labelled data ``(x, y)``.

    ``y`` holds class indices ``(N,)`` or one-hot rows ``(N, K)``; labels outside the thief's
    classes, non-integral or of the wrong number raise :class:`~bastion.exceptions.InputError`.
    """
    require_capabilities(thief, ["predict"], "thief_accuracy")
    probs = _outputs(thief, x, batch_size)
    yt, _ = to_tensor(y, dtype=None)
    labels = check_labels(yt.cpu(), n=probs.shape[0], nb_classes=probs.shape[1]).numpy()
    return float(np.mean(probs.argmax(axis=1) == labels))


def accuracy_vs_queries(
    attack: Any,
    x_pool: Any,
    x_test: Any,
    y_test: Any,
    *,
    budgets: Sequence[int],
    batch_size: int = 256,
) -> dict[str, list[float]]:
    """Run an extraction attack at several query budgets; accuracy and fidelity of each thief.

    For each budget, a copy of ``attack`` (with a copy of its untrained thief; the victim is
    shared, so its ``query_count`` adds up) is run with ``nb_queries=budget`` on ``x_pool``.
    ``attack`` itself and its thief are left untouched.

    Parameters
    ----------
    attack : ExtractionAttack
        An attack with ``nb_queries``, ``victim`` and ``thief`` parameters (CopycatCNN,
        KnockoffNets).
    x_pool : array-like
        The attacker's data.
    x_test, y_test : array-like
        Held-out labelled data.
    budgets : sequence of int
        Query budgets, e.g. ``[100, 250, 500, 1000]``.

    Returns
    -------
    dict
        ``{"queries": [...], "accuracy": [...], "fidelity": [...]}``: the queries actually
        spent, the thief's test accuracy and its fidelity to the victim, one entry per budget.
    """
    if not (hasattr(attack, "victim") and "nb_queries" in getattr(attack, "_param_names", list)()):
        raise invalid_parameter(
            "attack",
            "accuracy_vs_queries",
            "an extraction attack with nb_queries (CopycatCNN, KnockoffNets)",
            attack,
        )
    if not budgets:
        raise InputError("budgets must hold at least one query budget.")
    # The test labels are checked before any query is spent.
    xt, _ = to_tensor(x_test, dtype=None)
    yt, _ = to_tensor(y_test, dtype=None)
    n_test = int(xt.shape[0]) if xt.ndim else 0
    check_labels(yt.cpu(), n=n_test, nb_classes=int(attack.victim.nb_classes), name="y_test")
    out: dict[str, list[float]] = {"queries": [], "accuracy": [], "fidelity": []}
    for budget in budgets:
        run = copy.deepcopy(attack, memo={id(attack.victim): attack.victim})
        run.set_params(nb_queries=int(budget))
        thief = run.extract(x_pool)
        out["queries"].append(run.queries_)
        out["accuracy"].append(thief_accuracy(thief, x_test, y_test, batch_size=batch_size))
        out["fidelity"].append(fidelity(attack.victim, thief, x_test, batch_size=batch_size))
    return out
