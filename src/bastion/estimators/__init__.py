"""Estimators: models of any framework behind one torch-speaking protocol."""

from typing import TYPE_CHECKING, Any

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
    SupportsTorchModule,
    SupportsTorchModuleAndPredict,
    require_capabilities,
)
from bastion.estimators.blackbox import BlackBoxClassifier
from bastion.estimators.defended import DefendedEstimator
from bastion.estimators.pytorch import TorchClassifier
from bastion.estimators.sklearn import SklearnClassifier
from bastion.estimators.wrappers import EOT, ExpectationOverTransformation

if TYPE_CHECKING:  # imported on first use (__getattr__ below)
    from bastion.estimators.onnx import OnnxClassifier

__all__ = [
    "CAPABILITIES",
    "EOT",
    "BlackBoxClassifier",
    "Classifier",
    "DefendedEstimator",
    "EstimatorWrapper",
    "ExpectationOverTransformation",
    "OnnxClassifier",
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
    "SupportsTorchModule",
    "SupportsTorchModuleAndPredict",
    "TorchClassifier",
    "require_capabilities",
]


def __getattr__(name: str) -> Any:
    # OnnxClassifier is imported on first use, so ``import bastion`` stays light (ONNX Runtime
    # itself is imported only when one is built).
    if name == "OnnxClassifier":
        from bastion.estimators.onnx import OnnxClassifier

        return OnnxClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
