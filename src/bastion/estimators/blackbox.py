"""Models reachable only through a prediction function (an API, a binary, another framework)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bastion._tensor import as_device
from bastion._validation import Boolean, invalid_parameter, validate_params
from bastion.estimators.base import Classifier
from bastion.estimators.pytorch import _check_clip_values, _check_input_shape, _check_nb_classes
from bastion.exceptions import EstimatorError, ModelError

__all__ = ["BlackBoxClassifier"]


class BlackBoxClassifier(Classifier):
    """A classifier known only through ``predict_fn``: predict-only, every query counted.

    Score-based (black-box) attacks use the probabilities; decision-based attacks work with
    ``labels_only=True``, where the function returns one label per sample and predictions are
    one-hot rows.

    Parameters
    ----------
    predict_fn : callable
        Takes a NumPy float32 array of shape ``(N, *input_shape)`` and returns either
        probabilities ``(N, nb_classes)`` or, with ``labels_only=True``, labels ``(N,)``
        (one-hot rows are accepted too).
    input_shape : tuple of int
        Shape of one sample.
    nb_classes : int
        Number of classes.
    clip_values : (float, float) or None
        Valid input range.
    labels_only : bool, default False
        The function reveals only the predicted label.

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import BlackBoxClassifier
    >>> api = lambda x: (x.reshape(len(x), -1).sum(1) > 2).astype(int)
    >>> clf = BlackBoxClassifier(api, input_shape=(4,), nb_classes=2, clip_values=(0, 1),
    ...                          labels_only=True)
    >>> clf.predict(np.ones((1, 4), dtype=np.float32))
    array([[0., 1.]], dtype=float32)
    >>> clf.query_count
    1
    """

    capabilities = frozenset({"predict"})

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], Any],
        *,
        input_shape: Sequence[int],
        nb_classes: int,
        clip_values: tuple[float, float] | None = None,
        labels_only: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not callable(predict_fn):
            raise invalid_parameter("predict_fn", owner, "a callable", predict_fn)
        validate_params(owner, {"labels_only": labels_only}, {"labels_only": [Boolean()]})
        self.predict_fn = predict_fn
        self.input_shape = _check_input_shape(input_shape, owner)
        self.nb_classes = _check_nb_classes(nb_classes, owner)
        self.clip_values = _check_clip_values(clip_values, owner)
        self.labels_only = bool(labels_only)
        self.device = as_device(device)

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = np.asarray(self.predict_fn(x.detach().cpu().numpy()))
        if out.ndim == 2 and out.shape == (n, self.nb_classes):
            if not np.issubdtype(out.dtype, np.number) or np.issubdtype(
                out.dtype, np.complexfloating
            ):
                raise ModelError(
                    f"predict_fn returned {out.dtype} values; expected numeric probabilities."
                )
            if self.labels_only:
                if not np.all(np.isfinite(out)):
                    raise ModelError("predict_fn returned NaN or infinite one-hot rows.")
                out = out.argmax(axis=1)
            else:
                return torch.as_tensor(out.astype(np.float32), device=self.device)
        if out.ndim == 1 and out.shape[0] == n:
            if not self.labels_only:
                raise EstimatorError(
                    "predict_fn returned labels of shape (N,); pass labels_only=True for a "
                    "label-only model."
                )
            return self._one_hot(out)
        raise ModelError(
            f"predict_fn returned shape {out.shape} for {n} samples; expected ({n}, "
            f"{self.nb_classes}) probabilities or ({n},) labels (is nb_classes right?)."
        )

    def _one_hot(self, labels: np.ndarray) -> torch.Tensor:
        """Integer class indices (any integer dtype, or integral floats) as one-hot rows."""
        if labels.dtype == bool or not np.issubdtype(labels.dtype, np.number):
            raise ModelError(
                f"predict_fn returned labels of dtype {labels.dtype}; expected class indices "
                f"0 .. {self.nb_classes - 1} (map class names to indices in predict_fn)."
            )
        if np.issubdtype(labels.dtype, np.floating) and not (
            np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
        ):
            raise ModelError("predict_fn returned non-integral or NaN labels.")
        idx = labels.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.nb_classes):
            raise ModelError(
                f"predict_fn returned labels in [{idx.min()}, {idx.max()}], outside the "
                f"{self.nb_classes} classes [0, {self.nb_classes - 1}]."
            )
        t = torch.as_tensor(idx, device=self.device)
        return torch.nn.functional.one_hot(t, self.nb_classes).to(torch.float32)

    def __repr__(self) -> str:
        return (
            f"BlackBoxClassifier(predict_fn={getattr(self.predict_fn, '__name__', 'callable')}, "
            f"input_shape={self.input_shape}, nb_classes={self.nb_classes}, "
            f"clip_values={self.clip_values}, labels_only={self.labels_only})"
        )
