"""Bad-input rows of bound propagation and verification (:mod:`bastion.certification`):
bad samples, labels and budgets, norms the method cannot handle, estimators without the
``module`` capability, models with a layer that has no bound rule, and edge cases that must
work (zero radius, one budget per sample, float64 input)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.exceptions import EstimatorError, InvalidParameterError, ModelError
from bastion.testing._bad_inputs import (
    BadInputCase,
    Outcome,
    bad_labels,
    bad_samples,
    black_box,
    float64,
    raises,
    works,
)

Rows = list[BadInputCase]


@functools.lru_cache(maxsize=1)
def _relu_problem() -> tuple[Any, np.ndarray, np.ndarray]:
    """A small ReLU MLP on 8x8 digits (untrained: the rows test inputs, not accuracy), six
    samples and their labels."""
    from bastion.estimators import TorchClassifier
    from bastion.testing._problems import _digits8
    from bastion.zoo import MLP

    x, y = _digits8()
    model = MLP(64, 10, hidden=(16,), random_state=0).eval()
    clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0))
    return clf, x[:6], y[:6]


def _tanh_estimator() -> Any:
    from bastion.testing._problems import torch_problem

    return torch_problem(4).estimator  # a tanh MLP: tanh has no bound rule


def _black_box() -> Any:
    clf, _, _ = _relu_problem()
    return black_box(lambda x: clf.predict(x), clf.input_shape, clf.nb_classes)


def _bounds_ok(result: Any) -> None:
    lo, up = result
    assert lo.shape == up.shape and lo.shape[1] == 10, "bounds of shape (N, nb_classes)"
    assert bool(np.all(np.asarray(lo) <= np.asarray(up) + 1e-6)), "lower <= upper"


def bounds_cases(cls: Any) -> Rows:
    """The rows of a bound class (:class:`IntervalBounds`, :class:`CrownBounds`):
    ``bounds(x, eps=..., norm=...)``."""
    rows: Rows = []
    how = "bounds(x, eps=0.05)"

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, call, expect))

    def call(
        x: Callable[[Any], Any] = lambda x: x,
        estimator: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> Callable[[], Any]:
        def run() -> Any:
            clf, xs, _ = _relu_problem()
            est = estimator() if estimator is not None else clf
            params = {"eps": 0.05, **kwargs}
            return cls(est).bounds(x(xs), **params)

        return run

    ok = works("lower <= upper, of shape (N, nb_classes)", _bounds_ok)
    for what, change, outcome in bad_samples((0.0, 1.0)):
        add("data", what, call(x=change), outcome)
    add("use", "negative eps", call(eps=-0.1), raises(InvalidParameterError, "eps"))
    add("use", "NaN eps", call(eps=float("nan")), raises(InvalidParameterError, "eps"))
    add(
        "use",
        "eps beyond the clip_values range",
        call(eps=1.5),
        raises(InvalidParameterError, "clip_values"),
    )
    add(
        "use",
        "eps of the wrong length",
        call(eps=np.full(3, 0.1)),
        raises(InvalidParameterError, "eps"),
    )
    add("use", "norm=1", call(norm=1), raises(InvalidParameterError, "norm"))
    add(
        "model",
        "an estimator without the module capability",
        call(estimator=_black_box),
        raises(EstimatorError, "module.*RandomizedSmoothing"),
    )
    add(
        "model",
        "a model with a tanh layer",
        call(x=lambda x: x[:2], estimator=_tanh_estimator),
        raises(ModelError, "Tanh.*Supported"),
    )
    add("edge", "eps=0", call(eps=0.0), ok)
    add("edge", "one eps per sample", call(eps=np.linspace(0.0, 0.05, 6)), ok)
    add("edge", "norm=2", call(norm=2), ok)
    add("edge", "float64 NumPy (a float32 model)", call(x=float64), ok)
    return rows


def _verdicts_ok(result: Any) -> None:
    assert result.status.shape == result.verified.shape, "one status per sample"
    assert set(result.status.tolist()) <= {"verified", "falsified", "unknown"}, "known statuses"


def verify_cases(fn: Any) -> Rows:
    """The rows of :func:`bastion.certification.verify`: ``verify(estimator, x, y, eps=...)``."""
    rows: Rows = []
    how = "verify(estimator, x, y, eps=0.05)"

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(fn, kind, what, how, call, expect))

    def call(
        x: Callable[[Any], Any] = lambda x: x,
        y: Callable[[Any], Any] = lambda y: y,
        estimator: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> Callable[[], Any]:
        def run() -> Any:
            clf, xs, ys = _relu_problem()
            est = estimator() if estimator is not None else clf
            params = {"eps": 0.05, **kwargs}
            return fn(est, x(xs), y(ys), **params)

        return run

    ok = works("one known status per sample", _verdicts_ok)
    for what, change, outcome in bad_samples((0.0, 1.0)):
        add("data", what, call(x=change), outcome)
    for what, change, outcome in bad_labels(10):
        add("labels", what, call(y=change), outcome)
    add("use", "negative eps", call(eps=-0.1), raises(InvalidParameterError, "eps"))
    add(
        "use",
        "eps beyond the clip_values range",
        call(eps=1.5),
        raises(InvalidParameterError, "clip_values"),
    )
    add("use", "an unknown method", call(method="lp"), raises(InvalidParameterError, "method"))
    add("use", "norm=1", call(norm=1), raises(InvalidParameterError, "norm"))
    add(
        "use",
        "method='complete' with norm=2",
        call(method="complete", norm=2),
        raises(InvalidParameterError, "norm='inf'.*crown"),
    )
    add(
        "use",
        "a negative time_limit",
        call(method="complete", time_limit=-1.0),
        raises(InvalidParameterError, "time_limit"),
    )
    add(
        "model",
        "an estimator without the module capability",
        call(estimator=_black_box),
        raises(EstimatorError, "module.*RandomizedSmoothing"),
    )
    add(
        "model",
        "a model with a tanh layer",
        call(estimator=_tanh_estimator, x=lambda x: x[:2], y=lambda y: y[:2]),
        raises(ModelError, "Tanh.*Supported"),
    )
    add("edge", "eps=0", call(eps=0.0), ok)
    add("edge", "labels None (the predictions)", call(y=lambda y: None), ok)
    add("edge", "one-hot labels", call(y=lambda y: np.eye(10, dtype=np.float32)[y]), ok)
    add("edge", "torch tensors", call(x=torch.as_tensor, y=torch.as_tensor), ok)
    add("edge", "float64 NumPy (a float32 model)", call(x=float64), ok)
    add("edge", "method='complete' with a time limit", call(method="complete", time_limit=5.0), ok)
    return rows
