"""Bad-input rows of randomized smoothing (:class:`~bastion.certification.RandomizedSmoothing`),
its trainers (:class:`~bastion.certification.GaussianNoiseTrainer`,
:class:`~bastion.certification.SmoothAdvTrainer`) and the certified-accuracy metrics
(:func:`~bastion.metrics.certified_accuracy`, :func:`~bastion.metrics.certified_accuracy_curve`):
bad samples, bad parameters of ``certify`` and ``predict``, estimators without ``predict``,
bad certified predictions, radii and labels, and the edge cases that must work."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
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
from bastion.testing._problems import torch_problem

__all__ = ["certified_accuracy_cases", "smoothing_cases", "smoothing_trainer_cases"]

Rows = list[BadInputCase]

#: Small Monte Carlo settings that keep every row fast.
_SMALL = {"n0": 10, "n": 50, "batch_size": 64}


def _certified(like: str) -> Outcome:
    def check(out: Any) -> None:
        pred, radius = out
        want = torch.Tensor if like == "tensor" else np.ndarray
        assert isinstance(pred, want) and isinstance(radius, want), "not the input's kind"
        assert tuple(pred.shape) == tuple(radius.shape), "pred and radius differ in shape"
        r = radius.detach().cpu().numpy() if isinstance(radius, torch.Tensor) else radius
        assert np.all(r >= 0), "negative radius"

    return works(f"(prediction, radius) as {like}", check)


def smoothing_cases(cls: Any) -> Rows:
    """The rows of :class:`~bastion.certification.RandomizedSmoothing` (``certify`` with
    small ``n0`` and ``n``, and ``predict``)."""
    rows: Rows = []

    def add(kind: str, what: str, how: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, call, expect))

    def certify(
        x: Callable[[Any], Any] = lambda x: x, *, est: Any = None, **changes: Any
    ) -> Callable[[], Any]:
        def call() -> Any:
            p = torch_problem(6)
            call_kw = {**_SMALL}
            init_kw: dict[str, Any] = {"sigma": 0.25, "random_state": 0}
            for k, v in changes.items():
                (call_kw if k in ("n0", "n", "alpha", "batch_size") else init_kw)[k] = v
            rs = cls(p.estimator if est is None else est(), **init_kw)
            return rs.certify(x(p.x), **call_kw)

        return call

    how = "certify(x, n0=10, n=50)"
    numpy_ok = _certified("numpy")
    for what, change, outcome in bad_samples((0.0, 1.0)):
        add("data", what, how, certify(change), outcome)
    for what, value in [("0", 0.0), ("negative", -0.5), ("NaN", float("nan"))]:
        add(
            "use",
            f"sigma {what}",
            how,
            certify(sigma=value),
            raises(InvalidParameterError, "sigma"),
        )
    add("use", "n0 of 0", how, certify(n0=0), raises(InvalidParameterError, "n0"))
    add("use", "n0 larger than n", how, certify(n0=60), raises(InvalidParameterError, "n0"))
    add("use", "n of 0", how, certify(n0=1, n=0), raises(InvalidParameterError, "'n'"))
    add("use", "n as a float", how, certify(n=50.0), raises(InvalidParameterError, "'n'"))
    for value in (0.0, 1.0, -0.1, 1.5):
        add(
            "use",
            f"alpha of {value}",
            how,
            certify(alpha=value),
            raises(InvalidParameterError, "alpha"),
        )
    add(
        "use", "batch_size of 0", how, certify(batch_size=0), raises(InvalidParameterError, "batch")
    )
    add(
        "use",
        "random_state a string",
        how,
        certify(random_state="seed"),
        raises(InvalidParameterError, "random_state"),
    )
    add(
        "use",
        "clip_noisy without clip_values",
        how,
        certify(clip_noisy=True, est=lambda: _no_clip()),
        raises(InvalidParameterError, "clip_noisy"),
    )
    add(
        "model",
        "an estimator without predict (a raw torch.nn.Module)",
        how,
        certify(est=lambda: torch.nn.Linear(64, 10)),
        raises(EstimatorError, "TorchClassifier"),
    )
    add(
        "model",
        "an object without predict",
        how,
        certify(est=lambda: object()),
        raises(EstimatorError, "estimator"),
    )
    add(
        "model",
        "a model that returns NaN",
        how,
        certify(est=lambda: _nan_black_box()),
        raises(Exception, "NaN"),
    )
    add("edge", "float64 NumPy", how, certify(float64), numpy_ok)
    add("edge", "a tensor", how, certify(torch.as_tensor), _certified("tensor"))
    add("edge", "one sample", how, certify(lambda x: x[:1]), numpy_ok)
    add("edge", "n0 equal to n", how, certify(n0=50), numpy_ok)
    add("edge", "batch_size of 1", how, certify(n0=2, n=3, batch_size=1), numpy_ok)
    add("edge", "clip_noisy=True", how, certify(clip_noisy=True), numpy_ok)
    add("edge", "a black-box estimator", how, certify(est=lambda: _black()), numpy_ok)

    def predict(x: Callable[[Any], Any] = lambda x: x, **kw: Any) -> Callable[[], Any]:
        def call() -> Any:
            p = torch_problem(6)
            return cls(p.estimator, sigma=0.25, random_state=0).predict(x(p.x), **{"n": 50, **kw})

        return call

    how_p = "predict(x, n=50)"
    add(
        "data", "predict: NaN in x", how_p, predict(lambda x: x * np.nan), raises(InputError, "NaN")
    )
    add(
        "use",
        "predict: alpha of 1",
        how_p,
        predict(alpha=1.0),
        raises(InvalidParameterError, "alpha"),
    )
    add("use", "predict: n of 0", how_p, predict(n=0), raises(InvalidParameterError, "'n'"))
    add(
        "edge",
        "predict: labels or -1",
        how_p,
        predict(),
        works("int64 labels in [-1, 10)", _labels_or_abstain),
    )
    return rows


def _labels_or_abstain(out: Any) -> None:
    assert isinstance(out, np.ndarray) and out.dtype == np.int64, f"got {type(out)}"
    assert out.min() >= -1 and out.max() < 10, "labels outside [-1, 10)"


def _no_clip() -> Any:
    from bastion.estimators import TorchClassifier

    est = torch_problem(6).estimator
    return TorchClassifier(
        est.torch_module(), input_shape=est.input_shape, nb_classes=10, clip_values=None
    )


def _black() -> Any:
    est = _no_clip()  # the noisy copies leave [0, 1]: the inner model must accept them
    return black_box(lambda x: est.predict(x), est.input_shape, est.nb_classes)


def _nan_black_box() -> Any:
    return black_box(lambda x: np.full((len(x), 10), np.nan), (1, 8, 8), 10, clip_values=None)


_TRAINER_TINY: dict[str, dict[str, Any]] = {
    "GaussianNoiseTrainer": {"sigma": 0.25},
    "SmoothAdvTrainer": {"sigma": 0.25, "eps": 0.25, "max_iter": 1, "nb_noise_samples": 2},
}


def _make_trainer(cls: Any, estimator: Any, **changes: Any) -> Any:
    params: dict[str, Any] = {
        "epochs": 1,
        "batch_size": 12,
        "random_state": 0,
        **_TRAINER_TINY.get(cls.__name__, {"sigma": 0.25}),
    }
    params.update(changes)
    return cls(estimator, **params)


def _trained(trainer: Any) -> None:
    assert len(trainer.history_) >= 1, "no epoch recorded"
    assert np.isfinite(trainer.history_[-1]["loss"]), "non-finite loss"


def _tiny() -> Any:
    p = torch_problem(24)
    return p.x, p.y, p.estimator.clone()


def smoothing_trainer_cases(cls: Any) -> Rows:
    """The rows of :class:`~bastion.certification.GaussianNoiseTrainer` and
    :class:`~bastion.certification.SmoothAdvTrainer` (``fit(x, y)``, one tiny epoch): bad
    data, labels and loaders, bad noise and budget parameters, a checkpoint of another model,
    an estimator without ``module``, and float64 data and lists of batches, which work."""
    rows: Rows = []
    how = "fit(x, y)"

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, call, expect))

    def fit(
        x: Callable[[Any], Any] = lambda x: x,
        y: Callable[[Any], Any] = lambda y: y,
        **changes: Any,
    ) -> Callable[[], Any]:
        def call() -> Any:
            xs, ys, est = _tiny()
            return _make_trainer(cls, est, **changes).fit(x(xs), y(ys))

        return call

    def loader_of(items: Callable[[Any, Any], list[Any]]) -> Callable[[], Any]:
        def call() -> Any:
            xs, ys, est = _tiny()
            return _make_trainer(cls, est).fit(items(xs, ys))

        return call

    trained = works("the trainer, with one epoch recorded", _trained)
    for what, change, outcome in bad_samples((0.0, 1.0), integers=trained):
        if what == "wrong ndim":
            outcome = raises(InputError, "shape")
        add("data", what, fit(x=change), outcome)
    for what, change, outcome in bad_labels(10):
        add("labels", what, fit(y=change), outcome)
    add(
        "data",
        "a loader yielding bare x batches",
        loader_of(lambda x, y: [torch.as_tensor(x[:12]), torch.as_tensor(x[12:])]),
        raises(InputError, r"\(x, y\) pairs"),
    )
    add(
        "labels",
        "a loader with labels out of range",
        loader_of(lambda x, y: [(x[:12], np.full(12, 10))]),
        raises(InputError, "outside"),
    )
    bad: list[tuple[str, Any]] = [("sigma", 0.0), ("sigma", -1.0), ("epochs", 0)]
    if cls.__name__ == "SmoothAdvTrainer":
        bad += [("nb_noise_samples", 0), ("eps", 0.0), ("max_iter", 0), ("eps_step", -0.1)]
        add(
            "use",
            "eps larger than the clip_values range",
            fit(eps=9.0),
            raises(InvalidParameterError, "clip_values"),
        )
    for name, value in bad:
        add("use", f"{name} of {value}", fit(**{name: value}), raises(InvalidParameterError, name))
    add("use", "amp on a CPU estimator", fit(amp=True), raises(InvalidParameterError, "CUDA"))
    add(
        "use",
        "a checkpoint of another model",
        lambda: _other_checkpoint(cls),
        raises(InputError, "another model"),
    )
    add(
        "model",
        "an estimator without the module capability",
        lambda: _make_trainer(cls, _black()).fit(*_tiny()[:2]),
        raises(EstimatorError, "module"),
    )
    add("edge", "float64 NumPy (a float32 model)", fit(x=float64), trained)
    add(
        "edge",
        "a list of (tensor, tensor) batches",
        loader_of(
            lambda x, y: [
                (torch.as_tensor(x[i : i + 12]), torch.as_tensor(y[i : i + 12])) for i in (0, 12)
            ]
        ),
        trained,
    )
    return rows


def _other_checkpoint(cls: Any) -> Any:
    """Train one epoch with a checkpoint, then resume from it with another model."""
    from bastion.estimators import TorchClassifier

    with tempfile.TemporaryDirectory() as root:
        xs, ys, est = _tiny()
        _make_trainer(cls, est, checkpoint_dir=root).fit(xs, ys)
        other = TorchClassifier(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
            input_shape=est.input_shape,
            nb_classes=10,
            clip_values=(0.0, 1.0),
        )
        return _make_trainer(cls, other, checkpoint_dir=root).fit(xs, ys, resume=True)


# --------------------------------------------------------------------------- metrics


def _good() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array([0, 1, -1, 2, 1]),
        np.array([0.6, 0.2, 0.0, 0.9, 0.4]),
        np.array([0, 1, 1, 0, 2]),
    )


def certified_accuracy_cases(fn: Any) -> Rows:
    """The rows of :func:`~bastion.metrics.certified_accuracy` and
    :func:`~bastion.metrics.certified_accuracy_curve` (``fn(pred, radius, y)``)."""
    how = f"{fn.__name__}(pred, radius, y)"

    def call(change: Callable[..., tuple[Any, Any, Any]], **kw: Any) -> Callable[[], Any]:
        return lambda: fn(*change(*_good()), **kw)

    curve = fn.__name__ == "certified_accuracy_curve"

    def ok_check(out: Any) -> None:
        if curve:
            radii, acc = out
            assert np.all(np.diff(radii) > 0), "radii not increasing"
            assert np.all(np.diff(acc) <= 0), "accuracy not non-increasing"
        else:
            assert isinstance(out, float) and 0.0 <= out <= 1.0, f"{out!r} is not a fraction"

    ok = works("a curve" if curve else "a fraction", ok_check)
    rows: Rows = []

    def add(kind: str, what: str, c: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(fn, kind, what, how, c, expect))

    for what, change, outcome in bad_labels(3):
        if what in ("label out of range", "one-hot of the wrong width"):
            continue  # the metric has no class count: any class index >= 0 is a label
        if what == "labels of shape (N, 1)":
            outcome = raises(InputError, "1-d")
        add("labels", f"y: {what}", call(lambda p, r, y, c=change: (p, r, c(y))), outcome)
    add("data", "pred below -1", call(lambda p, r, y: (p - 5, r, y)), raises(InputError, "outside"))
    add(
        "data",
        "pred with fractions",
        call(lambda p, r, y: (p + 0.5, r, y)),
        raises(InputError, "integer"),
    )
    add(
        "data", "NaN radius", call(lambda p, r, y: (p, r * np.nan, y)), raises(InputError, "finite")
    )
    add("data", "negative radius", call(lambda p, r, y: (p, r - 1, y)), raises(InputError, ">= 0"))
    add(
        "data",
        "radius of another length",
        call(lambda p, r, y: (p, r[:-1], y)),
        raises(InputError, "one entry per sample"),
    )
    add("data", "2-d pred", call(lambda p, r, y: (p[:, None], r, y)), raises(InputError, "1-d"))
    add(
        "data",
        "string radius",
        call(lambda p, r, y: (p, np.full(r.shape, "a"), y)),
        raises(InputError, "numeric"),
    )
    add(
        "data",
        "empty arrays",
        call(lambda p, r, y: (p[:0], r[:0], y[:0])),
        raises(InputError, "empty"),
    )
    if curve:
        add(
            "use",
            "a negative radius in radii",
            call(lambda *a: a, radii=[0.0, -1.0]),
            raises(InvalidParameterError, "radii"),
        )
        add(
            "use",
            "radii a string",
            call(lambda *a: a, radii="abc"),
            raises(InvalidParameterError, "radii"),
        )
        add("edge", "given radii", call(lambda *a: a, radii=[0.5, 0.0, 1.0]), ok)
    else:
        add(
            "use",
            "radius negative",
            call(lambda *a: a, radius=-0.5),
            raises(InvalidParameterError, "radius"),
        )
        add(
            "use",
            "radius NaN",
            call(lambda *a: a, radius=float("nan")),
            raises(InvalidParameterError, "radius"),
        )
        add(
            "use",
            "radius a string",
            call(lambda *a: a, radius="0.5"),
            raises(InvalidParameterError, "radius"),
        )
    add(
        "edge",
        "tensors",
        call(lambda p, r, y: (torch.as_tensor(p), torch.as_tensor(r), torch.as_tensor(y))),
        ok,
    )
    add(
        "edge",
        "float labels and predictions",
        call(lambda p, r, y: (p.astype(float), r, y.astype(float))),
        ok,
    )
    add("edge", "all abstain", call(lambda p, r, y: (p * 0 - 1, r * 0, y)), ok)
    return rows
