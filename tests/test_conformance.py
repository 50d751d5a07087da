"""Run the public conformance suite over every public attack (evasion, poisoning, model
extraction, inference), estimator, poison detector, input preprocessor and detector of
adversarial inputs."""

import pytest

from bastion.testing import (
    ESTIMATOR_EXAMPLES,
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
    attack_checks,
    certificate_checks,
    certificate_problem,
    detector_checks,
    estimator_checks,
    extraction_checks,
    inference_checks,
    input_detector_checks,
    input_detector_problem,
    poison_problem,
    poisoning_checks,
    postprocessor_checks,
    postprocessor_problem,
    preprocessor_checks,
    preprocessor_problem,
    torch_problem,
)
from bastion.testing._attack_checks import default_attack_problem
from bastion.testing._extraction_checks import default_extraction_problem
from bastion.testing._inference_checks import default_inference_problem
from bastion.testing._poisoning_checks import default_poisoning_problem

# One table for the attack, detector and defence suites: how to find the classes, their
# checks, and the problem each class is checked on.
SUITES = {
    "attack": (all_attacks, attack_checks, default_attack_problem),
    "detector": (all_detectors, detector_checks, lambda cls: poison_problem()),
    "poisoning": (all_poisoning_attacks, poisoning_checks, default_poisoning_problem),
    "extraction": (all_extraction_attacks, extraction_checks, default_extraction_problem),
    "inference": (all_inference_attacks, inference_checks, default_inference_problem),
    "preprocessor": (all_preprocessors, preprocessor_checks, lambda cls: preprocessor_problem()),
    "postprocessor": (
        all_postprocessors,
        postprocessor_checks,
        lambda cls: postprocessor_problem(),
    ),
    "certificate": (all_certificates, certificate_checks, certificate_problem),
    "input_detector": (
        all_input_detectors,
        input_detector_checks,
        lambda cls: input_detector_problem(),
    ),
}
CASES = [
    (suite, cls, check)
    for suite, (find, checks, _) in SUITES.items()
    for cls in find()
    for check in checks(cls)
]


@pytest.mark.parametrize(
    ("suite", "cls", "check"),
    CASES,
    ids=[f"{s}-{c.__name__}-{k.__name__}" for s, c, k in CASES],
)
def test_conformance(suite, cls, check):
    check(cls, SUITES[suite][2](cls))


ESTIMATOR_CASES = [
    (f"{name}[{i}]", factory)
    for name, factories in ESTIMATOR_EXAMPLES.items()
    for i, factory in enumerate(factories)
]


@pytest.mark.parametrize(("name", "factory"), ESTIMATOR_CASES, ids=[n for n, _ in ESTIMATOR_CASES])
def test_estimator_conformance(name, factory):
    problem = factory()
    for check in estimator_checks(problem.estimator):
        check(problem)


def test_discovery_finds_everything_public():
    names = {cls.__name__ for cls in all_attacks()}
    assert {"FastGradientMethod", "ProjectedGradientDescent"} <= names
    assert "FGSM" not in names  # aliases are not counted twice
    assert {cls.__name__ for cls in all_estimators()} == set(ESTIMATOR_EXAMPLES)
    detectors = {cls.__name__ for cls in all_detectors()}
    assert detectors == {
        "ActivationClustering",
        "NeuralCleanse",
        "ProvenanceDefense",
        "STRIP",
        "SpectralSignatures",
    }  # FinePruning repairs a model and has no detect(x, y); the template is not counted
    assert {cls.__name__ for cls in all_poisoning_attacks()} == {
        "BackdoorAttack",
        "CleanLabelBackdoor",
        "FeatureCollision",
        "GradientMatching",
        "HiddenTriggerBackdoor",
        "SVMPoisoning",
    }  # neither the PoisoningAttack template nor the triggers
    assert {cls.__name__ for cls in all_extraction_attacks()} == {
        "CopycatCNN",
        "FunctionallyEquivalentExtraction",
        "JacobianAugmentation",
        "KnockoffNets",
    }  # the ExtractionAttack template is not counted
    assert {cls.__name__ for cls in all_inference_attacks()} == {
        "AttributeInferenceBaseline",
        "AttributeInferenceBlackBox",
        "AttributeInferenceWhiteBoxDecisionTree",
        "AttributeInferenceWhiteBoxLifestyleDecisionTree",
        "DatabaseReconstruction",
        "GapAttack",
        "LabelOnly",
        "LiRA",
        "LossThreshold",
        "MIFace",
        "RMIA",
        "ShadowModelAttack",
    }  # neither the membership templates nor image_augmentations
    assert {cls.__name__ for cls in all_preprocessors()} == {
        "FeatureSqueezing",
        "GaussianNoise",
        "JpegCompression",
        "RandomResizePad",
        "SpatialSmoothing",
        "ThermometerEncoding",
        "TotalVarianceMinimization",
    }  # the Preprocessor template is not counted
    assert {cls.__name__ for cls in all_input_detectors()} == {
        "BinaryActivationDetector",
        "BinaryInputDetector",
        "FeatureSqueezingDetector",
        "KernelDensityDetector",
        "LIDDetector",
        "MahalanobisDetector",
    }  # neither the InputDetector template nor GuardedClassifier
    assert {cls.__name__ for cls in all_postprocessors()} == {
        "GaussianNoise",
        "HighConfidence",
        "LabelsOnly",
        "ReverseSigmoid",
        "Rounding",
        "TopK",
    }  # the Postprocessor template is not counted


