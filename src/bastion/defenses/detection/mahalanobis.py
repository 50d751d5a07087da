"""Mahalanobis detector (Lee et al. 2018): distance to the nearest class-conditional Gaussian."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from bastion._validation import (
    BATCH_SIZE,
    LAYER,
    VERBOSE,
    Constraint,
    Interval,
    Satisfies,
)
from bastion.defenses.detection._base import InputDetector, _flatten
from bastion.estimators.base import SupportsActivationsAndPredict

__all__ = ["MahalanobisDetector"]

#: Ridge added to the tied covariance, relative to its mean eigenvalue.
_RIDGE = 1e-6


def _layers_constraint(value: Any) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    return len(items) > 0 and all(LAYER[0].is_satisfied_by(v) for v in items)


class MahalanobisDetector(InputDetector):
    """Mahalanobis-distance detector of adversarial (and out-of-distribution) inputs.

    On clean training data, the features of each layer (a convolution's maps averaged over
    positions, one feature per channel; other layers flattened) are modelled by class-
    conditional Gaussians with one covariance shared by all classes ("tied"): class means
    :math:`\\mu_c` and :math:`\\Sigma = \\frac1N\\sum_c\\sum_{i: y_i=c}(f_i-\\mu_c)(f_i-\\mu_c)^T`.
    The Mahalanobis confidence of an input is :math:`M(x) = \\max_c -(f(x)-\\mu_c)^T
    \\Sigma^{-1}(f(x)-\\mu_c)`; the score of a layer is :math:`-M(x)`, the squared distance to
    the nearest class (higher = more suspicious). :math:`\\Sigma^{-1}` is the inverse of
    :math:`\\Sigma` plus a small ridge (``1e-6`` times its mean eigenvalue), in float64.

    With ``noise_magnitude > 0`` each input is first moved by a step against the gradient of
    that distance, :math:`\\hat x = \\mathrm{clip}(x - \\epsilon\\,\\mathrm{sign}
    \\nabla_x(-M(x)))`, which raises the confidence of clean inputs more than that of
    adversarial ones (needs the ``activation_gradient`` capability), and scored there.

    With several layers the per-layer scores are combined by a logistic regression when
    ``fit`` is given adversarial examples ``x_adv`` (the paper's feature ensemble; the score is
    its decision function), and otherwise by their sum, each layer's score first standardised
    by its mean and standard deviation on the clean data of ``fit``.

    The score is differentiable through the estimator's ``activation_gradient`` capability, so
    :meth:`guard` gives a classifier that gradient attacks can adapt to (the sign of the noise
    step is treated as a constant).

    Parameters
    ----------
    estimator : Classifier
        Needs ``predict`` and ``activations`` (``activation_gradient`` for ``noise_magnitude >
        0`` and for a differentiable guard).
    layer : int, str or list of them, default -2
        The layer(s) modelled: names of ``estimator.layer_names`` or indices into it (-2: the
        penultimate layer).
    noise_magnitude : float, default 0.0
        Size of the input pre-processing step, in input units; 0 disables it.
    batch_size : int, default 128
        Samples per forward pass.
    verbose : bool, default False
        Show a progress bar while fitting.

    Attributes
    ----------
    layers_ : list of str
        The layers modelled.
    means_ : list of torch.Tensor
        Per layer, the class means ``(K, D)`` (float64).
    precisions_ : list of torch.Tensor
        Per layer, the inverse tied covariance ``(D, D)`` (float64).
    threshold_ : float
        See :class:`InputDetector`.

    References
    ----------
    Lee, Lee, Lee and Shin, "A simple unified framework for detecting out-of-distribution
    samples and adversarial attacks", NeurIPS 2018. https://arxiv.org/abs/1807.03888

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.detection import MahalanobisDetector
    >>> from bastion.zoo import MLP
    >>> clf = TorchClassifier(MLP(4, 2, hidden=(8,), random_state=0), input_shape=(4,),
    ...                       nb_classes=2)
    >>> x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    >>> det = MahalanobisDetector(clf, layer="relu1").fit(x, (x[:, 0] > 0.5).long())
    >>> det.detect(x).scores.shape
    torch.Size([40])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "layer": [Satisfies(_layers_constraint, "a layer name or index, or a list of them")],
        "noise_magnitude": [Interval(float, 0, None)],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict", "activations")

    #: Any: an optional capability (``activation_gradient``, ``loss_gradient``) is used
    #: where the estimator declares it, which no single protocol says.
    estimator: Any

    def __init__(
        self,
        estimator: SupportsActivationsAndPredict,
        *,
        layer: Any = -2,
        noise_magnitude: float = 0.0,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.layer = layer
        self.noise_magnitude = noise_magnitude
        self.batch_size = batch_size
        self.verbose = verbose

    def _needed_capabilities(self) -> tuple[str, ...]:
        if self.noise_magnitude > 0:
            return (*self._estimator_requirements, "activation_gradient")
        return self._estimator_requirements

    @property
    def differentiable(self) -> bool:
        return "activation_gradient" in self.estimator.capabilities

    # ------------------------------------------------------------------ fitting

    def fit(self, x: Any, y: Any = None, *, x_adv: Any = None) -> MahalanobisDetector:
        """Fit the class-conditional Gaussians on clean ``x`` with labels ``y``.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Clean training inputs.
        y : array-like, optional
            Their labels (indices or one-hot); ``None`` uses the estimator's predictions.
        x_adv : array-like or torch.Tensor, optional
            Adversarial examples: with several layers, a logistic regression on the per-layer
            scores of ``x`` (clean) and ``x_adv`` combines the layers.

        Returns
        -------
        self
        """
        self._validate()
        xt = self._x(x)
        labels = self._predicted(xt) if y is None else self._labels(y, xt.shape[0])
        self.layers_ = self._layer_names(self.layer)
        self.means_, self.precisions_ = [], []
        k = self.estimator.nb_classes
        with self._progress(len(self.layers_) * xt.shape[0]) as bar:
            for layer in self.layers_:
                f = self._flat_activations(xt, layer, pool=True)
                bar.update(xt.shape[0])
                lab = labels.to(f.device)
                counts = torch.bincount(lab, minlength=k).to(f.dtype)
                sums = torch.zeros(k, f.shape[1], dtype=f.dtype, device=f.device)
                sums.index_add_(0, lab, f)
                means = sums / counts.clamp_min(1)[:, None]
                # Classes absent from the data can never be the nearest one.
                means[counts == 0] = float("inf")
                centred = f - means[lab]
                cov = centred.T @ centred / f.shape[0]
                ridge = _RIDGE * max(float(torch.diagonal(cov).mean()), 1e-12)
                eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                self.means_.append(means)
                self.precisions_.append(torch.linalg.inv(cov + ridge * eye))
        self.fitted_ = True
        self.combiner_: Any = None
        feats = self._features(xt).numpy()
        self.feature_mean_ = feats.mean(0)
        self.feature_std_ = np.where(feats.std(0) > 0, feats.std(0), 1.0)
        if x_adv is not None and len(self.layers_) > 1:
            from sklearn.linear_model import LogisticRegression

            adv = self._features(self._x(x_adv, "x_adv")).numpy()
            data = (np.concatenate([feats, adv]) - self.feature_mean_) / self.feature_std_
            target = np.r_[np.zeros(len(feats)), np.ones(len(adv))]
            self.combiner_ = LogisticRegression(max_iter=1000).fit(data, target)
        self._set_threshold(self._score_tensor(xt), 0.05)
        return self

    # ------------------------------------------------------------------ scoring

    def _distance(self, f: torch.Tensor, i: int) -> torch.Tensor:
        """Squared Mahalanobis distance of features ``f`` (N, D) to the nearest class mean of
        layer ``i`` (N,) (differentiable in ``f``)."""
        means = self.means_[i].to(f.device)
        prec = self.precisions_[i].to(f.device)
        finite = torch.isfinite(means[:, 0])
        diff = f.to(torch.float64)[:, None, :] - means[finite][None]  # (N, K', D)
        d = torch.einsum("nkd,de,nke->nk", diff, prec, diff)
        return d.min(dim=1).values

    def _layer_objective(self, i: int, weights: torch.Tensor | None = None) -> Any:
        def objective(act: torch.Tensor) -> torch.Tensor:
            d = self._distance(_flatten(act, True), i)
            return d if weights is None else d * weights.to(d.device)

        return objective

    def _preprocessed(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.noise_magnitude == 0:
            return x
        grad, _, _ = self.estimator.activation_gradient_tensor(
            x, self.layers_[i], self._layer_objective(i)
        )
        x_hat = x - self.noise_magnitude * grad.sign()
        clip = self.estimator.clip_values
        return x_hat if clip is None else x_hat.clamp(clip[0], clip[1])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-layer scores ``(N, L)`` (float64, CPU)."""
        cols = []
        for i, layer in enumerate(self.layers_):
            rows = []
            for s in range(0, x.shape[0], self.batch_size):
                xb = self._preprocessed(x[s : s + self.batch_size], i)
                with torch.no_grad():
                    act = self.estimator.activations_tensor(xb, layer)
                    rows.append(self._distance(_flatten(act, True), i).cpu())
            cols.append(torch.cat(rows))
        return torch.stack(cols, dim=1)

    def _combine_weights(self) -> tuple[np.ndarray, float]:
        """The score as ``features @ w + b``."""
        if self.combiner_ is not None:
            coef = self.combiner_.coef_[0] / self.feature_std_
            bias = float(self.combiner_.intercept_[0] - (coef * self.feature_mean_).sum())
            return coef, bias
        if len(self.layers_) == 1:
            return np.ones(1), 0.0
        coef = 1.0 / self.feature_std_
        return coef, float(-(coef * self.feature_mean_).sum())

    def _score_tensor(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._combine_weights()
        return self._features(x) @ torch.as_tensor(w, dtype=torch.float64) + b

    def _score_vjp(
        self, x: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = self._combine_weights()
        grad = torch.zeros_like(x)
        score = torch.full((x.shape[0],), b, dtype=torch.float64)
        for i, layer in enumerate(self.layers_):
            # The sign of the noise step is held constant (straight-through).
            xb = self._preprocessed(x, i)
            g, _, act = self.estimator.activation_gradient_tensor(
                xb, layer, self._layer_objective(i, weights * float(w[i]))
            )
            grad += g
            with torch.no_grad():
                score += float(w[i]) * self._distance(_flatten(act.detach(), True), i).cpu()
        return grad, score
