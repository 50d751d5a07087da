"""Defend a digits CNN, then attack the defence the way a real adversary would.

1. A SmallCNN on 28x28 digits, put behind feature squeezing (1 bit per pixel) with
   ``DefendedEstimator``.
2. The naive attacker runs PGD through the defence as implemented
   (``gradients="exact"``): the quantiser has a zero gradient, PGD is blind, and the defence
   looks strong. The adaptive attacker runs the same PGD with BPDA (``gradients="bpda"``:
   the quantiser is the identity on the backward pass; Athalye et al. 2018) and breaks it.
3. A Mahalanobis detector (Lee et al. 2018) on the network's ``fc1`` features flags PGD
   examples crafted without knowledge of it (ROC AUC, robust accuracy with rejection), then
   a targeted PGD on ``detector.guard(classifier)``, the classifier with a "rejected" class,
   evades the classifier and the detector together (Carlini and Wagner 2017).

Run it with ``python examples/defend_and_attack.py`` (about 30 seconds on a laptop CPU, no
download).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bastion.attacks.evasion import PGD
from bastion.datasets import load_digits
from bastion.defenses.detection import MahalanobisDetector
from bastion.defenses.preprocessing import FeatureSqueezing
from bastion.estimators import DefendedEstimator, TorchClassifier
from bastion.metrics import robust_accuracy_with_rejection
from bastion.zoo import SmallCNN, train_classifier

EPS = 0.2


def main(*, n: int = 100) -> dict[str, Any]:
    """Run the story on ``n`` test images; return the numbers it prints."""
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_digits(size=28, random_state=0)
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=28, random_state=0)
    train_classifier(model, x_train, y_train, epochs=5, random_state=0)
    clf = TorchClassifier(model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    x, y = x_test[:n], y_test[:n]
    x_held_out = x_test[n : n + 200]  # clean images to calibrate the detector on

    def accuracy(estimator: Any, inputs: np.ndarray) -> float:
        return float(np.mean(estimator.predict(inputs).argmax(1) == y))

    def pgd(estimator: Any, **kwargs: Any) -> PGD:
        return PGD(estimator, eps=EPS, eps_step=0.01, max_iter=40, random_state=0, **kwargs)

    # 1-2. Preprocessing defence: naive against adaptive attacker.
    squeeze = [FeatureSqueezing(bit_depth=1)]
    defended = DefendedEstimator(clf, preprocessors=squeeze)  # gradients="bpda"
    naive = DefendedEstimator(clf, preprocessors=squeeze, gradients="exact")
    numbers: dict[str, Any] = {
        "clean_undefended": accuracy(clf, x),
        "pgd_undefended": accuracy(clf, pgd(clf).generate(x, y)),
        "clean_defended": accuracy(defended, x),
        "naive_pgd_defended": accuracy(defended, pgd(naive).generate(x, y)),
        "adaptive_pgd_defended": accuracy(defended, pgd(defended).generate(x, y)),
    }
    print(f"PGD-Linf, eps={EPS}, 40 steps, on {n} test images")
    print(f"undefended CNN:     clean {numbers['clean_undefended']:.2f}, ", end="")
    print(f"under PGD {numbers['pgd_undefended']:.2f}")
    print(f"feature squeezing:  clean {numbers['clean_defended']:.2f}")
    print(f"  naive PGD (exact gradients, all zero):  {numbers['naive_pgd_defended']:.2f}")
    print(f"  adaptive PGD (BPDA):                    {numbers['adaptive_pgd_defended']:.2f}")

    # 3. A detector of adversarial inputs, first against an attacker who ignores it.
    detector = MahalanobisDetector(clf, layer="fc1").fit(x_train, y_train)
    detector.calibrate(x_held_out, fpr=0.1)  # 10 % of clean inputs rejected
    x_adv = pgd(clf).generate(x, y)
    result = detector.detect(np.concatenate([x, x_adv]))
    numbers["detector_auc"] = float(result.roc_auc(np.r_[np.zeros(n), np.ones(n)]))
    # Targeted attacks (the next class): the static one on the classifier alone, the adaptive
    # one on the guard, whose extra "rejected" class it must avoid as well.
    target = (y + 1) % 10
    x_static = pgd(clf, targeted=True).generate(x, target)
    x_adaptive = pgd(detector.guard(clf), targeted=True).generate(x, target)
    static = robust_accuracy_with_rejection(clf, detector, x_static, y, x_clean=x_held_out)
    adaptive = robust_accuracy_with_rejection(clf, detector, x_adaptive, y)
    numbers["rejection_static"] = static.robust_accuracy_with_rejection
    numbers["rejection_adaptive"] = adaptive.robust_accuracy_with_rejection
    numbers["false_rejection_rate"] = static.false_rejection_rate
    print(f"Mahalanobis detector (fc1): ROC AUC {numbers['detector_auc']:.3f} against PGD")
    print(
        f"  robust accuracy with rejection, targeted PGD ignoring the detector: "
        f"{numbers['rejection_static']:.2f} ({static.false_rejection_rate:.2f} of clean "
        "inputs rejected)"
    )
    print(
        f"  robust accuracy with rejection, targeted PGD on detector.guard(): "
        f"{numbers['rejection_adaptive']:.2f}"
    )
    numbers["seconds"] = time.perf_counter() - start
    print(f"time: {numbers['seconds']:.1f} s")
    return numbers


if __name__ == "__main__":
    main()
