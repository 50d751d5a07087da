"""The templates of the poisoning defences: what a detector returns, and the work they share.

* :class:`DetectionResult`: ``is_poison`` and ``scores`` aligned with the data, and a report
  per class.
* :class:`PoisonDefense`: the preamble every defence that works on a model repeats, written
  once: sklearn-style parameters (``__init__`` only stores them), validation and capability
  checks when work starts, the conversion and checks of inputs and labels, the choice of a
  layer, and one layer's activations streamed batch by batch. :class:`FinePruning
  <bastion.defenses.poisoning.FinePruning>`, which repairs a model, builds on it directly.
* :class:`PoisonDetector`: the template of detectors, ``detect(x, y) -> DetectionResult``.

Defences reach the model only through the estimator's public members (DESIGN, "Estimator
protocol"): a capability a defence needs is declared in ``_estimator_requirements`` (or, for
one method, checked with :meth:`PoisonDefense._require`), so an estimator that lacks it gets
an :class:`~bastion.exceptions.EstimatorError` naming it before any work is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import ArrayKind, to_tensor
from bastion._validation import Constraint, check_labels, check_x
from bastion.estimators.base import SupportsPredict, require_capabilities
from bastion.exceptions import InputError, NotFittedError

__all__ = ["DetectionResult", "PoisonDefense", "PoisonDetector"]


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
        One entry per class label (int): its ``size`` and ``n_flagged`` samples, and what the
        detector adds (cluster sizes, silhouette score, thresholds, anomaly index, after
        exclusionary reclassification the proposed source class).
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


class PoisonDefense(Parametrized):
    """Base of the poisoning defences that work on a model: the shared preamble.

    Subclasses define ``__init__(self, estimator, *, param=default, ...)`` that stores each
    parameter and does nothing else, ``_parameter_constraints``, and the estimator
    capabilities they need in ``_estimator_requirements``. Work starts with
    :meth:`_validate`; inputs go through :meth:`_x` and labels through :meth:`_labels`, so
    that NaN, wrong shapes, values outside ``clip_values``, an empty batch, non-numeric data
    and labels outside the classes raise :class:`~bastion.exceptions.InputError`.
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)
    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)

    #: Each defence narrows this to the ``Supports*`` protocol of what it uses (the layer
    #: helpers below serve those with ``activations``).
    estimator: Any
    layer: Any
    batch_size: int
    verbose: bool

    # ------------------------------------------------------------------ checks

    def _validate(self) -> None:
        super()._validate()
        needed = self._needed_capabilities()
        if needed or self.estimator is not None:
            require_capabilities(self.estimator, needed, type(self).__name__)
        if getattr(self, "layer", None) is not None and "activations" in needed:
            self._layer()  # an unknown layer fails before any work

    def _needed_capabilities(self) -> tuple[str, ...]:
        """What the estimator must offer with the current parameters."""
        return self._estimator_requirements

    def _require(self, needed: tuple[str, ...], what: str) -> None:
        """The capabilities one method needs beyond ``_estimator_requirements``."""
        require_capabilities(self.estimator, needed, f"{type(self).__name__}.{what}")

    def _check_fitted(self, attribute: str, call: str) -> None:
        """:class:`NotFittedError` unless ``attribute`` was set (by ``call``)."""
        if not hasattr(self, attribute):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call {call} first.")

    def _numeric(self, value: Any, name: str, **kwargs: Any) -> tuple[torch.Tensor, ArrayKind]:
        """``to_tensor(value)``, with data that is not numeric (strings, ragged lists, objects)
        an :class:`InputError` naming it."""
        try:
            return to_tensor(value, **kwargs)
        except (TypeError, ValueError) as err:
            raise InputError(
                f"{type(self).__name__}: {name} must be numeric array-like or a tensor ({err})."
            ) from None

    def _x(self, x: Any, name: str = "x") -> torch.Tensor:
        """``x`` as a checked tensor on the estimator's device and dtype (no copy when it
        already is one: never write into it)."""
        return self._x_and_kind(x, name)[0]

    def _x_and_kind(self, x: Any, name: str = "x") -> tuple[torch.Tensor, ArrayKind]:
        """:meth:`_x` and how to give a result back in ``x``'s type."""
        est = self.estimator
        xt, kind = self._numeric(
            x, name, device=est.device, dtype=getattr(est, "dtype", torch.float32)
        )
        check_x(xt, input_shape=est.input_shape, clip_values=est.clip_values, name=name)
        return xt, kind

    def _labels(
        self, y: Any, n: int, name: str = "y", nb_classes: int | None = None
    ) -> torch.Tensor:
        """Labels (indices or one-hot) as checked int64 class indices on the CPU."""
        if y is None:
            raise InputError(f"{type(self).__name__} needs the labels {name}.")
        yt, _ = self._numeric(y, name, dtype=None)
        k = self.estimator.nb_classes if nb_classes is None else nb_classes
        return check_labels(yt.cpu(), n=n, nb_classes=k, name=name)

    def _inputs(self, x: Any, y: Any) -> tuple[torch.Tensor, np.ndarray]:
        """``x`` as a checked tensor (see :meth:`_x`) and its labels as int64 class indices."""
        xt = self._x(x)
        return xt, self._labels(y, xt.shape[0]).numpy()

    # ------------------------------------------------------------------ layers

    def _default_layer(self) -> str:
        """The penultimate layer (a subclass may choose another)."""
        names = self.estimator.layer_names
        if len(names) < 2:
            raise InputError(
                f"{type(self).__name__}: cannot pick the penultimate layer of an estimator "
                f"with layers {names}; pass layer=... explicitly."
            )
        return str(names[-2])

    def _layer(self) -> str:
        """The name of the layer to read: ``layer`` (an unknown name or an index out of range
        raises :class:`InputError`) or, when it is None, :meth:`_default_layer`."""
        if self.layer is None:
            return self._default_layer()
        return str(self.estimator.resolve_layer(self.layer))

    def _batches(
        self, x: torch.Tensor, layer: str, batch_size: int
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, activations)`` of ``layer`` for ``x``, ``batch_size`` samples at a time
        (no gradients; a progress bar when ``verbose``)."""
        verbose = bool(getattr(self, "verbose", False))
        name = type(self).__name__
        with (
            torch.no_grad(),
            tqdm(total=x.shape[0], desc=name, unit="sample", disable=not verbose) as bar,
        ):
            for i in range(0, x.shape[0], batch_size):
                act = self.estimator.activations_tensor(x[i : i + batch_size], layer)
                yield i, act
                bar.update(act.shape[0])

    def _activations(self, x: torch.Tensor) -> np.ndarray:
        """Flattened activations ``(N, D)`` (float32, CPU) of the chosen layer; sets
        ``layer_``.

        Computed ``batch_size`` samples at a time and written into one preallocated array, so
        that the peak memory is that array plus one batch; the inputs are never copied.
        """
        layer = self.layer_ = self._layer()
        out: torch.Tensor | None = None
        for i, act in self._batches(x, layer, self.batch_size):
            act = act.reshape(act.shape[0], -1).to("cpu", torch.float32)
            if out is None:
                out = torch.empty((x.shape[0], act.shape[1]), dtype=torch.float32)
            out[i : i + act.shape[0]] = act
        if out is None:  # pragma: no cover - _x rejects an empty x
            raise InputError(f"{type(self).__name__}: x is empty.")
        return out.numpy()

    def _unit_activations(self, x: torch.Tensor, layer: str, batch_size: int) -> torch.Tensor:
        """Activation of each unit of ``layer`` per sample, ``(N, units)`` float64 on the
        estimator's device: the channels of a convolution averaged over positions, the
        neurons of a dense layer as they are (the units ``prune`` acts on)."""
        rows = []
        for _, act in self._batches(x, layer, batch_size):
            if act.ndim < 2:
                raise InputError(
                    f"{type(self).__name__}: layer {layer!r} has no unit dimension "
                    f"(output of shape {tuple(act.shape)})."
                )
            rows.append(act.reshape(act.shape[0], act.shape[1], -1).to(torch.float64).mean(2))
        return torch.cat(rows)

    @staticmethod
    def _predicted(estimator: SupportsPredict, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The class ``estimator`` predicts for each row of ``x`` (int64, on ``x``'s device)."""
        with torch.no_grad():
            return torch.cat(
                [
                    estimator.predict_tensor(x[i : i + batch_size]).argmax(dim=1).to(x.device)
                    for i in range(0, x.shape[0], batch_size)
                ]
            )


