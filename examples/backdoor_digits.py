"""Backdoor a digits classifier with BadNets, find the poison, and train a clean model again.

1. Poison 30% of the 1s and 2s of the training set: a white 2x2 patch in the bottom-right
   corner and the label 7 (Gu et al. 2017).
2. Train a small CNN on the poisoned set: it stays accurate on clean digits but reads any
   patched 1 or 2 as a 7 (the attack success rate).
3. Find the poison with activation clustering (Chen et al. 2018), confirmed by exclusionary
   reclassification, and with spectral signatures (Tran et al. 2018).
4. Retrain without the samples activation clustering confirmed: the backdoor is gone and the
   clean accuracy holds.

Run it with ``python examples/backdoor_digits.py`` (about 30 seconds on a laptop CPU, no
download); ``--size 28`` uses 28x28 digits, ``--quick`` fewer epochs.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
from bastion.datasets import load_digits
from bastion.defenses.poisoning import ActivationClustering, SpectralSignatures
from bastion.estimators import TorchClassifier
from bastion.metrics import attack_success_rate, clean_accuracy, detection_scores
from bastion.zoo import SmallCNN, train_classifier

TARGET, SOURCE = 7, [1, 2]


def _train(x: np.ndarray, y: np.ndarray, size: int, epochs: int) -> TorchClassifier:
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=size, random_state=0)
    train_classifier(model, x, y, epochs=epochs, random_state=0)
    return TorchClassifier(model, input_shape=(1, size, size), nb_classes=10)


def main(*, size: int = 8, epochs: int | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the whole story and print a report; returns the numbers."""
    epochs = epochs or ((8 if quick else 20) if size == 8 else (3 if quick else 5))
    (x_train, y_train), (x_test, y_test) = load_digits(size=size, random_state=0)

    patch = 2 if size == 8 else 4
    attack = BackdoorAttack(
        PatchTrigger(size=patch, position="bottom-right", value=1.0),
        target=TARGET,
        source=SOURCE,
        fraction=0.2,
        random_state=0,
    )
    x_p, y_p, poison_mask = attack.poison(x_train, y_train)

    # The attack success rate is measured on test digits of the source classes.
    from_source = np.isin(y_test, SOURCE)
    x_test_triggered = attack.apply_trigger(x_test[from_source])

    def evaluate(clf: TorchClassifier) -> tuple[float, float]:
        acc = clean_accuracy(clf, x_test, y_test)
        asr = attack_success_rate(clf, x_test_triggered, TARGET, y_test[from_source])
        return acc, asr

    backdoored = _train(x_p, y_p, size, epochs)
    acc_bd, asr_bd = evaluate(backdoored)

    ac = ActivationClustering(backdoored, analysis="relative-size", random_state=0)
    flagged = ac.detect(x_p, y_p)
    confirmed = ac.exclusionary_reclassification(x_p, y_p, flagged, epochs=epochs)
    ss = SpectralSignatures(backdoored, expected_poison_fraction=0.3).detect(x_p, y_p)
    scores = {
        "activation clustering": detection_scores(flagged, poison_mask),
        "  + exclusionary reclassification": detection_scores(confirmed, poison_mask),
        "spectral signatures": detection_scores(ss, poison_mask),
    }

    keep = ~confirmed.is_poison
    cleaned = _train(x_p[keep], y_p[keep], size, epochs)
    acc_cl, asr_cl = evaluate(cleaned)

    print(f"digits {size}x{size}: {len(x_p)} training images, {int(poison_mask.sum())} poisoned")
    print(f"  ({attack.fraction:.0%} of classes {SOURCE}, relabelled {TARGET})")
    print(f"backdoored model: clean accuracy {acc_bd:.3f}, attack success rate {asr_bd:.3f}")
    print("detection                           precision  recall   f1   flagged")
    for name, s in scores.items():
        flagged_n = s["true_positives"] + s["false_positives"]
        print(
            f"  {name:<34}{s['precision']:>6.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {flagged_n:>6}"
        )
    sources = {
        c: e["proposed_source"] for c, e in confirmed.report.items() if "proposed_source" in e
    }
    print(f"proposed source class of the confirmed clusters: {sources}")
    print(f"retrained without them: clean accuracy {acc_cl:.3f}, attack success rate {asr_cl:.3f}")
    return {
        "clean_accuracy_backdoored": acc_bd,
        "attack_success_rate_backdoored": asr_bd,
        "clean_accuracy_cleaned": acc_cl,
        "attack_success_rate_cleaned": asr_cl,
        "detection": scores,
        "proposed_sources": sources,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8, choices=(8, 28))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    main(size=args.size, epochs=args.epochs, quick=args.quick)
