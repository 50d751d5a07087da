"""Estimators: models of any framework behind one torch-speaking protocol."""

from bastion.estimators.base import (
    CAPABILITIES,
    Classifier,
    EstimatorWrapper,
    SupportsActivationGradient,
    SupportsActivationGradientAndPredict,
    SupportsActivations,
    SupportsActivationsAndPredict,
    SupportsClassGradient,
    SupportsClone,
    SupportsCloneFitAndPredict,
    SupportsFit,
    SupportsFitAndPredict,
    SupportsLogits,
    SupportsLossGradient,
    SupportsParameterGradient,
    SupportsPredict,
    SupportsPrune,
    require_capabilities,
)
from bastion.estimators.blackbox import BlackBoxClassifier
from bastion.estimators.defended import DefendedEstimator
from bastion.estimators.pytorch import TorchClassifier
from bastion.estimators.sklearn import SklearnClassifier
from bastion.estimators.wrappers import EOT, ExpectationOverTransformation

__all__ = [
    "CAPABILITIES",
    "EOT",
    "BlackBoxClassifier",
    "Classifier",
    "DefendedEstimator",
    "EstimatorWrapper",
    "ExpectationOverTransformation",
    "SklearnClassifier",
    "SupportsActivationGradient",
    "SupportsActivationGradientAndPredict",
    "SupportsActivations",
    "SupportsActivationsAndPredict",
    "SupportsClassGradient",
    "SupportsClone",
    "SupportsCloneFitAndPredict",
    "SupportsFit",
    "SupportsFitAndPredict",
    "SupportsLogits",
    "SupportsLossGradient",
    "SupportsParameterGradient",
    "SupportsPredict",
    "SupportsPrune",
    "TorchClassifier",
    "require_capabilities",
]
