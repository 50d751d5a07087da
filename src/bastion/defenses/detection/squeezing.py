"""Feature squeezing detector (Xu et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from bastion._validation import BATCH_SIZE, NONE, Constraint, Interval, Options, Satisfies
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
    :class:`InputDetector`). Scoring uses only ``predict``.

    The squeezers are quantisers and filters: their exact gradient is zero or uninformative,
    which is why the detector looked robust until an attacker differentiated *around* them (He
    et al. 2017). ``gradients`` chooses how the score's gradient crosses the squeezers when
    the estimator offers ``class_gradient``, which makes :meth:`guard` a differentiable
    classifier for adaptive attacks: ``"bpda"`` (default) pulls the gradient at the squeezed
    input back through each squeezer's differentiable surrogate ``bpda(x)`` (the identity for
    plain callables; Athalye, Carlini and Wagner 2018), ``"exact"`` through the squeezer as
    implemented (torch autograd, so a quantiser contributes nothing: the naive attacker; this
    gradient matches finite differences), ``None`` offers no gradient (a predict-only guard,
    for black-box attacks). The gradient is that of the L1 distance to the squeezed input
    that attains the maximum, with the estimator's probabilities taken as the softmax of its
    logits.

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
    gradients : {"bpda", "exact"} or None, default "bpda"
        How the score's gradient crosses the squeezers (see above).
    batch_size : int, default 128
        Samples per forward pass.

    References
    ----------
    Xu, Evans and Qi, "Feature squeezing: detecting adversarial examples in deep neural
    networks", NDSS 2018. https://arxiv.org/abs/1704.01155

    He, Wei, Chen, Carlini and Song, "Adversarial example defenses: ensembles of weak defenses
    are not strong", WOOT 2017. https://arxiv.org/abs/1706.04701

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
        "gradients": [Options(["bpda", "exact"]), NONE],
        "batch_size": BATCH_SIZE,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)

    #: Any: the gradient capabilities (``logits``, ``class_gradient``) are used where the
    #: estimator declares them, which no single protocol says.
    estimator: Any

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        squeezers: list[Callable[[torch.Tensor], torch.Tensor]] | None = None,
        bit_depth: int = 4,
        window: int = 2,
        gradients: str | None = "bpda",
        batch_size: int = 128,
    ) -> None:
        self.estimator = estimator
        self.squeezers = squeezers
        self.bit_depth = bit_depth
        self.window = window
        self.gradients = gradients
        self.batch_size = batch_size

    def _squeezers(self) -> list[Any]:
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
        return out

    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        squeezers = self._squeezers()
        #: The forward squeezing, and the map whose autograd carries the gradient back.
        self.squeezers_ = [getattr(s, "apply_tensor", s) for s in squeezers]
        if self.gradients == "bpda":
            self._pullbacks = [getattr(s, "bpda", _identity) for s in squeezers]
        else:
            self._pullbacks = list(self.squeezers_)

    @property
    def differentiable(self) -> bool:
        caps = self.estimator.capabilities
        return self.gradients is not None and {"logits", "class_gradient"} <= caps

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

    def _score_vjp(
        self, x: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # score = max_j |p(x) - p(s_j(x))|_1; its gradient is that of the maximising j*:
        # J_p(x)^T g - J_s(x)^T J_p(u)^T g with u = s_j*(x), g = sign(p(x) - p(u)), and J_s the
        # Jacobian of the pull-back map (the surrogate for BPDA, the squeezer itself if exact).
        with torch.no_grad():
            p = torch.softmax(self.estimator.logits_tensor(x).to(torch.float64), dim=1)
            squeezed = [sq(x) for sq in self.squeezers_]
            probs = [
                torch.softmax(self.estimator.logits_tensor(u).to(torch.float64), dim=1)
                for u in squeezed
            ]
            dist = torch.stack([(q - p).abs().sum(1) for q in probs], dim=1)
            score, best = dist.max(dim=1)
            rows = torch.arange(x.shape[0], device=x.device)
            u = torch.stack(squeezed)[best.to(x.device), rows]
            sign = torch.stack(probs)[best.to(x.device), rows].sub(p).neg().sign()
        w = weights.to(x.device, torch.float64)[:, None] * sign

        def at_x(z: torch.Tensor) -> torch.Tensor:
            return (w.to(z.dtype) * torch.softmax(z, dim=1)).sum(1)

        def at_u(z: torch.Tensor) -> torch.Tensor:
            return -(w.to(z.dtype) * torch.softmax(z, dim=1)).sum(1)

        grad, _, _ = self.estimator.objective_gradient_tensor(x, at_x)
        grad_u, _, _ = self.estimator.objective_gradient_tensor(u, at_u)
        for j, pull in enumerate(self._pullbacks):
            mask = best.to(x.device) == j
            if bool(mask.any()):
                xj = x[mask].detach().requires_grad_(True)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(
                        pull(xj), xj, grad_outputs=grad_u[mask], allow_unused=True
                    )
                if g is not None:
                    grad[mask] += g
        return grad, score.cpu()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
