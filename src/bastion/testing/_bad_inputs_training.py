"""Bad-input rows of the adversarial trainers (:mod:`bastion.defenses.training.adversarial`):
bad samples and labels, loaders that yield the wrong structure, budgets that do not fit the
estimator's ``clip_values``, attacks built on another estimator, estimators without the
``module`` capability, checkpoints of another model, and the edge cases that must work."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.testing._bad_inputs import (
    BadInputCase,
    Outcome,
    bad_labels,
    bad_samples,
    black_box,
    float64,
    raises,
    works,
)
from bastion.testing._problems import torch_problem

Rows = list[BadInputCase]

#: Tiny settings that make every trainer run one quick epoch.
_TINY: dict[str, dict[str, Any]] = {
    "MadryPGDTrainer": {"eps": 0.1, "eps_step": 0.05, "max_iter": 2},
    "TRADESTrainer": {"eps": 0.1, "eps_step": 0.05, "max_iter": 2},
    "MARTTrainer": {"eps": 0.1, "eps_step": 0.05, "max_iter": 2},
    "FastFGSMTrainer": {"eps": 0.1},
    "FreeAdversarialTrainer": {"eps": 0.1, "replays": 2},
    "AdversarialTrainer": {},
}


class _Tiny:
    """24 digits (8x8) and a fresh copy of the shared tanh MLP (the shared one is never
    trained)."""

    def __init__(self) -> None:
        p = torch_problem(24)
        self.x, self.y = p.x, p.y
        self.estimator = p.estimator.clone()


def _problem() -> _Tiny:
    return _Tiny()


def _make(cls: Any, estimator: Any, **changes: Any) -> Any:
    """The trainer ``cls`` on ``estimator`` with the tiny settings (and ``changes``)."""
    params: dict[str, Any] = {
        "epochs": 1,
        "batch_size": 12,
        "validation_attack": None,
        "random_state": 0,
        **_TINY[cls.__name__],
    }
    params.update(changes)
    if cls.__name__ == "AdversarialTrainer":
        from bastion.attacks.evasion import FGSM

        attack = params.pop("attack", None) or FGSM(estimator, eps=0.1)
        return cls(estimator, attack, **params)
    return cls(estimator, **params)


def _trained(trainer: Any) -> None:
    assert len(trainer.history_) >= 1, "no epoch recorded"
    assert np.isfinite(trainer.history_[-1]["loss"]), "non-finite loss"


def loop_data_cases(
    cls: Any,
    problem: Callable[[], Any],
    make: Callable[..., Any],
    trained: Callable[[Any], None],
) -> tuple[Rows, Callable[..., Callable[[], Any]]]:
    """The rows every trainer on the adversarial-training loop shares: bad samples and
    labels given to ``fit(x, y)``, and loaders that yield the wrong structure, shapes or
    labels. ``problem()`` gives a fresh tiny problem (``.estimator``, ``.x``, ``.y``),
    ``make(cls, estimator, **changes)`` the trainer; returns the rows and the ``fit`` row
    builder (``fit(x=..., y=..., **changes)``) for the class's own rows."""
    rows: Rows = []
    how = "fit(x, y)"

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, call, expect))

    def fit(
        x: Callable[[Any], Any] = lambda x: x,
        y: Callable[[Any], Any] = lambda y: y,
        **changes: Any,
    ) -> Callable[[], Any]:
        def call() -> Any:
            p = problem()
            return make(cls, p.estimator, **changes).fit(x(p.x), y(p.y))

        return call

    ok = works("the trainer, with one epoch recorded", trained)
    for what, change, outcome in bad_samples((0.0, 1.0), integers=ok):
        if what == "wrong ndim":
            outcome = raises(InputError, "shape")
        add("data", what, fit(x=change), outcome)
    for what, change, outcome in bad_labels(10):
        add("labels", what, fit(y=change), outcome)

    def loader_of(items: Callable[[Any, Any], list[Any]]) -> Callable[[], Any]:
        def call() -> Any:
            p = problem()
            return make(cls, p.estimator).fit(items(p.x, p.y))

        return call

    add(
        "data",
        "a loader yielding bare x batches",
        loader_of(lambda x, y: [torch.as_tensor(x[:12]), torch.as_tensor(x[12:])]),
        raises(InputError, r"\(x, y\) pairs"),
    )
    add(
        "data",
        "a loader yielding (x, y, w) triples",
        loader_of(lambda x, y: [(x[:12], y[:12], y[:12])]),
        raises(InputError, r"\(x, y\) pairs"),
    )
    add(
        "data",
        "a loader with a batch of the wrong shape",
        loader_of(lambda x, y: [(x[:12], y[:12]), (x[12:, :, :4], y[12:])]),
        raises(InputError, "shape"),
    )
    add(
        "labels",
        "a loader with labels out of range",
        loader_of(lambda x, y: [(x[:12], np.full(12, 10))]),
        raises(InputError, "outside"),
    )
    add("edge", "float64 NumPy (a float32 model)", fit(x=float64), ok)
    add(
        "edge",
        "a list of (tensor, tensor) batches",
        loader_of(
            lambda x, y: [
                (torch.as_tensor(x[i : i + 12]), torch.as_tensor(y[i : i + 12])) for i in (0, 12)
            ]
        ),
        ok,
    )
    return rows, fit


def adversarial_trainer_cases(cls: Any) -> Rows:
    """The rows of an adversarial trainer class (``trainer.fit(x, y)``, tiny settings)."""
    rows, fit = loop_data_cases(cls, _problem, _make, _trained)
    how = "fit(x, y)"

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, call, expect))

    if cls.__name__ != "AdversarialTrainer":
        add(
            "use",
            "eps larger than the clip_values range",
            fit(eps=1.5),
            raises(InvalidParameterError, "clip_values"),
        )
    add("use", "amp on a CPU estimator", fit(amp=True), raises(InvalidParameterError, "CUDA"))
    add(
        "use",
        "a validation attack on another estimator",
        lambda: _make(cls, _problem().estimator, validation_attack=_other_attack()).fit(
            _problem().x, _problem().y
        ),
        raises(InvalidParameterError, "validation_attack"),
    )
    if cls.__name__ == "AdversarialTrainer":
        add(
            "use",
            "an attack on another estimator",
            lambda: _make(cls, _problem().estimator, attack=_other_attack()).fit(
                _problem().x, _problem().y
            ),
            raises(InvalidParameterError, "attack"),
        )
    add(
        "use",
        "a checkpoint of another model",
        lambda: _other_checkpoint(cls),
        raises(InputError, "another model"),
    )
    add(
        "model",
        "an estimator without the module capability",
        lambda: _make(cls, _black_box()).fit(_problem().x, _problem().y),
        raises(EstimatorError, "module"),
    )
    return rows


def _other_attack() -> Any:
    from bastion.attacks.evasion import FGSM

    return FGSM(_problem().estimator, eps=0.1)


def _black_box() -> Any:
    est = _problem().estimator
    return black_box(lambda x: est.predict(x), est.input_shape, est.nb_classes)


def _other_checkpoint(cls: Any) -> Any:
    """Train one epoch with a checkpoint, then resume from it with another model."""
    from bastion.estimators import TorchClassifier

    with tempfile.TemporaryDirectory() as root:
        p = _problem()
        _make(cls, p.estimator, checkpoint_dir=root).fit(p.x, p.y)
        other = TorchClassifier(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
            input_shape=p.estimator.input_shape,
            nb_classes=10,
        )
        return _make(cls, other, checkpoint_dir=root).fit(p.x, p.y, resume=True)
