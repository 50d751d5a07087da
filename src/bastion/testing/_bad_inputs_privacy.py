"""Bad-input rows of the model-extraction and inference attacks (membership, attribute
inference, model inversion, reconstruction)."""

from __future__ import annotations

import dataclasses
import functools
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
    NotFittedError,
)
from bastion.testing._bad_inputs import (
    BAD_ENDPOINTS,
    BadInputCase,
    Outcome,
    as_numpy,
    bad_labels,
    bad_samples,
    black_box,
    endpoint,
    float64,
    linear,
    module_of,
    nan_model,
    poke,
    raises,
    rewrapped,
    same_kind,
    works,
)
from bastion.testing._extraction_checks import _make as _make_extraction
from bastion.testing._extraction_checks import default_extraction_problem
from bastion.testing._inference_checks import _conf, _family, _fitted, _uses
from bastion.testing._inference_checks import _infer as _infer_fn
from bastion.testing._inference_checks import _make as _make_inference
from bastion.testing._problems import ExtractionProblem, InferenceProblem
from bastion.testing._specs import conformance_spec

Rows = list[BadInputCase]

# --------------------------------------------------------------------------- extraction


def _stolen(victim_shape: tuple[int, ...], nb_classes: int) -> Callable[[Any], None]:
    def check(thief: Any) -> None:
        assert hasattr(thief, "predict"), f"extract returned a {type(thief).__name__}"
        assert tuple(thief.input_shape) == victim_shape, "the thief has another input_shape"
        assert thief.nb_classes == nb_classes, "the thief has another nb_classes"

    return check


def extraction_cases(cls: Any) -> Rows:
    """The rows of a model-extraction attack class (``extract(x_pool)``, tiny budgets): a bad
    pool, victims that answer badly (a NaN model, a wrong ``nb_classes``, a remote API that
    fails), a raw module, thieves that cannot be trained or do not match the victim, and
    float64 and tensor pools, which must work."""
    if conformance_spec(cls).problem == "relu":
        return _fee_cases(cls)
    rows: Rows = []
    stolen = works("a thief of the victim's shape", _stolen((1, 8, 8), 10))

    def extract(
        x: Callable[[np.ndarray], Any] = lambda x: x,
        victim: Callable[[ExtractionProblem], Any] | None = None,
        thief: Callable[[], Any] | None = None,
        **over: Any,
    ) -> Callable[[], Any]:
        def call() -> Any:
            p = default_extraction_problem(cls)
            if victim is not None:
                p = dataclasses.replace(p, victim=victim(p))
            if thief is not None:
                p = dataclasses.replace(p, make_thief=lambda seed: thief())
            return _make_extraction(cls, p, **over).extract(x(p.x_pool))

        return call

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, "extract(x_pool)", call, expect))

    for what, change, outcome in bad_samples((0.0, 1.0), integers=stolen):
        add("data", what.replace(" x", " x_pool"), extract(x=change), outcome)
    add(
        "model",
        "a raw torch.nn.Module victim",
        extract(victim=lambda p: module_of(p.victim)),
        raises(EstimatorError, "TorchClassifier"),
    )
    add(
        "model",
        "a victim returning NaN",
        extract(victim=lambda p: nan_model((1, 8, 8), 10)),
        raises(ModelError, "NaN"),
    )
    add(
        "model",
        "a victim with the wrong nb_classes",
        extract(
            victim=lambda p: rewrapped(p.victim, nb_classes=5),
            thief=lambda: rewrapped(default_extraction_problem(cls).make_thief(0), nb_classes=5),  # type: ignore[misc]
        ),
        raises(ModelError, "nb_classes"),
    )
    for what, answer, labels_only, match in BAD_ENDPOINTS:
        add(
            "model",
            f"a victim API: {what}",
            extract(victim=functools.partial(_endpoint_victim, answer, labels_only)),
            raises(ModelError, match),
        )
    add(
        "model",
        "a raw torch.nn.Module thief",
        extract(thief=lambda: default_extraction_problem(cls).make_thief(0).model),  # type: ignore[misc]
        raises(EstimatorError, "TorchClassifier"),
    )
    add(
        "model",
        "a thief that cannot be trained",
        extract(thief=lambda: black_box(lambda b: np.full((len(b), 10), 0.1), (1, 8, 8), 10)),
        raises(EstimatorError, "fit"),
    )
    add(
        "model",
        "a thief of another nb_classes",
        extract(
            thief=lambda: rewrapped(default_extraction_problem(cls).make_thief(0), nb_classes=5)  # type: ignore[misc]
        ),
        raises(InputError, "thief"),
    )
    add("edge", "float64 NumPy pool", extract(x=float64), stolen)
    add("edge", "CPU tensor pool", extract(x=lambda x: torch.as_tensor(x)), stolen)
    return rows