def test_gradient_checks_catch_a_wrong_gradient():
    """The finite-difference check must fail on an estimator whose gradient is wrong."""
    import copy

    from bastion.testing._estimator_checks import check_loss_gradient

    problem = torch_problem(dtype=__import__("torch").float64)
    broken = copy.deepcopy(problem.estimator)
    original = broken._loss_gradient
    broken._loss_gradient = lambda x, y, r: (
        (original(x, y, r)[0] * 1.1, *original(x, y, r)[1:]) if r else original(x, y, r) * 1.1
    )
    with pytest.raises(AssertionError):
        check_loss_gradient(
            type(problem)(broken, problem.x, problem.y, problem.x_train, problem.y_train)
        )


def test_budget_check_catches_an_attack_that_overshoots():
    from bastion.attacks.evasion import FGSM
    from bastion.testing._attack_checks import check_budget_and_bounds

    class Overshoot(FGSM):
        def _generate_batch(self, x, y, mask, generator, **per_sample):
            return (x + 2 * per_sample["eps"]).clamp(0, 1)

    with pytest.raises(AssertionError, match="eps"):
        check_budget_and_bounds(Overshoot, torch_problem())


def test_detector_checks_catch_a_broken_detector():
    """A detector that writes into its input, or returns scores for the wrong samples, or
    flags at random, fails the matching check."""
    import numpy as np

    from bastion.defenses.poisoning import SpectralSignatures
    from bastion.testing._detector_checks import (
        check_effective,
        check_input_not_mutated,
        check_result,
    )

    class Mutating(SpectralSignatures):
        def detect(self, x, y):
            x[:, :, 3:5, 3:5] = 0.5  # "sanitises" the centre in place
            return super().detect(x, y)

    class Shuffled(SpectralSignatures):
        def detect(self, x, y):
            result = super().detect(x, y)
            return result.replace(scores=result.scores[:-1], is_poison=result.is_poison * 1)

    class Blind(SpectralSignatures):
        def detect(self, x, y):
            result = super().detect(x, y)
            order = np.random.default_rng(0).permutation(len(result.scores))
            return result.replace(scores=result.scores[order], is_poison=result.is_poison[order])

    problem = poison_problem()
    with pytest.raises(AssertionError):
        check_input_not_mutated(Mutating, problem)
    with pytest.raises(AssertionError, match=r"is_poison|scores"):
        check_result(Shuffled, problem)
    with pytest.raises(AssertionError, match="poison"):
        check_effective(Blind, problem)


