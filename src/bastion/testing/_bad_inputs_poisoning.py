"""Bad-input rows of the poisoning attacks and the backdoor triggers."""

from __future__ import annotations

import dataclasses
import inspect
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
    Outcome,
    as_numpy,
    bad_labels,
    bad_samples,
    identical,
    later,
    like,
    linear,
    nan_model,
    on,
    raises,
    same_kind,
    warns,
    works,
)
from bastion.testing._poisoning_checks import _make, default_poisoning_problem
from bastion.testing._problems import (
    PoisoningProblem,
    blackbox_problem,
    poisoning_problem,
)
from bastion.testing._specs import conformance_spec

Rows = list[BadInputCase]


# --------------------------------------------------------------------------- poisoning attacks


def _with(problem: PoisoningProblem, estimator: Any) -> PoisoningProblem:
    return dataclasses.replace(problem, estimator=estimator)


def poisoning_cases(cls: Any) -> Rows:
    """The rows of a poisoning attack class (``poison(x, y)``), on the problem it runs on in
    the conformance suite: bad samples and labels; a raw module, a predict-only and a NaN model
    for attacks built on a model; a class parameter outside the classes and a budget that
    poisons nothing; and float64 and tensor input, which must work."""
    rows: Rows = []
    svm = conformance_spec(cls).problem == "svm"
    on_model = "estimator" in inspect.signature(cls.__init__).parameters and not svm
    nb = 2 if svm else 10
    n = 40 if svm else 48

    def problem() -> PoisoningProblem:
        return default_poisoning_problem(cls)

    def poison(
        x: Callable[[PoisoningProblem], Any] = lambda p: p.x,
        y: Callable[[PoisoningProblem], Any] = lambda p: p.y,
        est: Callable[[PoisoningProblem], Any] | None = None,
        **over: Any,
    ) -> Callable[[], Any]:
        def call() -> Any:
            p = problem()
            if est is not None:
                p = _with(p, est(p))
            return _make(cls, p, **over).poison(x(p), y(p))

        return call

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, "poison(x, y)", call, expect))

    for what, change, outcome in bad_samples((0.0, 1.0)):
        if not on_model and not svm and what == "wrong sample shape":
            continue  # a trigger fits images of any size
        if svm and what == "wrong sample shape":  # the SVM knows the features from x_val
            what, outcome = "features other than x_val's", raises(InvalidParameterError, "x_val")
        add("data", what, poison(x=on("x", change)), outcome)
    for what, change, outcome in bad_labels(nb):
        over: dict[str, Any] = {}
        if (
            not on_model
            and not svm
            and what in ("label out of range", "one-hot of the wrong width")
        ):
            what, over = f"{what} for nb_classes={nb}", {"nb_classes": nb}  # else any class goes
        if svm:
            what, outcome = _SVM_LABELS.get(what, (what, outcome))
        add("labels", what, poison(y=on("y", change), **over), outcome)

    if on_model:
        add(
            "model",
            "a raw torch.nn.Module",
            poison(est=lambda p: p.estimator.model),
            raises(EstimatorError, "TorchClassifier"),
        )
        add(
            "model",
            "a predict-only estimator",
            poison(est=lambda p: blackbox_problem(4).estimator),
            raises(EstimatorError, "capabilit|gradient"),
        )
        add(
            "model",
            "a model returning NaN",
            poison(est=lambda p: nan_model((1, 8, 8), 10)),
            raises(ModelError, "NaN"),
        )
    if svm:
        add(
            "model",
            "a learner that is not an SVC",
            poison(est=lambda p: linear(64, 2)),
            raises(EstimatorError, "SVC"),
        )
        add(
            "labels",
            "one-hot labels (the SVM takes label values)",
            poison(y=lambda p: np.eye(nb, dtype=np.float32)[p.y]),
            raises(InputError, r"labels \(N,\)"),
        )
    for name in cls._class_parameters:
        add(
            "use",
            f"{name} outside the classes",
            poison(**_params(name, nb + 5)),
            raises(InvalidParameterError, name),
        )
    for name in ("fraction", "budget"):
        if name in cls._param_names():
            add(
                "use",
                f"{name}=1e-4 (poisons no sample)",
                poison(**_params(name, 1e-4)),
                warns(
                    UserWarning,
                    "no sample was poisoned",
                    "x returned bit-identical",
                    lambda out: identical(problem().x)(out[0]),
                ),
            )

    add(
        "edge",
        "float64 NumPy",
        poison(x=lambda p: p.x.astype(np.float64)),
        works(
            "float64 x_p, y_p of y's dtype", _kinds(lambda: problem().x.astype(np.float64), problem)
        ),
    )
    add(
        "edge",
        "CPU tensors",
        poison(x=lambda p: torch.as_tensor(p.x), y=lambda p: torch.as_tensor(p.y)),
        works(
            "tensors out, a bool mask tensor",
            _kinds(lambda: torch.as_tensor(problem().x), problem, tensors=True),
        ),
    )
    if not svm:
        add(
            "edge",
            "one-hot labels",
            poison(y=lambda p: np.eye(nb, dtype=np.float32)[p.y]),
            works("one-hot labels out", lambda out: _one_hot(out[1], n, nb)),
        )
    return rows


