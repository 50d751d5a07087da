"""Preprocessing defences: transform the input before the model sees it (evasion).

Each preprocessor maps a batch to a batch (``preprocessor(x)``, same type out as in) and
offers the tensor kernel ``apply_tensor``, a differentiable surrogate ``bpda`` for adaptive
attackers, and ``reset`` for its random stream. Put them in front of a model with
:class:`~bastion.estimators.DefendedEstimator`.

- :class:`FeatureSqueezing` (Xu et al. 2018): fewer colour levels.
- :class:`SpatialSmoothing` (Xu et al. 2018): median filter.
- :class:`JpegCompression` (Dziugaite et al. 2016): the real JPEG codec.
- :class:`ThermometerEncoding` (Buckman et al. 2018): one-hot-like level channels.
- :class:`TotalVarianceMinimization` (Guo et al. 2018): random pixel dropout and TV
  reconstruction.
- :class:`GaussianNoise`: additive noise.
- :class:`RandomResizePad` (Xie et al. 2018): random resizing and padding.
"""

from bastion.defenses.preprocessing._base import Preprocessor
from bastion.defenses.preprocessing.encoding import ThermometerEncoding
from bastion.defenses.preprocessing.randomized import (
    GaussianNoise,
    RandomResizePad,
    TotalVarianceMinimization,
)
from bastion.defenses.preprocessing.squeezing import (
    FeatureSqueezing,
    JpegCompression,
    SpatialSmoothing,
)

__all__ = [
    "FeatureSqueezing",
    "GaussianNoise",
    "JpegCompression",
    "Preprocessor",
    "RandomResizePad",
    "SpatialSmoothing",
    "ThermometerEncoding",
    "TotalVarianceMinimization",
]
