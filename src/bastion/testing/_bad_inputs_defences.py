"""Bad-input rows of the input preprocessors, the output postprocessors, the defended estimators
(:class:`~bastion.defenses.postprocessing.PostprocessedClassifier`,
:class:`~bastion.defenses.training.ConfidenceMasking`) and the private trainers (DP-SGD,
label smoothing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.exceptions import (
    EstimatorError,
    InputError,
    InvalidParameterError,
    ModelError,
)
from bastion.testing._attack_checks import _invalid_value
from bastion.testing._bad_inputs import (
    BadInputCase,
    Outcome,
    bad_labels,
    bad_samples,
    float64,
    later,
    like,
    linear,
    module_of,
    nan_model,
    poke,
    raises,
    rewrapped,
    same_kind,
    works,
)
from bastion.testing._bad_inputs_estimators import predict_cases
from bastion.testing._problems import torch_problem

Rows = list[BadInputCase]


# --------------------------------------------------------------------------- postprocessors


def _probs() -> np.ndarray:
    """Four rows of class probabilities over 10 classes (float32)."""
    rng = np.random.default_rng(0)
    return rng.dirichlet(np.ones(10), size=4).astype(np.float32)


def postprocessor_cases(cls: Any) -> Rows:
    """The rows of an output postprocessor class (``postprocessor(probabilities)``, default
    parameters): bad probabilities, a bad parameter, and float64, tensor and one-row input,
    which must work."""
    rows: Rows = []

    def call(probs: Callable[[], Any], **params: Any) -> Callable[[], Any]:
        return lambda: cls(**params)(probs())

    def add(kind: str, what: str, run: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, "postprocessor(probs)", run, expect))

    for what, change, outcome in bad_samples(None):
        if what == "wrong sample shape":
            what, change = "3-d probabilities", lambda p: p[:, :, None]
        if what == "wrong ndim":
            outcome = raises(InputError, "shape")
        add("data", what.replace("x", "probs"), call(later(lambda c: c(_probs()), change)), outcome)
    for what, value in (("a negative probability", -0.2), ("a probability above 1", 1.5)):
        add(
            "data",
            what,
            call(later(lambda v: poke(_probs(), v), value)),
            raises(InputError, "probabilit"),
        )
    for name, allowed in cls._parameter_constraints.items():
        if name == "random_state":
            continue
        add(
            "use",
            f"{name}={_invalid_value(allowed)!r}",
            call(_probs, **{name: _invalid_value(allowed)}),
            raises(InvalidParameterError, name),
        )
    for what, probs in (
        ("float64 NumPy", lambda: _probs().astype(np.float64)),
        ("float32 CPU tensors", lambda: torch.as_tensor(_probs())),
        ("float64 CPU tensors", lambda: torch.as_tensor(_probs(), dtype=torch.float64)),
        ("a single row", lambda: _probs()[:1]),
    ):
        add(
            "edge",
            what,
            call(probs),
            works("probabilities of the input's kind", like(probs)),
        )
    return rows


# --------------------------------------------------------------------------- preprocessors


def _images() -> np.ndarray:
    """Four RGB images ``(4, 3, 8, 8)`` in ``[0, 1]`` (float32)."""
    return np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)


def _preprocessed_like(cls: Any, make: Callable[[], Any]) -> Callable[[Any], None]:
    """The result is of the input's kind; of its shape, but for ``ThermometerEncoding``,
    whose channels are multiplied by the number of levels."""

    def check(out: Any) -> None:
        x = make()
        shape = tuple(x.shape)
        if cls.__name__ == "ThermometerEncoding":
            shape = (shape[0], shape[1] * cls().levels, *shape[2:])
        same_kind(x, shape)(out)

    return check


def _untouched(cls: Any) -> Any:
    x = _images()
    before = x.copy()
    cls()(x)
    assert np.array_equal(x, before), "the input was modified"
    return x


def preprocessor_cases(cls: Any) -> Rows:
    """The rows of an input preprocessor class (``preprocessor(x)`` on RGB images, default
    parameters): bad batches, images of the wrong shape for the operation, bad parameters,
    and float64, tensor, one-image and boundary input, which must work (unmodified)."""
    rows: Rows = []
    images = cls.__name__ in (
        "JpegCompression",
        "RandomResizePad",
        "SpatialSmoothing",
        "TotalVarianceMinimization",
    )

    def call(x: Callable[[], Any], **params: Any) -> Callable[[], Any]:
        return lambda: cls(**params)(x())

    def add(kind: str, what: str, run: Callable[[], Any], expect: Outcome) -> None:
        # "x: ..." keeps the ids apart from those of a postprocessor of the same name
        what = f"x: {what.replace(' in x', '')}" if kind in ("data", "edge") else what
        rows.append(BadInputCase(cls, kind, what, "preprocessor(x)", run, expect))

    for what, change, outcome in bad_samples((0.0, 1.0)):
        if what == "wrong sample shape":  # any image size is valid
            continue
        if what == "wrong ndim":
            what, change = "a flat vector (no batch axis)", lambda x: x.reshape(-1)
            outcome = raises(InputError, "ndim")
        add("data", what, call(later(lambda c: c(_images()), change)), outcome)
    if images:
        add(
            "data",
            "one image without its batch axis",
            call(lambda: _images()[0]),
            raises(InputError, r"\(N, C, H, W\)"),
        )
    if cls.__name__ == "JpegCompression":
        add(
            "data",
            "images with 2 channels",
            call(lambda: _images()[:, :2]),
            raises(InputError, "channels"),
        )
    if cls.__name__ == "RandomResizePad":
        add(
            "data",
            "images as high as max_size",
            call(_images, max_size=8),
            raises(InputError, "max_size"),
        )
    for name, allowed in cls._parameter_constraints.items():
        add(
            "use",
            f"{name}={_invalid_value(allowed)!r}",
            call(_images, **{name: _invalid_value(allowed)}),
            raises(InvalidParameterError, name),
        )
    add(
        "use",
        "clip_values=(1.0, 0.0)",
        call(_images, clip_values=(1.0, 0.0)),
        raises(InvalidParameterError, "clip_values"),
    )
    for what, x in (
        ("float64 NumPy", lambda: _images().astype(np.float64)),
        ("float32 CPU tensors", lambda: torch.as_tensor(_images())),
        ("float64 CPU tensors", lambda: torch.as_tensor(_images(), dtype=torch.float64)),
        ("a single image", lambda: _images()[:1]),
        ("values at the bounds", lambda: np.round(_images())),
    ):
        add("edge", what, call(x), works("x of the input's kind", _preprocessed_like(cls, x)))
    add("edge", "the input is not modified", later(_untouched, cls), works("x unchanged"))
    return rows


# --------------------------------------------------------------------------- defended estimators


def _postprocessed(estimator: Any = None, **params: Any) -> Any:
    from bastion.defenses.postprocessing import PostprocessedClassifier, ReverseSigmoid

    est = torch_problem(4).estimator if estimator is None else estimator
    params.setdefault("postprocessors", [ReverseSigmoid()])
    return PostprocessedClassifier(est, **params)


def _masked(estimator: Any = None, **params: Any) -> Any:
    from bastion.defenses.training import ConfidenceMasking

    est = torch_problem(4).estimator if estimator is None else estimator
    return ConfidenceMasking(est, **params)


def wrapper_cases(cls: Any) -> Rows:
    """The rows of a defended estimator (a wrapper of the digits MLP): ``predict`` rows,
    gradients it does not forward, a raw module, models that answer badly and bad
    parameters."""
    make = {"PostprocessedClassifier": _postprocessed, "ConfidenceMasking": _masked}[cls.__name__]
    masking = cls.__name__ == "ConfidenceMasking"
    rows = predict_cases(cls, make, lambda: torch_problem(4), normalised=not masking)

    def add(kind: str, what: str, how: str, run: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, run, expect))

    def x() -> np.ndarray:
        return torch_problem(4).x

    add(
        "use",
        "loss_gradient (not offered)",
        "loss_gradient(x, y)",
        lambda: make().loss_gradient(x(), torch_problem(4).y),
        raises(EstimatorError, "loss_gradient"),
    )
    add(
        "model",
        "a raw torch.nn.Module",
        f"{cls.__name__}(module)",
        lambda: make(module_of(torch_problem(4).estimator)),
        raises(EstimatorError, "TorchClassifier"),
    )
    add(
        "model",
        "a model returning NaN",
        "predict(x)",
        lambda: make(nan_model((1, 8, 8), 10)).predict(x()),
        raises(ModelError, "NaN"),
    )
    add(
        "model",
        "a model with the wrong nb_classes",
        "predict(x)",
        lambda: make(rewrapped(torch_problem(4).estimator, nb_classes=5)).predict(x()),
        raises(ModelError, "nb_classes"),
    )
    if cls.__name__ == "PostprocessedClassifier":
        from bastion.defenses.postprocessing import ReverseSigmoid

        add(
            "use",
            "postprocessors that are not Postprocessors",
            "PostprocessedClassifier(estimator, postprocessors=[...])",
            lambda: make(postprocessors=[np.round]),
            raises(InvalidParameterError, "postprocessors"),
        )
        add(
            "use",
            "a postprocessor with a bad parameter",
            "predict(x)",
            lambda: make(postprocessors=[ReverseSigmoid(beta=-1.0)]).predict(x()),
            raises(InvalidParameterError, "beta"),
        )
    else:
        for params, name in (({"top_k": 0}, "top_k"), ({"top_k": 11}, "top_k")):
            add(
                "use",
                f"{name}={params[name]}",
                f"ConfidenceMasking(estimator, {name}={params[name]})",
                later(make, **params),
                raises(InvalidParameterError, name),
            )
        add(
            "use",
            "decimals=-1",
            "ConfidenceMasking(estimator, decimals=-1)",
            lambda: make(decimals=-1),
            raises(InvalidParameterError, "decimals"),
        )
    return rows


# --------------------------------------------------------------------------- trainers


class _BatchNormNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Flatten(), linear(64, 16), nn.BatchNorm1d(16), linear(16, 10))


def _mlp() -> nn.Module:
    from bastion.zoo import MLP

    return MLP(64, 10, hidden=(16,), random_state=0)


def _data() -> tuple[np.ndarray, np.ndarray]:
    p = torch_problem(24)
    return p.x, p.y


def _trainer(obj: Any) -> Callable[..., Any]:
    """``train(model, x, y)`` for a trainer class or function, with tiny settings."""
    name = obj.__name__
    if name == "DPSGDTrainer":  # the gdp accountant calibrates the noise in milliseconds
        return lambda m, x, y: obj(
            target_epsilon=5.0, epochs=1, batch_size=12, accountant="gdp", random_state=0
        ).fit(m, x, y)
    if name == "train_dp_sgd":
        return lambda m, x, y: obj(
            m, x, y, target_epsilon=5.0, epochs=1, batch_size=12, random_state=0
        )[0]
    return lambda m, x, y: obj(m, x, y, epochs=1, batch_size=12, random_state=0)


def trainer_cases(obj: Any) -> Rows:
    """The rows of a private trainer (``DPSGDTrainer.fit``, ``train_dp_sgd``,
    ``train_label_smoothing``): bad samples and labels, samples the model cannot take, bad
    models (not a module, BatchNorm under DP-SGD, NaN outputs), and float64 and tensor data,
    which must work."""
    rows: Rows = []
    train = _trainer(obj)
    how = "fit(model, x, y)" if obj.__name__ == "DPSGDTrainer" else f"{obj.__name__}(model, x, y)"
    dp = "dp" in obj.__name__.lower()

    def run(
        x: Callable[[np.ndarray], Any] = lambda x: x,
        y: Callable[[np.ndarray], Any] = lambda y: y,
        model: Callable[[], Any] = _mlp,
    ) -> Callable[[], Any]:
        def call() -> Any:
            xs, ys = _data()
            return train(model(), x(xs), y(ys))

        return call

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(obj, kind, what, how, call, expect))

    trained = works("the model, trained", lambda m: _is_module(m))
    # train_dp_sgd is DPSGDTrainer.fit with the prv accountant (seconds per run): its rows
    # that train are those of DPSGDTrainer, but one.
    slow = obj.__name__ == "train_dp_sgd"
    for what, change, outcome in bad_samples(None, integers=trained):
        if slow and outcome is trained:
            continue
        if what == "wrong sample shape":  # the trainer learns the sample shape from the model
            outcome = raises(ModelError, "model")
        if what == "wrong ndim":  # one sample of shape (8, 8) for 24 labels
            outcome = raises(InputError, "labels")
        add("data", what, run(x=change), outcome)
    for what, change, outcome in bad_labels(10):
        add("labels", what, run(y=change), outcome)
    add(
        "model",
        "a model that is not a module",
        run(model=lambda: "mlp"),
        raises(InvalidParameterError, "model"),
    )
    add(
        "model",
        "a module without parameters",
        run(model=nn.Flatten),
        raises(InvalidParameterError, "model"),
    )
    add(
        "model",
        "a model returning NaN",
        run(model=lambda: nan_model((1, 8, 8), 10).model),
        raises(ModelError, "NaN"),
    )
    if dp:
        add(
            "model",
            "a model with BatchNorm",
            run(model=_BatchNormNet),
            raises(EstimatorError, "BatchNorm"),
        )
    if not slow:
        add("edge", "float64 NumPy (a float32 model)", run(x=float64), trained)
    add(
        "edge",
        "CPU tensors",
        run(x=lambda x: torch.as_tensor(x), y=lambda y: torch.as_tensor(y)),
        trained,
    )
    return rows


def _is_module(model: Any) -> None:
    assert isinstance(model, nn.Module), f"returned a {type(model).__name__}"
    assert not model.training, "the model is left in training mode"
    for p in model.parameters():
        assert bool(torch.isfinite(p).all()), "non-finite weights after training"
