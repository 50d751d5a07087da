"""RMIA, the relative membership inference attack of Zarifzadeh, Liu and Shokri."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from bastion._tensor import resolve_random_state
from bastion._validation import (
    BATCH_SIZE,
    NONE,
    OPTIONAL_PATH,
    RANDOM_STATE,
    VERBOSE,
    Boolean,
    Constraint,
    Interval,
    Satisfies,
)
from bastion.attacks.inference._base import (
    REFERENCE_TEMPLATE,
    TRUSTED_TYPES,
    ReferenceModelAttack,
    log_scores,
)
from bastion.estimators.base import SupportsClone, SupportsPredict

__all__ = ["RMIA"]


class RMIA(ReferenceModelAttack):
    """RMIA: membership by pairwise likelihood ratios against population samples.

    With ``Pr(x | theta) = p_y(x)``, the target's probability of the true label, and
    ``Pr(x)`` its average over reference models, the score of a candidate ``x`` is the fraction
    of population samples ``z`` it dominates::

        score(x) = Pr_z[ (Pr(x | theta) / Pr(x)) / (Pr(z | theta) / Pr(z)) >= gamma ].

    Comparing with many ``z`` (rather than with a fixed threshold) calibrates the test per
    sample at little cost, so RMIA stays strong with few reference models, even one.

    * **offline** (``online=False``, default): ``Pr(x)`` comes from OUT models only (those that
      did not train on ``x``; all of them for a candidate outside the population) and is
      corrected for the missing IN models by the linear approximation of the paper,
      ``Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2`` with ``a = offline_a``. A candidate in
      the population that every model trained on (possible with one model) uses them all.
    * **online**: ``Pr(x)`` averages all reference models, half IN and half OUT for candidates
      in the population; candidates outside it fall back to the offline estimate, with a
      warning.

    ``Pr(z)`` averages all reference models; the ``z`` are ``nb_population_samples`` random
    population samples (all by default), scored by the target once, in :meth:`fit`.

    Threat model: black-box with scores, knowledge of the training recipe and population data.

    Parameters
    ----------
    estimator : estimator with ``predict``
        The target model.
    reference_trainer : callable ``(x, y, random_state) -> estimator``
        Trains one reference model like the target (see :class:`~bastion.attacks.inference.
        lira.LiRA`).
    nb_reference_models : int, default 1
    online : bool, default False
    offline_a : float in [0, 1], default 0.3
        The paper's ``a``: how much an IN model raises ``Pr(x)`` over the OUT models (tune it
        on a reference model used as target where possible).
    gamma : float > 0, default 2.0
        The ratio a candidate must exceed against a ``z`` to dominate it.
    nb_population_samples : int or None, default None
        How many population samples serve as ``z`` (None: all).
    save_path : str or path-like, optional
        Directory where the reference models are saved as data (torch weights or skops files,
        never pickles) and loaded from by a later fit on the same population (see
        :class:`~bastion.attacks.inference.lira.LiRA`).
    reference_template : estimator, optional
        A ``TorchClassifier`` of the reference models' architecture, into a clone of which
        saved torch weights are loaded (default: the target).
    trusted_types : sequence of str, default ()
        Types of saved scikit-learn models to load beyond those skops trusts by default.
    batch_size : int, default 256
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    keep_, reference_models_, population_statistics_ :
        As for :class:`~bastion.attacks.inference.lira.LiRA` (the statistic is ``p_y``).
    z_ratios_ : torch.Tensor, shape (nb_population_samples,)
        Sorted ``Pr(z | theta) / Pr(z)`` of the population samples.

    References
    ----------
    Zarifzadeh, Liu and Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024.
    https://arxiv.org/abs/2312.03262

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.estimators import SklearnClassifier
    >>> from bastion.attacks.inference.rmia import RMIA
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(120, 10)).astype(np.float32)
    >>> y = rng.integers(0, 2, 120)
    >>> def train(x, y, random_state):
    ...     return SklearnClassifier(LogisticRegression(C=10, max_iter=1000).fit(x, y))
    >>> target = train(x[:40], y[:40], 0)  # members: the first 40; x[40:80] non-members
    >>> rmia = RMIA(target, reference_trainer=train, random_state=0).fit(x[80:], y[80:])
    >>> scores = rmia.infer(x[:80], y[:80])
    >>> bool(scores[:40].mean() > scores[40:].mean())
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "reference_trainer": [Satisfies(callable, "a callable"), NONE],
        "nb_reference_models": [Interval(int, 1, None)],
        "online": [Boolean()],
        "offline_a": [Interval(float, 0, 1)],
        "gamma": [Interval(float, 0, None, closed="neither")],
        "nb_population_samples": [Interval(int, 1, None), NONE],
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
        nb_reference_models: int = 1,
        online: bool = False,
        offline_a: float = 0.3,
        gamma: float = 2.0,
        nb_population_samples: int | None = None,
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
        self.offline_a = offline_a
        self.gamma = gamma
        self.nb_population_samples = nb_population_samples
        self.save_path = save_path
        self.reference_template = reference_template
        self.trusted_types = trusted_types
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _statistic(
        self, estimator: SupportsPredict, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        z = log_scores(estimator, x, self.batch_size)
        return torch.softmax(z, dim=1).gather(1, y[:, None])  # (n, 1)

    def _after_fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        n = x.shape[0]
        k = n if self.nb_population_samples is None else min(n, self.nb_population_samples)
        # A generator of its own so that the choice of z does not depend on how many models
        # were loaded rather than trained.
        gen = resolve_random_state(self.random_state, "cpu")
        pick = torch.randperm(n, generator=gen)[:k]
        target = self._statistic(self.estimator, x[pick.to(x.device)], y[pick.to(y.device)])
        pr_z = self.population_statistics_[:, pick, 0].mean(0)
        ratio = target[:, 0].cpu() / pr_z.clamp_min(1e-300)
        self.z_ratios_ = ratio.sort().values

    def _score(self, target: torch.Tensor, stats: torch.Tensor, is_in: torch.Tensor) -> Any:
        p = stats[:, :, 0]  # (M, n)
        out = (~is_in).to(p.dtype)
        n_out = out.sum(0)
        pr_out = torch.where(n_out > 0, (p * out).sum(0) / n_out.clamp_min(1), p.mean(0))
        a = float(self.offline_a)
        pr_offline = ((1 + a) * pr_out + (1 - a)) / 2
        pr_x = pr_offline
        if self.online:
            has_in = is_in.any(0)
            if not bool(has_in.all()):
                self._warn_offline(int((~has_in).sum()), int(has_in.numel()))
            pr_x = torch.where(has_in, p.mean(0), pr_offline)
        ratio_x = target[:, 0] / pr_x.clamp_min(1e-300)
        # Fraction of z with ratio_x / ratio_z >= gamma, i.e. ratio_z <= ratio_x / gamma.
        below = torch.searchsorted(self.z_ratios_, ratio_x / self.gamma, right=True)
        return below.to(torch.float64) / self.z_ratios_.numel()
