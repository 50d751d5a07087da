"""Kernel density detector (Feinman et al. 2017)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from bastion._validation import BATCH_SIZE, LAYER, Constraint, Interval
from bastion.defenses.detection._base import InputDetector, _flatten
from bastion.estimators.base import SupportsActivationsAndPredict
from bastion.exceptions import InputError

__all__ = ["KernelDensityDetector"]


class KernelDensityDetector(InputDetector):
    """Flags inputs whose features lie in a low-density region of their predicted class.

    ``fit(x, y)`` keeps the features (a layer's flattened output, by default the last hidden
    layer) of the clean training inputs of each class. The score of an input whose predicted
    class is ``c`` is the negative log of a Gaussian kernel density estimate over the ``n_c``
    training features of that class,

    .. math:: s(x) = -\\log \\frac{1}{n_c}\\sum_{i: y_i = c}
              \\exp\\Big(-\\frac{\\lVert f(x) - f(x_i)\\rVert^2}{2\\sigma^2}\\Big)

    (the kernel's normalising constant, the same for every class, is left out): adversarial
    examples pushed across a decision boundary lie far from the training data of the class they
    end in.

    The paper adds the model's uncertainty under Monte Carlo dropout as a second feature. A
    bastion estimator offers no public capability to predict with dropout active (predictions
    run in the model's own mode and an estimator never changes it, DESIGN principle 9), so the
    uncertainty feature is left out; the density alone is the paper's "KD" detector.

    The score is differentiable through the estimator's ``activation_gradient`` capability
    (the predicted class held fixed), so :meth:`guard` gives a classifier that gradient attacks
    can adapt to.

    Parameters
    ----------
    estimator : Classifier
        Needs ``predict`` and ``activations``.
    layer : int or str, default -2
        The layer (name of ``estimator.layer_names`` or index into it; -2: the penultimate).
    bandwidth : float, default 1.0
        The kernel's standard deviation :math:`\\sigma` in feature units (the paper: 1.20 on
        MNIST, 0.26 on CIFAR-10).
    batch_size : int, default 128
        Samples per forward pass.

    Attributes
    ----------
    layer_ : str
    features_ : list of torch.Tensor
        Per class, the training features ``(n_c, D)`` (float64).

    References
    ----------
    Feinman, Curtin, Shintre and Gardner, "Detecting adversarial samples from artifacts",
    2017. https://arxiv.org/abs/1703.00410

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.detection import KernelDensityDetector
    >>> from bastion.zoo import MLP
    >>> clf = TorchClassifier(MLP(4, 2, hidden=(8,), random_state=0), input_shape=(4,),
    ...                       nb_classes=2)
    >>> x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    >>> det = KernelDensityDetector(clf).fit(x, (x[:, 0] > 0.5).long())
    >>> det.score(x).shape
    torch.Size([40])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "layer": LAYER,
        "bandwidth": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict", "activations")
    _needs_labels: ClassVar[bool] = True

    #: Any: an optional capability (``activation_gradient``, ``loss_gradient``) is used
    #: where the estimator declares it, which no single protocol says.
    estimator: Any

    def __init__(
        self,
        estimator: SupportsActivationsAndPredict,
        *,
        layer: Any = -2,
        bandwidth: float = 1.0,
        batch_size: int = 128,
    ) -> None:
        self.estimator = estimator
        self.layer = layer
        self.bandwidth = bandwidth
        self.batch_size = batch_size

    @property
    def differentiable(self) -> bool:
        return "activation_gradient" in self.estimator.capabilities

    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if y is None:  # pragma: no cover - fit checks the labels (_needs_labels)
            raise InputError(f"{type(self).__name__} needs the labels y.")
        self.layer_ = str(self.estimator.resolve_layer(self.layer))
        f = self._flat_activations(x, self.layer_, pool=False)
        lab = y.to(f.device)
        self.features_ = [f[lab == c] for c in range(self.estimator.nb_classes)]

    def _neg_log_density(self, f: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        f = f.to(torch.float64)
        out = torch.full((f.shape[0],), math.inf, dtype=torch.float64, device=f.device)
        for c in classes.unique().tolist():
            ref = self.features_[c].to(f.device)
            sel = classes == c
            if ref.shape[0] == 0:
                continue  # no training input of this class: infinitely suspicious
            d2 = torch.cdist(f[sel], ref).square()
            log_density = torch.logsumexp(-d2 / (2 * self.bandwidth**2), dim=1)
            out = out.index_put((sel.nonzero().flatten(),), math.log(ref.shape[0]) - log_density)
        return out

    def _score_tensor(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for s in range(0, x.shape[0], self.batch_size):
                xb = x[s : s + self.batch_size]
                classes = self.estimator.predict_tensor(xb).argmax(1)
                f = _flatten(self.estimator.activations_tensor(xb, self.layer_), False)
                rows.append(self._neg_log_density(f, classes.to(f.device)).cpu())
        return torch.cat(rows)

    def _score_vjp(
        self, x: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            classes = self.estimator.predict_tensor(x).argmax(1)

        def objective(act: torch.Tensor) -> torch.Tensor:
            s = self._neg_log_density(_flatten(act, False), classes.to(act.device))
            return s * weights.to(s.device)

        grad, _, act = self.estimator.activation_gradient_tensor(x, self.layer_, objective)
        with torch.no_grad():
            score = self._neg_log_density(_flatten(act, False), classes.to(act.device))
        return grad, score.cpu()
