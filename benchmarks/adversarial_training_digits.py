"""Each adversarial-training recipe on the digits-28 CNN, measured with AutoAttack.

The model is bastion's ``SmallCNN`` (seeded), the data ``load_digits(size=28, random_state=0)``
(1347 training and 450 test images in [0, 1]). Every recipe trains from scratch at Linf
``eps=0.2`` with the same optimisation budget stated in ``RECIPES`` (Adam, batches of 64;
cosine decay, or the cyclic schedule of Fast-FGSM's paper), without validation data (the last
epoch is kept). The budget was set by what a shared 2-core CPU finishes in an hour, AutoAttack
included: 10 epochs, and 3 PGD steps of ``2.5 eps / 3`` in training (Madry, TRADES, MART, AWP).
Each trained model is then evaluated by one evaluator, AutoAttack
(``version="standard"``, eps 0.2, Linf) on the first ``--n-eval`` test images, alongside its
clean accuracy on all 450 test images. The schedule (epochs, learning rate, optimiser) was set
for this small dataset; the training attacks keep their papers' shape (PGD with K steps of
``2.5 eps / K``, TRADES' and MART's starts, Fast-FGSM's step ``1.25 eps``, Free's ``eps``).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/adversarial_training_digits.py \
        --json benchmarks/results/adversarial_training_digits.json

``--recipes madry,trades`` runs a subset; ``--epochs-scale 0.5`` shortens every run (smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.datasets import load_digits
from bastion.defenses.training import (
    FastFGSMTrainer,
    FreeAdversarialTrainer,
    MadryPGDTrainer,
    MARTTrainer,
    TRADESTrainer,
)
from bastion.estimators import TorchClassifier
from bastion.zoo import SmallCNN

EPS = 0.2
PGD = {"eps": EPS, "eps_step": 2.5 * EPS / 3, "max_iter": 3}
COMMON = {
    "batch_size": 32,
    "optimizer": "adam",
    "learning_rate": 2e-3,
    "schedule": "cosine",
    "weight_decay": 0.0,
    "validation_attack": None,
    "random_state": 0,
}

#: name -> (trainer class, its settings). Epochs are passes over the 1347 training images.
RECIPES: dict[str, tuple[type, dict[str, Any]]] = {
    "madry": (MadryPGDTrainer, {**COMMON, **PGD, "epochs": 10}),
    "trades": (TRADESTrainer, {**COMMON, **PGD, "beta": 6.0, "epochs": 10}),
    "mart": (MARTTrainer, {**COMMON, **PGD, "beta": 6.0, "epochs": 10}),
    "fast_fgsm": (
        FastFGSMTrainer,
        {**COMMON, "eps": EPS, "epochs": 12, "learning_rate": 5e-3, "schedule": "cyclic"},
    ),
    # Wong et al.'s mitigation of catastrophic overfitting: stop and keep the last good epoch.
    "fast_fgsm_early_stop": (
        FastFGSMTrainer,
        {
            **COMMON,
            "eps": EPS,
            "epochs": 12,
            "learning_rate": 5e-3,
            "schedule": "cyclic",
            "stop_on_overfit": True,
        },
    ),
    "free": (FreeAdversarialTrainer, {**COMMON, "eps": EPS, "replays": 4, "epochs": 10}),
    "madry_awp": (MadryPGDTrainer, {**COMMON, **PGD, "awp_gamma": 0.01, "epochs": 10}),
}


def _model() -> TorchClassifier:
    net = SmallCNN(in_channels=1, nb_classes=10, random_state=0)
    return TorchClassifier(net, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))


def run_recipe(name: str, scale: float, n_eval: int, data: Any) -> dict[str, Any]:
    (x_tr, y_tr), (x_te, y_te) = data
    cls, settings = RECIPES[name]
    settings = dict(settings)
    settings["epochs"] = max(1, round(settings["epochs"] * scale))
    clf = _model()
    trainer = cls(clf, **settings)
    start = time.perf_counter()
    with warnings.catch_warnings():  # recorded in the history ("overfit") instead
        warnings.filterwarnings("ignore", message="FastFGSMTrainer: catastrophic")
        trainer.fit(x_tr, y_tr)
    train_seconds = time.perf_counter() - start
    clean = float(np.mean(clf.predict(x_te).argmax(1) == y_te))
    start = time.perf_counter()
    result = trainer.evaluate(x_te[:n_eval], y_te[:n_eval])
    eval_seconds = time.perf_counter() - start
    per_epoch = [r["seconds"] for r in trainer.history_]
    overfit = [r["epoch"] for r in trainer.history_ if r.get("overfit")]
    row = {
        "recipe": name,
        "trainer": cls.__name__,
        "settings": {k: v for k, v in settings.items() if k != "random_state"},
        "epochs": settings["epochs"],
        "seconds_per_epoch": float(np.median(per_epoch)),
        "train_seconds": train_seconds,
        "clean_accuracy_test450": clean,
        "clean_accuracy_eval": result.clean_accuracy,
        "autoattack_robust_accuracy": result.robust_accuracy,
        "n_eval": n_eval,
        "autoattack_seconds": eval_seconds,
        "catastrophic_overfitting_epochs": overfit,
        "history": trainer.history_,
    }
    print(
        f"{name:10s} epochs {settings['epochs']:3d}  {row['seconds_per_epoch']:6.1f} s/epoch  "
        f"clean {clean:.3f}  AutoAttack robust {result.robust_accuracy:.3f} "
        f"(n={n_eval}, {eval_seconds:.0f} s)",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--n-eval", type=int, default=100)
    parser.add_argument("--epochs-scale", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--append", action="store_true", help="keep the rows already in --json (other recipes)"
    )
    args = parser.parse_args(argv)
    data = load_digits(size=28, random_state=0)
    rows = []
    if args.append and args.json is not None and args.json.exists():
        rows = json.loads(args.json.read_text())["results"]
    for name in args.recipes.split(","):
        rows.append(run_recipe(name, args.epochs_scale, args.n_eval, data))
        if args.json is not None:  # written after each recipe: a long run keeps what it has
            out = {
                "eps": EPS,
                "norm": "inf",
                "dataset": "load_digits(size=28, random_state=0): 1347 train, 450 test",
                "model": "SmallCNN(random_state=0)",
                "evaluator": "AutoAttack(version='standard', eps=0.2, norm='inf')",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "results": rows,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
