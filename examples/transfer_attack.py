"""Steal a digits CNN through its prediction API, then attack it with adversarial examples
crafted on the stolen copy (a black-box transfer attack).

1. The victim: a SmallCNN on 28x28 digits, reachable only through ``predict`` (every query is
   counted).
2. The attacker holds a small seed set of digits and trains a substitute with Jacobian-based
   dataset augmentation (Papernot et al. 2017), which asks the victim for labels only.
3. PGD (L-inf) runs on the substitute; the adversarial images are sent to the victim. The
   report compares the victim's error on them with its error on random sign noise of the same
   L-inf norm, and with the clean error.

Run: ``python examples/transfer_attack.py`` (about half a minute on a laptop CPU).
"""

from __future__ import annotations

import time

import numpy as np

from bastion.attacks.evasion import ProjectedGradientDescent
from bastion.attacks.extraction import JacobianAugmentation
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.metrics.extraction import fidelity, thief_accuracy
from bastion.zoo import SmallCNN, train_classifier


def main(*, nb_seed: int = 150, nb_rounds: int = 3, eps: float = 0.25, nb_attack: int = 200):
    """Run the story; return the numbers it prints."""
    start = time.perf_counter()
    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=0)
    net = train_classifier(
        SmallCNN(in_channels=1, nb_classes=10, random_state=0), x_tr, y_tr, epochs=5, random_state=0
    )
    victim = TorchClassifier(net, input_shape=(1, 28, 28), nb_classes=10)

    # the attacker's seed set: a few unlabelled digits (disjoint from the victim's test set)
    x_seed = x_tr[np.random.default_rng(0).choice(len(x_tr), nb_seed, replace=False)]
    substitute = TorchClassifier(
        SmallCNN(in_channels=1, nb_classes=10, random_state=1),
        input_shape=(1, 28, 28),
        nb_classes=10,
    )
    steal = JacobianAugmentation(
        victim, thief=substitute, nb_rounds=nb_rounds, eps_step=0.1, epochs=10, random_state=0
    )
    steal.extract(x_seed)

    x, y = x_te[:nb_attack], y_te[:nb_attack]
    pgd = ProjectedGradientDescent(
        substitute, eps=eps, eps_step=eps / 8, max_iter=20, norm="inf", random_state=0
    )
    x_adv = pgd.generate(x, y)
    noise = np.random.default_rng(1).choice([-eps, eps], size=x.shape).astype(np.float32)
    x_noise = np.clip(x + noise, 0.0, 1.0)

    def error(inputs: np.ndarray) -> float:
        return float(np.mean(victim.predict(inputs).argmax(1) != y))

    numbers = {
        "victim_queries": steal.queries_,
        "substitute_accuracy": thief_accuracy(substitute, x_te, y_te),
        "fidelity": fidelity(victim, substitute, x_te),
        "victim_error_clean": error(x),
        "victim_error_noise": error(x_noise),
        "victim_error_transfer": error(x_adv),
        "substitute_error_adversarial": float(np.mean(substitute.predict(x_adv).argmax(1) != y)),
        "seconds": time.perf_counter() - start,
    }
    print(f"victim queries spent stealing: {numbers['victim_queries']}")
    print(f"substitute test accuracy:      {numbers['substitute_accuracy']:.3f}")
    print(f"fidelity to the victim:        {numbers['fidelity']:.3f}")
    print(f"victim error, clean:           {numbers['victim_error_clean']:.3f}")
    print(f"victim error, random noise:    {numbers['victim_error_noise']:.3f}  (L-inf {eps})")
    print(f"victim error, transferred PGD: {numbers['victim_error_transfer']:.3f}  (L-inf {eps})")
    print(
        f"substitute error on its own adversarial examples: "
        f"{numbers['substitute_error_adversarial']:.3f}"
    )
    print(f"time: {numbers['seconds']:.1f} s")
    return numbers


if __name__ == "__main__":
    main()
