"""Substitute training with Jacobian-based dataset augmentation (Papernot et al. 2017)."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

from bastion._validation import VERBOSE, Constraint, Interval
from bastion.attacks.extraction._base import THIEF_CONSTRAINTS, ExtractionAttack
from bastion.estimators.base import SupportsClassGradient, SupportsFit, SupportsPredict

__all__ = ["JacobianAugmentation"]


class _SupportsClassGradientAndFit(SupportsClassGradient, SupportsFit, Protocol):
    """The thief of JacobianAugmentation: trained, and its class gradients augment the data."""


class JacobianAugmentation(ExtractionAttack):
    """Substitute training with Jacobian-based dataset augmentation (Papernot et al. 2017).

    The attacker starts from a small seed set ``x_seed`` (e.g. a few images per class). Each
    round, the new samples are labelled by the victim, the substitute (thief) is trained on
    everything labelled so far, and the set is doubled by stepping each sample along the sign
    of the substitute's gradient of the victim's label:
    ``x + lambda_r * sign(d thief_logit[victim_label(x)] / dx)``, clipped to ``clip_values``.
    The step ``lambda_r = eps_step * (-1) ** (r // tau)`` changes sign every ``tau`` rounds
    (periodic step size), which keeps the new points near the victim's decision boundaries.
    The substitute is then used to craft adversarial examples that transfer to the victim.

    Threat model: black-box, decision-based (only the victim's top-1 labels are used).
    Cost: ``len(x_seed) * 2 ** (nb_rounds - 1)`` queries.

    Parameters
    ----------
    victim : estimator
        The model to imitate (``predict``).
    thief : TorchClassifier
        The substitute (needs class gradients); trained in place.
    nb_rounds : int, default 4
        Substitute training rounds (``nb_rounds - 1`` augmentations).
    eps_step : float, default 0.1
        Augmentation step size.
    tau : int, default 2
        Rounds between sign flips of the step.
    epochs : int, default 10
        Training epochs per round.
    batch_size : int, default 64
    learning_rate : float, default 1e-3
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    queries_ : int
        Victim queries spent by the last :meth:`extract`.
    x_queried_, y_queried_ : torch.Tensor
        The final substitute training set and the victim's labels.

    References
    ----------
    Papernot, McDaniel, Goodfellow, Jha, Celik and Swami, "Practical black-box attacks
    against machine learning", ASIA CCS 2017. https://arxiv.org/abs/1602.02697

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.extraction import JacobianAugmentation
    >>> make = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> victim = TorchClassifier(make(), input_shape=(4,), nb_classes=3)
    >>> thief = TorchClassifier(make(), input_shape=(4,), nb_classes=3)
    >>> attack = JacobianAugmentation(victim, thief=thief, nb_rounds=3, epochs=2, random_state=0)
    >>> substitute = attack.extract(torch.rand(10, 4))
    >>> attack.queries_
    40
    """

    thief: _SupportsClassGradientAndFit

    _renamed: ClassVar[dict[str, Any]] = {"lmbda": "eps_step", "lr": "learning_rate"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **{k: v for k, v in THIEF_CONSTRAINTS.items() if k != "nb_queries"},
        "nb_rounds": [Interval(int, 1, None)],
        "eps_step": [Interval(float, 0, None, closed="neither")],
        "tau": [Interval(int, 1, None)],
        "verbose": VERBOSE,
    }
    _thief_requirements: ClassVar[tuple[str, ...]] = ("predict", "fit", "class_gradient")

    def __init__(
        self,
        victim: SupportsPredict,
        *,
        thief: _SupportsClassGradientAndFit,
        nb_rounds: int = 4,
        eps_step: float = 0.1,
        tau: int = 2,
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.victim = victim
        self.thief = thief
        self.nb_rounds = nb_rounds
        self.eps_step = eps_step
        self.tau = tau
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.verbose = verbose

    def extract(self, x_seed: Any) -> Any:  # type: ignore[override]
        """Train the substitute from the seed set ``x_seed``; return it.

        Parameters
        ----------
        x_seed : array-like or torch.Tensor, shape (N, *input_shape)
            The attacker's initial data (small: the set doubles every round).

        Returns
        -------
        thief : estimator
            The substitute (the ``thief`` estimator), trained in place.
        """
        return super().extract(x_seed)

    def _extract(self, x_pool: torch.Tensor, generator: torch.Generator, **kwargs: Any) -> Any:
        x = x_pool
        y = self._query(x).argmax(1)
        clip = self.victim.clip_values
        for rnd in range(self.nb_rounds):
            self._train_thief(
                x,
                y,
                epochs=self.epochs,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                generator=generator,
                warm_start=rnd > 0,
            )
            if rnd == self.nb_rounds - 1:
                break
            step = self.eps_step * (-1.0) ** (rnd // self.tau)
            dev = self.thief.device
            grads = torch.cat(
                [
                    self.thief.class_gradient_tensor(
                        x[i : i + 256].to(dev, self.thief.dtype), y[i : i + 256].to(dev)
                    )
                    for i in range(0, x.shape[0], 256)
                ]
            ).to(x.device, x.dtype)
            x_new = x + step * grads.sign()
            if clip is not None:
                x_new = x_new.clamp(clip[0], clip[1])
            y_new = self._query(x_new).argmax(1)
            x, y = torch.cat([x, x_new]), torch.cat([y, y_new.to(y.device)])
        self.x_queried_, self.y_queried_ = x, y
        return self.thief
