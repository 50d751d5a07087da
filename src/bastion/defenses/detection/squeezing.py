"""Feature squeezing detector (Xu et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from bastion._validation import BATCH_SIZE, NONE, Constraint, Interval, Satisfies
from bastion.defenses.detection._base import InputDetector
from bastion.estimators.base import SupportsPredict
from bastion.exceptions import InvalidParameterError

__all__ = ["FeatureSqueezingDetector"]


def _squeezers_ok(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(map(callable, value))


class FeatureSqueezingDetector(InputDetector):
    """Flags inputs whose prediction moves when their features are squeezed.

    Squeezing (reducing the colour depth, smoothing) removes little of a clean input but much of
    an adversarial perturbation, so the model's prediction moves more on adversarial inputs.
    The score of an input is the largest L1 distance between the estimator's probabilities on
    the input and on a squeezed copy, over the squeezers (in ``[0, 2]``).

    The default squeezers are :class:`~bastion.defenses.preprocessing.FeatureSqueezing`
    (``bit_depth``) and, for image inputs ``(C, H, W)``,
    :class:`~bastion.defenses.preprocessing.SpatialSmoothing` (a ``window x window`` median
    filter), both over the estimator's ``clip_values``. The paper uses 1 bit and a 2x2 median
    on MNIST, 5 bits and a 2x2 median (and non-local means) on CIFAR-10.

    ``fit(x)`` needs only clean inputs (for the default threshold, see
    :class:`InputDetector`). Only ``predict`` is used, and the score is not differentiated:
    :meth:`guard` gives a predict-only classifier (an adaptive attacker differentiates through
    the squeezers with BPDA instead).

    Parameters
    ----------
    estimator : Classifier
        Needs ``predict``.
    squeezers : list of callables, optional
        Each maps a batch tensor inside ``clip_values`` to a squeezed batch of the same shape
        (e.g. a :mod:`bastion.defenses.preprocessing` defence); ``None`` takes the defaults.
    bit_depth : int, default 4
        Bits of the default colour-depth squeezer.
    window : int, default 2
        Side of the default median filter.
    batch_size : int, default 128
        Samples per forward pass.

    References
    ----------
    Xu, Evans and Qi, "Feature squeezing: detecting adversarial examples in deep neural
    networks", NDSS 2018. https://arxiv.org/abs/1704.01155

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.detection import FeatureSqueezingDetector
    >>> from bastion.zoo import MLP
    >>> clf = TorchClassifier(MLP(4, 2, hidden=(8,), random_state=0), input_shape=(4,),
    ...                       nb_classes=2)
    >>> x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    >>> det = FeatureSqueezingDetector(clf, bit_depth=1).fit(x)
    >>> bool((det.score(x) >= 0).all())
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "squeezers": [Satisfies(_squeezers_ok, "a non-empty list of callables"), NONE],
        "bit_depth": [Interval(int, 1, 64)],
        "window": [Interval(int, 1, None)],
        "batch_size": BATCH_SIZE,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)

    estimator: SupportsPredict

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        squeezers: list[Callable[[torch.Tensor], torch.Tensor]] | None = None,
        bit_depth: int = 4,
        window: int = 2,
        batch_size: int = 128,
    ) -> None:
        self.estimator = estimator
        self.squeezers = squeezers
        self.bit_depth = bit_depth
        self.window = window
        self.batch_size = batch_size

    def _squeezers(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        if self.squeezers is not None:
            return list(self.squeezers)
        from bastion.defenses.preprocessing import FeatureSqueezing, SpatialSmoothing

        clip = self.estimator.clip_values
        if clip is None:
            raise InvalidParameterError(
                f"{type(self).__name__}: the default squeezers need an estimator with "
                "clip_values; pass squeezers=[...] instead."
            )
        clip = (float(clip[0]), float(clip[1]))
        out: list[Any] = [FeatureSqueezing(bit_depth=self.bit_depth, clip_values=clip)]
        if len(self.estimator.input_shape) == 3:
            out.append(SpatialSmoothing(window=self.window, clip_values=clip))
        return [getattr(s, "apply_tensor", s) for s in out]

    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        self.squeezers_ = self._squeezers()

    def _score_tensor(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for s in range(0, x.shape[0], self.batch_size):
                xb = x[s : s + self.batch_size]
                p = self.estimator.predict_tensor(xb).to(torch.float64)
                dist = [
                    (self.estimator.predict_tensor(sq(xb)).to(torch.float64) - p).abs().sum(1)
                    for sq in self.squeezers_
                ]
                rows.append(torch.stack(dist, dim=1).max(dim=1).values.cpu())
        return torch.cat(rows)
