"""Bad-input rows of derandomized smoothing (:class:`bastion.certification.DerandomizedSmoothing`):
bad images, bad labels for ``fit``, bad ablation and patch sizes, estimators that do not take the
ablation encoding ``(2C, H, W)`` (or no images at all), estimators without ``fit``, and the edge
cases that must work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.testing._bad_inputs import (
    BadInputCase,
    Outcome,
    bad_labels,
    bad_samples,
    black_box,
    float64,
    linear,
    raises,
    works,
)

Rows = list[BadInputCase]


def _estimator(
    input_shape: tuple[int, ...] = (2, 8, 8), clip_values: Any = (0.0, 1.0)
) -> TorchClassifier:
    """A linear model of constant weights (no global RNG drawn) on ``input_shape``."""
    n_in = int(np.prod(input_shape))
    net = torch.nn.Sequential(torch.nn.Flatten(), linear(n_in, 10))
    return TorchClassifier(net, input_shape=input_shape, nb_classes=10, clip_values=clip_values)


def _images(n: int = 6) -> np.ndarray:
    """``n`` grey 8x8 images in ``[0, 1]``, a deterministic ramp."""
    return np.linspace(0.0, 1.0, n * 64, dtype=np.float32).reshape(n, 1, 8, 8)


def _labels(n: int = 6) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 10


def _certified(n: int) -> Callable[[Any], None]:
    def check(out: Any) -> None:
        pred, cert = out
        assert isinstance(pred, np.ndarray) and pred.shape == (n,), "predictions of shape (N,)"
        assert isinstance(cert, np.ndarray) and cert.dtype == np.bool_, "a bool certificate"

    return check


def _fitted(out: Any) -> None:
    assert out.__class__.__name__ == "DerandomizedSmoothing", "fit returns the smoother"


def derandomized_cases(cls: Any) -> Rows:
    """The rows of :class:`~bastion.certification.DerandomizedSmoothing` (8x8 grey images,
    base estimator on ``(2, 8, 8)``; ``certify(x, patch_size=2)`` and ``fit(x, y)``)."""
    rows: Rows = []

    def add(kind: str, what: str, how: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, call, expect))

    def certify(
        x: Callable[[Any], Any] = lambda x: x,
        *,
        estimator: Callable[[], Any] = _estimator,
        patch_size: int = 2,
        **params: Any,
    ) -> Callable[[], Any]:
        def call() -> Any:
            ds = cls(estimator(), **{"ablation_size": 2, **params})
            return ds.certify(x(_images()), patch_size=patch_size)

        return call

    def fit(
        x: Callable[[Any], Any] = lambda x: x,
        y: Callable[[Any], Any] = lambda y: y,
        *,
        estimator: Callable[[], Any] = _estimator,
    ) -> Callable[[], Any]:
        def call() -> Any:
            ds = cls(estimator(), ablation_size=2)
            return ds.fit(x(_images()), y(_labels()), epochs=1, batch_size=4, random_state=0)

        return call

    how_c, how_f = "certify(x, patch_size=2)", "fit(x, y)"
    for what, change, outcome in bad_samples((0.0, 1.0)):
        add("data", what, how_c, certify(change), outcome)
    for what, change, outcome in bad_labels(10):
        add("labels", what, how_f, fit(y=change), outcome)
    add(
        "data",
        "NaN in the training images",
        how_f,
        fit(x=lambda x: x * np.nan),
        raises(InputError, "NaN"),
    )

    bad_params: list[tuple[str, dict[str, Any], int, str]] = [
        ("an unknown ablation", {"ablation": "diagonal"}, 2, "ablation"),
        ("ablation_size 0", {"ablation_size": 0}, 2, "ablation_size"),
        ("ablation_size wider than the image", {"ablation_size": 9}, 2, "ablation_size"),
        (
            "a block larger than the image",
            {"ablation": "block", "ablation_size": 9},
            2,
            "ablation_size",
        ),
        ("threshold 1", {"threshold": 1.0}, 2, "threshold"),
        ("a negative threshold", {"threshold": -0.1}, 2, "threshold"),
        ("batch_size 0", {"batch_size": 0}, 2, "batch_size"),
        ("patch_size 0", {}, 0, "patch_size"),
        ("a patch larger than the image", {}, 9, "patch_size"),
    ]
    for what, params, m, match in bad_params:
        add(
            "use",
            what,
            how_c,
            certify(patch_size=m, **params),
            raises(InvalidParameterError, match),
        )

    add(
        "model",
        "an estimator on the raw images (1, 8, 8), not the 2C-channel encoding",
        how_c,
        certify(estimator=lambda: _estimator((1, 8, 8))),
        raises(InvalidParameterError, r"input_shape.*2C"),
    )
    add(
        "model",
        "an estimator on 4 channels for grey images",
        how_c,
        certify(estimator=lambda: _estimator((4, 8, 8))),
        raises(InputError, "shape"),
    )
    add(
        "model",
        "a non-image estimator (flat inputs)",
        how_c,
        certify(estimator=lambda: _estimator((128,))),
        raises(InvalidParameterError, "input_shape"),
    )
    add(
        "model",
        "an estimator whose clip_values exclude the encoding's [0, 1]",
        how_c,
        certify(estimator=lambda: _estimator(clip_values=(0.0, 0.5))),
        raises(InvalidParameterError, "clip_values"),
    )
    add(
        "model",
        "fit on an estimator without the fit capability",
        how_f,
        fit(estimator=lambda: black_box(lambda z: np.full((len(z), 10), 0.1), (2, 8, 8), 10)),
        raises(EstimatorError, "fit"),
    )
    add("edge", "float64 NumPy images", how_c, certify(float64), works("certified", _certified(6)))
    add(
        "edge",
        "a predict-only black box",
        how_c,
        certify(estimator=lambda: black_box(lambda z: np.full((len(z), 10), 0.1), (2, 8, 8), 10)),
        works("certified", _certified(6)),
    )
    add("edge", "one epoch of fit", how_f, fit(), works("the smoother", _fitted))
    add(
        "edge",
        "column bands as wide as the image",
        how_c,
        certify(ablation_size=8),
        works("certified", _certified(6)),
    )
    return rows