def test_poisoning_checks_catch_a_broken_attack():
    """An attack that changes samples outside its mask, writes into its input, or keeps the
    labels of a dirty-label poison fails the matching check."""
    from bastion.attacks.poisoning import BackdoorAttack
    from bastion.testing._poisoning_checks import (
        check_input_not_mutated,
        check_labels,
        check_result,
    )

    class Outside(BackdoorAttack):
        def poison(self, x, y):
            x_p, y_p, mask = super().poison(x, y)
            x_p = x_p.copy()
            x_p[~mask] = x_p[~mask] * 0.5  # also changes clean samples
            return x_p, y_p, mask

    class Mutating(BackdoorAttack):
        def poison(self, x, y):
            x[:, :, -2:, -2:] = 1.0  # stamps in place
            return super().poison(x, y)

    class KeepsLabels(BackdoorAttack):
        def poison(self, x, y):
            x_p, _, mask = super().poison(x, y)
            return x_p, y.copy() if hasattr(y, "copy") else y.clone(), mask

    problem = default_poisoning_problem(BackdoorAttack)
    with pytest.raises(AssertionError, match="outside the mask"):
        check_result(Outside, problem)
    with pytest.raises(AssertionError):
        check_input_not_mutated(Mutating, problem)
    with pytest.raises(AssertionError, match="labels"):
        check_labels(KeepsLabels, problem)


def test_extraction_checks_catch_a_broken_attack():
    """An attack that spends more queries than its budget, writes into the attacker's pool, or
    returns an untrained thief fails the matching check."""
    from bastion.attacks.extraction import CopycatCNN
    from bastion.testing._extraction_checks import (
        check_effective,
        check_input_not_mutated,
        check_query_budget,
    )

    class Overspends(CopycatCNN):
        def _extract(self, x_pool, generator, **kwargs):
            self._query(x_pool)  # "calibrates" on the whole pool first
            return super()._extract(x_pool, generator, **kwargs)

    class Mutating(CopycatCNN):
        def extract(self, x_pool, **kwargs):
            x_pool[0] = 0.0  # "normalises" the pool in place
            return super().extract(x_pool, **kwargs)

    class Lazy(CopycatCNN):
        def _extract(self, x_pool, generator, **kwargs):
            self._query(x_pool[: self.nb_queries])
            return self.thief  # never trained

    problem = default_extraction_problem(CopycatCNN)
    with pytest.raises(AssertionError, match="budget"):
        check_query_budget(Overspends, problem)
    with pytest.raises(AssertionError, match="x_pool was modified"):
        check_input_not_mutated(Mutating, problem)
    with pytest.raises(AssertionError, match="fidelity"):
        check_effective(Lazy, problem)


def test_inference_checks_catch_a_broken_attack():
    """An inference attack that writes into its input, returns scores for the wrong samples,
    draws fresh randomness whatever its seed, or scores every sample alike fails the matching
    check."""
    import numpy as np

    from bastion.attacks.inference import AttributeInferenceBaseline, LossThreshold
    from bastion.testing._inference_checks import (
        check_effective,
        check_input_not_mutated,
        check_result,
        check_seeded_determinism,
    )

    class Mutating(LossThreshold):
        def infer(self, x, y):
            x[:, 0] = 0.0  # "normalises" the candidates in place
            return super().infer(x, y)

    class Short(LossThreshold):
        def infer(self, x, y):
            return super().infer(x, y)[:-1]  # loses the last sample

    class Unseeded(AttributeInferenceBaseline):
        def infer(self, x):
            guess = super().infer(x)
            order = np.random.default_rng().permutation(len(guess))  # ignores random_state
            return guess[order]

    class Blind(LossThreshold):
        def infer(self, x, y):
            return np.zeros(len(y))  # the same score for every sample

    problem = default_inference_problem(LossThreshold)
    with pytest.raises(AssertionError, match="modified"):
        check_input_not_mutated(Mutating, problem)
    with pytest.raises(AssertionError, match="scores"):
        check_result(Short, problem)
    with pytest.raises(AssertionError, match="differ"):
        check_seeded_determinism(Unseeded, default_inference_problem(Unseeded))
    with pytest.raises(AssertionError, match="AUC"):
        check_effective(Blind, problem)


