"""Find every public attack, estimator, poison detector, preprocessor, postprocessor and
detector of adversarial inputs."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from bastion._params import Parametrized
from bastion.attacks.base import (
    Attack,
    EvasionAttack,
    FixedBudgetAttack,
    MinimumNormAttack,
)
from bastion.attacks.extraction._base import ExtractionAttack
from bastion.attacks.poisoning._base import PoisoningAttack
from bastion.attacks.query import QueryAttack
from bastion.defenses.detection import InputDetector
from bastion.defenses.poisoning.base import PoisonDetector
from bastion.defenses.postprocessing import Postprocessor
from bastion.defenses.preprocessing import Preprocessor
from bastion.estimators.base import Classifier, EstimatorWrapper

_TEMPLATES = {
    Attack,
    EvasionAttack,
    ExtractionAttack,
    FixedBudgetAttack,
    MinimumNormAttack,
    QueryAttack,
    InputDetector,
    PoisonDetector,
    PoisoningAttack,
    Postprocessor,
    EstimatorWrapper,
    Preprocessor,
}


def _public_classes(package: str, base: type) -> list[type]:
    pkg = importlib.import_module(package)
    modules = [pkg]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        modules.append(importlib.import_module(info.name))
    found: dict[str, type] = {}
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if (
                inspect.isclass(obj)
                and issubclass(obj, base)
                and obj not in _TEMPLATES
                and obj is not Classifier
                and not inspect.isabstract(obj)
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj  # aliases collapse here
    return [found[k] for k in sorted(found)]


def all_attacks() -> list[type[Attack]]:
    """Every public attack class of ``bastion.attacks`` (aliases counted once)."""
    return _public_classes("bastion.attacks", Attack)


def all_estimators() -> list[type[Classifier]]:
    """Every public estimator class of ``bastion.estimators``."""
    return _public_classes("bastion.estimators", Classifier)


def all_detectors() -> list[type[PoisonDetector]]:
    """Every public poison detector class of ``bastion.defenses.poisoning`` (subclasses of
    :class:`~bastion.defenses.poisoning.PoisonDetector` with ``detect(x, y)``)."""
    return _public_classes("bastion.defenses.poisoning", PoisonDetector)


def all_poisoning_attacks() -> list[type[PoisoningAttack]]:
    """Every public poisoning attack class of ``bastion.attacks.poisoning`` (subclasses of
    :class:`~bastion.attacks.poisoning.PoisoningAttack` with ``poison(x, y)``; triggers are
    not attacks, the template is not counted)."""
    return _public_classes("bastion.attacks.poisoning", PoisoningAttack)


def all_extraction_attacks() -> list[type]:
    """Every public model-extraction attack class of ``bastion.attacks.extraction`` (each with
    ``extract(x_pool)``: the :class:`~bastion.attacks.extraction.ExtractionAttack` subclasses
    and :class:`~bastion.attacks.extraction.FunctionallyEquivalentExtraction`; the template is
    not counted)."""
    return _public_classes("bastion.attacks.extraction", Parametrized)


def all_inference_attacks() -> list[type]:
    """Every public inference attack class of ``bastion.attacks.inference``: membership
    inference, attribute inference, model inversion and reconstruction (the membership
    templates are not counted)."""
    return _public_classes("bastion.attacks.inference", Parametrized)


def all_preprocessors() -> list[type[Preprocessor]]:
    """Every public input preprocessor class of ``bastion.defenses.preprocessing``
    (subclasses of :class:`~bastion.defenses.preprocessing.Preprocessor`; the template is
    not counted)."""
    return _public_classes("bastion.defenses.preprocessing", Preprocessor)


def all_input_detectors() -> list[type[InputDetector]]:
    """Every public detector of adversarial inputs of ``bastion.defenses.detection``
    (subclasses of :class:`~bastion.defenses.detection.InputDetector`; the template is not
    counted)."""
    return _public_classes("bastion.defenses.detection", InputDetector)


def all_postprocessors() -> list[type[Postprocessor]]:
    """Every public output postprocessor class of ``bastion.defenses.postprocessing``
    (subclasses of :class:`~bastion.defenses.postprocessing.Postprocessor`; the template is
    not counted)."""
    return _public_classes("bastion.defenses.postprocessing", Postprocessor)


def all_certificates() -> list[type]:
    """Every public certificate class of ``bastion.certification``: those with
    ``bounds(x, ...)`` (bound propagation) or ``certify(x, ...)`` (randomized and
    derandomized smoothing); the certified trainers are trainers, not certificates."""
    return [
        cls
        for cls in _public_classes("bastion.certification", Parametrized)
        if callable(getattr(cls, "bounds", None)) or callable(getattr(cls, "certify", None))
    ]
