"""Defences against data poisoning: find (and remove) poisoned training samples.

Every detector takes the model trained on the suspect data and returns a
:class:`DetectionResult` from ``detect(x, y)``:

- :class:`ActivationClustering`: cluster each class's activations (Chen et al. 2018), with
  exclusionary reclassification to confirm clusters and propose their source class.
- :class:`SpectralSignatures`: outliers along the top singular vector of each class's
  representations (Tran, Li, Madry 2018).
- :class:`PoisonDetector`: the template they build on.
"""

from bastion.defenses.poisoning._result import DetectionResult, PoisonDetector
from bastion.defenses.poisoning.activation_clustering import ActivationClustering
from bastion.defenses.poisoning.spectral_signatures import SpectralSignatures

__all__ = ["ActivationClustering", "DetectionResult", "PoisonDetector", "SpectralSignatures"]
