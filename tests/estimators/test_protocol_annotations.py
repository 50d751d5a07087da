"""Attacks, defences and metrics annotate their estimators with the ``Supports*`` protocols
(not ``Any``), so that a type checker tells a user which capabilities each one needs; the
estimators bastion ships match the protocols of the capabilities they declare."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing

import numpy as np
import pytest
import torch

import bastion.estimators as est
from bastion.estimators import EOT, BlackBoxClassifier, TorchClassifier

#: Parameters that take an estimator.
ESTIMATOR_PARAMETERS = ("estimator", "victim", "thief")
#: Where ``Any`` stays: models no protocol describes (scikit-learn models read directly, a
#: black-box callable).
STILL_ANY = {
    "bastion.attacks.extraction.functionally_equivalent.FunctionallyEquivalentExtraction",
    "bastion.attacks.inference.attribute.AttributeInferenceWhiteBoxDecisionTree",
    "bastion.attacks.inference.attribute.AttributeInferenceWhiteBoxLifestyleDecisionTree",
    "bastion.attacks.inference.reconstruction.DatabaseReconstruction",
    "bastion.attacks.poisoning.svm.SVMPoisoning",
}


def _public_callables():
    for package in ("bastion.attacks", "bastion.defenses", "bastion.metrics"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                    continue
                if inspect.isclass(obj) or inspect.isfunction(obj):
                    yield f"{module.__name__}.{name}", obj


def test_estimator_parameters_are_annotated_with_protocols():
    unannotated = []
    checked = 0
    for qualname, obj in _public_callables():
        fn = obj.__init__ if inspect.isclass(obj) else obj
        if not inspect.isfunction(fn):
            continue
        hints = typing.get_type_hints(fn)  # every annotation resolves at run time
        for param in inspect.signature(fn).parameters:
            if param not in ESTIMATOR_PARAMETERS or param not in hints:
                continue
            checked += 1
            if hints[param] is typing.Any and qualname not in STILL_ANY:
                unannotated.append(f"{qualname}({param})")
    assert checked > 50
    assert not unannotated, unannotated


@pytest.mark.parametrize(
    "protocol",
    [getattr(est, name) for name in est.__all__ if name.startswith("Supports")],
    ids=lambda p: p.__name__,
)
def test_a_torch_classifier_matches_every_protocol(protocol):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    assert isinstance(clf, protocol)
    assert isinstance(EOT(clf, nb_samples=2), est.SupportsPredict)


def test_a_black_box_matches_the_predict_protocol():
    bb = BlackBoxClassifier(lambda x: np.full((len(x), 2), 0.5), input_shape=(3,), nb_classes=2)
    assert isinstance(bb, est.SupportsPredict)
