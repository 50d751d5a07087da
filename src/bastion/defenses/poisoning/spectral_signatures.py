"""Spectral signatures (Tran, Li, Madry 2018): poison stands out along the top singular vector."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._validation import BATCH_SIZE, OPTIONAL_LAYER, VERBOSE, Constraint, Interval
from bastion.defenses.poisoning.base import DetectionResult, PoisonDetector
from bastion.estimators.base import SupportsActivationsAndPredict

__all__ = ["SpectralSignatures"]


def _top_projection_squared(r: torch.Tensor) -> torch.Tensor:
    """Squared projections of the centred rows of ``r`` on their top right singular vector.

    Uses the eigendecomposition of the smaller Gram matrix: ``R^T R`` (D x D) when there are
    more samples than features, else ``R R^T`` (n x n), whose top eigenvector ``u`` gives the
    projections directly as ``sigma * u``.
    """
    r = r - r.mean(dim=0, keepdim=True)
    n, d = r.shape
    if n >= d:
        _, vecs = torch.linalg.eigh(r.T @ r)
        return (r @ vecs[:, -1]) ** 2
    vals, vecs = torch.linalg.eigh(r @ r.T)
    return vals[-1].clamp_min(0) * vecs[:, -1] ** 2


class SpectralSignatures(PoisonDetector):
    """Detect backdoor poison from the spectrum of each class's representations.

    Within a class, the learned representations of poisoned samples differ from the clean
    ones along one direction, which shows up as the top singular vector of the centred
    representation matrix. For each class label the representations (by default at the
    penultimate layer) are centred, their top right singular vector ``v`` computed, each
    sample scored by its squared projection ``((r_i - mean) . v)^2``, and the
    ``eps_multiplier * expected_poison_fraction`` fraction of the class with the highest
    scores removed (the paper removes 1.5 times the expected number of poisoned samples).

    Every class loses that fraction, clean classes included: the method trades some clean
    samples for a high recall. Scores are squared projections, comparable within a class
    only (``report[c]["threshold"]`` is the lowest score removed in class ``c``).

    Memory: activations are computed ``batch_size`` samples at a time into one float32 array
    ``N x D``; the inputs are never copied.

    Parameters
    ----------
    estimator : Classifier
        The model trained on the suspect data; needs the ``activations`` capability.
    layer : str, int or None, default=None
        Layer name or index in ``estimator.layer_names``; ``None`` takes the penultimate one.
    expected_poison_fraction : float, default=0.05
        Upper bound ``eps`` on the fraction of poisoned samples in a class, in ``(0, 1]``.
    eps_multiplier : float, default=1.5
        Removes ``eps_multiplier * eps`` of each class (at most the whole class).
    batch_size : int, default=256
        Samples per forward pass.
    verbose : bool, default=False
        Show a progress bar while computing activations.

    Attributes
    ----------
    layer_ : str
        The name of the layer read by the last ``detect``.

    References
    ----------
    B. Tran, J. Li, A. Madry. "Spectral Signatures in Backdoor Attacks." NeurIPS 2018.

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.poisoning import SpectralSignatures
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 2))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=2)
    >>> x, y = torch.rand(40, 4), torch.arange(40) % 2
    >>> result = SpectralSignatures(clf, expected_poison_fraction=0.1).detect(x, y)
    >>> result.n_flagged  # 1.5 * 0.1 * 20 = 3 per class
    6
    """

    estimator: SupportsActivationsAndPredict

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "layer": OPTIONAL_LAYER,
        "expected_poison_fraction": [Interval(float, 0, 1, closed="right")],
        "eps_multiplier": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsActivationsAndPredict,
        *,
        layer: str | int | None = None,
        expected_poison_fraction: float = 0.05,
        eps_multiplier: float = 1.5,
        batch_size: int = 256,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.layer = layer
        self.expected_poison_fraction = expected_poison_fraction
        self.eps_multiplier = eps_multiplier
        self.batch_size = batch_size
        self.verbose = verbose

    def detect(self, x: Any, y: Any) -> DetectionResult:
        """Score every sample and flag the top-scoring fraction of each class.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            The (suspect) training inputs.
        y : array-like or torch.Tensor
            Their labels, class indices ``(N,)`` or one-hot.

        Returns
        -------
        DetectionResult
        """
        acts, labels = self._labelled_activations(x, y)
        n = labels.shape[0]
        is_poison = np.zeros(n, dtype=bool)
        scores = np.zeros(n, dtype=np.float64)
        extra: dict[int, dict[str, Any]] = {}
        fraction = min(1.0, self.eps_multiplier * self.expected_poison_fraction)
        for c in np.unique(labels).tolist():
            idx = np.flatnonzero(labels == c)
            s = _top_projection_squared(torch.from_numpy(acts[idx]).to(torch.float64)).numpy()
            n_remove = min(idx.size, math.floor(fraction * idx.size + 0.5)) if idx.size > 1 else 0
            order = np.argsort(-s, kind="stable")
            is_poison[idx[order[:n_remove]]] = True
            scores[idx] = s
            extra[int(c)] = {
                "threshold": float(s[order[n_remove - 1]]) if n_remove else math.inf,
                "max_score": float(s.max()),
                "mean_score": float(s.mean()),
            }
        return DetectionResult(
            is_poison=is_poison,
            scores=scores,
            report=self._class_report(labels, is_poison, lambda c, _: extra[c]),
            method="SpectralSignatures",
            labels=labels,
        )
