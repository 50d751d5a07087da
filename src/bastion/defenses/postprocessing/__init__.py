"""Postprocessing defences: perturb what a prediction API reveals, to make stealing costly.

Wrap the protected estimator in :class:`PostprocessedClassifier` with postprocessors applied
in order; the result is an estimator like any other (DESIGN principle 7), so extraction
attacks and metrics run on it unchanged.

- :class:`ReverseSigmoid` (Lee et al. 2019): deceptive perturbation of the probabilities.
- :class:`Rounding`: fewer decimals.
- :class:`TopK`: only the ``k`` highest probabilities.
- :class:`HighConfidence`: only the probabilities above a cutoff.
- :class:`LabelsOnly`: only the predicted label (one-hot).
- :class:`GaussianNoise`: noisy probabilities.
"""

from bastion.defenses.postprocessing._base import PostprocessedClassifier, Postprocessor
from bastion.defenses.postprocessing.postprocessors import (
    GaussianNoise,
    HighConfidence,
    LabelsOnly,
    ReverseSigmoid,
    Rounding,
    TopK,
)

__all__ = [
    "GaussianNoise",
    "HighConfidence",
    "LabelsOnly",
    "PostprocessedClassifier",
    "Postprocessor",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
]
