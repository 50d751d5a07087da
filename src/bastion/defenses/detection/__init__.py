"""Detectors of adversarial inputs, and the classifier they guard.

Every detector follows :class:`InputDetector`: ``fit(x, y=None)`` on clean data,
``score(x)`` (higher = more suspicious), ``calibrate(x_clean, fpr=0.05)`` to set the threshold
for a false-positive rate, ``detect(x) -> InputDetectionResult`` and ``guard(estimator)``, a
:class:`GuardedClassifier` with one more "rejected" class for adaptive attacks (Carlini and
Wagner 2017).

- :class:`MahalanobisDetector` (Lee et al. 2018): distance to class-conditional Gaussians of
  a layer's features.
- :class:`LIDDetector` (Ma et al. 2018): local intrinsic dimensionality of the activations,
  with :func:`lid_mle`, the estimator.
- :class:`FeatureSqueezingDetector` (Xu et al. 2018): how far the prediction moves when the
  input is squeezed.
- :class:`KernelDensityDetector` (Feinman et al. 2017): low density of the last hidden layer's
  features among the training data of the predicted class.
- :class:`BinaryInputDetector`, :class:`BinaryActivationDetector` (Metzen et al. 2017): a
  small network trained on clean against adversarial inputs or activations.
"""

from bastion.defenses.detection._base import InputDetectionResult, InputDetector
from bastion.defenses.detection.binary import BinaryActivationDetector, BinaryInputDetector
from bastion.defenses.detection.guard import GuardedClassifier
from bastion.defenses.detection.kernel_density import KernelDensityDetector
from bastion.defenses.detection.lid import LIDDetector, lid_mle
from bastion.defenses.detection.mahalanobis import MahalanobisDetector
from bastion.defenses.detection.squeezing import FeatureSqueezingDetector

__all__ = [
    "BinaryActivationDetector",
    "BinaryInputDetector",
    "FeatureSqueezingDetector",
    "GuardedClassifier",
    "InputDetectionResult",
    "InputDetector",
    "KernelDensityDetector",
    "LIDDetector",
    "MahalanobisDetector",
    "lid_mle",
]
