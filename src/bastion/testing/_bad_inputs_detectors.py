"""Bad-input rows of the poison detectors and Fine-Pruning."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.exceptions import EstimatorError, InputError, ModelError, NotFittedError
from bastion.testing._bad_inputs import (
    BadInputCase,
    Outcome,
    bad_labels,
    bad_samples,
    later,
    module_of,
    nan_model,
    poke,
    raises,
    works,
)
from bastion.testing._detector_checks import _preparation, _prepared, detector_params
from bastion.testing._problems import PoisonProblem, blackbox_problem, poison_problem

Rows = list[BadInputCase]

# --------------------------------------------------------------------------- detectors


@functools.lru_cache(maxsize=8)
def _ready(cls: Any) -> Any:
    """A detector of ``cls`` prepared on the clean data of :func:`poison_problem` (cached:
    ``detect`` leaves it as it is)."""
    return _prepared(cls, poison_problem())


def _clean_rows(p: PoisonProblem) -> tuple[np.ndarray, np.ndarray]:
    return p.x[:12], p.y[:12]


def detector_cases(cls: Any) -> Rows:
    """The rows of a poison detector class (``detect(x, y)`` on a detector prepared on clean
    data): bad samples and labels, an unknown layer, bad clean data for its preparation,
    ``detect`` before ``fit``, bad models, and tensor and float64 input, which must work."""
    rows: Rows = []
    preparation = _preparation(cls)
    extra = [
        n for n in ("sources", "x_val", "y_val") if n in inspect.signature(cls.detect).parameters
    ]
    how = f"detect(x, y{''.join(', ' + n + '=...' for n in extra)})"

    def detect(
        x: Callable[[np.ndarray], Any] = lambda x: x,
        y: Callable[[np.ndarray], Any] = lambda y: y,
    ) -> Callable[[], Any]:
        def call() -> Any:
            p = poison_problem()
            xb, yb = _clean_rows(p)
            return _ready(cls).detect(x(xb), y(yb), **_extras(cls, p))

        return call

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome, h: str = how) -> None:
        rows.append(BadInputCase(cls, kind, what, h, call, expect))

    converted = works("a DetectionResult, as for float input", lambda res: _result(res, 12))
    for what, change, outcome in bad_samples((0.0, 1.0), integers=converted):
        add("data", what, detect(x=change), outcome)
    for what, change, outcome in bad_labels(10):
        if cls.__name__ == "ProvenanceDefense" and what == "bool labels":
            outcome = works("booleans count as classes 0 and 1", lambda r: _result(r, 12))
        add("labels", what, detect(y=change), outcome)

    def built(estimator: Callable[[PoisonProblem], Any], **over: Any) -> Callable[[], Any]:
        def call() -> Any:
            p = poison_problem()
            det = _prepared(cls, p, estimator=estimator(p), **over)
            return det.detect(*_clean_rows(p), **_extras(cls, p))

        return call

    if "layer" in cls._param_names():
        for layer in ("no such layer", 999):
            add(
                "use",
                f"layer={layer!r}",
                built(lambda p: p.estimator, layer=layer),
                raises(InputError, "layer"),
            )
    if preparation is not None:
        for what, change, match in (
            ("NaN in the clean data", lambda x: poke(x, np.nan), "NaN"),
            ("clean data of the wrong shape", lambda x: x[..., :-1], "shape"),
            ("empty clean data", lambda x: x[:0], "empty"),
        ):
            add(
                "data",
                what,
                later(_prepare_on, cls, preparation, change),
                raises(InputError, match),
                f"{preparation}(x_clean)",
            )
    if preparation == "fit":
        add(
            "use",
            "detect before fit",
            lambda: cls(poison_problem().estimator, **detector_params(cls)).detect(
                *_clean_rows(poison_problem()), **_extras(cls, poison_problem())
            ),
            raises(NotFittedError, "fit"),
        )
    add(
        "model",
        "a raw torch.nn.Module",
        built(lambda p: module_of(p.estimator)),
        raises(EstimatorError, "TorchClassifier"),
    )
    if set(cls._estimator_requirements) - {"predict"}:
        add(
            "model",
            "a predict-only estimator",
            built(lambda p: blackbox_problem(4).estimator),
            raises(EstimatorError, "capabilit"),
        )
    add(
        "model",
        "a model returning NaN",
        built(lambda p: nan_model((1, 8, 8), 10)),
        raises(ModelError, "NaN"),
    )

    add(
        "edge",
        "CPU tensors",
        detect(x=lambda x: torch.as_tensor(x), y=lambda y: torch.as_tensor(y)),
        works("a DetectionResult of NumPy arrays", lambda r: _result(r, 12)),
    )
    add(
        "edge",
        "float64 NumPy",
        detect(x=lambda x: x.astype(np.float64)),
        works("a DetectionResult of NumPy arrays", lambda r: _result(r, 12)),
    )
    add(
        "edge",
        "one-hot labels",
        detect(y=lambda y: np.eye(10, dtype=np.float32)[y]),
        works("a DetectionResult of NumPy arrays", lambda r: _result(r, 12)),
    )
    return rows


def _prepare_on(cls: Any, preparation: str, change: Callable[[Any], Any]) -> Any:
    """A fresh detector's ``preparation`` (``fit``) on the changed clean data."""
    detector = cls(poison_problem().estimator, **detector_params(cls))
    return getattr(detector, preparation)(change(poison_problem().x_clean))


