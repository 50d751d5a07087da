"""Bad-input rows of the public metric functions (:mod:`bastion.metrics`,
:mod:`bastion.metrics.privacy`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.exceptions import (
    EstimatorError,
    InputError,
    InvalidParameterError,
    ModelError,
)
from bastion.testing._bad_inputs import (
    BadInputCase,
    bad_labels,
    bad_samples,
    float64,
    later,
    linear,
    nan_model,
    poke,
    raises,
    rewrapped,
    works,
)
from bastion.testing._problems import torch_problem

Rows = list[BadInputCase]
Arrays = tuple[Any, ...]


def _rows(
    fn: Any, how: str, call: Callable[..., Any], good: Callable[[], Arrays], cases: list[Any]
) -> Rows:
    """``cases`` of ``(kind, what, change(good arrays) -> arrays, outcome)``, each run as
    ``call(*arrays)``."""
    return [
        BadInputCase(fn, kind, what, how, later(lambda c: call(*c(*good())), change), outcome)
        for kind, what, change, outcome in cases
    ]


def _fraction(out: Any) -> None:
    assert isinstance(out, float) and 0.0 <= out <= 1.0, f"{out!r} is not a fraction"


# --------------------------------------------------------------------------- detection masks


def _masks() -> Arrays:
    return (
        np.array([True, True, False, False, True, False]),
        np.array([True, False, True, False, True, False]),
    )


def mask_metric_cases(fn: Any) -> Rows:
    """``detection_scores`` and its three shortcuts: masks of the wrong length or ndim, values
    that are not booleans, and tensors, 0/1 integers and empty masks, which work."""
    ok = works("the score(s)")
    cases = [
        (
            "data",
            "masks of different lengths",
            lambda p, t: (p[:-1], t),
            raises(InputError, "entries"),
        ),
        ("data", "a 2-d mask", lambda p, t: (p[:, None], t), raises(InputError, "1-d")),
        (
            "data",
            "a mask holding 2",
            lambda p, t: (p.astype(int) * 2, t),
            raises(InputError, "boolean"),
        ),
        (
            "data",
            "a mask holding NaN",
            lambda p, t: (np.where(p, np.nan, 0.0), t),
            raises(InputError, "boolean"),
        ),
        (
            "data",
            "a mask of strings",
            lambda p, t: (p.astype(str), t),
            raises(InputError, "boolean|numeric"),
        ),
        (
            "data",
            "a ragged list",
            lambda p, t: ([[1, 0], [1]], t),
            raises(InputError, "numeric|1-d"),
        ),
        ("edge", "0/1 integers", lambda p, t: (p.astype(int), t.astype(int)), ok),
        ("edge", "bool tensors", lambda p, t: (torch.as_tensor(p), torch.as_tensor(t)), ok),
        ("edge", "empty masks (0/0 reads 0.0)", lambda p, t: (p[:0], t[:0]), ok),
    ]
    return _rows(fn, f"{fn.__name__}(pred, true)", fn, _masks, cases)


# --------------------------------------------------------------------------- on a model


def _digits() -> Arrays:
    p = torch_problem(8)
    return p.estimator, p.x, p.y


def estimator_metric_cases(fn: Any) -> Rows:
    """``clean_accuracy(estimator, x, y)`` and ``attack_success_rate(estimator, x, target,
    y_true)``: bad samples and labels, bad models, a bad ``batch_size``, and float64 and
    tensor input, which work."""
    success = fn.__name__ == "attack_success_rate"
    name = "target" if success else "y"
    how = f"{fn.__name__}(estimator, x, {name})"
    frac = works("a fraction in [0, 1]", _fraction)

    def call(est: Any, x: Any, y: Any, **kw: Any) -> Any:
        return fn(est, x, y, **kw)

    cases: list[Any] = []
    for what, change, outcome in bad_samples((0.0, 1.0), integers=frac):
        cases.append(("data", what, lambda e, x, y, c=change: (e, c(x), y), outcome))
    for what, change, outcome in bad_labels(10):
        cases.append(("labels", f"{name}: {what}", lambda e, x, y, c=change: (e, x, c(y)), outcome))
    cases += [
        (
            "model",
            "a raw torch.nn.Module",
            lambda e, x, y: (e.model, x, y),
            raises(EstimatorError, "TorchClassifier"),
        ),
        (
            "model",
            "a model returning NaN",
            lambda e, x, y: (nan_model((1, 8, 8), 10), x, y),
            raises(ModelError, "NaN"),
        ),
        (
            "model",
            "a model with the wrong nb_classes",
            lambda e, x, y: (rewrapped(e, nb_classes=5), x, y % 5),
            raises(ModelError, "nb_classes"),
        ),
        ("edge", "float64 NumPy", lambda e, x, y: (e, float64(x), y), frac),
        ("edge", "CPU tensors", lambda e, x, y: (e, torch.as_tensor(x), torch.as_tensor(y)), frac),
    ]
    rows = _rows(fn, how, call, _digits, cases)
    rows.append(
        BadInputCase(
            fn,
            "use",
            "batch_size=0",
            how,
            lambda: fn(*_digits(), batch_size=0),
            raises(InvalidParameterError, "batch_size"),
        )
    )
    if success:
        rows += [
            BadInputCase(
                fn,
                "use",
                "every sample already of its target class",
                f"{fn.__name__}(estimator, x, target, y_true)",
                lambda: fn(_digits()[0], _digits()[1], 3, np.full(8, 3)),
                raises(InputError, "target class"),
            ),
            BadInputCase(
                fn,
                "labels",
                "y_true of the wrong length",
                f"{fn.__name__}(estimator, x, target, y_true)",
                lambda: fn(_digits()[0], _digits()[1], 3, _digits()[2][:-1]),
                raises(InputError, "labels|samples"),
            ),
        ]
    return rows


def _thief() -> Any:
    from bastion.testing._problems import extraction_problem

    return extraction_problem().make_thief(0)  # type: ignore[misc]


def _five_classes() -> Any:
    """A linear classifier of the digits' shape with 5 classes, not 10."""
    from bastion.estimators import TorchClassifier

    net = torch.nn.Sequential(torch.nn.Flatten(), linear(64, 5))
    return TorchClassifier(net, input_shape=(1, 8, 8), nb_classes=5)


