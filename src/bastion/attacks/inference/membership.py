"""Membership inference from the target's outputs alone: the loss threshold and the gap
(rule-based) attacks of Yeom et al."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from bastion._validation import BATCH_SIZE, NONE, Constraint, Interval
from bastion.attacks.inference._base import (
    MembershipInferenceAttack,
    cross_entropy,
    log_scores,
)
from bastion.estimators.base import SupportsPredict
from bastion.exceptions import InputError

__all__ = ["GapAttack", "LossThreshold"]


class LossThreshold(MembershipInferenceAttack):
    """Loss-threshold membership inference: training samples have a lower loss.

    The score of a sample is minus its cross-entropy loss under the target, ``log p_y(x)``
    (higher means more likely a member). :meth:`predict` turns scores into verdicts: a sample
    is a member when its loss is below ``threshold``; with ``threshold=None`` the threshold
    learned by :meth:`fit` is used, which is, as in the paper, the average loss on samples
    known to be in the training set (or, given ground truth on both sides, the loss that
    maximises the membership advantage). :meth:`infer` needs no fit.

    Threat model: black-box with scores (the target's probabilities or logits). The weakest
    and cheapest attack: the baseline every other attack must beat at low FPR.

    Parameters
    ----------
    estimator : estimator with ``predict``
        The target model.
    threshold : float or None, default None
        Loss below which :meth:`predict` calls a sample a member; None: learned by ``fit``.
    batch_size : int, default 256
        Samples per query of the target.

    Attributes
    ----------
    threshold_ : float
        After :meth:`fit`: the learned loss threshold.

    References
    ----------
    Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning: Analyzing the
    Connection to Overfitting", IEEE CSF 2018. https://arxiv.org/abs/1709.01604

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.estimators import SklearnClassifier
    >>> from bastion.attacks.inference.membership import LossThreshold
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(60, 20)).astype(np.float32)
    >>> y = rng.integers(0, 2, 60)  # random labels: only memorisation fits them
    >>> target = SklearnClassifier(LogisticRegression(C=100, max_iter=2000).fit(x[:30], y[:30]))
    >>> scores = LossThreshold(target).infer(x, y)
    >>> bool(scores[:30].mean() > scores[30:].mean())  # members have a lower loss
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "threshold": [Interval(float, 0, None), NONE],
        "batch_size": BATCH_SIZE,
    }

    def __init__(
        self, estimator: SupportsPredict, *, threshold: float | None = None, batch_size: int = 256
    ):
        self.estimator = estimator
        self.threshold = threshold
        self.batch_size = batch_size

    def _infer(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -cross_entropy(log_scores(self.estimator, x, self.batch_size), y)

    def fit(self, x: Any, y: Any, is_member: Any = None) -> LossThreshold:
        """Learn ``threshold_``.

        Parameters
        ----------
        x, y : samples and labels
            Without ``is_member``: samples known to be training members; the threshold is
            their average loss (Yeom et al.). With ``is_member``: labelled samples of both
            kinds; the threshold maximises ``TPR - FPR`` on them.
        is_member : bool array-like, shape (N,), optional

        Returns
        -------
        self
        """
        self._validate()
        xt, yt, _ = self._inputs(x, y)
        loss = -self._infer(xt, yt).cpu().numpy()
        if is_member is None:
            self.threshold_ = float(loss.mean())
            return self
        member = np.asarray(
            is_member.cpu() if isinstance(is_member, torch.Tensor) else is_member
        ).astype(bool)
        if member.shape != loss.shape or member.all() or not member.any():
            raise InputError(
                "is_member must hold one boolean per sample, with members and non-members."
            )
        cands = np.unique(loss)
        # Member when loss <= t: TPR - FPR for every candidate t at once.
        tpr = np.searchsorted(np.sort(loss[member]), cands, side="right") / member.sum()
        fpr = np.searchsorted(np.sort(loss[~member]), cands, side="right") / (~member).sum()
        self.threshold_ = float(cands[np.argmax(tpr - fpr)])
        return self

    def predict(self, x: Any, y: Any) -> Any:
        """Membership verdicts (bool, shape (N,)): loss at most the threshold."""
        threshold = (
            self.threshold if self.threshold is not None else self.__dict__.get("threshold_")
        )
        if threshold is None:
            raise InputError("LossThreshold.predict needs threshold=... or a prior fit(...).")
        scores = self.infer(x, y)
        return scores >= -threshold


class GapAttack(MembershipInferenceAttack):
    """The gap (rule-based) attack: a sample is called a member when the target classifies it
    correctly.

    Scores are 1.0 for correctly classified samples and 0.0 otherwise, so the ROC curve has a
    single interior point; its membership advantage is the generalisation gap (train minus test
    accuracy). ART calls it ``MembershipInferenceBlackBoxRuleBased``.

    Threat model: black-box, labels only.

    Parameters
    ----------
    estimator : estimator with ``predict``
    batch_size : int, default 256

    References
    ----------
    Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning: Analyzing the
    Connection to Overfitting", IEEE CSF 2018. https://arxiv.org/abs/1709.01604

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.inference.membership import GapAttack
    >>> api = lambda x: (x[:, 0] > 0.5).astype(int)
    >>> clf = BlackBoxClassifier(api, input_shape=(2,), nb_classes=2, labels_only=True)
    >>> x = np.array([[0.9, 0.0], [0.1, 0.0]], dtype=np.float32)
    >>> GapAttack(clf).infer(x, [1, 1])
    array([1., 0.])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"batch_size": BATCH_SIZE}

    def __init__(self, estimator: SupportsPredict, *, batch_size: int = 256):
        self.estimator = estimator
        self.batch_size = batch_size

    def _infer(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pred = torch.cat(
                [
                    self.estimator.predict_tensor(x[i : i + self.batch_size]).argmax(dim=1)
                    for i in range(0, x.shape[0], self.batch_size)
                ]
            )
        return (pred == y).to(torch.float64)
