"""Bad-input rows of the evasion attacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.attacks.base import EvasionAttack, FixedBudgetAttack
from bastion.attacks.query import QueryAttack
from bastion.exceptions import (
    EstimatorError,
    InputError,
    ModelError,
    NotFittedError,
)
from bastion.testing._attack_checks import conformance_params
from bastion.testing._bad_inputs import (
    BAD_ENDPOINTS,
    BadInputCase,
    Outcome,
    bad_labels,
    bad_samples,
    black_box,
    endpoint,
    float64,
    identical,
    module_of,
    nan_model,
    on,
    raises,
    rewrapped,
    same_kind,
    warns,
    works,
)
from bastion.testing._problems import Problem, blackbox_problem, torch_problem, tree_problem
from bastion.testing._specs import conformance_spec

#: Samples per row, and the settings that make a row that runs an attack cheap.
_N = 4
_CHEAP = {
    "max_iter": 2,
    "binary_search_steps": 1,
    "num_random_init": 1,
    "max_queries": 60,
    "nb_grad_queries": 10,
    "nb_init_directions": 5,
}


def _cheap(cls: Any, **over: Any) -> dict[str, Any]:
    names = cls._param_names()
    return conformance_params(cls, **{k: v for k, v in _CHEAP.items() if k in names}, **over)


def _problem(cls: Any = None) -> Problem:
    # The attacks that read trees run on a decision tree over the same digits.
    if cls is not None and conformance_spec(cls).problem == "tree":
        return tree_problem(_N)
    return torch_problem(_N)


Part = Callable[[Problem], Any]


def _same(p: Problem) -> Any:
    return p.estimator


def _generate(
    cls: Any,
    *,
    x: Part = lambda p: p.x,
    y: Part = lambda p: p.y,
    est: Part = _same,
    mask: Any = None,
    cheap: bool = False,
    **over: Any,
) -> Callable[[], Any]:
    """``cls(estimator, **params).generate(x, y, mask=mask)`` on the digits problem, each part
    a function of the problem."""

    def call() -> Any:
        p = _problem(cls)
        params = _cheap(cls, **over) if cheap else conformance_params(cls, **over)
        return cls(est(p), **params).generate(x(p), y(p), mask=mask)

    return call


def _endpoint(answer: Callable[..., Any], labels_only: bool) -> Part:
    """A black box over the digits whose prediction function is ``answer``."""
    return lambda p: endpoint(answer, labels_only)


def _tensors_of(dtype: torch.dtype) -> Part:
    return lambda p: torch.as_tensor(float64(p.x), dtype=dtype)


def _like_tensors(dtype: torch.dtype) -> Callable[[Any], None]:
    return lambda out: same_kind(torch.as_tensor(_problem().x, dtype=dtype))(out)


def evasion_cases(cls: Any) -> list[BadInputCase]:
    """The rows of an evasion attack class: bad data and labels, bad models, bad use, and the
    edge cases that must work."""
    assert issubclass(cls, EvasionAttack)
    names = cls._param_names()
    gradients = any("gradient" in c for c in cls._estimator_requirements)
    query = issubclass(cls, QueryAttack)
    scores = query and cls._needs_scores
    rows: list[BadInputCase] = []

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, "generate(x, y)", call, expect))

    for what, change, outcome in bad_samples((0.0, 1.0)):
        add("data", what, _generate(cls, x=on("x", change)), outcome)
    for what, change, outcome in bad_labels(10):
        add("labels", what, _generate(cls, y=on("y", change)), outcome)

    # ---- bad models
    add(
        "model",
        "a raw torch.nn.Module",
        _generate(cls, est=lambda p: module_of(torch_problem(_N).estimator)),
        raises(EstimatorError, "TorchClassifier"),
    )
    if gradients:
        add(
            "model",
            "a predict-only estimator",
            _generate(cls, est=lambda p: blackbox_problem(_N).estimator),
            raises(EstimatorError, "gradient.*black-box"),
        )
    if scores:
        add(
            "model",
            "a labels-only BlackBoxClassifier",
            _generate(cls, est=lambda p: blackbox_problem(_N, labels_only=True).estimator),
            raises(EstimatorError, "labels_only"),
        )
    if "trees" in cls._estimator_requirements:
        # The model rows below are torch models, without trees.
        add(
            "model",
            "an estimator without trees",
            _generate(cls, est=lambda p: torch_problem(_N).estimator),
            raises(EstimatorError, "'trees'"),
        )
    else:
        add(
            "model",
            "a model returning NaN",
            _generate(cls, est=lambda p: nan_model((1, 8, 8), 10)),
            raises(ModelError, "NaN"),
        )
        add(
            "model",
            "a model with the wrong nb_classes",
            _generate(cls, est=lambda p: rewrapped(p.estimator, nb_classes=5), y=lambda p: p.y % 5),
            raises(ModelError, "nb_classes"),
        )
        add(
            "model",
            "a model whose input_shape does not match",
            _generate(
                cls,
                est=lambda p: rewrapped(p.estimator, input_shape=(1, 4, 4)),
                x=lambda p: np.ascontiguousarray(p.x[..., :4, :4]),
            ),
            raises(ModelError, "input_shape"),
        )
    if query:
        for what, answer, labels_only, match in BAD_ENDPOINTS:
            if labels_only and scores:
                continue
            add(
                "model",
                what,
                _generate(
                    cls,
                    est=_endpoint(answer, labels_only),
                ),
                raises(ModelError, match),
            )
        if scores:
            add(
                "model",
                "predict_fn returns labels without labels_only",
                _generate(
                    cls,
                    est=lambda p: black_box(
                        lambda b: np.zeros(len(b), dtype=np.int64), (1, 8, 8), 10
                    ),
                ),
                raises(EstimatorError, "labels_only"),
            )

    # ---- bad use
    add(
        "use",
        "a mask that does not broadcast",
        _generate(cls, mask=np.ones((3, 3))),
        raises(InputError, "mask"),
    )
    add(
        "use",
        "a mask that is not 0/1",
        _generate(cls, mask=np.full((1, 8, 8), 0.5)),
        raises(InputError, "mask"),
    )
    if "targeted" in names:
        add(
            "use",
            "targeted without target labels",
            _generate(cls, y=lambda p: None, targeted=True),
            raises(InputError, "target"),
        )
    if callable(getattr(cls, "evaluate", None)):
        rows.append(
            BadInputCase(
                cls,
                "use",
                "evaluate(x) without labels",
                "evaluate(x)",
                lambda: cls(_problem().estimator, **conformance_params(cls)).evaluate(_problem().x),
                raises(InputError, "label"),
            )
        )
    if callable(getattr(cls, "apply", None)) and callable(getattr(cls, "fit", None)):
        rows.append(
            BadInputCase(
                cls,
                "use",
                "apply before fit",
                "apply(x)",
                lambda: cls(_problem().estimator, **conformance_params(cls)).apply(_problem().x),
                raises(NotFittedError, "fit"),
            )
        )
    if query:
        add(
            "use",
            "max_queries=1, spent on the clean label",
            _generate(cls, x=lambda p: float64(p.x), y=lambda p: None, max_queries=1),
            warns(
                RuntimeWarning,
                "max_queries",
                "x returned bit-identical",
                lambda out: identical(float64(_problem().x))(out),
            ),
        )

    # ---- edge cases that must work
    def x64(p: Problem) -> np.ndarray:
        return float64(p.x)

    add(
        "edge",
        "float64 NumPy",
        _generate(cls, x=x64, cheap=True),
        works("float64 NumPy out", lambda out: same_kind(x64(_problem()))(out)),
    )
    add(
        "edge",
        "float64, every feature frozen (mask of zeros)",
        _generate(cls, x=x64, mask=np.zeros((1, 8, 8)), cheap=True),
        works("x returned bit-identical", lambda out: identical(x64(_problem()))(out)),
    )
    add(
        "edge",
        "float64 tensors, every feature frozen",
        _generate(cls, x=lambda p: torch.as_tensor(x64(p)), mask=torch.zeros(1, 8, 8), cheap=True),
        works(
            "x returned bit-identical",
            lambda out: identical(torch.as_tensor(x64(_problem())))(out),
        ),
    )
    if issubclass(cls, FixedBudgetAttack):
        add(
            "edge",
            "float64, eps=0",
            _generate(cls, x=x64, eps=0.0, cheap=True),
            works("x returned bit-identical", lambda out: identical(x64(_problem()))(out)),
        )
    add(
        "edge",
        "a single sample",
        _generate(cls, x=lambda p: p.x[:1], y=lambda p: p.y[:1], cheap=True),
        works("one adversarial example", lambda out: same_kind(_problem().x[:1])(out)),
    )
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).replace("torch.", "")
        add(
            "edge",
            f"{name} CPU tensors",
            _generate(
                cls,
                x=_tensors_of(dtype),
                y=lambda p: torch.as_tensor(p.y),
                cheap=True,
            ),
            works(
                f"a {name} CPU tensor out",
                _like_tensors(dtype),
            ),
        )
    add(
        "edge",
        "labels omitted (the model's predictions)",
        _generate(cls, y=lambda p: None, cheap=True),
        works("adversarial examples of x's kind", lambda out: same_kind(_problem().x)(out)),
    )
    add(
        "edge",
        "one-hot labels",
        _generate(cls, y=lambda p: np.eye(10, dtype=np.float32)[p.y], cheap=True),
        works("adversarial examples of x's kind", lambda out: same_kind(_problem().x)(out)),
    )
    return rows