def fidelity_cases(fn: Any) -> Rows:
    """``fidelity(victim, thief, x)``: bad samples, bad models, a thief of other classes, and
    float64 and tensor input, which work."""
    frac = works("a fraction in [0, 1]", _fraction)

    def good() -> Arrays:
        p = torch_problem(8)
        return p.estimator, _thief(), p.x

    cases: list[Any] = []
    for what, change, outcome in bad_samples((0.0, 1.0), integers=frac):
        cases.append(("data", what, lambda v, t, x, c=change: (v, t, c(x)), outcome))
    cases += [
        (
            "model",
            "a raw torch.nn.Module victim",
            lambda v, t, x: (v.model, t, x),
            raises(EstimatorError, "TorchClassifier"),
        ),
        (
            "model",
            "a raw torch.nn.Module thief",
            lambda v, t, x: (v, t.model, x),
            raises(EstimatorError, "TorchClassifier"),
        ),
        (
            "model",
            "a victim returning NaN",
            lambda v, t, x: (nan_model((1, 8, 8), 10), t, x),
            raises(ModelError, "NaN"),
        ),
        (
            "model",
            "a thief of other classes",
            lambda v, t, x: (v, _five_classes(), x),
            raises(InputError, "nb_classes"),
        ),
        ("edge", "float64 NumPy", lambda v, t, x: (v, t, float64(x)), frac),
        ("edge", "CPU tensors", lambda v, t, x: (v, t, torch.as_tensor(x)), frac),
    ]
    return _rows(fn, "fidelity(victim, thief, x)", fn, good, cases)


def thief_accuracy_cases(fn: Any) -> Rows:
    """``thief_accuracy(thief, x, y)``: bad samples and labels, a raw module, and one-hot and
    tensor labels, which work."""
    frac = works("a fraction in [0, 1]", _fraction)

    def good() -> Arrays:
        p = torch_problem(8)
        return _thief(), p.x, p.y

    cases: list[Any] = []
    for what, change, outcome in bad_samples((0.0, 1.0), integers=frac):
        cases.append(("data", what, lambda t, x, y, c=change: (t, c(x), y), outcome))
    for what, change, outcome in bad_labels(10):
        cases.append(("labels", what, lambda t, x, y, c=change: (t, x, c(y)), outcome))
    cases += [
        (
            "model",
            "a raw torch.nn.Module",
            lambda t, x, y: (t.model, x, y),
            raises(EstimatorError, "TorchClassifier"),
        ),
        ("edge", "one-hot labels", lambda t, x, y: (t, x, np.eye(10)[y]), frac),
        ("edge", "CPU tensors", lambda t, x, y: (t, torch.as_tensor(x), torch.as_tensor(y)), frac),
    ]
    return _rows(fn, "thief_accuracy(thief, x, y)", fn, good, cases)


