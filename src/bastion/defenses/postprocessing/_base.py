"""The postprocessor template and the defended estimator that applies postprocessors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bastion._params import Parametrized
from bastion._tensor import to_tensor
from bastion.estimators.base import SupportsPredict
from bastion.estimators.defended import DefendedEstimator
from bastion.exceptions import InputError

__all__ = ["PostprocessedClassifier", "Postprocessor"]


class Postprocessor(Parametrized):
    """Base of output-perturbing defences: ``postprocessor(probabilities) -> probabilities``.

    A postprocessor maps a batch of class probabilities ``(N, K)`` to the probabilities the
    API reveals. ``__init__`` only stores parameters; they are validated at the first call.
    Subclasses implement ``_apply(probs)`` on a float tensor.
    """

    def __call__(self, preds: Any) -> Any:
        """Apply the defence to probabilities ``(N, K)``; same type out as in.

        Raises
        ------
        InputError
            Unless ``preds`` is a non-empty floating-point array ``(N, K)`` of finite values
            in ``[0, 1]``.
        """
        name = type(self).__name__
        t, kind = to_tensor(preds, dtype=None)
        if t.ndim != 2 or not t.is_floating_point():
            raise InputError(
                f"{name} expects floating-point probabilities of shape (N, K); "
                f"got shape {tuple(t.shape)} and dtype {t.dtype}."
            )
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise InputError(f"{name}: the probabilities are empty (shape {tuple(t.shape)}).")
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{name}: the probabilities contain NaN or infinite values.")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0 + 1e-6:
            raise InputError(
                f"{name} expects probabilities in [0, 1]; got values in [{lo:g}, {hi:g}] "
                "(logits? apply a softmax first)."
            )
        return kind.restore(self.apply_tensor(t))

    def apply_tensor(self, probs: torch.Tensor) -> torch.Tensor:
        """The kernel: validated parameters, tensor in, tensor out (no checks on ``probs``)."""
        self._validate()
        return self._apply(probs)

    def _apply(self, probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PostprocessedClassifier(DefendedEstimator):
    """An estimator whose outputs pass through postprocessors: a defended prediction API.

    The wrapper is an estimator like the one it protects (DESIGN principle 7): attacks and
    metrics use it unchanged. It is a :class:`~bastion.estimators.DefendedEstimator` without
    preprocessors that offers only ``predict`` (the defence changes what the API reveals, so
    gradients of the undefended model are not exposed; use ``DefendedEstimator`` for a
    defended model with gradients); every query is counted on the wrapper's ``query_count``
    and on the wrapped estimator's.

    Parameters
    ----------
    estimator : estimator
        The protected model (any bastion estimator with ``predict``).
    postprocessors : sequence of Postprocessor
        Applied in order to the probabilities.

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.postprocessing import PostprocessedClassifier, ReverseSigmoid
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3)
    >>> api = PostprocessedClassifier(clf, postprocessors=[ReverseSigmoid(beta=1.0, gamma=0.2)])
    >>> api.predict(torch.rand(2, 4)).shape
    torch.Size([2, 3])
    >>> api.query_count, clf.query_count
    (2, 2)
    """

    forwarded = frozenset({"predict"})

    def __init__(
        self, estimator: SupportsPredict, *, postprocessors: Sequence[Postprocessor]
    ) -> None:
        super().__init__(estimator, postprocessors=postprocessors)

    def __repr__(self) -> str:
        return f"PostprocessedClassifier({self.estimator!r}, postprocessors={self.postprocessors})"
