"""Defences, organised like the threats they counter.

- :mod:`bastion.defenses.preprocessing`: input transformations against evasion (feature
  squeezing, median smoothing, JPEG, thermometer encoding, total-variance minimisation, noise,
  random resize and pad), applied by :class:`bastion.estimators.DefendedEstimator`.
- :mod:`bastion.defenses.detection`: detectors of adversarial inputs (Mahalanobis, LID,
  feature squeezing, kernel density, binary input/activation classifiers) and the guarded
  classifier with a "rejected" class for adaptive attacks.
- :mod:`bastion.defenses.poisoning`: find poisoned training samples and repair backdoored
  models (activation clustering, spectral signatures, STRIP, Neural Cleanse, Fine-Pruning,
  provenance).
- :mod:`bastion.defenses.postprocessing`: output perturbations that make model stealing
  expensive (reverse sigmoid, rounding, top-k, high confidence, labels only, noise).
- :mod:`bastion.defenses.training`: DP-SGD through Opacus, label smoothing, confidence masking.

Sub-packages are imported on demand (``from bastion.defenses.poisoning import ...``), so
importing :mod:`bastion.defenses` stays cheap.
"""