def test_preprocessor_checks_catch_a_broken_preprocessor():
    """A preprocessor that writes into its input, clips bad input silently, ignores its seed,
    or whose BPDA surrogate has the wrong gradient fails the matching check."""
    import torch

    from bastion.defenses.preprocessing import FeatureSqueezing, GaussianNoise
    from bastion.testing._preprocessor_checks import (
        check_bad_input,
        check_bpda_gradient,
        check_input_not_mutated,
        check_seeded_determinism,
    )

    class Mutating(FeatureSqueezing):
        def _apply(self, x):
            x.clamp_(0.1, 0.9)  # "sanitises" in place
            return super()._apply(x)

    class Clipping(FeatureSqueezing):
        def _check_input(self, t):
            pass  # clips whatever comes instead of refusing it

    class Unseeded(GaussianNoise):
        def _apply(self, x):
            return (x + self.sigma * torch.randn_like(x)).clamp(0, 1)  # the global stream

    class WrongSurrogate(FeatureSqueezing):
        def bpda(self, x):
            return x + 0.1 * (x - x.detach())  # the identity, with gradient 1.1

    problem = preprocessor_problem()
    with pytest.raises(AssertionError, match="modified"):
        check_input_not_mutated(Mutating, problem)
    with pytest.raises(AssertionError, match="InputError"):
        check_bad_input(Clipping, problem)
    with pytest.raises(AssertionError, match="seed"):
        check_seeded_determinism(Unseeded, problem)
    with pytest.raises(AssertionError, match="finite differences"):
        check_bpda_gradient(WrongSurrogate, problem)


def test_input_detector_checks_catch_a_broken_detector():
    """A detector that writes into its input, flags inputs its threshold does not, or scores
    at random fails the matching check."""
    import numpy as np
    import torch

    from bastion.defenses.detection import InputDetectionResult, MahalanobisDetector
    from bastion.testing._input_detector_checks import (
        check_effective,
        check_input_not_mutated,
        check_result,
    )

    class Mutating(MahalanobisDetector):
        def detect(self, x):
            x[:, :, :2] = 0.0  # "crops" the border in place
            return super().detect(x)

    class Inconsistent(MahalanobisDetector):
        def detect(self, x):
            res = super().detect(x)
            flags = res.scores > np.median(res.scores)  # not the threshold's decision
            return InputDetectionResult(res.scores, flags, res.threshold)

    class Blind(MahalanobisDetector):
        def _score_tensor(self, x):
            gen = torch.Generator().manual_seed(x.shape[0])
            return torch.rand(x.shape[0], generator=gen, dtype=torch.float64)

    problem = input_detector_problem()
    with pytest.raises(AssertionError, match="modified"):
        check_input_not_mutated(Mutating, problem)
    with pytest.raises(AssertionError, match="Arrays are not equal"):
        check_result(Inconsistent, problem)
    with pytest.raises(AssertionError, match="AUC"):
        check_effective(Blind, problem)


