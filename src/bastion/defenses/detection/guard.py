"""A classifier guarded by a detector: one more class, "rejected" (Carlini and Wagner 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bastion._validation import NONE, Interval, validate_params
from bastion.estimators.base import EstimatorWrapper, SupportsPredict
from bastion.exceptions import NotFittedError

__all__ = ["GuardedClassifier"]


class GuardedClassifier(EstimatorWrapper):
    """An estimator and a detector of adversarial inputs as one classifier with ``K + 1``
    classes, the last one meaning "rejected".

    With ``z`` the estimator's logits, ``s(x)`` the detector's score, ``t`` its threshold and
    ``c`` a positive scale, the extra logit is

    .. math:: z_K(x) = \\max_k z_k(x) + c\\,(s(x) - t),

    so the rejected class wins (``argmax = K``) exactly where the detector flags the input
    (``s > t``; at a tie the original class wins, as the detector does not flag it). The scale
    makes score and logits comparable: by default ``c = 1 / score_scale_``, one over the
    standard deviation of the clean scores the detector's threshold was set on.

    Attacks run on it unchanged (Carlini and Wagner, "Adversarial examples are not easily
    detected", 2017): an untargeted attack with the true label must make the estimator wrong
    *and* keep the detector quiet. When the detector's score is differentiable through the
    estimator's public capabilities (``detector.differentiable``; e.g.
    :class:`~bastion.defenses.detection.MahalanobisDetector` with an estimator offering
    ``activation_gradient``) and the estimator offers ``class_gradient``, the guard offers
    ``logits``, ``loss_gradient`` and ``class_gradient`` (the gradient of ``z_K`` is that of
    the winning logit plus ``c`` times the score's); otherwise it is predict-only (and offers
    ``logits`` when the estimator does), for black-box attacks.

    Parameters
    ----------
    estimator : Classifier
        The classifier to guard.
    detector : InputDetector
        A fitted detector.
    scale : float, optional
        ``c`` above; ``None`` uses ``1 / detector.score_scale_``.

    References
    ----------
    Carlini and Wagner, "Adversarial examples are not easily detected: bypassing ten detection
    methods", AISec 2017. https://arxiv.org/abs/1705.07263

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.detection import MahalanobisDetector
    >>> from bastion.zoo import MLP
    >>> clf = TorchClassifier(MLP(4, 2, hidden=(8,), random_state=0), input_shape=(4,),
    ...                       nb_classes=2)
    >>> x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    >>> guarded = MahalanobisDetector(clf).fit(x).guard()
    >>> guarded.nb_classes, sorted(guarded.capabilities)
    (3, ['class_gradient', 'logits', 'loss_gradient', 'predict'])
    """

    def __init__(
        self, estimator: SupportsPredict, detector: Any, *, scale: float | None = None
    ) -> None:
        super().__init__(estimator)
        owner = type(self).__name__
        validate_params(
            owner,
            {"scale": scale},
            {"scale": [Interval(float, 0, None, closed="neither"), NONE]},
        )
        if not getattr(detector, "fitted_", False):
            raise NotFittedError(f"{owner}: fit the detector before guarding with it.")
        self.detector = detector
        self.scale = scale
        self.nb_classes = int(estimator.nb_classes) + 1
        caps = {"predict"}
        if "logits" in estimator.capabilities:
            caps.add("logits")
        if detector.differentiable and "class_gradient" in estimator.capabilities:
            caps |= {"logits", "loss_gradient", "class_gradient"}
        self.capabilities = frozenset(caps)

    @property
    def scale_(self) -> float:
        """The scale ``c`` in use."""
        return float(self.scale) if self.scale is not None else 1.0 / self.detector.score_scale_

    def _base_logits(self, x: torch.Tensor) -> torch.Tensor:
        if "logits" in self.estimator.capabilities:
            return self.estimator.logits_tensor(x)
        return self.estimator.predict_tensor(x).clamp_min(1e-12).log()

    def _rejection_logit(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        shift = (s.to(z.device, torch.float64) - self.detector.threshold_) * self.scale_
        return z.max(dim=1).values + shift.to(z.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        z = self._base_logits(x)
        s = self.detector._score_tensor(x)
        return torch.cat([z, self._rejection_logit(z, s)[:, None]], dim=1)

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._logits(x), dim=1)

    def _logits_vjp(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        k = self.nb_classes - 1
        w_reject = weights[:, k]

        def pulled(z: torch.Tensor) -> torch.Tensor:
            return (weights[:, :k].to(z.dtype) * z).sum(1) + w_reject.to(z.dtype) * z.max(1).values

        grad, _, _ = self.estimator.objective_gradient_tensor(x, pulled)
        w_score = (w_reject.to(torch.float64) * self.scale_).to(x.device)
        g_score, _ = self.detector._score_vjp(x, w_score)
        return grad + g_score.to(grad.dtype)

    # Every gradient derives from _logits and _logits_vjp, as in Classifier
    # (EstimatorWrapper's kernels would forward to the estimator, which knows no rejected class).
    def _loss_gradient(self, x: torch.Tensor, y: torch.Tensor, return_outputs: bool) -> Any:
        grad, loss, logits = self._objective_gradient(x, lambda z: self._per_sample_loss(z, y))
        return (grad, loss, logits) if return_outputs else grad

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        return self._class_gradient_and_logits(x, label)[0]

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return super(EstimatorWrapper, self)._class_gradient_and_logits(x, label)

    def _objective_gradient(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return super(EstimatorWrapper, self)._objective_gradient(x, objective)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.estimator!r}, {type(self.detector).__name__})"
