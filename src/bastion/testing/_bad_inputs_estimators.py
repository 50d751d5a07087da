"""Bad-input rows of the estimators (and the ``predict`` rows every defended estimator
shares)."""

from __future__ import annotations

import copy
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
    BAD_ENDPOINTS,
    BadInputCase,
    Outcome,
    as_numpy,
    bad_labels,
    bad_samples,
    black_box,
    endpoint,
    float64,
    module_of,
    nan_model,
    on,
    poke,
    raises,
    rewrapped,
    same_kind,
    works,
)
from bastion.testing._problems import ESTIMATOR_EXAMPLES, Problem, torch_problem

_N = 4
Part = Callable[[Problem], Any]


def _probabilities(n: int, k: int, normalised: bool = True) -> Callable[[Any], None]:
    def check(out: Any) -> None:
        p = as_numpy(out)
        assert p.shape == (n, k), f"shape {p.shape}, expected {(n, k)}"
        assert np.issubdtype(p.dtype, np.floating), f"dtype {p.dtype}"
        assert np.all((p >= 0) & (p <= 1)), "scores outside [0, 1]"
        if normalised:
            assert np.allclose(p.sum(axis=1), 1.0, atol=1e-4), "rows do not sum to one"

    return check


def predict_cases(
    owner: Any, make: Callable[[], Any], problem: Callable[[], Problem], normalised: bool = True
) -> list[BadInputCase]:
    """Rows of ``predict`` for an estimator made by ``make()`` on ``problem()``'s data: bad
    data, a bad ``batch_size``, and float64, tensor and single-sample input, which must
    work (integer and bool inputs inside ``clip_values`` are converted: they work too).
    ``normalised``: whether the scores sum to one (not for a masking defence)."""
    rows: list[BadInputCase] = []

    def predict(x: Part, **kw: Any) -> Callable[[], Any]:
        return lambda: make().predict(x(problem()), **kw)

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(owner, kind, what, "predict(x)", call, expect))

    n, k = _N, 10
    converted = works("probabilities, as for float input", _probabilities(n, k, normalised))
    for what, change, outcome in bad_samples((0.0, 1.0), integers=converted):
        add("data", what, predict(on("x", change)), outcome)
    add(
        "use",
        "batch_size=0",
        predict(lambda q: q.x, batch_size=0),
        raises(InvalidParameterError, "batch_size"),
    )
    for what, x in (
        ("float64 NumPy", lambda q: float64(q.x)),
        ("float64 CPU tensors", lambda q: torch.as_tensor(float64(q.x))),
        ("float32 CPU tensors", lambda q: torch.as_tensor(q.x)),
        ("a single sample", lambda q: q.x[:1]),
    ):

        def check(out: Any, x: Part = x) -> None:
            like = x(problem())
            if isinstance(like, torch.Tensor):
                same_kind(torch.zeros(like.shape[0], k, dtype=like.dtype))(out)
            else:
                same_kind(np.zeros((like.shape[0], k), dtype=like.dtype))(out)
            _probabilities(like.shape[0], k, normalised)(out)

        add("edge", what, predict(x), works("probabilities of x's kind", check))
    return rows


def _fit_copy(est: Any) -> Any:
    return est.clone() if "clone" in est.capabilities else copy.deepcopy(est)