def accuracy_vs_queries_cases(fn: Any) -> Rows:
    """``accuracy_vs_queries(attack, x_pool, x_test, y_test, budgets=...)``: no budget, a
    budget of 0, something that is not an extraction attack, bad test data, and a tiny
    budget, which works."""
    from bastion.attacks.extraction import CopycatCNN
    from bastion.testing._problems import extraction_problem

    def good() -> Arrays:
        p = extraction_problem()
        attack = CopycatCNN(p.victim, thief=_thief(), epochs=1, batch_size=16, random_state=0)
        return attack, p.x_pool, p.x_test[:20], _labels_of(p.victim, p.x_test[:20])

    def curve(out: Any) -> None:
        assert set(out) == {"queries", "accuracy", "fidelity"}, f"keys {sorted(out)}"
        assert len(out["accuracy"]) == 1 and 0.0 <= out["accuracy"][0] <= 1.0

    how = "accuracy_vs_queries(attack, x_pool, x_test, y_test, budgets)"
    cases = [
        (
            "use",
            "no budget",
            lambda a, xp, xt, yt: (a, xp, xt, yt, []),
            raises(InputError, "budget"),
        ),
        (
            "use",
            "a budget of 0",
            lambda a, xp, xt, yt: (a, xp, xt, yt, [0]),
            raises(InvalidParameterError, "nb_queries"),
        ),
        (
            "model",
            "not an extraction attack",
            lambda a, xp, xt, yt: ("copycat", xp, xt, yt, [20]),
            raises(InvalidParameterError, "attack"),
        ),
        (
            "data",
            "NaN in x_pool",
            lambda a, xp, xt, yt: (a, poke(xp, np.nan), xt, yt, [20]),
            raises(InputError, "NaN"),
        ),
        (
            "labels",
            "y_test out of range",
            lambda a, xp, xt, yt: (a, xp, xt, yt + 10, [20]),
            raises(InputError, "outside"),
        ),
        (
            "edge",
            "a budget of 20 queries",
            lambda a, xp, xt, yt: (a, xp, xt, yt, [20]),
            works("one point of the curve", curve),
        ),
    ]
    return _rows(fn, how, lambda a, xp, xt, yt, b: fn(a, xp, xt, yt, budgets=b), good, cases)


