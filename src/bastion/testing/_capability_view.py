"""An estimator seen with only some of its capabilities: the test double that shows an attack
or defence uses nothing beyond what it declares."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from bastion.estimators.base import CAPABILITIES, EstimatorWrapper

__all__ = ["CapabilityView"]


class CapabilityView(EstimatorWrapper):
    """``estimator`` offering only ``capabilities`` (those it has among them).

    Every kernel forwards to the wrapped estimator's public kernel; ``clone`` gives a view of
    the wrapped estimator's clone (same capabilities), ``prune``, ``torch_module`` and ``fit``
    forward. A member
    outside the view raises :class:`~bastion.exceptions.EstimatorError` naming the
    capability, and the view has no ``model``: code that reaches past the protocol fails.

    Parameters
    ----------
    estimator : Classifier
        The estimator to restrict.
    capabilities : iterable of str
        The capabilities to offer.

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.testing._capability_view import CapabilityView
    >>> clf = TorchClassifier(torch.nn.Linear(4, 3), input_shape=(4,), nb_classes=3)
    >>> sorted(CapabilityView(clf, ["predict", "clone"]).clone().capabilities)
    ['clone', 'predict']
    """

    forwarded = frozenset(CAPABILITIES)

    def __init__(self, estimator: Any, capabilities: Iterable[str]) -> None:
        super().__init__(estimator)
        self.capabilities = self.capabilities & frozenset(capabilities)

    def _parameter_gradient(
        self, x: torch.Tensor, y: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, ...]:
        return self.estimator.parameter_gradient_tensor(x, y, create_graph=create_graph)

    def clone(self, *, reinitialize: bool = False, random_state: Any = None) -> CapabilityView:
        """A view, with the same capabilities, of the wrapped estimator's clone."""
        self._require("clone", "clone")
        twin = self.estimator.clone(reinitialize=reinitialize, random_state=random_state)
        return CapabilityView(twin, self.capabilities)

    def torch_module(self) -> torch.nn.Module:
        """The wrapped estimator's module (a view restricts access, not the model)."""
        self._require("module", "torch_module")
        return self.estimator.torch_module()

    def prune(self, layer: str | int, units: Any) -> None:
        """The wrapped estimator's ``prune``."""
        self._require("prune", "prune")
        self.estimator.prune(layer, units)

    def fit(self, x: Any, y: Any, **kwargs: Any) -> CapabilityView:
        """The wrapped estimator's ``fit``; returns the view."""
        self._require("fit", "fit")
        self.estimator.fit(x, y, **kwargs)
        return self
