"""What every poison detector returns, and the template detectors build on.

* :class:`DetectionResult`: ``is_poison`` and ``scores`` aligned with the data, and a report
  per class.
* :class:`PoisonDetector`: sklearn-style parameters (``__init__`` only stores them), validation
  and capability checks at the start of work, input conversion, and the streaming of one
  layer's activations batch by batch into one preallocated array.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import to_tensor
from bastion._validation import Constraint, check_labels, check_x
from bastion.estimators.base import require_capabilities
from bastion.exceptions import InputError

__all__ = ["DetectionResult", "PoisonDetector"]


@dataclass
class DetectionResult:
    """The outcome of a poison detector's ``detect(x, y)``.

    Attributes
    ----------
    is_poison : numpy.ndarray of bool, shape (N,)
        True for the samples judged poisonous, aligned with the ``x`` given to ``detect``.
    scores : numpy.ndarray of float, shape (N,)
        Suspicion per sample, higher meaning more suspicious (the detector's docstring says
        how it is computed and whether scores compare across classes).
    report : dict
        One entry per class label (int): cluster sizes, silhouette score, the flagged
        clusters or the number of samples removed, and, after exclusionary reclassification,
        the proposed source class.
    method : str
        The detector that produced the result.
    clusters : numpy.ndarray of int or None
        For clustering detectors, the cluster of each sample within its class.
    embeddings : dict or None
        For clustering detectors, the reduced activations of each class (rows in the order
        of that class's samples in ``x``).
    labels : numpy.ndarray of int or None
        The labels the detector saw (class indices), aligned with ``x``.
    proposed_labels : numpy.ndarray of int or None
        After exclusionary reclassification: the proposed source class of each confirmed
        poisonous sample, -1 elsewhere.
    """

    is_poison: np.ndarray
    scores: np.ndarray
    report: dict[int, dict[str, Any]] = field(default_factory=dict)
    method: str = ""
    clusters: np.ndarray | None = None
    embeddings: dict[int, np.ndarray] | None = field(default=None, repr=False)
    labels: np.ndarray | None = None
    proposed_labels: np.ndarray | None = None

    @property
    def indices(self) -> np.ndarray:
        """Indices of the samples flagged as poisonous."""
        return np.flatnonzero(self.is_poison)

    @property
    def n_flagged(self) -> int:
        """Number of samples flagged as poisonous."""
        return int(self.is_poison.sum())

    def replace(self, **changes: Any) -> DetectionResult:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        flagged = sorted(c for c, r in self.report.items() if r.get("n_flagged", 0))
        return (
            f"DetectionResult(method={self.method!r}, n_samples={self.is_poison.shape[0]}, "
            f"n_flagged={self.n_flagged}, classes_with_flags={flagged})"
        )


class PoisonDetector(Parametrized):
    """Base of training-set poison detectors: ``detect(x, y) -> DetectionResult``.

    Subclasses define ``__init__(self, estimator, *, param=default, ...)`` that stores each
    parameter and does nothing else, ``_parameter_constraints`` and the estimator capabilities
    they need in ``_estimator_requirements``.
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict", "activations")

    estimator: Any
    layer: Any
    batch_size: int
    verbose: bool

    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)

    def _validate(self) -> None:
        super()._validate()
        require_capabilities(self.estimator, self._estimator_requirements, type(self).__name__)

    def detect(self, x: Any, y: Any) -> DetectionResult:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    def _inputs(self, x: Any, y: Any) -> tuple[torch.Tensor, np.ndarray]:
        """``x`` as a tensor on the estimator's device (no copy when it already is one) and
        the labels as int64 class indices."""
        est = self.estimator
        xt, _ = to_tensor(x, device=est.device, dtype=getattr(est, "dtype", torch.float32))
        check_x(xt, input_shape=est.input_shape, clip_values=est.clip_values)
        if y is None:
            raise InputError(f"{type(self).__name__}.detect needs the training labels y.")
        yt, _ = to_tensor(y, dtype=None)
        labels = check_labels(yt.cpu(), n=xt.shape[0], nb_classes=est.nb_classes)
        return xt, labels.numpy()

    def _layer(self) -> str | int:
        """The layer to read: ``layer`` or, by default, the penultimate one."""
        if self.layer is not None:
            return self.layer
        names = self.estimator.layer_names
        if len(names) < 2:
            raise InputError(
                f"{type(self).__name__}: cannot pick the penultimate layer of an estimator "
                f"with layers {names}; pass layer=... explicitly."
            )
        return names[-2]

    def _activations(self, x: torch.Tensor) -> np.ndarray:
        """Flattened activations ``(N, D)`` (float32, CPU) of the chosen layer.

        Computed ``batch_size`` samples at a time and written into one preallocated array, so
        that the peak memory is that array plus one batch; the inputs are never copied.
        """
        layer = self._layer()
        self.layer_ = layer
        n, bs = x.shape[0], self.batch_size
        out: torch.Tensor | None = None
        with (
            torch.no_grad(),
            tqdm(total=n, desc=type(self).__name__, unit="sample", disable=not self.verbose) as bar,
        ):
            for i in range(0, n, bs):
                act = self.estimator.activations_tensor(x[i : i + bs], layer)
                act = act.reshape(act.shape[0], -1).to("cpu", torch.float32)
                if out is None:
                    out = torch.empty((n, act.shape[1]), dtype=torch.float32)
                out[i : i + act.shape[0]] = act
                bar.update(act.shape[0])
        if out is None:  # pragma: no cover - _inputs rejects empty x
            raise InputError(f"{type(self).__name__}: x is empty.")
        return out.numpy()


def _sklearn_seeds(generator: torch.Generator, count: int) -> list[int]:
    """Integer seeds for scikit-learn drawn from a torch generator (NumPy's RNG untouched)."""
    return [int(s) for s in torch.randint(0, 2**31 - 1, (count,), generator=generator)]
