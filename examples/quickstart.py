"""Quickstart: train a small CNN on handwritten digits, then fool it with PGD.

Run it with ``python examples/quickstart.py``; it takes about 15 seconds on a laptop CPU and
needs no download (the digits ship with scikit-learn).
"""

from bastion.attacks.evasion import PGD
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.zoo import SmallCNN, train_classifier


def main() -> None:
    # 1,797 grey-scale digits upsampled to 28x28, pixel values in [0, 1].
    (x_train, y_train), (x_test, y_test) = load_digits(size=28, random_state=0)

    # A seeded model and seeded training: the same numbers on every run.
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=28, random_state=0)
    train_classifier(model, x_train, y_train, epochs=5, random_state=0)

    # The estimator wraps the model for attacks; clip_values bound the valid inputs.
    classifier = TorchClassifier(
        model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0)
    )

    # 40 steps of projected gradient ascent on the loss, within 0.3 of each pixel.
    attack = PGD(classifier, eps=0.3, eps_step=0.01, max_iter=40, norm="inf", random_state=0)
    x_adv = attack.generate(x_test, y_test)

    clean = (classifier.predict(x_test).argmax(axis=1) == y_test).mean()
    adversarial = (classifier.predict(x_adv).argmax(axis=1) == y_test).mean()
    print(f"clean accuracy:       {clean:.3f}")
    print(f"adversarial accuracy: {adversarial:.3f}  (PGD, Linf eps=0.3, {len(x_test)} images)")


if __name__ == "__main__":
    main()