def estimator_cases(cls: Any) -> list[BadInputCase]:
    """The rows of an estimator class with an example in ``ESTIMATOR_EXAMPLES``: ``predict``,
    the gradient, activation and fit methods it offers (or the capability error where it
    does not), its constructor and models that answer badly."""
    example: Any = ESTIMATOR_EXAMPLES[cls.__name__][0]

    def problem() -> Problem:
        return example(n=_N)

    rows = predict_cases(cls, lambda: problem().estimator, problem)
    caps, k = _CAPABILITIES[cls.__name__], 10

    def add(kind: str, what: str, how: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, call, expect))

    def later(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """``fn(problem(), *args)``, when the row runs."""
        return lambda: fn(problem(), *args)

    calls: dict[str, tuple[str, Callable[[Any, Problem], Any]]] = {
        "loss_gradient": ("loss_gradient(x, y)", lambda e, q: e.loss_gradient(q.x, q.y)),
        "class_gradient": ("class_gradient(x)", lambda e, q: e.class_gradient(q.x)),
        "activations": ("get_activations(x, 0)", lambda e, q: e.get_activations(q.x, 0)),
    }  # fit, clone and prune exist only on the estimators that have them
    for cap, (how, run) in calls.items():
        if cap not in caps:
            add(
                "use",
                f"{cap} without the capability",
                how,
                later(lambda q, r: r(q.estimator, q), run),
                raises(EstimatorError, cap),
            )
    if "loss_gradient" in caps:
        for what, change, outcome in bad_labels(k):
            add(
                "labels",
                f"loss_gradient: {what}",
                "loss_gradient(x, y)",
                later(lambda q, c: q.estimator.loss_gradient(q.x, c(q.y)), change),
                outcome,
            )
        add(
            "data",
            "loss_gradient: NaN in x",
            "loss_gradient(x, y)",
            lambda: problem().estimator.loss_gradient(poke(problem().x, np.nan), problem().y),
            raises(InputError, "NaN"),
        )
    if "class_gradient" in caps:
        for label in (k, -1):
            add(
                "labels",
                f"class_gradient: label={label}",
                "class_gradient(x, label)",
                later(lambda q, lab: q.estimator.class_gradient(q.x, label=lab), label),
                raises(InputError, "outside"),
            )
    if "activations" in caps:
        for layer, error, match in (
            ("no such layer", InputError, "unknown layer"),
            (10**6, InputError, "out of range"),
            (1.5, InvalidParameterError, "layer"),
        ):
            add(
                "use",
                f"get_activations: layer={layer!r}",
                "get_activations(x, layer)",
                later(lambda q, lay: q.estimator.get_activations(q.x, lay), layer),
                raises(error, match),
            )
    if "fit" in caps:
        for what, change, outcome in bad_labels(k)[:3]:
            add(
                "labels",
                f"fit: {what}",
                "fit(x, y)",
                later(lambda q, c: _fit_copy(q.estimator).fit(q.x, c(q.y)), change),
                outcome,
            )
        add(
            "data",
            "fit: NaN in x",
            "fit(x, y)",
            lambda: _fit_copy(problem().estimator).fit(poke(problem().x, np.nan), problem().y),
            raises(InputError, "NaN"),
        )
    for what, how, call, expect in _ESTIMATOR_SPECIFIC.get(cls.__name__, lambda: [])():
        add("model" if "model" in what else "use", what, how, call, expect)
    return rows


#: The capabilities of each class's first example in ``ESTIMATOR_EXAMPLES`` (known without
#: building it: the rows are listed before any model is trained).
_CAPABILITIES: dict[str, frozenset[str]] = {
    "TorchClassifier": frozenset(
        {
            "predict",
            "logits",
            "loss_gradient",
            "class_gradient",
            "activations",
            "activation_gradient",
            "parameter_gradient",
            "fit",
            "clone",
            "prune",
            "module",
        }
    ),
    "SklearnClassifier": frozenset(
        {
            "predict",
            "logits",
            "loss_gradient",
            "class_gradient",
            "activations",
            "activation_gradient",
            "fit",
            "clone",
        }
    ),
    "BlackBoxClassifier": frozenset({"predict"}),
    "OnnxClassifier": frozenset({"predict"}),
    "JaxClassifier": frozenset({"predict", "logits", "loss_gradient", "class_gradient"}),
    "KerasClassifier": frozenset(
        {"predict", "logits", "loss_gradient", "class_gradient", "activations"}
    ),
    "TensorFlowClassifier": frozenset({"predict", "logits", "loss_gradient", "class_gradient"}),
    "RemoteClassifier": frozenset({"predict"}),
    "XGBoostClassifier": frozenset({"predict", "trees"}),
    "LightGBMClassifier": frozenset({"predict", "trees"}),
    "CatBoostClassifier": frozenset({"predict", "trees"}),
    "ExpectationOverTransformation": frozenset(
        {"predict", "logits", "loss_gradient", "class_gradient"}
    ),
    "DefendedEstimator": frozenset(
        {"predict", "logits", "loss_gradient", "class_gradient", "activations", "fit"}
    ),
}


Row = tuple[str, str, Callable[[], Any], Outcome]


def _torch_specific() -> list[Row]:
    from bastion.estimators import TorchClassifier

    def model() -> Any:
        return module_of(torch_problem(_N).estimator)

    def x() -> np.ndarray:
        return torch_problem(_N).x

    bad = raises(InvalidParameterError, "")
    return [
        (
            "a model returning NaN",
            "predict(x)",
            lambda: nan_model((1, 8, 8), 10).predict(x()),
            raises(ModelError, "NaN"),
        ),
        (
            "a model with the wrong nb_classes",
            "predict(x)",
            lambda: rewrapped(torch_problem(_N).estimator, nb_classes=5).predict(x()),
            raises(ModelError, "nb_classes"),
        ),
        (
            "a model whose input_shape does not match",
            "predict(x)",
            lambda: rewrapped(torch_problem(_N).estimator, input_shape=(1, 4, 4)).predict(
                np.ascontiguousarray(x()[..., :4, :4])
            ),
            raises(ModelError, "input_shape"),
        ),
        (
            "model is not a torch module",
            "TorchClassifier(model)",
            lambda: TorchClassifier("net", input_shape=(1, 8, 8), nb_classes=10),  # type: ignore[arg-type]
            raises(InvalidParameterError, "model"),
        ),
        (
            "nb_classes=1",
            "TorchClassifier(model, nb_classes=1)",
            lambda: TorchClassifier(model(), input_shape=(1, 8, 8), nb_classes=1),
            raises(InvalidParameterError, "nb_classes"),
        ),
        (
            "input_shape=()",
            "TorchClassifier(model, input_shape=())",
            lambda: TorchClassifier(model(), input_shape=(), nb_classes=10),
            raises(InvalidParameterError, "input_shape"),
        ),
        (
            "clip_values=(1, 0)",
            "TorchClassifier(model, clip_values=(1, 0))",
            lambda: TorchClassifier(
                model(), input_shape=(1, 8, 8), nb_classes=10, clip_values=(1.0, 0.0)
            ),
            raises(InvalidParameterError, "clip_values"),
        ),
        (
            "preprocessing with std 0",
            "TorchClassifier(model, preprocessing=(0, 0))",
            lambda: TorchClassifier(
                model(), input_shape=(1, 8, 8), nb_classes=10, preprocessing=(0.0, 0.0)
            ),
            bad,
        ),
    ]


def _endpoint_predict(answer: Callable[..., Any], labels_only: bool) -> Callable[[], Any]:
    return lambda: endpoint(answer, labels_only).predict(torch_problem(_N).x)


def _blackbox_specific() -> list[Row]:
    from bastion.estimators import BlackBoxClassifier

    def x() -> np.ndarray:
        return torch_problem(_N).x

    rows: list[Row] = [
        (
            f"a model: {what}",
            "predict(x)",
            _endpoint_predict(answer, labels_only),
            raises(ModelError, match),
        )
        for what, answer, labels_only, match in BAD_ENDPOINTS
    ]
    rows += [
        (
            "a model: predict_fn returns complex scores",
            "predict(x)",
            lambda: black_box(lambda b: np.full((len(b), 10), 0.1 + 0j), (1, 8, 8), 10).predict(
                x()
            ),
            raises(ModelError, "numeric|complex"),
        ),
        (
            "a model: predict_fn returns None",
            "predict(x)",
            lambda: black_box(lambda b: None, (1, 8, 8), 10).predict(x()),
            raises(ModelError, "shape"),
        ),
        (
            "a model: predict_fn returns labels without labels_only",
            "predict(x)",
            lambda: black_box(lambda b: np.zeros(len(b), np.int64), (1, 8, 8), 10).predict(x()),
            raises(EstimatorError, "labels_only"),
        ),
        (
            "predict_fn is not callable",
            "BlackBoxClassifier(predict_fn)",
            lambda: BlackBoxClassifier(3, input_shape=(1, 8, 8), nb_classes=10),  # type: ignore[arg-type]
            raises(InvalidParameterError, "predict_fn"),
        ),
        (
            "labels_only='yes'",
            "BlackBoxClassifier(f, labels_only='yes')",
            lambda: BlackBoxClassifier(
                len,
                input_shape=(1, 8, 8),
                nb_classes=10,
                labels_only="yes",  # type: ignore[arg-type]
            ),
            raises(InvalidParameterError, "labels_only"),
        ),
    ]
    return rows


def _sklearn_specific() -> list[Row]:
    from sklearn.linear_model import LogisticRegression

    from bastion.estimators import SklearnClassifier
    from bastion.testing._problems import sklearn_problem

    class NaNProba(LogisticRegression):
        def predict_proba(self, x: Any) -> Any:
            return np.full((len(x), len(self.classes_)), np.nan)

    def nan_proba() -> Any:
        p = sklearn_problem("logistic", _N)
        model = copy.deepcopy(module_of(p.estimator))
        model.__class__ = NaNProba
        return SklearnClassifier(model, input_shape=(1, 8, 8), clip_values=(0, 1))

    return [
        (
            "an unfitted model",
            "SklearnClassifier(LogisticRegression())",
            lambda: SklearnClassifier(LogisticRegression()),
            raises(InvalidParameterError, "fitted"),
        ),
        (
            "an input_shape with the wrong number of features",
            "SklearnClassifier(model, input_shape=(3,))",
            lambda: SklearnClassifier(
                module_of(sklearn_problem("logistic").estimator), input_shape=(3,)
            ),
            raises(InvalidParameterError, "input_shape"),
        ),
        (
            "a model whose predict_proba returns NaN",
            "predict(x)",
            lambda: nan_proba().predict(sklearn_problem("logistic", _N).x),
            raises(ModelError, "NaN"),
        ),
    ]


def _eot_specific() -> list[Row]:
    from bastion.estimators import ExpectationOverTransformation as EOT

    def x() -> np.ndarray:
        return torch_problem(_N).x

    def eot(transform: Any) -> Any:
        return EOT(torch_problem(_N).estimator, nb_samples=2, transform=transform, random_state=0)

    def fails(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raise ValueError("the transform failed")

    return [
        (
            "a raw torch.nn.Module",
            "EOT(module)",
            lambda: EOT(module_of(torch_problem(_N).estimator)),
            raises(EstimatorError, "TorchClassifier"),
        ),
        (
            "nb_samples=0",
            "EOT(estimator, nb_samples=0)",
            lambda: EOT(torch_problem(_N).estimator, nb_samples=0),
            raises(InvalidParameterError, "nb_samples"),
        ),
        (
            "a model: the transform raises",
            "predict(x)",
            lambda: eot(fails).predict(x()),
            raises(ModelError, "transform"),
        ),
        (
            "a model: the transform returns NaN",
            "predict(x)",
            lambda: eot(lambda x, g: x * float("nan")).predict(x()),
            raises(ModelError, "NaN"),
        ),
        (
            "a model: the transform changes the shape",
            "loss_gradient(x, y)",
            lambda: eot(lambda x, g: x[..., :-1]).loss_gradient(x(), torch_problem(_N).y),
            raises(ModelError, ""),
        ),
        (
            "a model returning NaN",
            "predict(x)",
            lambda: EOT(nan_model((1, 8, 8), 10), nb_samples=2).predict(x()),
            raises(ModelError, "NaN"),
        ),
    ]


def _defended_specific() -> list[Row]:
    from bastion.estimators import DefendedEstimator

    def x() -> np.ndarray:
        return torch_problem(_N).x

    class Pre:
        differentiable = False
        randomized = False
        clip_values: Any = (0.0, 1.0)

        def __init__(self, op: Callable[[torch.Tensor], torch.Tensor]) -> None:
            self.op = op

        def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
            return self.op(x)

        def bpda(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def defended(op: Callable[[torch.Tensor], torch.Tensor], **params: Any) -> Any:
        return DefendedEstimator(torch_problem(_N).estimator, preprocessors=[Pre(op)], **params)

    def fails(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("the preprocessor failed")

    def wide() -> Any:
        pre = Pre(lambda x: x)
        pre.clip_values = (0.0, 255.0)
        return DefendedEstimator(torch_problem(_N).estimator, preprocessors=[pre])

    return [
        (
            "a raw torch.nn.Module",
            "DefendedEstimator(module)",
            lambda: DefendedEstimator(module_of(torch_problem(_N).estimator)),
            raises(EstimatorError, "TorchClassifier"),
        ),
        (
            "gradients='adam'",
            "DefendedEstimator(estimator, gradients='adam')",
            lambda: defended(lambda x: x, gradients="adam"),
            raises(InvalidParameterError, "gradients"),
        ),
        (
            "order='shuffled'",
            "DefendedEstimator(estimator, order='shuffled')",
            lambda: defended(lambda x: x, order="shuffled"),
            raises(InvalidParameterError, "order"),
        ),
        (
            "input_shape=(0, 8)",
            "DefendedEstimator(estimator, input_shape=(0, 8))",
            lambda: defended(lambda x: x, input_shape=(0, 8)),
            raises(InvalidParameterError, "input_shape"),
        ),
        (
            "a preprocessor that is not one",
            "DefendedEstimator(estimator, preprocessors=[np.round])",
            lambda: DefendedEstimator(torch_problem(_N).estimator, preprocessors=[np.round]),
            raises(InvalidParameterError, "preprocessors"),
        ),
        (
            "a preprocessor with other clip_values",
            "DefendedEstimator(estimator, preprocessors=[...])",
            wide,
            raises(InvalidParameterError, "255"),
        ),
        (
            "a model: the preprocessor raises",
            "predict(x)",
            lambda: defended(fails).predict(x()),
            raises(ModelError, "preprocessor failed"),
        ),
        (
            "a model: the preprocessor returns NaN",
            "predict(x)",
            lambda: defended(lambda x: x * float("nan")).predict(x()),
            raises(ModelError, "NaN"),
        ),
        (
            "a model: the preprocessor changes the shape",
            "loss_gradient(x, y)",
            lambda: defended(lambda x: x[..., :-1]).loss_gradient(x(), torch_problem(_N).y),
            raises(ModelError, ""),
        ),
        (
            "a model returning NaN",
            "predict(x)",
            lambda: DefendedEstimator(nan_model((1, 8, 8), 10)).predict(x()),
            raises(ModelError, "NaN"),
        ),
    ]


def _remote_specific() -> list[Row]:
    import socket

    from bastion.estimators import RemoteClassifier
    from bastion.testing._problems import _digits_endpoint

    def remote(path: str, **params: Any) -> Any:
        return RemoteClassifier(
            f"{_digits_endpoint().url}/{path}",
            input_shape=(1, 8, 8),
            nb_classes=10,
            clip_values=(0, 1),
            **params,
        )

    def x() -> np.ndarray:
        return torch_problem(_N).x

    def closed_port() -> str:
        with socket.socket() as sock:  # a port that nothing listens on once closed
            sock.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{sock.getsockname()[1]}/"

    def make(url: str = "https://example.org/predict", **params: Any) -> Callable[[], Any]:
        return lambda: RemoteClassifier(url, input_shape=(1, 8, 8), nb_classes=10, **params)

    def answer(path: str, params: dict[str, Any]) -> Callable[[], Any]:
        return lambda: remote(path, **params).predict(x())

    rows: list[Row] = [
        (
            f"a model: the endpoint answers {what}",
            "predict(x)",
            answer(path, params),
            raises(ModelError, match),
        )
        for what, path, params, match in (
            ("NaN", "nan", {}, "NaN"),
            ("one row too many", "extra-row", {}, "shape"),
            ("malformed JSON", "malformed", {}, "JSON"),
            ("without the output key", "no-key", {}, "key"),
            ("labels outside the classes", "label-outside", {"output": "labels"}, "outside"),
            ("HTTP 400", "status/400", {}, "400"),
            ("HTTP 503 (retried, then given up)", "status/503", {"backoff": 0.0}, "503"),
        )
    ]
    rows.append(
        (
            "a model: nothing listens at the URL",
            "predict(x)",
            lambda: RemoteClassifier(
                closed_port(), input_shape=(1, 8, 8), nb_classes=10, max_retries=0
            ).predict(x()),
            raises(ModelError, "connection"),
        )
    )
    rows.append(
        (
            "predict beyond max_queries",
            "RemoteClassifier(url, max_queries=3).predict(x)",
            lambda: remote("probabilities", max_queries=3).predict(x()),
            raises(ModelError, "max_queries"),
        )
    )
    for what, params, name in (
        ("url='ftp://example.org/'", {"url": "ftp://example.org/"}, "url"),
        ("url='file:///etc/passwd'", {"url": "file:///etc/passwd"}, "url"),
        ("output='scores'", {"output": "scores"}, "output"),
        ("a constructor batch_size=0", {"batch_size": 0}, "batch_size"),
        ("max_queries=0", {"max_queries": 0}, "max_queries"),
        ("rate_limit=0", {"rate_limit": 0}, "rate_limit"),
        ("max_retries=-1", {"max_retries": -1}, "max_retries"),
        ("a header with a newline", {"headers": {"X-Key": "a\r\nInjected: 1"}}, "headers"),
        ("decode=3", {"decode": 3}, "decode"),
    ):
        rows.append(
            (
                what,
                f"RemoteClassifier(url, {what})",
                make(**params),
                raises(InvalidParameterError, name),
            )
        )
    return rows


_ESTIMATOR_SPECIFIC: dict[str, Callable[[], list[Row]]] = {
    "RemoteClassifier": _remote_specific,
    "TorchClassifier": _torch_specific,
    "BlackBoxClassifier": _blackbox_specific,
    "SklearnClassifier": _sklearn_specific,
    "ExpectationOverTransformation": _eot_specific,
    "DefendedEstimator": _defended_specific,
}