def _extras(cls: Any, p: PoisonProblem) -> dict[str, Any]:
    """The keyword arguments of ``detect`` beyond ``(x, y)`` that ``cls`` asks for, for the
    12 rows of :func:`_clean_rows`."""
    wanted = inspect.signature(cls.detect).parameters
    given = {"sources": p.sources[:12], "x_val": p.x_clean, "y_val": p.y_clean}
    return {k: v for k, v in given.items() if k in wanted}


def _result(res: Any, n: int) -> None:
    assert isinstance(res.is_poison, np.ndarray) and res.is_poison.shape == (n,), "is_poison"
    assert isinstance(res.scores, np.ndarray) and res.scores.shape == (n,), "scores"
    assert np.all(np.isfinite(res.scores)), "scores are not finite"


# --------------------------------------------------------------------------- fine-pruning


def fine_pruning_cases(cls: Any) -> Rows:
    """The rows of :class:`~bastion.defenses.poisoning.FinePruning`: bad clean data and
    labels for ``fit``, ``evaluate`` before ``fit``, bad models, and tensors, which must
    work."""
    rows: Rows = []
    fast = {"epochs": 1, "batch_size": 64, "random_state": 0}

    def fit(
        x: Callable[[np.ndarray], Any] = lambda x: x,
        y: Callable[[np.ndarray], Any] = lambda y: y,
        est: Callable[[PoisonProblem], Any] = lambda p: p.estimator,
        **over: Any,
    ) -> Callable[[], Any]:
        def call() -> Any:
            p = poison_problem()
            return cls(est(p), **{**fast, **over}).fit(x(p.x_clean[:40]), y(p.y_clean[:40]))

        return call

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome, h: str) -> None:
        rows.append(BadInputCase(cls, kind, what, h, call, expect))

    how = "fit(x_clean, y_clean)"
    converted = works("a fitted defence, as for float input", lambda out: _pruned(out))
    for what, change, outcome in bad_samples((0.0, 1.0), integers=converted):
        add("data", what, fit(x=change), outcome, how)
    for what, change, outcome in bad_labels(10):
        add("labels", what, fit(y=change), outcome, how)
    add(
        "use",
        "evaluate before fit",
        lambda: cls(poison_problem().estimator).evaluate(
            poison_problem().x_clean, poison_problem().y_clean
        ),
        raises(NotFittedError, "fit"),
        "evaluate(x_test, y_test)",
    )
    add(
        "use", "layer='no such layer'", fit(layer="no such layer"), raises(InputError, "layer"), how
    )
    add(
        "model",
        "a raw torch.nn.Module",
        fit(est=lambda p: module_of(p.estimator)),
        raises(EstimatorError, "TorchClassifier"),
        how,
    )
    add(
        "model",
        "a predict-only estimator",
        fit(est=lambda p: blackbox_problem(4).estimator),
        raises(EstimatorError, "capabilit"),
        how,
    )
    add(
        "model",
        "a model returning NaN",
        fit(est=lambda p: nan_model((1, 8, 8), 10)),
        raises(ModelError, "NaN"),
        how,
    )
    add(
        "edge",
        "CPU tensors",
        fit(x=lambda x: torch.as_tensor(x), y=lambda y: torch.as_tensor(y)),
        works("a fitted defence", lambda out: _pruned(out)),
        how,
    )
    return rows


def _pruned(defence: Any) -> None:
    assert hasattr(defence, "estimator_"), "no estimator_ after fit"
    assert 0.0 <= defence.prune_ratio_ <= 1.0
