"""Bad-input rows of the certified trainers (:class:`~bastion.certification.IBPTrainer`,
:class:`~bastion.certification.CrownIBPTrainer`): bad samples and labels, loaders that yield the
wrong structure, budgets and schedules out of range, estimators without the ``module``
capability, models the bounds cannot handle, checkpoints of another model, and the edge cases
that must work."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.exceptions import EstimatorError, InputError, InvalidParameterError, ModelError
from bastion.testing._bad_inputs import (
    BadInputCase,
    Outcome,
    black_box,
    raises,
    works,
)
from bastion.testing._bad_inputs_training import loop_data_cases
from bastion.testing._problems import _digits8

Rows = list[BadInputCase]


def _relu_mlp(seed: int = 0, hidden: int = 16) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net


class _Tiny:
    """24 digits (8x8) and a fresh ReLU MLP estimator (the shared tanh one has no bound
    rule)."""

    def __init__(self, model: nn.Module | None = None) -> None:
        from bastion.estimators import TorchClassifier

        x, y = _digits8()
        self.x, self.y = x[1200:1224], y[1200:1224]
        self.estimator = TorchClassifier(
            model if model is not None else _relu_mlp(), input_shape=(1, 8, 8), nb_classes=10
        )


def _make(cls: Any, estimator: Any, **changes: Any) -> Any:
    params: dict[str, Any] = {
        "eps": 0.1,
        "epochs": 1,
        "batch_size": 12,
        "warmup_epochs": 0,
        "ramp_epochs": 1,
        "random_state": 0,
        **changes,
    }
    return cls(estimator, **params)


def _trained(trainer: Any) -> None:
    assert len(trainer.history_) >= 1, "no epoch recorded"
    assert np.isfinite(trainer.history_[-1]["loss"]), "non-finite loss"
    assert "train_verified_accuracy" in trainer.history_[-1], "no verified accuracy recorded"


def certified_trainer_cases(cls: Any) -> Rows:
    """The rows of a certified trainer class (``trainer.fit(x, y)``, one tiny epoch)."""
    rows, fit = loop_data_cases(cls, _Tiny, _make, _trained)
    how = "fit(x, y)"

    def add(kind: str, what: str, call: Callable[[], Any], expect: Outcome) -> None:
        rows.append(BadInputCase(cls, kind, what, how, call, expect))

    trained = works("the trainer, with one epoch recorded", _trained)
    add(
        "use",
        "eps larger than the clip_values range",
        fit(eps=1.5),
        raises(InvalidParameterError, "clip_values"),
    )
    add(
        "use",
        "eps_train larger than the clip_values range",
        fit(eps_train=1.5),
        raises(InvalidParameterError, "eps_train"),
    )
    add("use", "a negative eps", fit(eps=-0.1), raises(InvalidParameterError, "'eps'"))
    add("use", "kappa_start above 1", fit(kappa_start=1.5), raises(InvalidParameterError, "kappa"))
    add(
        "use",
        "a negative warm-up",
        fit(warmup_epochs=-1),
        raises(InvalidParameterError, "warmup_epochs"),
    )
    add("use", "norm 1", fit(norm=1), raises(InvalidParameterError, "norm"))
    add("use", "amp on a CPU estimator", fit(amp=True), raises(InvalidParameterError, "CUDA"))
    add(
        "use",
        "a checkpoint of another model",
        lambda: _other_checkpoint(cls),
        raises(InputError, "another model"),
    )
    add(
        "model",
        "an estimator without the module capability",
        lambda: _make(cls, _black_box()).fit(_Tiny().x, _Tiny().y),
        raises(EstimatorError, "module"),
    )
    add(
        "model",
        "a layer without a bound rule (Tanh)",
        lambda: _fit_model(
            cls, nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
        ),
        raises(ModelError, "no bound rule"),
    )
    add(
        "model",
        "a BatchNorm layer",
        lambda: _fit_model(
            cls,
            nn.Sequential(
                nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)
            ),
        ),
        raises(ModelError, "BatchNorm"),
    )
    add("edge", "eps_train larger than eps", fit(eps_train=0.15), trained)
    return rows


def _fit_model(cls: Any, model: nn.Module) -> Any:
    p = _Tiny(model)
    return _make(cls, p.estimator).fit(p.x, p.y)


def _black_box() -> Any:
    est = _Tiny().estimator
    return black_box(lambda x: est.predict(x), est.input_shape, est.nb_classes)


def _other_checkpoint(cls: Any) -> Any:
    """Train one epoch with a checkpoint, then resume from it with another model."""
    from bastion.estimators import TorchClassifier

    with tempfile.TemporaryDirectory() as root:
        p = _Tiny()
        _make(cls, p.estimator, checkpoint_dir=root).fit(p.x, p.y)
        other = TorchClassifier(_relu_mlp(hidden=8), input_shape=(1, 8, 8), nb_classes=10)
        return _make(cls, other, checkpoint_dir=root).fit(p.x, p.y, resume=True)