def _labels_of(est: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(est.predict(x)).argmax(1)


def _iris() -> Arrays:
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    return DecisionTreeClassifier(random_state=0).fit(x, y), x, y


def pdtp_cases(fn: Any) -> Rows:
    """``pdtp(target, learner, x, y, indexes=...)`` on iris with a decision tree: bad records
    and labels, bad indexes, a target without probabilities, and tensors, which work."""
    from sklearn.tree import DecisionTreeClassifier

    learner = DecisionTreeClassifier(random_state=0)

    def call(target: Any, x: Any, y: Any, indexes: Any = (0, 70)) -> Any:
        return fn(target, learner, x, y, indexes=list(indexes))

    def leakage(out: Any) -> None:
        assert out.average.shape == (2,) and np.all(np.isfinite(out.average)), "not finite"

    cases: list[Any] = []
    for what, change, outcome in bad_samples(None, integers=works("the leakage", leakage)):
        if what in ("empty batch", "a 0-d scalar", "wrong ndim"):
            outcome = raises(InputError, "record|row|shape|empty|scalar")
        if what == "wrong sample shape":
            outcome = raises(InputError, "features|shape")
        cases.append(("data", what, lambda t, x, y, c=change: (t, c(x), y), outcome))
    cases += [
        (
            "labels",
            "wrong number of labels",
            lambda t, x, y: (t, x, y[:-1]),
            raises(InputError, "row|labels"),
        ),
        (
            "labels",
            "NaN label",
            lambda t, x, y: (t, x, np.where(np.arange(len(y)) == 0, np.nan, y)),
            raises(InputError, "NaN|label"),
        ),
        (
            "use",
            "an index out of range",
            lambda t, x, y: (t, x, y, (0, 10_000)),
            raises(InputError, "indexes"),
        ),
        (
            "use",
            "a negative index",
            lambda t, x, y: (t, x, y, (-1,)),
            raises(InputError, "indexes"),
        ),
        (
            "model",
            "a target without probabilities",
            lambda t, x, y: (object(), x, y),
            raises(EstimatorError, "probabilities|predict_proba"),
        ),
        (
            "edge",
            "CPU tensors",
            lambda t, x, y: (t, torch.as_tensor(x), torch.as_tensor(y)),
            works("the leakage", leakage),
        ),
    ]
    return _rows(fn, "pdtp(target, learner, x, y, indexes)", call, _iris, cases)


# --------------------------------------------------------------------------- privacy


def _scores() -> Arrays:
    return (
        np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
        np.array([True, True, False, True, False, False]),
    )


def privacy_metric_cases(fn: Any) -> Rows:
    """The ROC metrics of :mod:`bastion.metrics.privacy` (``fn(scores, is_member)``): bad
    scores and ground truth, and tensors and infinite scores, which work."""
    name = fn.__name__

    def call(s: Any, m: Any) -> Any:
        out = fn(s, m)
        if name == "plot_roc":
            import matplotlib.pyplot as plt

            plt.close(out.figure)
        return out

    ok = works(f"the {name.replace('_', ' ')}")
    cases = [
        ("data", "NaN scores", lambda s, m: (np.where(m, np.nan, s), m), raises(InputError, "NaN")),
        (
            "data",
            "scores of another length",
            lambda s, m: (s[:-1], m),
            raises(InputError, "entries"),
        ),
        ("data", "2-d scores", lambda s, m: (s[:, None], m), raises(InputError, "1-d")),
        ("data", "empty scores", lambda s, m: (s[:0], m[:0]), raises(InputError, "members")),
        (
            "data",
            "string scores",
            lambda s, m: (s.astype(str), m),
            raises(InputError, "numeric|real"),
        ),
        (
            "data",
            "a ragged list",
            lambda s, m: ([[0.1, 0.2], [0.3]], m),
            raises(InputError, "numeric|1-d"),
        ),
        (
            "data",
            "complex scores",
            lambda s, m: (s.astype(np.complex128), m),
            raises(InputError, "complex|real"),
        ),
        (
            "labels",
            "only members",
            lambda s, m: (s, np.ones_like(m)),
            raises(InputError, "members"),
        ),
        (
            "labels",
            "membership holding 2",
            lambda s, m: (s, m.astype(int) * 2),
            raises(InputError, "boolean"),
        ),
        (
            "labels",
            "membership strings",
            lambda s, m: (s, m.astype(str)),
            raises(InputError, "boolean|numeric"),
        ),
        ("edge", "CPU tensors", lambda s, m: (torch.as_tensor(s), torch.as_tensor(m)), ok),
        ("edge", "infinite scores", lambda s, m: (np.where(m, np.inf, -np.inf), m), ok),
    ]
    rows = _rows(fn, f"{name}(scores, is_member)", call, _scores, cases)
    if name == "tpr_at_fpr":
        rows.append(
            BadInputCase(
                fn,
                "use",
                "fpr=2",
                "tpr_at_fpr(scores, is_member, fpr=2)",
                lambda: fn(*_scores(), fpr=2.0),
                raises(InputError, "fpr"),
            )
        )
    return rows


#: The rows of each metric function, by name.
def rejection_metric_cases(fn: Any) -> Rows:
    """``robust_accuracy_with_rejection(estimator, detector, x_adv, y)``: the rows of
    :func:`estimator_metric_cases` (bad samples, labels, models, batch size; float64 and
    tensors work), with a feature-squeezing detector fitted on the clean model."""

    def wrapped(est: Any, x: Any, y: Any, **kw: Any) -> Any:
        from bastion.defenses.detection import FeatureSqueezingDetector

        good, x_good, _ = _digits()
        squeezer = [lambda t: (t * 4).round() / 4]
        detector = FeatureSqueezingDetector(good, squeezers=squeezer).fit(x_good)
        return fn(est, detector, x, y, **kw).robust_accuracy_with_rejection

    wrapped.__name__ = fn.__name__
    return [dataclasses.replace(row, owner=fn) for row in estimator_metric_cases(wrapped)]


def _certified_accuracy_cases(fn: Any) -> Rows:
    from bastion.testing._bad_inputs_smoothing import certified_accuracy_cases

    return certified_accuracy_cases(fn)


METRIC_CASES: dict[str, Callable[[Any], Rows]] = {
    "detection_scores": mask_metric_cases,
    "detection_precision": mask_metric_cases,
    "detection_recall": mask_metric_cases,
    "detection_f1": mask_metric_cases,
    "attack_success_rate": estimator_metric_cases,
    "clean_accuracy": estimator_metric_cases,
    "fidelity": fidelity_cases,
    "thief_accuracy": thief_accuracy_cases,
    "accuracy_vs_queries": accuracy_vs_queries_cases,
    "pdtp": pdtp_cases,
    "roc_curve": privacy_metric_cases,
    "roc_auc": privacy_metric_cases,
    "tpr_at_fpr": privacy_metric_cases,
    "membership_advantage": privacy_metric_cases,
    "membership_report": privacy_metric_cases,
    "plot_roc": privacy_metric_cases,
    "robust_accuracy_with_rejection": rejection_metric_cases,
    "certified_accuracy": _certified_accuracy_cases,
    "certified_accuracy_curve": _certified_accuracy_cases,
}


def metric_cases(fn: Any) -> Rows:
    """The rows of a public metric function (none for an unknown one)."""
    build = METRIC_CASES.get(getattr(fn, "__name__", ""))
    return [] if build is None else build(fn)
