"""The public conformance suite.

Every public attack (evasion, poisoning, model extraction and inference: membership,
attribute inference, model inversion, reconstruction), estimator, poison detector, input
preprocessor, detector of adversarial inputs and certificate (bound propagation, randomized
and derandomized smoothing) is discovered automatically and run through
the same generic checks: API conventions, budget and bounds (or query budgets) respected,
inputs not mutated, type/device/dtype preserved, seeded determinism, batch-size invariance,
clear errors on bad input, finite-difference checks of gradients, detection of known poison,
fidelity of stolen models, known answers of inference attacks (members told from
non-members, hidden attributes and missing records recovered), and the ROC AUC of detectors
of adversarial inputs and the guard they build, and the soundness of certificates against
sampled and attacked points. A new attack, defence or detector gets them
for free; a class skips a check only with a written reason.

How the suites build and run a class (fast parameters, a factory, its problem, the checks it
skips and why) is a typed :class:`ConformanceSpec`, kept in a registry beside the suite, not
in the library classes: :func:`conformance_spec` looks one up, :func:`register_conformance`
gives one to a class of your own, e.g.
``register_conformance(MyAttack, ConformanceSpec(skip={"check_name": "why"}))``.

The bad-input table (:func:`bad_input_table`, :func:`bad_input_cases`,
:func:`check_bad_inputs`) feeds every public class bad data, bad labels, bad models and bad
use, row by row, each with its expected outcome: one bastion error, a warning, or a result
with a stated property (float64 in, float64 out, bit-identical where unchanged, ...).

Examples
--------
>>> from bastion.attacks.evasion import FGSM
>>> from bastion.testing import check_attack
>>> "check_budget_and_bounds" in check_attack(FGSM)
True
"""

from bastion.testing._attack_checks import attack_checks, check_attack, conformance_params
from bastion.testing._bad_input_table import (
    bad_input_cases,
    bad_input_owners,
    bad_input_table,
    check_bad_inputs,
)
from bastion.testing._bad_inputs import BadInputCase, Outcome, raises, warns, works
from bastion.testing._certificate_checks import (
    certificate_checks,
    certificate_problem,
    check_certificate,
    patch_problem,
    relu_problem,
)
from bastion.testing._detector_checks import check_detector, detector_checks, detector_params
from bastion.testing._discovery import (
    all_attacks,
    all_certificates,
    all_detectors,
    all_estimators,
    all_extraction_attacks,
    all_inference_attacks,
    all_input_detectors,
    all_poisoning_attacks,
    all_postprocessors,
    all_preprocessors,
)
from bastion.testing._estimator_checks import check_estimator, estimator_checks
from bastion.testing._extraction_checks import (
    check_extraction_attack,
    extraction_checks,
    extraction_params,
)
from bastion.testing._inference_checks import (
    check_inference_attack,
    inference_checks,
    inference_params,
)
from bastion.testing._input_detector_checks import (
    InputDetectorProblem,
    check_input_detector,
    input_detector_checks,
    input_detector_params,
    input_detector_problem,
)
from bastion.testing._poisoning_checks import (
    check_poisoning_attack,
    poisoning_checks,
    poisoning_params,
)
from bastion.testing._preprocessor_checks import (
    PreprocessorProblem,
    check_preprocessor,
    postprocessor_checks,
    postprocessor_problem,
    preprocessor_checks,
    preprocessor_params,
    preprocessor_problem,
)
from bastion.testing._problems import (
    ESTIMATOR_EXAMPLES,
    ExtractionProblem,
    InferenceProblem,
    PoisoningProblem,
    PoisonProblem,
    Problem,
    attribute_problem,
    blackbox_problem,
    extraction_problem,
    inversion_problem,
    membership_problem,
    poison_problem,
    poisoning_problem,
    reconstruction_problem,
    relu_extraction_problem,
    sklearn_problem,
    svm_poisoning_problem,
    torch_problem,
)
from bastion.testing._specs import ConformanceSpec, conformance_spec, register_conformance

__all__ = [
    "ESTIMATOR_EXAMPLES",
    "BadInputCase",
    "ConformanceSpec",
    "ExtractionProblem",
    "InferenceProblem",
    "InputDetectorProblem",
    "Outcome",
    "PoisonProblem",
    "PoisoningProblem",
    "PreprocessorProblem",
    "Problem",
    "all_attacks",
    "all_certificates",
    "all_detectors",
    "all_estimators",
    "all_extraction_attacks",
    "all_inference_attacks",
    "all_input_detectors",
    "all_poisoning_attacks",
    "all_postprocessors",
    "all_preprocessors",
    "attack_checks",
    "attribute_problem",
    "bad_input_cases",
    "bad_input_owners",
    "bad_input_table",
    "blackbox_problem",
    "certificate_checks",
    "certificate_problem",
    "check_attack",
    "check_bad_inputs",
    "check_certificate",
    "check_detector",
    "check_estimator",
    "check_extraction_attack",
    "check_inference_attack",
    "check_input_detector",
    "check_poisoning_attack",
    "check_preprocessor",
    "conformance_params",
    "conformance_spec",
    "detector_checks",
    "detector_params",
    "estimator_checks",
    "extraction_checks",
    "extraction_params",
    "extraction_problem",
    "inference_checks",
    "inference_params",
    "input_detector_checks",
    "input_detector_params",
    "input_detector_problem",
    "inversion_problem",
    "membership_problem",
    "patch_problem",
    "poison_problem",
    "poisoning_checks",
    "poisoning_params",
    "poisoning_problem",
    "postprocessor_checks",
    "postprocessor_problem",
    "preprocessor_checks",
    "preprocessor_params",
    "preprocessor_problem",
    "raises",
    "reconstruction_problem",
    "register_conformance",
    "relu_extraction_problem",
    "relu_problem",
    "sklearn_problem",
    "svm_poisoning_problem",
    "torch_problem",
    "warns",
    "works",
]
