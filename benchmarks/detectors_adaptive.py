"""Detectors of adversarial inputs on the digits-28 CNN: ROC AUC against non-adaptive PGD, and
robust accuracy with rejection under an adaptive attack on ``detector.guard()``.

The model is the SmallCNN of the tests (``tests/conftest.py``): digits upsampled to 28x28,
``load_digits(size=28, random_state=0)``, trained 5 epochs with ``random_state=0``, clip values
(0, 1). Every detector is fitted on training images (the trained ones, LID and the binary
detectors, craft their own PGD-Linf examples at eps 0.2, 20 steps of eps/8), then calibrated on
250 held-out clean test images at a false-positive rate of 0.1. Layers: Mahalanobis on ``fc1``,
kernel density and the binary activation detector on ``pool2`` (the flattened conv features),
LID on all seven activation layers. It is judged on the first 200 test images:

- **ROC AUC** of the scores, the 200 clean images against the *successful* untargeted PGD-Linf
  examples on the CNN (eps 0.2, eps_step 0.01, 40 steps, ``random_state=0``; successful: the
  clean image is classified correctly and its adversarial example is not). The detector is not
  attacked (non-adaptive);
- **robust accuracy with rejection** (an adversarial input counts as defended when it is
  classified correctly or rejected), for targeted PGD-Linf (eps, 40 steps of eps/8, target
  ``(y + 1) % 10``) that ignores the detector ("static", run on the CNN), and for the
  adaptive attacks on the guard (``detector.guard()``, the CNN with an 11th "rejected" class;
  Carlini and Wagner 2017), which must fool the CNN *and* keep the detector quiet: the same
  targeted PGD and targeted APGD with the DLR loss (40 steps), both run on the guard; a
  sample is defended only if it withstands both (the per-sample worst case; each attack's
  own figure is recorded too). Targeted, because an untargeted attack on the guard is as
  happy to land in the rejected class. Every guard is differentiable: LID through its
  layers' activation gradients, feature squeezing by BPDA through the squeezers (its default
  ``gradients="bpda"``). A guard without gradients would be attacked with the targeted
  Square attack instead (eps, 300 queries per image).

``--eps`` sets the budget of every attack (default 0.2; the detectors' own training attacks
follow it). Run: ``.venv/bin/python benchmarks/detectors_adaptive.py [--eps 0.05]`` (CPU, a few
minutes on 2 cores); writes ``benchmarks/results/detectors_adaptive.json`` (or
``detectors_adaptive_eps<eps>.json`` for another eps).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.attacks.evasion import APGD, PGD, SquareAttack
from bastion.datasets import load_digits
from bastion.defenses.detection import (
    BinaryActivationDetector,
    BinaryInputDetector,
    FeatureSqueezingDetector,
    KernelDensityDetector,
    LIDDetector,
    MahalanobisDetector,
)
from bastion.estimators import TorchClassifier
from bastion.metrics import robust_accuracy_with_rejection
from bastion.zoo import SmallCNN, train_classifier

EPS = 0.2  # overridden by --eps
N = 200
FPR = 0.1
QUERIES = 300
OUT = Path(__file__).parent / "results" / "detectors_adaptive.json"


def cnn(x_tr: np.ndarray, y_tr: np.ndarray) -> TorchClassifier:
    model = train_classifier(
        SmallCNN(in_channels=1, nb_classes=10, random_state=0), x_tr, y_tr, epochs=5, random_state=0
    )
    return TorchClassifier(model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))


def detectors(clf: TorchClassifier) -> list[tuple[str, Any, int]]:
    """(name, detector, number of training images it is fitted on).

    The trained detectors craft their own examples with PGD-Linf at the evaluated eps (0.2,
    20 steps of eps/8): a detector trained at eps 0.1 need not transfer to 0.2.
    """

    def attack() -> PGD:
        return PGD(clf, eps=EPS, eps_step=EPS / 8, max_iter=20, random_state=0)

    return [
        ('MahalanobisDetector(layer="fc1")', MahalanobisDetector(clf, layer="fc1"), 1347),
        (
            "LIDDetector(layers=all seven activation layers, k=30, batch_size=1000)",
            LIDDetector(
                clf,
                layers=["relu1", "pool1", "relu2", "pool2", "fc1", "relu3", "fc2"],
                k=30,
                batch_size=1000,
                attack=attack(),
                random_state=0,
            ),
            1000,
        ),
        (
            "FeatureSqueezingDetector(bit_depth=1, window=3)",
            FeatureSqueezingDetector(clf, bit_depth=1, window=3),
            200,
        ),
        ('KernelDensityDetector(layer="pool2")', KernelDensityDetector(clf, layer="pool2"), 1347),
        ("BinaryInputDetector", BinaryInputDetector(clf, attack=attack(), random_state=0), 500),
        (
            'BinaryActivationDetector(layer="pool2")',
            BinaryActivationDetector(clf, layer="pool2", attack=attack(), random_state=0),
            500,
        ),
    ]


def adaptive_attacks(guard: Any) -> list[tuple[str, Any]]:
    """The attacks on ``guard()``; a sample is defended only if it withstands all of them."""
    if "loss_gradient" not in guard.capabilities:
        square = SquareAttack(guard, eps=EPS, max_queries=QUERIES, targeted=True, random_state=0)
        return [(f"targeted Square ({QUERIES} queries)", square)]
    return [
        (
            "targeted PGD (40 steps of eps/8)",
            PGD(guard, eps=EPS, eps_step=EPS / 8, max_iter=40, targeted=True, random_state=0),
        ),
        (
            "targeted APGD-DLR (40 steps)",
            APGD(guard, eps=EPS, max_iter=40, loss="dlr", targeted=True, random_state=0),
        ),
    ]


def accuracy(clf: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(clf.predict(x)).argmax(1) == y))


def main() -> None:
    global EPS, N, OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eps", type=float, default=EPS, help="Linf budget (default 0.2)")
    parser.add_argument("--n", type=int, default=N, help="test images judged (default 200)")
    args = parser.parse_args()
    N = args.n
    if args.eps != EPS:
        EPS = args.eps
        OUT = OUT.with_name(f"detectors_adaptive_eps{EPS:g}.json")
    if N != 200:
        OUT = OUT.with_name(OUT.stem + f"_n{N}.json")
    torch.manual_seed(0)
    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=0)
    clf = cnn(x_tr, y_tr)
    x, y = x_te[:N], y_te[:N]
    x_cal = x_te[N:]
    target = (y + 1) % 10
    pgd = PGD(clf, eps=EPS, eps_step=0.01, max_iter=40, random_state=0)
    x_adv = np.asarray(pgd.generate(x, y))
    clean_ok = np.asarray(clf.predict(x)).argmax(1) == y
    adv_ok = np.asarray(clf.predict(x_adv)).argmax(1) == y
    success = clean_ok & ~adv_ok  # correctly classified clean images the attack flipped
    x_success = x_adv[success]
    n_adv = int(success.sum())
    print(f"untargeted PGD: {n_adv} successful adversarial examples of {N}", flush=True)
    targeted = dict(eps=EPS, eps_step=EPS / 8, max_iter=40, targeted=True, random_state=0)
    x_static = np.asarray(PGD(clf, **targeted).generate(x, target))
    labels = np.r_[np.zeros(N), np.ones(n_adv)]
    rows = []
    for name, det, n_fit in detectors(clf):
        start = time.perf_counter()
        det.fit(x_tr[:n_fit], y_tr[:n_fit]).calibrate(x_cal, fpr=FPR)
        fit_s = time.perf_counter() - start
        print(f"{name}: fitted in {fit_s:.1f} s", flush=True)
        auc = det.detect(np.concatenate([x, x_success])).roc_auc(labels)
        static = robust_accuracy_with_rejection(clf, det, x_static, y, x_clean=x)
        guard = det.guard()
        start = time.perf_counter()
        per_attack = {
            label: robust_accuracy_with_rejection(clf, det, np.asarray(a.generate(x, target)), y)
            for label, a in adaptive_attacks(guard)
        }
        attack_s = time.perf_counter() - start
        defended = np.logical_and.reduce([r.defended for r in per_attack.values()])
        row = {
            "detector": name,
            "fit_images": n_fit,
            "roc_auc_pgd": round(auc, 4),
            "false_rejection_rate": round(float(static.false_rejection_rate), 4),
            "static_robust_accuracy_with_rejection": round(
                float(static.robust_accuracy_with_rejection), 4
            ),
            "adaptive_attacks": {
                label: {
                    "robust_accuracy_with_rejection": round(r.robust_accuracy_with_rejection, 4),
                    "rejection_rate": round(r.rejection_rate, 4),
                }
                for label, r in per_attack.items()
            },
            "adaptive_robust_accuracy_with_rejection": round(float(defended.mean()), 4),
            "fit_seconds": round(fit_s, 2),
            "attack_seconds": round(attack_s, 2),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "model": "SmallCNN, digits 28x28 (load_digits(size=28, random_state=0)), 5 epochs, seed 0",
        "clean_accuracy": accuracy(clf, x, y),
        "pgd_untargeted": {"eps": EPS, "eps_step": 0.01, "max_iter": 40, "random_state": 0},
        "accuracy_under_pgd": accuracy(clf, x_adv, y),
        "auc_clean_images": N,
        "auc_successful_adversarial_images": n_adv,
        "detector_training_attack": {"eps": EPS, "eps_step": EPS / 8, "max_iter": 20},
        "pgd_targeted": {"eps": EPS, "eps_step": EPS / 8, "max_iter": 40, "target": "(y+1)%10"},
        "accuracy_under_targeted_pgd": accuracy(clf, x_static, y),
        "n_test": N,
        "calibration": {"images": len(x_cal), "fpr": FPR},
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "detectors": rows,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
