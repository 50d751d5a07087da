"""Copycat CNN: label the attacker's natural data with the victim, train a copy on it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion._validation import Boolean, Constraint
from bastion.attacks.extraction._base import THIEF_CONSTRAINTS, ExtractionAttack
from bastion.estimators.base import SupportsFitAndPredict, SupportsPredict

__all__ = ["CopycatCNN"]


class CopycatCNN(ExtractionAttack):
    """Copycat CNN (Correia-Silva et al. 2018): steal a classifier with natural data.

    The attacker holds unlabelled natural data (``x_pool``, e.g. images of the same domain).
    ``nb_queries`` of them, drawn at random without replacement, are labelled by the victim's
    prediction API; the thief is then trained on these *hard* labels (the paper's setting,
    which also works against a labels-only API). With ``use_probabilities=True`` the thief is
    trained on the victim's probability vectors instead (soft cross-entropy).

    Threat model: black-box, score- or decision-based (only the victim's top-1 label is used
    by default). Cost: ``nb_queries`` victim queries, recorded in ``queries_``.

    Parameters
    ----------
    victim : estimator
        The model to steal; only ``predict`` is used (probabilities or one-hot labels).
    thief : TorchClassifier
        The attacker's fresh model, same ``input_shape`` and ``nb_classes``; trained in place.
    nb_queries : int, default 1000
        Victim queries (samples of the pool labelled). If the pool is smaller, all of it.
    epochs : int, default 10
        Training epochs of the thief.
    batch_size : int, default 64
        Training batch size (queries are sent in batches of 256).
    learning_rate : float, default 1e-3
        Adam's learning rate.
    use_probabilities : bool, default False
        Train on the victim's probabilities instead of its top-1 labels.
    random_state : None, int or torch.Generator
        Seeds the choice of queries and the thief's shuffling.
    verbose : bool, default False
        Progress bar over epochs.

    Attributes
    ----------
    queries_ : int
        Victim queries spent by the last :meth:`extract`.
    x_queried_, y_queried_ : torch.Tensor
        The queried samples and the labels (or probabilities) the victim returned.

    References
    ----------
    Correia-Silva, Berriel, Badue, de Souza and Oliveira-Santos, "Copycat CNN: Stealing
    knowledge by persuading confession with random non-labeled data", IJCNN 2018.
    https://arxiv.org/abs/1806.05476

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.extraction import CopycatCNN
    >>> make = lambda s: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> victim = TorchClassifier(make(0), input_shape=(4,), nb_classes=3)
    >>> thief = TorchClassifier(make(1), input_shape=(4,), nb_classes=3)
    >>> attack = CopycatCNN(victim, thief=thief, nb_queries=50, epochs=2, random_state=0)
    >>> stolen = attack.extract(torch.rand(100, 4))
    >>> attack.queries_
    50
    """

    _renamed: ClassVar[dict[str, Any]] = {"lr": "learning_rate"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **THIEF_CONSTRAINTS,
        "use_probabilities": [Boolean()],
    }

    def __init__(
        self,
        victim: SupportsPredict,
        *,
        thief: SupportsFitAndPredict,
        nb_queries: int = 1000,
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        use_probabilities: bool = False,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.victim = victim
        self.thief = thief
        self.nb_queries = nb_queries
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.use_probabilities = use_probabilities
        self.random_state = random_state
        self.verbose = verbose

    def _extract(self, x_pool: torch.Tensor, generator: torch.Generator, **kwargs: Any) -> Any:
        n = min(self.nb_queries, x_pool.shape[0])
        pick = torch.randperm(x_pool.shape[0], generator=generator)[:n].to(x_pool.device)
        x = x_pool[pick]
        probs = self._query(x)
        y = probs if self.use_probabilities else probs.argmax(dim=1)
        self.x_queried_, self.y_queried_ = x, y
        self._train_thief(
            x,
            y,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            generator=generator,
        )
        return self.thief
