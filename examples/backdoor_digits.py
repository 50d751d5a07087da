"""Backdoor a digits classifier with BadNets, find the poison, and train a clean model again.

1. Poison 10% of the 1s of the 28x28 digits training set: a white 4x4 patch in the
   bottom-right corner and the label 7 (Gu et al. 2017): 14 of 1,347 images.
2. Train a small CNN on the poisoned set: it stays accurate on clean digits but reads a
   patched 1 as a 7 (the attack success rate).
3. Find the poison with activation clustering (Chen et al. 2018): per class, whitened
   penultimate-layer activations are split in two by k-means; only a class whose split is
   well separated (silhouette score) is judged poisoned, and its small cluster flagged.
   Exclusionary reclassification then retrains without the flagged samples and confirms
   them: the retrained model calls them 1s, their source class. Spectral signatures
   (Tran et al. 2018) are shown for comparison.
4. The model retrained without the flagged samples is the cleaned model: the backdoor is
   gone and the clean accuracy holds.

Run it with ``python examples/backdoor_digits.py`` (about 30 seconds on one CPU core, no
download); ``--size 8`` uses the 8x8 digits (2x2 patch, source class 2).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
from bastion.datasets import load_digits
from bastion.defenses.poisoning import ActivationClustering, SpectralSignatures
from bastion.estimators import TorchClassifier
from bastion.metrics import attack_success_rate, clean_accuracy, detection_scores
from bastion.zoo import SmallCNN, train_classifier

TARGET = 7


def _trainer(size: int, epochs: int) -> Any:
    def train(x: Any, y: Any) -> TorchClassifier:
        model = SmallCNN(in_channels=1, nb_classes=10, input_size=size, random_state=0)
        train_classifier(model, x, y, epochs=epochs, random_state=0)
        return TorchClassifier(model, input_shape=(1, size, size), nb_classes=10)

    return train


def main(
    *, size: int = 28, source: int | None = None, fraction: float = 0.1, epochs: int | None = None
) -> dict[str, Any]:
    """Run the whole story and print a report; returns the numbers."""
    epochs = epochs or (5 if size == 28 else 20)
    source = source if source is not None else (1 if size == 28 else 2)
    (x_train, y_train), (x_test, y_test) = load_digits(size=size, random_state=0)

    attack = BackdoorAttack(
        PatchTrigger(size=4 if size == 28 else 2, position="bottom-right", value=1.0),
        target=TARGET,
        source=[source],
        fraction=fraction,
        random_state=0,
    )
    x_p, y_p, poison_mask = attack.poison(x_train, y_train)

    # The attack success rate is measured on test digits of the source class.
    from_source = y_test == source
    x_test_triggered = attack.apply_trigger(x_test[from_source])

    def evaluate(clf: TorchClassifier) -> tuple[float, float]:
        acc = clean_accuracy(clf, x_test, y_test)
        asr = attack_success_rate(clf, x_test_triggered, TARGET, y_test[from_source])
        return acc, asr

    train = _trainer(size, epochs)
    backdoored = train(x_p, y_p)
    acc_bd, asr_bd = evaluate(backdoored)

    ac = ActivationClustering(backdoored, random_state=0)  # whiten, silhouette analysis
    start = time.perf_counter()
    flagged = ac.detect(x_p, y_p)
    detect_s = time.perf_counter() - start
    # Retrains with the same recipe, without the flagged samples: that model is the cleaned one.
    confirmed = ac.exclusionary_reclassification(x_p, y_p, flagged, train_fn=train)
    cleaned = ac.reclassifier_
    acc_cl, asr_cl = evaluate(cleaned)
    ss = SpectralSignatures(backdoored, expected_poison_fraction=fraction).detect(x_p, y_p)
    scores = {
        "activation clustering": detection_scores(flagged, poison_mask),
        "  + exclusionary reclassification": detection_scores(confirmed, poison_mask),
        "spectral signatures": detection_scores(ss, poison_mask),
    }

    n_target = int((y_p == TARGET).sum())
    print(f"digits {size}x{size}: {len(x_p)} training images, {int(poison_mask.sum())} poisoned")
    print(f"  ({attack.fraction:.0%} of the {source}s, relabelled {TARGET}: ", end="")
    print(f"{poison_mask.sum() / n_target:.0%} of the images labelled {TARGET})")
    print(f"backdoored model: clean accuracy {acc_bd:.3f}, attack success rate {asr_bd:.3f}")
    sils = {c: round(e["silhouette"], 3) for c, e in flagged.report.items()}
    print(f"silhouette per class (poisoned above {ac.silhouette_threshold}): {sils}")
    print(f"activation clustering took {detect_s:.2f} s")
    print("detection (whole training set)      precision  recall   f1   flagged")
    for name, s in scores.items():
        flagged_n = s["true_positives"] + s["false_positives"]
        print(
            f"  {name:<34}{s['precision']:>6.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {flagged_n:>6}"
        )
    sources = {
        c: e["proposed_source"] for c, e in confirmed.report.items() if "proposed_source" in e
    }
    print(f"proposed source class of the confirmed clusters: {sources}")
    print(
        f"retrained without the flagged samples: clean accuracy {acc_cl:.3f}, "
        f"attack success rate {asr_cl:.3f}"
    )
    return {
        "clean_accuracy_backdoored": acc_bd,
        "attack_success_rate_backdoored": asr_bd,
        "clean_accuracy_cleaned": acc_cl,
        "attack_success_rate_cleaned": asr_cl,
        "detection": scores,
        "detect_seconds": detect_s,
        "silhouettes": sils,
        "proposed_sources": sources,
        "n_poison": int(poison_mask.sum()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=28, choices=(8, 28))
    parser.add_argument("--source", type=int, default=None)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    main(size=args.size, source=args.source, fraction=args.fraction, epochs=args.epochs)