def _all_parametrized() -> list[type]:
    """Every public class of bastion whose parameters come from its signature."""
    import importlib
    import inspect
    import pkgutil

    import bastion
    from bastion._params import Parametrized

    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(bastion.__path__, prefix="bastion."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]) or ".cli" in info.name:
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if (
                inspect.isclass(obj)
                and issubclass(obj, Parametrized)
                and obj.__init__ is not object.__init__  # templates without parameters
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def test_parameter_glossary():
    """One spelling per idea across every public class (bastion._params.GLOSSARY): counts
    'nb_', restarts 'num_random_init', learning rates 'learning_rate', input-space steps
    'eps_step', starting points 'x_init'."""
    from bastion._params import glossary_violations

    classes = _all_parametrized()
    assert len(classes) >= 60
    bad = {
        cls.__name__: glossary_violations(cls._param_names())
        for cls in classes
        if glossary_violations(cls._param_names())
    }
    assert not bad, bad


# --------------------------------------------------------------------------- conformance specs


def _discovered() -> dict[str, type]:
    """Every class the suites discover, by ``"module:QualName"``."""
    finders = (
        all_attacks,
        all_detectors,
        all_extraction_attacks,
        all_inference_attacks,
        all_input_detectors,
        all_poisoning_attacks,
        all_postprocessors,
        all_preprocessors,
    )
    return {f"{c.__module__}:{c.__qualname__}": c for find in finders for c in find()}


def test_every_conformance_spec_names_a_public_class():
    """Each entry of the built-in table is a typed ConformanceSpec of a public class that the
    suites discover (no stale or misspelt name), and ``conformance_spec`` finds it."""
    import dataclasses
    import importlib

    from bastion.testing import ConformanceSpec, conformance_spec
    from bastion.testing._specs import _BUILTIN

    discovered = _discovered()
    assert len(_BUILTIN) >= 40
    for key, spec in _BUILTIN.items():
        module, _, name = key.partition(":")
        cls = getattr(importlib.import_module(module), name, None)
        assert cls is not None, f"{key}: no such class"
        assert discovered.get(key) is cls, f"{key}: not a public class the suites discover"
        assert type(spec) is ConformanceSpec, f"{key}: {type(spec).__name__}"
        assert conformance_spec(cls) is spec
        fields = {f.name for f in dataclasses.fields(ConformanceSpec)}
        assert set(vars(spec)) <= fields, f"{key}: {set(vars(spec)) - fields}"
    with pytest.raises(TypeError, match="bogus"):
        ConformanceSpec(bogus=1)  # a misspelt field cannot be given
    with pytest.raises(dataclasses.FrozenInstanceError):
        ConformanceSpec().note = "changed"
    with pytest.raises(ValueError, match="family"):
        ConformanceSpec(family="membershp")


def test_conformance_specs_are_looked_up_along_the_mro_and_registered():
    """A subclass is run like its parent; a registration overrides bastion's spec, is returned
    when replaced, and can be removed; a class with none gets the default spec."""
    from bastion.attacks.evasion import SimBA
    from bastion.testing import ConformanceSpec, conformance_spec, register_conformance

    class Sub(SimBA):
        pass

    assert conformance_spec(Sub) is conformance_spec(SimBA)
    assert conformance_spec(Sub).params["max_queries"] == 200
    own = ConformanceSpec(params={"max_queries": 10})
    assert register_conformance(Sub, own) is None
    try:
        assert conformance_spec(Sub) is own
        assert conformance_spec(Sub(None)) is own  # an instance stands for its class
        assert conformance_spec(SimBA).params["max_queries"] == 200
    finally:
        assert register_conformance(Sub, None) is own
    assert conformance_spec(Sub) is conformance_spec(SimBA)
    assert conformance_spec(object) == ConformanceSpec()
    with pytest.raises(TypeError, match="ConformanceSpec"):
        register_conformance(Sub, {"params": {}})


def test_no_library_class_declares_conformance_in_itself():
    """How the suites run a class lives in bastion.testing's registry, not in the class: no
    class of any bastion module has a ``_conformance`` attribute."""
    import importlib
    import inspect
    import pkgutil

    import bastion

    offenders = []
    for info in pkgutil.walk_packages(bastion.__path__, prefix="bastion."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__.startswith("bastion") and hasattr(obj, "_conformance"):
                offenders.append(f"{obj.__module__}.{obj.__qualname__}")
    assert not offenders, sorted(set(offenders))


def test_certificate_discovery_and_broken_certificates_are_caught():
    """Every certificate is found (not the trainers); a bound that is too tight, a
    certificate that writes into its input, and smoothing that ignores its seed each fail the
    matching check."""
    import numpy as np
    import torch

    from bastion.certification import CrownBounds, RandomizedSmoothing
    from bastion.testing._certificate_checks import (
        check_not_mutated,
        check_seeded_determinism,
        check_sound,
        relu_problem,
    )

    assert {cls.__name__ for cls in all_certificates()} == {
        "CrownBounds",
        "DerandomizedSmoothing",
        "IntervalBounds",
        "RandomizedSmoothing",
    }

    class TooTight(CrownBounds):
        def bounds(self, x, *, eps, norm="inf"):  # the logits at x: no room for the ball
            logits = self.estimator.logits(torch.as_tensor(x)).detach()
            return logits.numpy(), logits.numpy()

    class Mutating(CrownBounds):
        def bounds(self, x, *, eps, norm="inf"):
            out = super().bounds(x, eps=eps, norm=norm)
            x[..., 0, 0] = 0.5  # "normalises" a corner in place
            return out

    class Unseeded(RandomizedSmoothing):
        def certify(self, x, *, n0=100, n=10_000, alpha=0.001, batch_size=1000):
            pred, radius = super().certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size)
            return pred, radius + np.random.default_rng().random(len(radius)) * 1e-3

    problem = relu_problem()
    with pytest.raises(AssertionError, match="outside its bounds"):
        check_sound(TooTight, problem)
    with pytest.raises(AssertionError, match="modified"):
        check_not_mutated(Mutating, problem)
    with pytest.raises(AssertionError):
        check_seeded_determinism(Unseeded, torch_problem())
