"""Defences, organised like the threats they counter.

- :mod:`bastion.defenses.poisoning`: find poisoned training samples and repair backdoored
  models (activation clustering, spectral signatures, STRIP, Neural Cleanse, Fine-Pruning,
  provenance).
- :mod:`bastion.defenses.postprocessing`: output perturbations that make model stealing
  expensive (reverse sigmoid, rounding, top-k, labels only, noise).
- :mod:`bastion.defenses.training`: DP-SGD through Opacus, label smoothing, confidence masking.

Sub-packages are imported on demand (``from bastion.defenses.poisoning import ...``), so
importing :mod:`bastion.defenses` stays cheap.
"""
