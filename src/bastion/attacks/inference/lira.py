"""LiRA, the likelihood-ratio attack of Carlini et al., online and offline."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bastion._validation import (
    BATCH_SIZE,
    NONE,
    OPTIONAL_PATH,
    RANDOM_STATE,
    VERBOSE,
    Boolean,
    Constraint,
    Interval,
    Options,
    Satisfies,
)
from bastion.attacks.inference._base import (
    REFERENCE_TEMPLATE,
    TRUSTED_TYPES,
    ReferenceModelAttack,
    log_scores,
    logit_confidence,
)
from bastion.estimators.base import SupportsClone, SupportsPredict

__all__ = ["LiRA", "image_augmentations"]

Augmentation = Callable[[torch.Tensor], torch.Tensor]
#: Smallest variance of a Gaussian fit (a constant statistic would divide by zero).
_MIN_VAR = 1e-8
#: With fewer reference models, one global variance beats per-example variances (Carlini et
#: al. 2022 find so below about 64 models).
_PER_EXAMPLE_VARIANCE_FROM = 64


def _shift(dx: int, dy: int) -> Augmentation:
    def shift(x: torch.Tensor) -> torch.Tensor:
        if dx == 0 and dy == 0:
            return x
        p = max(abs(dx), abs(dy))
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        h, w = x.shape[-2], x.shape[-1]
        return padded[..., p + dy : p + dy + h, p + dx : p + dx + w]

    return shift


def _mirror(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _mirrored(aug: Augmentation) -> Augmentation:
    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return _mirror(aug(x))

    return mirrored


def image_augmentations(*, mirror: bool = True, shift: int = 1) -> list[Augmentation]:
    """The query augmentations of the LiRA paper for images (N, C, H, W).

    The identity, the horizontal mirror (with ``mirror``) and translations by ``shift`` pixels
    in each of the four directions (edges replicated), each also mirrored.

    Examples
    --------
    >>> import torch
    >>> from bastion.attacks.inference.lira import image_augmentations
    >>> len(image_augmentations()), len(image_augmentations(mirror=False, shift=0))
    (10, 1)
    """
    moves = [(0, 0)]
    if shift > 0:
        moves += [(shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    out: list[Augmentation] = []
    for dx, dy in moves:
        s = _shift(dx, dy)
        out.append(s)
        if mirror:
            out.append(_mirrored(s))
    return out


def _is_augmentations(value: Any) -> bool:
    return isinstance(value, Sequence) and len(value) > 0 and all(callable(a) for a in value)


def _masked_moments(
    stats: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and (population) variance over models of ``stats`` (M, n, A) where ``mask``
    (M, n); and the count per sample."""
    w = mask.to(stats.dtype)[:, :, None]
    count = w.sum(0)
    mean = (w * stats).sum(0) / count.clamp_min(1)
    var = (w * (stats - mean) ** 2).sum(0) / count.clamp_min(1)
    return mean, var, count[:, 0]


