"""Data sets for examples, tests and evaluations.

- :func:`load_digits`: scikit-learn's bundled 8x8 digits (no download), optionally at 28x28.
- :func:`load_mnist`, :func:`load_cifar10`: the public benchmarks, downloaded once into a cache
  (``$BASTION_CACHE``, else ``~/.cache/bastion``).
- :func:`load_npz`, :func:`load_npy`, :func:`load_image_folder`: a user's own data on disk.

Images come as float32 arrays of shape ``(N, C, H, W)`` with values in ``[0, 1]`` and labels as
int64 arrays, ready for an estimator with ``clip_values=(0, 1)``.
"""

from bastion.datasets._cifar import CIFAR10_CLASSES, CIFAR10_URL, load_cifar10
from bastion.datasets._digits import load_digits
from bastion.datasets._files import load_image_folder, load_npy, load_npz
from bastion.datasets._mnist import MNIST_URL, load_mnist

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "MNIST_URL",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "load_npy",
    "load_npz",
]