class PoisonDetector(PoisonDefense):
    """Base of training-set poison detectors: ``detect(x, y) -> DetectionResult``.

    Subclasses define ``__init__`` (parameters only), ``_parameter_constraints``, the
    capabilities they need in ``_estimator_requirements`` (by default ``predict`` and
    ``activations``) and ``detect``, which starts with :meth:`_validate` and builds the
    per-class report from :meth:`_class_report`.

    Examples
    --------
    A detector that flags the samples the model disagrees with:

    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.poisoning.base import DetectionResult, PoisonDetector
    >>> class Disagreement(PoisonDetector):
    ...     _estimator_requirements = ("predict",)
    ...
    ...     def __init__(self, estimator, *, batch_size=64):
    ...         self.estimator = estimator
    ...         self.batch_size = batch_size
    ...
    ...     def detect(self, x, y):
    ...         self._validate()
    ...         xt, labels = self._inputs(x, y)
    ...         pred = self._predicted(self.estimator, xt, self.batch_size).cpu().numpy()
    ...         flagged = pred != labels
    ...         report = self._class_report(labels, flagged)
    ...         return DetectionResult(flagged, flagged * 1.0, report, "Disagreement")
    >>> clf = TorchClassifier(torch.nn.Linear(4, 2), input_shape=(4,), nb_classes=2)
    >>> x = torch.rand(6, 4)
    >>> y = 1 - clf.predict(x).argmax(dim=1)
    >>> Disagreement(clf).detect(x, y).n_flagged
    6
    """

    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict", "activations")

    def detect(self, x: Any, y: Any) -> DetectionResult:
        """Judge every sample of ``x`` (labelled ``y``); see the subclass."""
        raise NotImplementedError

    def _labelled_activations(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """The start of a detector that reads one layer: validation, checked inputs and
        labels, and the layer's flattened activations ``(N, D)``. Returns
        ``(activations, labels)``."""
        self._validate()
        xt, labels = self._inputs(x, y)
        return self._activations(xt), labels

    @staticmethod
    def _class_report(
        labels: np.ndarray,
        is_poison: np.ndarray,
        details: Callable[[int, np.ndarray], dict[str, Any]] | None = None,
    ) -> dict[int, dict[str, Any]]:
        """``{label: {"size": ..., "n_flagged": ..., **details(label, selection)}}`` for every
        label present (``selection``: the boolean mask of that label's samples)."""
        report: dict[int, dict[str, Any]] = {}
        for c in np.unique(labels).tolist():
            sel = labels == c
            entry = {"size": int(sel.sum()), "n_flagged": int(is_poison[sel].sum())}
            report[int(c)] = entry | (details(int(c), sel) if details is not None else {})
        return report


def _sklearn_seeds(generator: torch.Generator, count: int) -> list[int]:
    """Integer seeds for scikit-learn drawn from a torch generator (NumPy's RNG untouched)."""
    return [int(s) for s in torch.randint(0, 2**31 - 1, (count,), generator=generator)]