def _fee_cases(cls: Any) -> Rows:
    """Functionally equivalent extraction crafts its own queries (``x_pool`` is ignored, as
    documented): its rows are about the victim."""
    rows: Rows = []

    def extract(victim: Callable[[ExtractionProblem], Any], **over: Any) -> Callable[[], Any]:
        def call() -> Any:
            p = default_extraction_problem(cls)
            return cls(victim(p), **{"nb_neurons": 4, "random_state": 0, **over}).extract()

        return call

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, "extract()", call, expect))

    def net(p: ExtractionProblem) -> Any:
        return module_of(p.victim)

    def failing(x: torch.Tensor) -> torch.Tensor:
        raise ConnectionError("the endpoint is down")

    add(
        "model",
        "a callable victim without input_dim",
        extract(net),
        raises(InvalidParameterError, "input_dim"),
    )
    add(
        "model",
        "a victim returning NaN",
        extract(lambda p: nan_model((8,), 3, clip_values=None)),
        raises(ModelError, "NaN"),
    )
    for what, fn, match in (
        ("a callable victim that raises", failing, "raised|endpoint"),
        (
            "a callable victim returning NaN",
            lambda x: torch.full((x.shape[0], 3), float("nan"), dtype=torch.float64),
            "NaN",
        ),
        (
            "a callable victim returning the wrong number of rows",
            lambda x: torch.zeros(x.shape[0] + 1, 3, dtype=torch.float64),
            "shape|rows",
        ),
        ("a callable victim returning strings", lambda x: np.full((len(x), 3), "p"), "numeric"),
    ):
        add(
            "model",
            what,
            extract(functools.partial(_constant, fn), input_dim=8),
            raises(ModelError, match),
        )
    add(
        "use",
        "nb_neurons above the input dimension",
        extract(lambda p: p.victim, nb_neurons=9),
        raises(InvalidParameterError, "nb_neurons"),
    )
    add(
        "edge",
        "a callable victim (a torch module)",
        extract(net, input_dim=8),
        works("the recovered torch model", lambda m: _is_module(m)),
    )
    return rows


def _endpoint_victim(answer: Callable[..., Any], labels_only: bool, p: Any) -> Any:
    return endpoint(answer, labels_only)


def _constant(value: Any, p: Any) -> Any:
    return value


