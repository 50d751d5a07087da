"""Estimators: models of any framework behind one torch-speaking protocol."""

from bastion.estimators.base import (
    CAPABILITIES,
    Classifier,
    SupportsActivations,
    SupportsClassGradient,
    SupportsFit,
    SupportsLossGradient,
    SupportsPredict,
    require_capabilities,
)
from bastion.estimators.blackbox import BlackBoxClassifier
from bastion.estimators.pytorch import TorchClassifier
from bastion.estimators.sklearn import SklearnClassifier
from bastion.estimators.wrappers import EOT, ExpectationOverTransformation

__all__ = [
    "CAPABILITIES",
    "EOT",
    "BlackBoxClassifier",
    "Classifier",
    "ExpectationOverTransformation",
    "SklearnClassifier",
    "SupportsActivations",
    "SupportsClassGradient",
    "SupportsFit",
    "SupportsLossGradient",
    "SupportsPredict",
    "TorchClassifier",
    "require_capabilities",
]
