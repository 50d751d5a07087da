"""The bad-input table over every public class: which objects it must cover (discovered), the
rows of each, and a runner for one class."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from bastion.testing._bad_inputs import BadInputCase

__all__ = ["bad_input_cases", "bad_input_owners", "bad_input_table", "check_bad_inputs"]


def _exported(module: str) -> list[Any]:
    mod = importlib.import_module(module)
    return [getattr(mod, name) for name in getattr(mod, "__all__", [])]


def _defence_objects() -> list[Any]:
    """The public classes of :mod:`bastion.defenses` that take data or wrap a model: the
    estimator wrappers, the pre- and postprocessors, the poison defences that are not detectors
    (Fine-Pruning) and the trainers; not the templates and result types."""
    from bastion.defenses.poisoning import (
        DetectionResult,
        PoisonDefense,
        PoisonDetector,
    )
    from bastion.defenses.postprocessing import Postprocessor
    from bastion.defenses.preprocessing import Preprocessor
    from bastion.defenses.training import TrainingEvaluation

    templates = {
        DetectionResult,
        PoisonDefense,
        PoisonDetector,
        Postprocessor,
        Preprocessor,
        TrainingEvaluation,
    }
    found = []
    for package in ("poisoning", "postprocessing", "preprocessing", "training"):
        for obj in _exported(f"bastion.defenses.{package}"):
            if obj in templates or (
                inspect.isclass(obj) and issubclass(obj, PoisonDetector)
            ):  # detectors: all_detectors
                continue
            found.append(obj)
    return found


def _certification_objects() -> list[Any]:
    """The public classes and functions of :mod:`bastion.certification` (certificates,
    ``verify``, certified trainers); not the result types."""
    from bastion.certification import (
        CertifiedTrainingEvaluation,
        SmoothingEvaluation,
        VerificationResult,
    )

    results = {CertifiedTrainingEvaluation, SmoothingEvaluation, VerificationResult}
    return [obj for obj in _exported("bastion.certification") if obj not in results]


def _metric_functions() -> list[Callable[..., Any]]:
    """The public functions of :mod:`bastion.metrics` and :mod:`bastion.metrics.privacy`."""
    found: dict[str, Any] = {}
    for module in ("bastion.metrics", "bastion.metrics.privacy"):
        for obj in _exported(module):
            if inspect.isfunction(obj):
                found[obj.__name__] = obj
    return [found[k] for k in sorted(found)]


def bad_input_owners() -> list[Any]:
    """Every public object the table must cover, discovered: the classes of
    :func:`~bastion.testing.all_attacks`, :func:`~bastion.testing.all_detectors`,
    :func:`~bastion.testing.all_poisoning_attacks`,
    :func:`~bastion.testing.all_extraction_attacks`,
    :func:`~bastion.testing.all_inference_attacks` and
    :func:`~bastion.testing.all_estimators`; the triggers of
    :mod:`bastion.attacks.poisoning`; the public classes and functions of
    :mod:`bastion.defenses` (wrappers, pre- and postprocessors, Fine-Pruning, the trainers);
    those of :mod:`bastion.certification` (certificates, ``verify``, certified trainers); the
    public metric functions."""
    from bastion.attacks.poisoning import Trigger
    from bastion.testing._discovery import (
        all_attacks,
        all_detectors,
        all_estimators,
        all_extraction_attacks,
        all_inference_attacks,
        all_poisoning_attacks,
    )

    found: list[Any] = []
    for find in (
        all_attacks,
        all_estimators,
        all_poisoning_attacks,
        all_detectors,
        all_extraction_attacks,
        all_inference_attacks,
    ):
        found += find()
    found += [
        obj
        for obj in _exported("bastion.attacks.poisoning")
        if inspect.isclass(obj) and issubclass(obj, Trigger) and obj is not Trigger
    ]
    found += _defence_objects()
    found += _certification_objects()
    found += _metric_functions()
    unique: dict[int, Any] = {id(obj): obj for obj in found}
    return list(unique.values())


def _builders() -> list[tuple[Callable[[Any], bool], Callable[[Any], list[BadInputCase]]]]:
    from bastion.attacks.base import EvasionAttack
    from bastion.attacks.poisoning import PoisoningAttack, Trigger
    from bastion.certification import (
        CrownBounds,
        CrownIBPTrainer,
        DerandomizedSmoothing,
        GaussianNoiseTrainer,
        IBPTrainer,
        IntervalBounds,
        RandomizedSmoothing,
        SmoothAdvTrainer,
        verify,
    )
    from bastion.defenses.poisoning import FinePruning, PoisonDetector
    from bastion.defenses.postprocessing import PostprocessedClassifier, Postprocessor
    from bastion.defenses.preprocessing import Preprocessor
    from bastion.defenses.training import (
        AdversarialTrainer,
        ConfidenceMasking,
        DPSGDTrainer,
        FastFGSMTrainer,
        FreeAdversarialTrainer,
        MadryPGDTrainer,
        MARTTrainer,
        TRADESTrainer,
        train_dp_sgd,
        train_label_smoothing,
    )
    from bastion.testing import _bad_inputs_bounds as bounds
    from bastion.testing import _bad_inputs_certified_training as certified_training
    from bastion.testing import _bad_inputs_defences as defences
    from bastion.testing import _bad_inputs_derandomized as derandomized
    from bastion.testing import _bad_inputs_detectors as detectors
    from bastion.testing import _bad_inputs_estimators as estimators_rows
    from bastion.testing import _bad_inputs_evasion as evasion
    from bastion.testing import _bad_inputs_metrics as metrics
    from bastion.testing import _bad_inputs_poisoning as poisoning
    from bastion.testing import _bad_inputs_privacy as privacy
    from bastion.testing import _bad_inputs_smoothing as smoothing
    from bastion.testing import _bad_inputs_training as training
    from bastion.testing._discovery import (
        all_estimators,
        all_extraction_attacks,
        all_inference_attacks,
    )

    estimators = set(all_estimators())
    metric_functions = set(_metric_functions())

    def subclass(base: type) -> Callable[[Any], bool]:
        return lambda obj: inspect.isclass(obj) and issubclass(obj, base)

    def subclass_of(*bases: type) -> Callable[[Any], bool]:
        return lambda obj: inspect.isclass(obj) and issubclass(obj, bases)

    return [
        (subclass(EvasionAttack), evasion.evasion_cases),
        (lambda obj: obj in estimators, estimators_rows.estimator_cases),
        (subclass(PoisoningAttack), poisoning.poisoning_cases),
        (subclass(Trigger), poisoning.trigger_cases),
        (subclass(PoisonDetector), detectors.detector_cases),
        (subclass(FinePruning), detectors.fine_pruning_cases),
        (lambda obj: obj in set(all_extraction_attacks()), privacy.extraction_cases),
        (lambda obj: obj in set(all_inference_attacks()), privacy.inference_cases),
        (subclass(Postprocessor), defences.postprocessor_cases),
        (subclass(Preprocessor), defences.preprocessor_cases),
        (lambda obj: obj in (PostprocessedClassifier, ConfidenceMasking), defences.wrapper_cases),
        (
            lambda obj: obj in (DPSGDTrainer, train_dp_sgd, train_label_smoothing),
            defences.trainer_cases,
        ),
        (
            subclass_of(
                AdversarialTrainer,
                FastFGSMTrainer,
                FreeAdversarialTrainer,
                MadryPGDTrainer,
                MARTTrainer,
                TRADESTrainer,
            ),
            training.adversarial_trainer_cases,
        ),
        (subclass(RandomizedSmoothing), smoothing.smoothing_cases),
        (subclass_of(GaussianNoiseTrainer, SmoothAdvTrainer), smoothing.smoothing_trainer_cases),
        (subclass(DerandomizedSmoothing), derandomized.derandomized_cases),
        (subclass_of(IntervalBounds, CrownBounds), bounds.bounds_cases),
        (lambda obj: obj is verify, bounds.verify_cases),
        (subclass_of(IBPTrainer, CrownIBPTrainer), certified_training.certified_trainer_cases),
        (lambda obj: inspect.isfunction(obj) and obj in metric_functions, metrics.metric_cases),
    ]


def bad_input_cases(obj: Any) -> list[BadInputCase]:
    """The rows of the bad-input table for one public class or metric function.

    Parameters
    ----------
    obj : type or callable
        An evasion attack, estimator, poisoning attack, trigger, poison detector or defence,
        extraction or inference attack class, or a metric function of :mod:`bastion.metrics`.
        A subclass of a bastion template (e.g. your own evasion attack) gets its family's
        rows.

    Returns
    -------
    list of BadInputCase
        Empty when the table has no rows for ``obj``.
    """
    for applies, build in _builders():
        if applies(obj):
            return build(obj)
    return []


def bad_input_table() -> list[BadInputCase]:
    """Every row of the bad-input table, over :func:`bad_input_owners`."""
    return [case for obj in bad_input_owners() for case in bad_input_cases(obj)]


def check_bad_inputs(obj: Any) -> int:
    """Run every row of ``obj`` (see :func:`bad_input_cases`); return the number of rows run.

    Raises
    ------
    AssertionError
        Naming the first row whose outcome differs from the expected one.

    Examples
    --------
    >>> from bastion.defenses.postprocessing import Rounding
    >>> from bastion.testing import check_bad_inputs
    >>> check_bad_inputs(Rounding) > 10
    True
    """
    cases = bad_input_cases(obj)
    for case in cases:
        case.run()
    return len(cases)
