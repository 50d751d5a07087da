"""Small reference architectures and a trainer, for demos, tests and benchmarks.

- :class:`SmallCNN`: two convolutions and two dense layers, for MNIST-like images.
- :class:`MLP`: a fully connected network.
- :class:`SmallResNet`: a small residual network for CIFAR-like images.
- :func:`train_classifier`: Adam on the cross-entropy loss, seeded shuffling.

Every model takes ``random_state`` to seed its initialisation without touching torch's global
RNG, outputs logits, and names its layers so they can be picked for activations.
"""

from bastion.zoo._models import MLP, SmallCNN, SmallResNet
from bastion.zoo._train import train_classifier

__all__ = ["MLP", "SmallCNN", "SmallResNet", "train_classifier"]