def _global(var: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A variance per augmentation shared by all samples: the mean of the per-sample
    variances estimated from at least two models."""
    ok = count >= 2
    if not bool(ok.any()):
        return torch.ones_like(var[:1])
    return var[ok].mean(0, keepdim=True)


def _log_normal(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


class LiRA(ReferenceModelAttack):
    """LiRA, the Likelihood-Ratio Attack: membership as a per-example hypothesis test.

    The statistic of a sample ``(x, y)`` under a model is its logit-scaled confidence
    ``phi = log(p_y / (1 - p_y))`` (computed stably from the logits), which is close to
    Gaussian across models. :meth:`fit` trains ``nb_reference_models`` reference models with
    ``reference_trainer`` on random halves of the attacker's population, so that each
    population sample is IN (in the training half) for half of the models and OUT for the
    other half, and records ``phi`` of every model on every population sample.
    :meth:`infer` fits, per candidate, a Gaussian to its IN statistics and one to its OUT
    statistics and tests the target's ``phi``:

    * **online** (``online=True``): the log-likelihood ratio
      ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``. It needs IN models, so the
      candidates must be in the population given to :meth:`fit` (they are matched by content,
      or given by ``population_index``); a candidate outside the population gets the offline
      score, with a warning.
    * **offline** (``online=False``): only OUT models; the one-sided test of the paper, "how
      far above the OUT distribution is phi", scored as ``(phi - mu_out) / s_out`` (the same
      ranking as ``Pr[Z < phi]``, ``Z ~ N(mu_out, s_out^2)``, without its saturation at 1).
      Candidates need not be in the population: those that are use the models that did not
      train on them, the others every model.

    ``fix_variance=True`` replaces the per-example variances by one global variance per
    augmentation (IN and OUT separately: the mean of the per-example variances), which the
    paper finds better with fewer than 64 reference models; ``"auto"`` (default) does so
    exactly then. With
    ``augmentations`` (e.g. :func:`image_augmentations`), every model is queried on each
    augmented version of a sample and the statistics are treated as independent Gaussians:
    the score is the mean over augmentations of the per-augmentation score, as in the paper's
    code.

    The same fit serves both settings: ``set_params(online=False)`` then ``infer`` gives the
    offline scores without training again.

    Threat model: black-box with scores (the target's logits, or probabilities), knowledge of
    the training recipe (``reference_trainer``) and data from the same distribution.

    Parameters
    ----------
    estimator : estimator with ``predict``
        The target model.
    reference_trainer : callable ``(x, y, random_state) -> estimator``
        Trains one reference model like the target was trained (same architecture and
        recipe) and returns it as a fitted bastion estimator; called with keyword
        ``random_state`` (an int).
    nb_reference_models : int, default 16
        At least 2; each population sample is IN for half of them.
    online : bool, default True
    fix_variance : bool or "auto", default "auto"
        Global instead of per-example variances; "auto": when ``nb_reference_models < 64``.
    augmentations : sequence of callables or None
        Functions mapping a batch tensor to an augmented batch of the same shape.
    save_path : str or path-like, optional
        Directory where the reference models are saved, and loaded from by a later fit on
        the same population, as data only: torch weights or skops files, never pickles (see
        :class:`~bastion.attacks.inference._base.ReferenceModelAttack`).
    reference_template : estimator, optional
        For torch reference models loaded from ``save_path``: a ``TorchClassifier`` of their
        architecture, into a clone of which their saved weights are loaded (default: the
        target, when it is a ``TorchClassifier`` of the same architecture).
    trusted_types : sequence of str, default ()
        For scikit-learn reference models loaded from ``save_path``: types to load beyond
        those skops trusts by default (the error on loading lists them, e.g.
        ``"sklearn.neural_network._stochastic_optimizers.AdamOptimizer"`` for an
        ``MLPClassifier`` trained with Adam). Trust only directories you wrote.
    batch_size : int, default 256
        Samples per query.
    random_state : None, int or torch.Generator
        Seeds the halves and the seeds passed to ``reference_trainer``.
    verbose : bool, default False
        Progress bar over the reference models.

    Attributes
    ----------
    keep_ : numpy.ndarray of bool, shape (nb_reference_models, N_population)
        Which population samples each reference model trained on.
    reference_models_ : list of estimators
    population_statistics_ : torch.Tensor, shape (nb_reference_models, N_population, A)
        ``phi`` of every reference model on every population sample (A augmentations).

    References
    ----------
    Carlini, Chien, Nasr, Song, Terzis and Tramèr, "Membership Inference Attacks From First
    Principles", IEEE S&P 2022. https://arxiv.org/abs/2112.03570

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.estimators import SklearnClassifier
    >>> from bastion.attacks.inference.lira import LiRA
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(80, 10)).astype(np.float32)
    >>> y = rng.integers(0, 2, 80)
    >>> def train(x, y, random_state):
    ...     return SklearnClassifier(LogisticRegression(C=10, max_iter=1000).fit(x, y))
    >>> target = train(x[:40], y[:40], 0)  # members: the first 40
    >>> lira = LiRA(target, reference_trainer=train, nb_reference_models=8, random_state=0)
    >>> scores = lira.fit(x, y).infer(x, y)
    >>> bool(scores[:40].mean() > scores[40:].mean())
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "reference_trainer": [Satisfies(callable, "a callable"), NONE],
        "nb_reference_models": [Interval(int, 2, None)],
        "online": [Boolean()],
        "fix_variance": [Boolean(), Options(["auto"])],
        "augmentations": [
            Satisfies(_is_augmentations, "a non-empty sequence of callables"),
            NONE,
        ],
        "save_path": OPTIONAL_PATH,
        "reference_template": REFERENCE_TEMPLATE,
        "trusted_types": TRUSTED_TYPES,
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        reference_trainer: Callable[..., Any] | None = None,
        nb_reference_models: int = 16,
        online: bool = True,
        fix_variance: bool | str = "auto",
        augmentations: Sequence[Augmentation] | None = None,
        save_path: Any = None,
        reference_template: SupportsClone | None = None,
        trusted_types: Sequence[str] = (),
        batch_size: int = 256,
        random_state: Any = None,
        verbose: bool = False,
    ):
        self.estimator = estimator
        self.reference_trainer = reference_trainer
        self.nb_reference_models = nb_reference_models
        self.online = online
        self.fix_variance = fix_variance
        self.augmentations = augmentations
        self.save_path = save_path
        self.reference_template = reference_template
        self.trusted_types = trusted_types
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _statistic(
        self, estimator: SupportsPredict, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        augs = self.augmentations or [lambda t: t]
        phis = [logit_confidence(log_scores(estimator, a(x), self.batch_size), y) for a in augs]
        return torch.stack(phis, dim=1)

    def _fixed_variance(self) -> bool:
        if self.fix_variance == "auto":
            return self.nb_reference_models < _PER_EXAMPLE_VARIANCE_FROM
        return bool(self.fix_variance)

    def _score(self, target: torch.Tensor, stats: torch.Tensor, is_in: torch.Tensor) -> Any:
        fixed = self._fixed_variance()
        mu_out, var_out, n_out = _masked_moments(stats, ~is_in)
        if fixed:
            var_out = _global(var_out, n_out).expand_as(var_out)
        var_out = var_out.clamp_min(_MIN_VAR)
        offline = ((target - mu_out) / var_out.sqrt()).mean(1)
        if not self.online:
            return offline
        mu_in, var_in, n_in = _masked_moments(stats, is_in)
        if fixed:
            var_in = _global(var_in, n_in).expand_as(var_in)
        var_in = var_in.clamp_min(_MIN_VAR)
        ratio = (_log_normal(target, mu_in, var_in) - _log_normal(target, mu_out, var_out)).mean(1)
        has_in = n_in > 0
        if not bool(has_in.all()):
            self._warn_offline(int((~has_in).sum()), int(has_in.numel()))
        return torch.where(has_in, ratio, offline)
