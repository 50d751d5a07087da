"""Preprocessing defences against the naive and the adaptive attacker (Athalye et al. 2018).

The model is the SmallCNN of the tests (``tests/conftest.py``): digits upsampled to 28x28,
``load_digits(size=28, random_state=0)``, trained 5 epochs with ``random_state=0``, clip
values (0, 1). On the first ``--n`` test images, for each defence, the script measures

* the clean accuracy of the defended model (``DefendedEstimator``);
* its accuracy under the naive attacker: PGD-Linf on ``gradients="exact"`` (autograd through
  the defence as implemented: a non-differentiable preprocessor passes a zero gradient, so
  PGD's sign step does nothing and only its random start moves the input);
* its accuracy under the adaptive attacker: the same PGD on ``gradients="bpda"`` (the
  identity on the backward pass), wrapped in ``EOT`` for the randomised defences;
* for reference, the undefended model's accuracy under the same PGD.

PGD: eps 0.2, eps_step 0.01, 40 iterations, one random start, ``random_state=0``; the
randomised preprocessors are seeded with ``random_state=0``, EOT draws ``--eot`` samples per
gradient. AutoAttack (APGD-CE then Square, 20 iterations and 200 queries, on 32 images) runs
on the naive feature-squeezing configuration to show its gradient-masking flags.

Usage::

    python benchmarks/naive_vs_adaptive.py --json benchmarks/results/naive_vs_adaptive.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.attacks.evasion import PGD, AutoAttack
from bastion.datasets import load_digits
from bastion.defenses.preprocessing import (
    FeatureSqueezing,
    GaussianNoise,
    JpegCompression,
    RandomResizePad,
)
from bastion.estimators import DefendedEstimator, TorchClassifier
from bastion.estimators.wrappers import EOT
from bastion.zoo import SmallCNN, train_classifier

EPS = 0.2
EPS_STEP = 0.01
MAX_ITER = 40
SEED = 0


def defences() -> list[tuple[str, Any]]:
    """(label, factory of a fresh preprocessor); the randomised ones seeded."""
    return [
        ("FeatureSqueezing(bit_depth=1)", lambda: FeatureSqueezing(bit_depth=1)),
        ("FeatureSqueezing(bit_depth=2)", lambda: FeatureSqueezing(bit_depth=2)),
        ("FeatureSqueezing(bit_depth=3)", lambda: FeatureSqueezing(bit_depth=3)),
        ("JpegCompression(quality=10)", lambda: JpegCompression(quality=10)),
        ("JpegCompression(quality=20)", lambda: JpegCompression(quality=20)),
        ("JpegCompression(quality=30)", lambda: JpegCompression(quality=30)),
        ("GaussianNoise(sigma=0.3)", lambda: GaussianNoise(sigma=0.3, random_state=SEED)),
        ("RandomResizePad(max_size=34)", lambda: RandomResizePad(max_size=34, random_state=SEED)),
    ]


def accuracy(clf: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(clf.predict(x)).argmax(1) == y))


def pgd(estimator: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    attack = PGD(estimator, eps=EPS, eps_step=EPS_STEP, max_iter=MAX_ITER, random_state=SEED)
    return attack.generate(x, y)


def measure(clf: Any, factory: Any, x: np.ndarray, y: np.ndarray, eot: int) -> dict[str, Any]:
    """Clean, naive and adaptive accuracy of ``clf`` behind a fresh preprocessor."""
    start = time.perf_counter()
    pre = factory()
    randomized = bool(pre.randomized)
    # Each measurement gets a fresh preprocessor (the randomised ones restart their stream).
    defended = DefendedEstimator(clf, preprocessors=[factory()])
    clean = accuracy(defended, x, y)
    naive = DefendedEstimator(clf, preprocessors=[factory()], gradients="exact")
    x_naive = pgd(naive, x, y)
    adaptive: Any = DefendedEstimator(clf, preprocessors=[factory()], gradients="bpda")
    if randomized:
        adaptive = EOT(adaptive, nb_samples=eot, random_state=SEED)
    x_adaptive = pgd(adaptive, x, y)
    # Judged by a fresh copy of the defence (its own draws for the randomised ones).
    judge = DefendedEstimator(clf, preprocessors=[factory()])
    return {
        "randomized": randomized,
        "clean": clean,
        "naive": accuracy(judge, x_naive, y),
        "adaptive": accuracy(judge, x_adaptive, y),
        "eot_samples": eot if randomized else None,
        "seconds": time.perf_counter() - start,
    }


def autoattack_flags(clf: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    naive = DefendedEstimator(clf, preprocessors=[FeatureSqueezing(bit_depth=1)], gradients="exact")
    aa = AutoAttack(
        naive,
        eps=EPS,
        version="custom",
        attacks=["apgd-ce", "square"],
        max_iter=20,
        max_queries=200,
        random_state=SEED,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = aa.evaluate(x, y)
    print(result.summary())
    return result.to_dict()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="test images (default 100)")
    parser.add_argument("--eot", type=int, default=10, help="EOT draws per gradient")
    parser.add_argument("--json", type=Path, help="write the results there")
    args = parser.parse_args(argv)

    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=0)
    model = SmallCNN(in_channels=1, nb_classes=10, random_state=SEED)
    train_classifier(model, x_tr, y_tr, epochs=5, random_state=SEED)
    clf = TorchClassifier(model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    x, y = x_te[: args.n], y_te[: args.n]

    undefended = {"clean": accuracy(clf, x, y), "pgd": accuracy(clf, pgd(clf, x, y), y)}
    rows = {}
    header = f"{'defence':<30} {'clean':>6} {'naive':>6} {'adaptive':>8} {'seconds':>8}"
    print(f"undefended: clean {undefended['clean']:.2f}, PGD {undefended['pgd']:.2f}")
    print(header)
    for label, factory in defences():
        row = measure(clf, factory, x, y, args.eot)
        rows[label] = row
        eot = f" (EOT {row['eot_samples']})" if row["randomized"] else ""
        print(
            f"{label:<30} {row['clean']:6.2f} {row['naive']:6.2f} {row['adaptive']:8.2f}"
            f" {row['seconds']:8.1f}{eot}",
            flush=True,
        )
    n_aa = min(32, args.n)
    flags = autoattack_flags(clf, x[:n_aa], y[:n_aa])

    results = {
        "setting": {
            "model": "SmallCNN, digits 28x28 (load_digits(size=28, random_state=0)), "
            "5 epochs, random_state=0",
            "images": f"first {args.n} test images",
            "attack": f"PGD Linf eps={EPS} eps_step={EPS_STEP} max_iter={MAX_ITER} "
            f"random_state={SEED}, one random start",
            "naive": 'DefendedEstimator(gradients="exact")',
            "adaptive": 'DefendedEstimator(gradients="bpda"), EOT for the randomised ones',
            "eot_samples": args.eot,
            "autoattack": f'custom ["apgd-ce", "square"], max_iter=20, max_queries=200, '
            f'on the first {n_aa} images, FeatureSqueezing(bit_depth=1), gradients="exact"',
        },
        "undefended": undefended,
        "defences": rows,
        "autoattack_naive_feature_squeezing_1bit": flags,
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
