"""Defences, organised like the threats they counter.

- :mod:`bastion.defenses.poisoning`: find poisoned training samples (activation clustering,
  spectral signatures).

Sub-packages are imported on demand (``from bastion.defenses.poisoning import ...``), so
importing :mod:`bastion.defenses` stays cheap.
"""
