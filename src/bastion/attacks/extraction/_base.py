"""Shared pieces of model-extraction attacks: the ``extract(x_pool) -> thief`` template, query
accounting, victim queries in batches and the thief's training loop on hard or soft labels."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bastion._params import Parametrized
from bastion._tensor import resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    check_x,
)
from bastion.estimators.base import SupportsFitAndPredict, SupportsPredict, require_capabilities
from bastion.exceptions import InputError

__all__ = ["ExtractionAttack"]


#: Constraints shared by the attacks that train a thief.
THIEF_CONSTRAINTS: dict[str, list[Constraint]] = {
    "nb_queries": [Interval(int, 1, None)],
    "epochs": [Interval(int, 1, None)],
    "batch_size": BATCH_SIZE,
    "learning_rate": [Interval(float, 0, None, closed="neither")],
    "random_state": RANDOM_STATE,
    "verbose": VERBOSE,
}


class ExtractionAttack(Parametrized):
    """Base of model-extraction (stealing) attacks: ``extract(x_pool) -> thief``.

    ``__init__`` takes the victim first and only stores the parameters; they are validated when
    :meth:`extract` starts. Every query goes through the victim's ``predict_tensor`` (so the
    victim's own ``query_count`` grows by the number of samples it answered), and the attack
    records the queries answered in its last run in ``queries_``. The thief is any estimator
    that can be trained (``fit``, on hard labels or on the victim's probabilities as soft
    targets); it is trained in place.

    Subclasses implement ``_extract(x_pool, generator, **kwargs)``, query the victim only
    through :meth:`_query` and train the thief only through :meth:`_train_thief`.
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    _victim_requirements: ClassVar[tuple[str, ...]] = ("predict",)
    _thief_requirements: ClassVar[tuple[str, ...]] = ("predict", "fit")

    victim: SupportsPredict
    thief: SupportsFitAndPredict
    random_state: Any
    verbose: bool = False
    #: Victim queries spent by the last :meth:`extract` (samples whose outputs were returned).
    queries_: int

    # ------------------------------------------------------------------ template

    def extract(self, x_pool: Any, **kwargs: Any) -> Any:
        """Steal the victim with the attacker's data ``x_pool``; return the trained thief.

        Parameters
        ----------
        x_pool : array-like or torch.Tensor, shape (N, *input_shape)
            Unlabelled data the attacker holds (natural images, or seeds).
        **kwargs
            Attack-specific inputs (see the subclass).

        Returns
        -------
        thief : estimator
            The thief estimator, trained in place.
        """
        owner = type(self).__name__
        require_capabilities(self.victim, self._victim_requirements, owner)
        if "thief" in self._param_names():
            require_capabilities(self.thief, self._thief_requirements, f"{owner} (thief)")
            self._check_thief(owner)
        self._validate()
        xt, _ = to_tensor(
            x_pool, device=self.victim.device, dtype=getattr(self.victim, "dtype", torch.float32)
        )
        check_x(
            xt,
            input_shape=tuple(self.victim.input_shape),
            clip_values=self.victim.clip_values,
            name="x_pool",
        )
        generator = resolve_random_state(self.random_state, "cpu")
        self.queries_ = 0
        return self._extract(xt, generator, **kwargs)

    def _check_thief(self, owner: str) -> None:
        if tuple(self.thief.input_shape) != tuple(self.victim.input_shape) or (
            self.thief.nb_classes != self.victim.nb_classes
        ):
            raise InputError(
                f"{owner}: the thief must have the victim's input_shape "
                f"{tuple(self.victim.input_shape)} and nb_classes {self.victim.nb_classes}; "
                f"got {tuple(self.thief.input_shape)} and {self.thief.nb_classes}."
            )

    def _extract(self, x_pool: torch.Tensor, generator: torch.Generator, **kwargs: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    def _query(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The victim's outputs (probabilities, or one-hot rows for a label-only API); each
        answered batch is added to ``queries_`` (a batch the victim fails on is not)."""
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                out = self.victim.predict_tensor(x[i : i + batch_size].to(self.victim.device))
                self.queries_ += int(out.shape[0])
                outs.append(out)
        return torch.cat(outs).float()

    def _train_thief(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        generator: torch.Generator,
        warm_start: bool = False,
    ) -> None:
        """Train the thief (its own ``fit``) on hard labels ``(N,)`` or soft targets ``(N, K)``
        (cross-entropy against the victim's distribution). ``warm_start`` continues with the
        optimiser state of the previous call (online training, one step per query batch)."""
        thief = self.thief
        thief.fit(
            x.to(thief.device, getattr(thief, "dtype", torch.float32)),
            targets.to(thief.device),
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            warm_start=warm_start,
            random_state=generator,
            verbose=self.verbose,
        )