#: SVMPoisoning takes labels of any two numeric values (kept in ``y_p``), not class indices:
#: how the generic label rows read for it.
_SVM_LABELS: dict[str, tuple[str, Outcome]] = {
    "label out of range": ("a third label value", raises(InputError, "two classes")),
    "negative label": ("a third, negative label value", raises(InputError, "two classes")),
    "non-integral labels": (
        "label values y_val does not have",
        raises(InvalidParameterError, "y_val"),
    ),
    "bool labels": (
        "bool labels (two values)",
        works("bool labels out", lambda out: _dtype(out[1], np.bool_)),
    ),
}


def _dtype(a: Any, dtype: Any) -> None:
    assert as_numpy(a).dtype == dtype, f"dtype {as_numpy(a).dtype}, not {np.dtype(dtype)}"


def _kinds(
    x: Callable[[], Any], problem: Callable[[], PoisoningProblem], tensors: bool = False
) -> Callable[[Any], None]:
    """``(x_p, y_p, mask)`` of the kinds of ``x()`` and of the problem's labels (as tensors
    with ``tensors``), the mask a bool array (tensor) with one entry per sample."""

    def check(out: Any) -> None:
        y = problem().y
        same_kind(x())(out[0])
        same_kind(torch.as_tensor(y) if tensors else y)(out[1])
        _bool_mask(out[2], len(y), tensor=tensors)

    return check


def _params(name: str, value: Any) -> dict[str, Any]:
    return {name: value}


def _bool_mask(mask: Any, n: int, *, tensor: bool) -> None:
    assert isinstance(mask, torch.Tensor) == tensor, f"mask is a {type(mask).__name__}"
    m = as_numpy(mask)
    assert m.dtype == np.bool_ and m.shape == (n,), f"mask {m.dtype} {m.shape}"


def _one_hot(y: Any, n: int, nb: int) -> None:
    a = as_numpy(y)
    assert a.shape == (n, nb), f"labels of shape {a.shape}"
    assert np.all(a.sum(axis=1) == 1) and set(np.unique(a).tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------- triggers


def trigger_cases(cls: Any) -> Rows:
    """The rows of a backdoor trigger class (``apply(x)``, default parameters): bad images,
    an image too small for the trigger, bad parameters, and float64, tensor and one-image
    input, which must work."""
    rows: Rows = []

    def x4() -> np.ndarray:
        return poisoning_problem().x[:4]

    def apply(x: Callable[[], Any] = x4, **params: Any) -> Callable[[], Any]:
        return lambda: cls(**params).apply(x())

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, "apply(x)", call, expect))

    for what, change, outcome in bad_samples((0.0, 1.0)):
        if what == "wrong sample shape":
            what, change = "images without a channel axis", lambda x: x[:, 0]
            outcome = raises(InputError, "shape|channel")
        add("data", what, apply(later(lambda c: c(x4()), change)), outcome)
    add(
        "use",
        "clip_values=(1, 0)",
        apply(clip_values=(1.0, 0.0)),
        raises(InvalidParameterError, "clip_values"),
    )
    if cls.__name__ == "PatchTrigger":
        add(
            "use",
            "a patch larger than the image",
            apply(size=12),
            raises(InputError, "does not fit"),
        )
    for what, x in (
        ("float64 NumPy", lambda: x4().astype(np.float64)),
        ("float32 CPU tensors", lambda: torch.as_tensor(x4())),
        ("float64 CPU tensors", lambda: torch.as_tensor(x4(), dtype=torch.float64)),
        ("a single image", lambda: x4()[:1]),
    ):
        add(
            "edge",
            what,
            apply(x),
            works("images of x's kind", like(x)),
        )
    return rows
