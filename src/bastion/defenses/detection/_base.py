"""The template of detectors of adversarial inputs, and what they return.

* :class:`InputDetectionResult`: the scores, the flags and the threshold of one ``detect``.
* :class:`InputDetector`: ``fit(x, y=None) -> self``, ``score(x)``, ``calibrate(x_clean,
  fpr=0.05)``, ``detect(x) -> InputDetectionResult`` and ``guard(estimator)``, the
  detector-guarded classifier (:class:`~bastion.defenses.detection.GuardedClassifier`) that an
  adaptive attack runs on.

Scores are floats, higher meaning more suspicious; an input is flagged when its score is above
the threshold. ``fit`` sets a default threshold, the 0.95 quantile of the scores of the clean
``x`` it was fitted on (5 % of those flagged); as these are the data the detector learned, the
false-positive rate on new clean data is usually higher: call :meth:`InputDetector.calibrate`
on held-out clean data to set the threshold for a chosen false-positive rate.

Detectors reach the model only through the estimator's public capabilities (DESIGN,
"Estimator protocol"): what one needs is declared in ``_estimator_requirements`` (and
:meth:`InputDetector._needed_capabilities`), so an estimator that lacks it gets an
:class:`~bastion.exceptions.EstimatorError` naming the capability before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import ArrayKind, to_tensor
from bastion._validation import Constraint, Interval, check_labels, check_x, invalid_parameter
from bastion.estimators.base import require_capabilities
from bastion.exceptions import InputError, NotFittedError

if TYPE_CHECKING:
    from bastion.defenses.detection.guard import GuardedClassifier

__all__ = ["InputDetectionResult", "InputDetector"]


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


@dataclass(frozen=True)
class InputDetectionResult:
    """The outcome of ``detector.detect(x)``.

    Attributes
    ----------
    scores : numpy.ndarray or torch.Tensor of float, shape (N,)
        Suspicion per input, higher meaning more suspicious (same type as ``x``).
    is_adversarial : numpy.ndarray or torch.Tensor of bool, shape (N,)
        ``scores > threshold`` (same type as ``x``).
    threshold : float
        The threshold applied.
    """

    scores: Any
    is_adversarial: Any
    threshold: float

    @property
    def n_flagged(self) -> int:
        """Number of inputs flagged as adversarial."""
        return int(_to_numpy(self.is_adversarial).sum())

    def roc_auc(self, labels: Any) -> float:
        """Area under the ROC curve of the scores against ``labels`` (1 = adversarial).

        Parameters
        ----------
        labels : array-like of {0, 1}, shape (N,)

        Returns
        -------
        float
        """
        from sklearn.metrics import roc_auc_score

        y = _to_numpy(labels).reshape(-1)
        s = _to_numpy(self.scores).astype(np.float64)
        if y.shape[0] != s.shape[0]:
            raise InputError(f"labels has {y.shape[0]} entries, the scores {s.shape[0]}.")
        if set(np.unique(y).tolist()) - {0, 1} or np.unique(y).size != 2:
            raise InputError("labels must hold both 0 (clean) and 1 (adversarial), nothing else.")
        return float(roc_auc_score(y.astype(int), s))


class InputDetector(Parametrized):
    """Base of detectors of adversarial inputs.

    Subclasses define ``__init__(self, estimator, *, param=default, ...)`` that stores each
    parameter and does nothing else, ``_parameter_constraints``, the capabilities they need in
    ``_estimator_requirements``, ``_fit(x, y)`` (``x`` a checked tensor, ``y`` int64 labels on
    the CPU or None; it may return the scores of ``x`` where it has them, which spares ``fit``
    a second scoring pass) and ``_score_tensor(x) -> (N,)`` float64 scores on the CPU. A
    detector whose score is differentiable with respect to the input through the estimator's
    public gradient capabilities also defines ``_score_vjp(x, weights) -> (grad, score)``, the
    gradient of ``sum(weights * score(x))``, and says so in :meth:`differentiable`.

    Attributes
    ----------
    threshold_ : float
        Inputs with a score above it are flagged.
    score_scale_ : float
        The standard deviation of the clean scores the threshold was set on (the scale the
        guard uses to make scores comparable with logits).
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)
    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)
    #: Whether ``fit`` needs labels.
    _needs_labels: ClassVar[bool] = False

    estimator: Any
    batch_size: int
    verbose: bool

    # ------------------------------------------------------------------ public API

    def fit(self, x: Any, y: Any = None) -> InputDetector:
        """Fit the detector on clean inputs ``x`` (and their labels ``y`` where it uses them).

        Sets ``threshold_`` to the 0.95 quantile of the scores of ``x``.

        Returns
        -------
        self
        """
        self._validate()
        xt = self._x(x)
        labels = None
        if y is not None or self._needs_labels:
            labels = self._labels(y, xt.shape[0])
        scores = self._fit(xt, labels)
        self.fitted_ = True
        if scores is None:
            scores = self._score_tensor(xt)
        self._set_threshold(scores, 0.05)
        return self

    def score(self, x: Any) -> Any:
        """Suspicion of each input, higher meaning more suspicious.

        Returns
        -------
        scores : same type as ``x``, shape (N,)
        """
        xt, kind = self._checked(x)
        return kind.restore(self._score_tensor(xt).to(xt.device, xt.dtype))

    def calibrate(self, x_clean: Any, *, fpr: float = 0.05) -> InputDetector:
        """Set the threshold so that a fraction ``fpr`` of ``x_clean`` is flagged.

        The threshold is the ``1 - fpr`` quantile of the scores of ``x_clean`` (held-out
        clean inputs, not those of ``fit``).

        Returns
        -------
        self
        """
        if isinstance(fpr, bool) or not Interval(float, 0, 1, closed="neither").is_satisfied_by(
            fpr
        ):
            raise invalid_parameter("fpr", f"{type(self).__name__}.calibrate", "in (0, 1)", fpr)
        xt, _ = self._checked(x_clean, "x_clean")
        self._set_threshold(self._score_tensor(xt), float(fpr))
        return self

    def detect(self, x: Any) -> InputDetectionResult:
        """Score ``x`` and flag the inputs whose score is above ``threshold_``."""
        xt, kind = self._checked(x)
        s = self._score_tensor(xt)
        flagged = s > self.threshold_
        return InputDetectionResult(
            kind.restore(s.to(xt.device, xt.dtype)),
            kind.restore(flagged.to(xt.device), keep_dtype=True),
            float(self.threshold_),
        )

    def guard(self, estimator: Any = None, *, scale: float | None = None) -> GuardedClassifier:
        """``estimator`` (by default the detector's) with one more class, "rejected", that
        wins exactly where this detector flags the input; see
        :class:`~bastion.defenses.detection.GuardedClassifier`."""
        from bastion.defenses.detection.guard import GuardedClassifier

        return GuardedClassifier(
            self.estimator if estimator is None else estimator, self, scale=scale
        )

    @property
    def differentiable(self) -> bool:
        """Whether :meth:`_score_vjp` works with the current parameters and estimator."""
        return False

    # ------------------------------------------------------------------ subclass hooks

    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
        """Fit on the checked ``x``; may return the scores of ``x`` (as ``_score_tensor``
        would give them) where fitting already computed them, else ``None``."""
        raise NotImplementedError

    def _score_tensor(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _score_vjp(
        self, x: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    def _validate(self) -> None:
        super()._validate()
        require_capabilities(self.estimator, self._needed_capabilities(), type(self).__name__)

    def _needed_capabilities(self) -> tuple[str, ...]:
        return self._estimator_requirements

    def _set_threshold(self, scores: torch.Tensor, fpr: float) -> None:
        s = scores.to(torch.float64).cpu().numpy()
        self.threshold_ = float(np.quantile(s, 1.0 - fpr))
        std = float(s.std())
        self.score_scale_ = std if std > 0 else 1.0

    def _checked(self, x: Any, name: str = "x") -> tuple[torch.Tensor, ArrayKind]:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(x, y) first.")
        return self._x_and_kind(x, name)

    def _x(self, x: Any, name: str = "x") -> torch.Tensor:
        return self._x_and_kind(x, name)[0]

    def _x_and_kind(self, x: Any, name: str = "x") -> tuple[torch.Tensor, ArrayKind]:
        """``x`` as a checked tensor on the estimator's device and dtype: NaN, a wrong shape,
        values outside ``clip_values`` or non-numeric data raise :class:`InputError`."""
        est = self.estimator
        try:
            xt, kind = to_tensor(x, device=est.device, dtype=getattr(est, "dtype", torch.float32))
        except (TypeError, ValueError) as err:
            raise InputError(f"{type(self).__name__}: {name} must be numeric ({err}).") from None
        check_x(xt, input_shape=est.input_shape, clip_values=est.clip_values, name=name)
        return xt, kind

    def _labels(self, y: Any, n: int, name: str = "y") -> torch.Tensor:
        if y is None:
            raise InputError(f"{type(self).__name__} needs the labels {name}.")
        try:
            yt, _ = to_tensor(y, dtype=None)
        except (TypeError, ValueError) as err:
            raise InputError(f"{type(self).__name__}: {name} must be numeric ({err}).") from None
        return check_labels(yt.cpu(), n=n, nb_classes=self.estimator.nb_classes, name=name)

    def _progress(self, total: int) -> Any:
        return tqdm(total=total, desc=type(self).__name__, unit="sample", disable=not self.verbose)

    def _predicted(self, x: torch.Tensor) -> torch.Tensor:
        """The class the estimator predicts for each row of ``x`` (int64 on the CPU)."""
        with torch.no_grad():
            return torch.cat(
                [
                    self.estimator.predict_tensor(x[i : i + self.batch_size]).argmax(1).cpu()
                    for i in range(0, x.shape[0], self.batch_size)
                ]
            )

    def _layer_names(self, layers: Any) -> list[str]:
        """The names of ``layers`` (a layer, a list of layers, or None for all layers)."""
        if layers is None:
            return [str(n) for n in self.estimator.layer_names]
        items = layers if isinstance(layers, (list, tuple)) else [layers]
        return [str(self.estimator.resolve_layer(layer)) for layer in items]

    def _flat_activations(self, x: torch.Tensor, layer: str, *, pool: bool) -> torch.Tensor:
        """Activations of ``layer`` as ``(N, D)`` (float64, on the estimator's device),
        ``batch_size`` samples at a time; with ``pool`` the feature maps of a convolution are
        averaged over their positions (one feature per channel)."""
        rows = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.batch_size):
                act = self.estimator.activations_tensor(x[i : i + self.batch_size], layer)
                rows.append(_flatten(act, pool))
        return torch.cat(rows)


def _flatten(act: torch.Tensor, pool: bool) -> torch.Tensor:
    """``(N, D)`` float64 features of a layer's output (spatial mean per channel with
    ``pool`` when the output has more than two dimensions)."""
    act = act.to(torch.float64)
    if pool and act.ndim > 2:
        return act.reshape(act.shape[0], act.shape[1], -1).mean(2)
    return act.reshape(act.shape[0], -1)
