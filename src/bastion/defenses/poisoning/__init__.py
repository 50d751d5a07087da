"""Defences against data poisoning: find (and remove) poisoned training samples.

Every detector takes the model trained on the suspect data and returns a
:class:`DetectionResult` from ``detect(x, y)``:

- :class:`ActivationClustering`: cluster each class's activations (Chen et al. 2018), with
  exclusionary reclassification to confirm clusters and propose their source class.
- :class:`SpectralSignatures`: outliers along the top singular vector of each class's
  representations (Tran, Li, Madry 2018).
- :class:`STRIP`: run-time detection of triggered inputs by the entropy of superimposed
  inputs (Gao et al. 2019).
- :class:`NeuralCleanse`: reverse-engineered triggers, anomaly index, and mitigation by
  unlearning, pruning or filtering (Wang et al. 2019).
- :class:`FinePruning`: prune dormant channels, then fine-tune (Liu et al. 2018).
- :class:`ProvenanceDefense`: flag data sources whose removal improves trusted accuracy
  (Baracaldo et al. 2017).
- :class:`PoisonDetector`: the template the detectors build on, and :class:`PoisonDefense`
  the preamble every defence shares (both in :mod:`bastion.defenses.poisoning.base`).
"""

from bastion.defenses.poisoning.activation_clustering import ActivationClustering
from bastion.defenses.poisoning.base import DetectionResult, PoisonDefense, PoisonDetector
from bastion.defenses.poisoning.fine_pruning import FinePruning
from bastion.defenses.poisoning.neural_cleanse import NeuralCleanse
from bastion.defenses.poisoning.provenance import ProvenanceDefense
from bastion.defenses.poisoning.spectral_signatures import SpectralSignatures
from bastion.defenses.poisoning.strip import STRIP

__all__ = [
    "STRIP",
    "ActivationClustering",
    "DetectionResult",
    "FinePruning",
    "NeuralCleanse",
    "PoisonDefense",
    "PoisonDetector",
    "ProvenanceDefense",
    "SpectralSignatures",
]
