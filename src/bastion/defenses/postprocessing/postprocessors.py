"""Output-perturbing defences against model stealing: what the prediction API reveals."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion._tensor import resolve_random_state
from bastion._validation import RANDOM_STATE, Boolean, Constraint, Interval
from bastion.defenses.postprocessing._base import Postprocessor

__all__ = ["GaussianNoise", "HighConfidence", "LabelsOnly", "ReverseSigmoid", "Rounding", "TopK"]


class ReverseSigmoid(Postprocessor):
    """Reverse sigmoid perturbation (Lee et al. 2019).

    Each probability ``p`` becomes ``p - beta * (sigmoid(gamma * logit(p)) - 1/2)``, clipped to
    ``[0, 1]`` and renormalised. The perturbation is small where the model is unsure and
    large for confident outputs; it leaves the top-1 label almost always unchanged but makes
    the revealed probabilities misleading to train on: a thief fitting them with the
    cross-entropy is pushed towards wrong logits (the sigmoid's inverse is non-invertible
    through the perturbation).

    Parameters
    ----------
    beta : float, default 1.0
        Strength of the perturbation (> 0).
    gamma : float, default 0.1
        Dataset-dependent slope of the sigmoid (> 0); small values perturb more.

    References
    ----------
    Lee, Edwards, Molloy and Srivastava, "Defending against NN model stealing attacks using
    deceptive perturbations", IEEE S&P Workshops 2019. https://arxiv.org/abs/1806.00054

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.postprocessing import ReverseSigmoid
    >>> out = ReverseSigmoid(beta=1.0, gamma=0.2)(torch.tensor([[0.98, 0.01, 0.01]]))
    >>> int(out.argmax()), round(float(out.sum()), 4)
    (0, 1.0)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "beta": [Interval(float, 0, None, closed="neither")],
        "gamma": [Interval(float, 0, None, closed="neither")],
    }

    def __init__(self, *, beta: float = 1.0, gamma: float = 0.1) -> None:
        self.beta = beta
        self.gamma = gamma

    def _apply(self, probs: torch.Tensor) -> torch.Tensor:
        eps = 1e-9
        p = probs.clamp(eps, 1.0 - eps)
        r = self.beta * (torch.sigmoid(self.gamma * torch.logit(p)) - 0.5)
        out = (probs - r).clamp(0.0, 1.0)
        return out / out.sum(dim=1, keepdim=True).clamp_min(1e-12)


class Rounding(Postprocessor):
    """Round the probabilities to ``decimals`` decimals (Tramèr et al. 2016).

    Parameters
    ----------
    decimals : int, default 2

    References
    ----------
    Tramèr, Zhang, Juels, Reiter and Ristenpart, "Stealing machine learning models via
    prediction APIs", USENIX Security 2016. https://arxiv.org/abs/1609.02943

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.postprocessing import Rounding
    >>> Rounding(decimals=1)(torch.tensor([[0.74, 0.26]]))
    tensor([[0.7000, 0.3000]])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "decimals": [Interval(int, 0, None)]
    }

    def __init__(self, *, decimals: int = 2) -> None:
        self.decimals = decimals

    def _apply(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.round(probs, decimals=self.decimals)


class TopK(Postprocessor):
    """Reveal only the ``k`` highest probabilities; the others become 0.

    Parameters
    ----------
    k : int, default 1
    renormalize : bool, default False
        Rescale the kept probabilities to sum to one.

    References
    ----------
    Orekondy, Schiele and Fritz, "Knockoff nets: Stealing functionality of black-box
    models", CVPR 2019 (section 6, truncated outputs). https://arxiv.org/abs/1812.02766

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.postprocessing import TopK
    >>> TopK(k=2)(torch.tensor([[0.5, 0.2, 0.3]]))
    tensor([[0.5000, 0.0000, 0.3000]])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "k": [Interval(int, 1, None)],
        "renormalize": [Boolean()],
    }

    def __init__(self, *, k: int = 1, renormalize: bool = False) -> None:
        self.k = k
        self.renormalize = renormalize

    def _apply(self, probs: torch.Tensor) -> torch.Tensor:
        k = min(self.k, probs.shape[1])
        vals, idx = probs.topk(k, dim=1)
        out = torch.zeros_like(probs).scatter_(1, idx, vals)
        if self.renormalize:
            out = out / out.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return out


class HighConfidence(Postprocessor):
    """Reveal only the confident probabilities: those below ``cutoff`` become 0.

    The rows are not renormalised (as in ART's ``HighConfidence``): what the API reveals is
    how confident the model is, only where it is confident. A row with no probability at or
    above ``cutoff`` becomes all zeros.

    Parameters
    ----------
    cutoff : float, default 0.25
        Smallest probability revealed, in ``[0, 1]``.

    References
    ----------
    Tramèr, Zhang, Juels, Reiter and Ristenpart, "Stealing machine learning models via
    prediction APIs", USENIX Security 2016. https://arxiv.org/abs/1609.02943

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.postprocessing import HighConfidence
    >>> HighConfidence(cutoff=0.25)(torch.tensor([[0.5, 0.2, 0.3]]))
    tensor([[0.5000, 0.0000, 0.3000]])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "cutoff": [Interval(float, 0, 1)]
    }

    def __init__(self, *, cutoff: float = 0.25) -> None:
        self.cutoff = cutoff

    def _apply(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.where(probs < self.cutoff, torch.zeros_like(probs), probs)


class LabelsOnly(Postprocessor):
    """Reveal only the predicted label, as a one-hot row.

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.postprocessing import LabelsOnly
    >>> LabelsOnly()(torch.tensor([[0.2, 0.8]]))
    tensor([[0., 1.]])
    """

    def __init__(self) -> None:
        pass

    def _apply(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)


class GaussianNoise(Postprocessor):
    """Add Gaussian noise to the probabilities, clip at 0 and renormalise.

    Parameters
    ----------
    scale : float, default 0.2
        Standard deviation of the noise.
    random_state : None, int or torch.Generator
        Seeds the noise; the generator is created at the first call and then advances.

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.postprocessing import GaussianNoise
    >>> out = GaussianNoise(scale=0.1, random_state=0)(torch.tensor([[0.9, 0.1]]))
    >>> round(float(out.sum()), 4)
    1.0
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "scale": [Interval(float, 0, None)],
        "random_state": RANDOM_STATE,
    }

    def __init__(self, *, scale: float = 0.2, random_state: Any = None) -> None:
        self.scale = scale
        self.random_state = random_state

    def _apply(self, probs: torch.Tensor) -> torch.Tensor:
        gen = getattr(self, "_generator", None)
        if gen is None or gen.device.type != probs.device.type:
            gen = self._generator = resolve_random_state(self.random_state, probs.device)
        noise = torch.randn(probs.shape, generator=gen, device=probs.device, dtype=probs.dtype)
        out = (probs + self.scale * noise).clamp_min(0.0)
        total = out.sum(dim=1, keepdim=True)
        # a row clipped to all zeros falls back to the uniform distribution
        return torch.where(total > 0, out / total.clamp_min(1e-12), 1.0 / probs.shape[1])
