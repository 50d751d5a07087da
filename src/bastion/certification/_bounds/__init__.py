"""Sound bound propagation on traced torch modules: one rule per operator (IBP forward,
CROWN backward) composed over the torch.fx graph; input domains and margin specifications.

Private: the public API is :class:`bastion.certification.IntervalBounds`,
:class:`~bastion.certification.CrownBounds` and :func:`~bastion.certification.verify`;
certified trainers use :class:`BoundNetwork` directly.
"""

from bastion.certification._bounds._domain import (
    InputDomain,
    box_domain,
    concretize_lower,
    margin_spec,
)
from bastion.certification._bounds._graph import SUPPORTED, GraphNode
from bastion.certification._bounds._network import BoundNetwork

__all__ = [
    "SUPPORTED",
    "BoundNetwork",
    "GraphNode",
    "InputDomain",
    "box_domain",
    "concretize_lower",
    "margin_spec",
]
