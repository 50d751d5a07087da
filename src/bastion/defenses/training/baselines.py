"""Privacy baselines without formal guarantees: label smoothing and confidence masking.

Both are cheap and often proposed against membership inference; neither bounds what an attacker
learns (label-only attacks still work against confidence masking, and a smoothed model still
fits its training set better than unseen data). They serve as baselines next to DP-SGD.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion._params import renamed_keywords
from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    NONE,
    RANDOM_STATE,
    Interval,
    check_labels,
    check_trained,
    check_x,
    invalid_parameter,
    probe_classes,
    validate_params,
)
from bastion.estimators.base import EstimatorWrapper, SupportsPredict

__all__ = ["ConfidenceMasking", "train_label_smoothing"]


@renamed_keywords(lr="learning_rate")
def train_label_smoothing(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    smoothing: float = 0.1,
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    random_state: RandomStateLike = None,
) -> nn.Module:
    """Train a classifier with Adam on the label-smoothed cross-entropy (Szegedy et al., 2016).

    The target puts ``1 - smoothing`` on the true class and spreads ``smoothing`` uniformly, so
    the model is never pushed to full confidence on its training samples: a weak (no-guarantee)
    membership-inference baseline.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits.
    x, y : array-like or torch.Tensor
        Training samples and class indices.
    smoothing : float, default=0.1
        Label-smoothing weight in [0, 1).
    epochs, batch_size, learning_rate
        Training schedule (Adam).
    random_state : None, int or torch.Generator
        Seed of the shuffling (a private generator).

    Returns
    -------
    torch.nn.Module
        ``model``, trained in place, in eval mode.

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import train_label_smoothing
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> model = train_label_smoothing(MLP(64, 10, random_state=0), x, y, smoothing=0.2,
    ...                               epochs=1, random_state=0)
    """
    name = "train_label_smoothing"
    validate_params(
        name,
        {
            "smoothing": smoothing,
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "random_state": random_state,
        },
        {
            "smoothing": [Interval(float, 0, 1, closed="left")],
            "epochs": [Interval(int, 1, None)],
            "batch_size": BATCH_SIZE,
            "learning_rate": [Interval(float, 0, None, closed="neither")],
            "random_state": RANDOM_STATE,
        },
    )
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise invalid_parameter("model", name, "a torch.nn.Module with parameters", model)
    param = next(model.parameters())
    x_t, _ = to_tensor(x, dtype=param.dtype, device=param.device)
    check_x(x_t, input_shape=None, clip_values=None)
    y_t, _ = to_tensor(y, dtype=None, device=param.device)
    nb_classes = probe_classes(model, x_t, name)
    y_t = check_labels(y_t, n=x_t.shape[0], nb_classes=nb_classes)
    gen = resolve_random_state(random_state, "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    n = x_t.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(param.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x_t[idx]), y_t[idx], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return check_trained(model, name).eval()


class ConfidenceMasking(EstimatorWrapper):
    """An estimator that reveals only the top-k class scores, optionally rounded.

    The wrapped estimator's probabilities are computed, every score outside the ``top_k``
    largest is set to 0 and the kept ones are rounded to ``decimals`` decimals. The predicted
    label never changes, so clean accuracy is untouched; score-based membership and attribute
    inference lose information, label-only attacks do not (Choquette-Choo et al., 2021).
    Only ``predict`` is exposed: the masked scores have no useful gradient.

    Parameters
    ----------
    estimator : Classifier
        The estimator to protect.
    top_k : int, default=1
        How many scores are revealed.
    decimals : int or None, default=None
        Round revealed scores to this many decimals (``None``: no rounding).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.defenses.training import ConfidenceMasking
    >>> from bastion.estimators import SklearnClassifier
    >>> x, y = load_iris(return_X_y=True)
    >>> clf = SklearnClassifier(LogisticRegression(max_iter=500).fit(x, y))
    >>> masked = ConfidenceMasking(clf, top_k=1, decimals=1)
    >>> p = masked.predict(x[:3])
    >>> int((p > 0).sum(axis=1).max())
    1
    """

    forwarded = frozenset({"predict"})

    def __init__(
        self, estimator: SupportsPredict, *, top_k: int = 1, decimals: int | None = None
    ) -> None:
        super().__init__(estimator)
        name = type(self).__name__
        validate_params(
            name,
            {"top_k": top_k, "decimals": decimals},
            {
                "top_k": [Interval(int, 1, estimator.nb_classes)],
                "decimals": [NONE, Interval(int, 0, None)],
            },
        )
        self.top_k = top_k
        self.decimals = decimals

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.estimator.predict_tensor(x)
        kept = probs.topk(self.top_k, dim=1)
        out = torch.zeros_like(probs).scatter(1, kept.indices, kept.values)
        if self.decimals is not None:
            out = out.round(decimals=self.decimals)
        return out
