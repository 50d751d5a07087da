"""Local intrinsic dimensionality detector (Ma et al. 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from bastion._tensor import resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    LAYER,
    NONE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Satisfies,
)
from bastion.defenses.detection._base import InputDetector, _flatten
from bastion.estimators.base import SupportsActivationsAndPredict
from bastion.exceptions import InvalidParameterError

__all__ = ["LIDDetector", "lid_mle"]


def lid_mle(distances: torch.Tensor) -> torch.Tensor:
    """Maximum-likelihood estimate of the local intrinsic dimensionality.

    .. math:: \\widehat{\\mathrm{LID}}(x) = -\\Big(\\frac1k\\sum_{i=1}^k
              \\log\\frac{r_i(x)}{r_k(x)}\\Big)^{-1}

    Parameters
    ----------
    distances : torch.Tensor, shape (N, k)
        Distances of each point to its ``k`` nearest neighbours, in increasing order and
        positive.

    Returns
    -------
    torch.Tensor, shape (N,)
    """
    r = distances.to(torch.float64).clamp_min(1e-12)
    mean_log = torch.log(r / r[:, -1:]).mean(dim=1)
    return -1.0 / mean_log.clamp_max(-1e-12)


def _layers_or_none(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(LAYER[0].is_satisfied_by(v) for v in value)
    return LAYER[0].is_satisfied_by(value)


class LIDDetector(InputDetector):
    """Local intrinsic dimensionality (LID) of the activations: adversarial regions of the
    representation space have a higher LID than the clean data manifold.

    The LID of an input at one layer is estimated by maximum likelihood (:func:`lid_mle`) from
    the distances of its activations to its ``k`` nearest neighbours in a mini-batch of
    ``batch_size`` clean reference inputs. ``fit`` draws such mini-batches from the clean
    ``x`` (each clean input's neighbours are the other members of its mini-batch), crafts an
    adversarial example of each input with ``attack`` and, with ``noise > 0``, a noisy copy
    (Gaussian noise of that standard deviation, clipped; a negative class as in the paper),
    computes their LID features against the same mini-batch, and trains a logistic regression
    (scikit-learn, on standardised features) to tell adversarial from the others. The score of
    an input is that regression's decision function (log-odds of "adversarial"), from its LID
    features against the reference mini-batch ``reference_`` (the first mini-batch of the fit
    data; an input found in it is compared with the other references only).

    The score is differentiable almost everywhere (the neighbours held fixed, as they are
    for any small step): where the estimator offers ``activation_gradient`` it is
    differentiated layer by layer, so :meth:`guard` is a differentiable classifier for
    adaptive attacks (Carlini and Wagner 2017 attack LID this way); otherwise the guard is
    predict-only.

    Parameters
    ----------
    estimator : Classifier
        Needs ``predict`` and ``activations`` (and ``loss_gradient`` for the default attack).
    layers : int, str, list of them, or None, default None
        Layers whose LID are the features; ``None`` takes every layer of
        ``estimator.layer_names``.
    k : int, default 20
        Number of nearest neighbours (less than ``batch_size``).
    batch_size : int, default 100
        Size of the clean mini-batches the neighbours are drawn from.
    attack : evasion attack, optional
        Crafts the adversarial training examples (``attack.generate(x, y)``); by default
        :class:`~bastion.attacks.evasion.PGD` on the estimator, L-inf, ``eps`` 0.1 of the
        width of ``clip_values`` (0.1 without them), ``eps_step = eps / 4``, 20 steps, seeded
        by ``random_state``.
    noise : float, default 0.0
        Standard deviation of the noisy negatives; 0 leaves them out.
    random_state : None, int or torch.Generator
        Seeds the shuffling into mini-batches, the noise and the default attack.
    verbose : bool, default False
        Show a progress bar while fitting.

    Attributes
    ----------
    layers_ : list of str
    reference_ : list of torch.Tensor
        Per layer, the activations ``(batch_size, D)`` of the reference mini-batch.
    classifier_ : sklearn.pipeline.Pipeline
        The scaler and logistic regression.

    References
    ----------
    Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle and Bailey, "Characterizing
    adversarial subspaces using local intrinsic dimensionality", ICLR 2018.
    https://arxiv.org/abs/1801.02613

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.detection import lid_mle
    >>> lid_mle(torch.tensor([[1.0, 2.0, 4.0]]))  # -1 / mean(log(1/4), log(2/4), log(1))
    tensor([1.4427], dtype=torch.float64)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "layers": [Satisfies(_layers_or_none, "a layer name or index, or a list of them"), NONE],
        "k": [Interval(int, 2, None)],
        "batch_size": BATCH_SIZE,
        "attack": [Satisfies(lambda a: hasattr(a, "generate"), "an evasion attack"), NONE],
        "noise": [Interval(float, 0, None)],
        "random_state": RANDOM_STATE,
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
        layers: Any = None,
        k: int = 20,
        batch_size: int = 100,
        attack: Any = None,
        noise: float = 0.0,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.layers = layers
        self.k = k
        self.batch_size = batch_size
        self.attack = attack
        self.noise = noise
        self.random_state = random_state
        self.verbose = verbose

    def _needed_capabilities(self) -> tuple[str, ...]:
        if self.attack is None:
            return (*self._estimator_requirements, "loss_gradient")
        return self._estimator_requirements

    def _validate(self) -> None:
        super()._validate()
        if self.k >= self.batch_size:
            raise InvalidParameterError(
                f"The 'k' parameter of {type(self).__name__} must be less than batch_size "
                f"({self.batch_size}). Got {self.k!r} instead."
            )

    def _default_attack(self, generator: torch.Generator) -> Any:
        from bastion.attacks.evasion import PGD

        clip = self.estimator.clip_values
        eps = 0.1 * (float(clip[1]) - float(clip[0])) if clip is not None else 0.1
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return PGD(self.estimator, eps=eps, eps_step=eps / 4, max_iter=20, random_state=seed)

    def _lid(self, x: torch.Tensor, reference: list[torch.Tensor], exclude_self: bool) -> Any:
        """LID features ``(N, L)`` of ``x`` against the reference activations of each layer."""
        cols = []
        for layer, ref in zip(self.layers_, reference, strict=True):
            with torch.no_grad():
                f = _flatten(self.estimator.activations_tensor(x, layer), False)
            d = torch.cdist(f, ref.to(f.device))
            if exclude_self:
                # A point's distance to itself, and to an exact copy, says nothing of its LID.
                d = d.masked_fill(d <= 1e-12, float("inf"))
            nearest = d.topk(self.k, dim=1, largest=False).values
            cols.append(lid_mle(nearest).cpu())
        return torch.stack(cols, dim=1)

    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        generator = resolve_random_state(self.random_state)
        self.layers_ = self._layer_names(self.layers)
        if x.shape[0] <= self.k:
            raise InvalidParameterError(
                f"{type(self).__name__} needs more than k={self.k} clean inputs to fit, got "
                f"{x.shape[0]}."
            )
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        attack = self.attack if self.attack is not None else self._default_attack(generator)
        labels = self._predicted(x) if y is None else y
        feats, targets = [], []
        with self._progress(x.shape[0]) as bar:
            for s in range(0, x.shape[0], self.batch_size):
                idx = order[s : s + self.batch_size]
                if idx.shape[0] <= self.k:
                    break  # a last mini-batch too small for k neighbours
                xb = x[idx]
                with torch.no_grad():
                    ref = [
                        _flatten(self.estimator.activations_tensor(xb, layer), False)
                        for layer in self.layers_
                    ]
                if s == 0:
                    self.reference_ = ref
                x_adv, _ = to_tensor(
                    attack.generate(xb, labels[idx.cpu()]),
                    device=xb.device,
                    dtype=xb.dtype,
                )
                feats += [self._lid(xb, ref, True), self._lid(x_adv, ref, False)]
                targets += [torch.zeros(xb.shape[0]), torch.ones(xb.shape[0])]
                if self.noise > 0:
                    noise = torch.randn(xb.shape, generator=generator).to(xb.device, xb.dtype)
                    x_noisy = xb + self.noise * noise
                    clip = self.estimator.clip_values
                    if clip is not None:
                        x_noisy = x_noisy.clamp(clip[0], clip[1])
                    feats.append(self._lid(x_noisy, ref, False))
                    targets.append(torch.zeros(xb.shape[0]))
                bar.update(xb.shape[0])
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        self.classifier_ = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed)
        ).fit(torch.cat(feats).numpy(), torch.cat(targets).numpy())

    @property
    def differentiable(self) -> bool:
        return "activation_gradient" in self.estimator.capabilities

    def _score_vjp(
        self, x: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # decision = b + sum_l c_l (LID_l(a_l(x)) - m_l) / s_l (scaler, then regression).
        scaler, regression = self.classifier_[0], self.classifier_[-1]
        coef = regression.coef_[0] / scaler.scale_
        w = weights.to(x.device, torch.float64)
        grad = torch.zeros_like(x)
        lids = []
        for i, (layer, ref) in enumerate(zip(self.layers_, self.reference_, strict=True)):
            ref_d = ref.to(x.device)

            def objective(act: torch.Tensor, ref_d: torch.Tensor = ref_d) -> torch.Tensor:
                f = _flatten(act, False)
                d = torch.cdist(f.to(ref_d.dtype), ref_d)
                d = d.masked_fill(d.detach() <= 1e-12, float("inf"))
                return lid_mle(d.topk(self.k, dim=1, largest=False).values)

            def weighted(act: torch.Tensor, i: int = i, objective: Any = objective) -> Any:
                return w.to(act.device) * float(coef[i]) * objective(act)

            g, _, act = self.estimator.activation_gradient_tensor(x, layer, weighted)
            grad += g.to(grad.dtype)
            with torch.no_grad():
                lids.append(objective(act).cpu())
        score = (
            regression.intercept_[0]
            + ((torch.stack(lids, dim=1).numpy() - scaler.mean_) / scaler.scale_)
            @ regression.coef_[0]
        )
        return grad, torch.as_tensor(np.asarray(score, dtype=np.float64))

    def _score_tensor(self, x: torch.Tensor) -> torch.Tensor:
        rows = [
            self._lid(x[s : s + self.batch_size], self.reference_, True)
            for s in range(0, x.shape[0], self.batch_size)
        ]
        out = self.classifier_.decision_function(torch.cat(rows).numpy())
        return torch.as_tensor(np.asarray(out, dtype=np.float64))