def _change_y(change: Callable[[Any], Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Inputs (a dict of arrays) with ``y`` changed."""
    return lambda inputs: {**inputs, "y": change(inputs["y"])}


def _is_module(model: Any) -> None:
    assert isinstance(model, torch.nn.Module), f"returned a {type(model).__name__}"


# --------------------------------------------------------------------------- inference

#: Where the samples of each family's problem must lie, and its number of classes.
_FAMILY = {
    "membership": ((0.0, 1.0), 2),
    "attribute": (None, 2),
    "inversion": ((0.0, 1.0), 10),
    "reconstruction": (None, 3),
}


@functools.lru_cache(maxsize=16)
def _ready_attack(cls: Any) -> Any:
    """An attack of ``cls`` built and fitted on its family's problem (cached: ``infer`` leaves
    it as it is)."""
    p = _problem(cls)
    cheap = {"max_iter": 5} if "max_iter" in cls._param_names() else {}
    return _fitted(_make_inference(cls, p, **cheap), p)


def _problem(cls: Any) -> InferenceProblem:
    from bastion.testing._inference_checks import default_inference_problem

    return default_inference_problem(cls)


def _infer(attack: Any, p: InferenceProblem, inputs: dict[str, Any]) -> Any:
    cls = type(attack)
    return _infer_fn(cls)(attack, p, **{k: inputs[k] for k in _uses(cls)})


def _result_check(cls: Any, like: Callable[[InferenceProblem], Any]) -> Callable[[Any], None]:
    """The result of ``cls`` on its problem's inputs, with ``x`` replaced by ``like(p)``: one
    value per sample, an inversion of ``x``'s kind, or a ``(record, label)`` pair."""

    def check(out: Any) -> None:
        p = _problem(cls)
        family = _family(cls)
        if family == "reconstruction":
            assert isinstance(out, tuple) and len(out) == 2, "not (x_target, y_target)"
        elif family == "inversion":
            same_kind(like(p))(out)
        else:
            n = len(p.truth)
            assert as_numpy(out).shape == (n,), f"shape {as_numpy(out).shape}, not ({n},)"

    return check


def inference_cases(cls: Any) -> Rows:
    """The rows of an inference attack class on its family's problem (see
    :mod:`bastion.testing._inference_checks`): bad samples, labels and model outputs for
    ``infer``; bad data for ``fit`` and ``infer`` before ``fit``; a raw module and a NaN model
    as the target; and tensor and float64 input, which must work."""
    conf = _conf(cls)
    family = _family(cls)
    clip, nb = _FAMILY[family]
    uses = _uses(cls)
    method = "reconstruct" if family == "reconstruction" else "infer"
    how = f"{method}({', '.join(uses)})"
    rows: Rows = []

    def infer(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[], Any]:
        def call() -> Any:
            p = _problem(cls)
            return _infer(_ready_attack(cls), p, change(dict(p.inputs)))

        return call

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome, h: str = how) -> None:
        rows.append(BadInputCase(cls, kind, what, h, call, expect))

    others = [k for k in uses if k != "x"]

    def with_x(change: Callable[[np.ndarray], Any], what: str) -> Callable[[dict[str, Any]], Any]:
        def apply(inputs: dict[str, Any]) -> dict[str, Any]:
            out = {**inputs, "x": change(inputs["x"])}
            # Cut the other rows with x where x loses samples, so that x is what is wrong.
            if what == "empty batch":
                out.update({k: inputs[k][:0] for k in others})
            if what == "wrong ndim":
                out.update({k: inputs[k][:1] for k in others})
            return out

        return apply

    # An inversion returns x's kind, so x must be floating-point; the others convert x.
    converted = works("a result, as for float input", _result_check(cls, lambda p: None))
    integers = None if family == "inversion" else converted
    for what, change, outcome in bad_samples(clip, integers=integers):
        add("data", what, infer(with_x(change, what)), outcome)
    if "y" in uses:
        for what, change, outcome in bad_labels(nb):
            add("labels", what, infer(_change_y(change)), outcome)
    if "pred" in uses:
        add(
            "data",
            "model outputs of the wrong width",
            infer(lambda i: {**i, "pred": i["pred"][:, :-1]}),
            raises(InputError, "pred|shape|width"),
        )
        add(
            "data",
            "NaN in the model outputs",
            infer(lambda i: {**i, "pred": poke(i["pred"], np.nan)}),
            raises(InputError, "NaN"),
        )
    fit = conf.fit
    if fit is not None:
        add(
            "use",
            f"{method} before fit",
            lambda: _infer(
                _make_inference(cls, _problem(cls)), _problem(cls), _problem(cls).inputs
            ),
            raises(NotFittedError, "fit"),
        )
        fit_keys = list(_problem_fit_keys(family))

        def fitted_with(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[], Any]:
            def call() -> Any:
                p = _problem(cls)
                return _fitted(_make_inference(cls, p), p, change(dict(p.fit_inputs)))

            return call

        add(
            "data",
            "fit: NaN in x",
            fitted_with(lambda f: {**f, "x": poke(f["x"], np.nan)}),
            raises(InputError, "NaN"),
            f"fit({', '.join(fit_keys)})",
        )
        if "estimator" in inspect.signature(cls.__init__).parameters:  # else any width goes
            add(
                "data",
                "fit: wrong sample shape",
                fitted_with(lambda f: {**f, "x": f["x"][..., :-1]}),
                raises(InputError, "shape|features|column"),
                f"fit({', '.join(fit_keys)})",
            )
        if "y" in fit_keys:
            for what, change, outcome in bad_labels(nb)[:4]:
                add(
                    "labels",
                    f"fit: {what}",
                    fitted_with(_change_y(change)),
                    outcome,
                    f"fit({', '.join(fit_keys)})",
                )
    if "estimator" in inspect.signature(cls.__init__).parameters:
        add(
            "model",
            "a raw torch.nn.Module target",
            _with_target(cls, lambda p: linear(2, 2)),
            raises(EstimatorError, "TorchClassifier|estimator|scikit-learn|SklearnClassifier"),
        )
        nan = _NAN_TARGETS.get(family)
        if nan is not None and not cls.__name__.startswith("AttributeInferenceWhiteBox"):
            add(
                "model", "a target returning NaN", _with_target(cls, nan), raises(ModelError, "NaN")
            )

    def tensors(i: dict[str, Any]) -> dict[str, Any]:
        return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in i.items()}

    def tensor_check(out: Any) -> None:
        for part in out if isinstance(out, tuple) else (out,):
            assert isinstance(part, torch.Tensor), f"tensors in, a {type(part).__name__} out"

    add("edge", "CPU tensors", infer(tensors), works("tensors out", tensor_check))
    add(
        "edge",
        "float64 NumPy",
        infer(lambda i: {**i, "x": i["x"].astype(np.float64)}),
        works(
            "a result of x's kind",
            _result_check(cls, lambda p: p.inputs["x"].astype(np.float64)),
        ),
    )
    return rows


def _problem_fit_keys(family: str) -> tuple[str, ...]:
    return ("x", "y") if family == "membership" else ("x",)


def _with_target(cls: Any, target: Callable[[InferenceProblem], Any]) -> Callable[[], Any]:
    """Build, fit and run ``cls`` on its problem with another target model."""

    def call() -> Any:
        p = dataclasses.replace(_problem(cls), estimator=target(_problem(cls)))
        attack = _fitted(_make_inference(cls, p), p)
        return _infer(attack, p, p.inputs)

    return call


_NAN_TARGETS: dict[str, Callable[[InferenceProblem], Any]] = {
    "membership": lambda p: nan_model((40,), 2),
    "inversion": lambda p: nan_model((1, 8, 8), 10),
    "attribute": lambda p: nan_model((3,), 2, clip_values=None),
}
