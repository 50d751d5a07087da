"""Estimators: models of any framework behind one torch-speaking protocol."""

from typing import TYPE_CHECKING, Any

from bastion.estimators._trees import Tree, TreeEnsemble, ensemble_from_sklearn
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
from bastion.estimators.boosting import (
    CatBoostClassifier,
    LightGBMClassifier,
    XGBoostClassifier,
)
from bastion.estimators.defended import DefendedEstimator
from bastion.estimators.pytorch import TorchClassifier
from bastion.estimators.remote import RemoteClassifier
from bastion.estimators.sklearn import SklearnClassifier
from bastion.estimators.wrappers import EOT, ExpectationOverTransformation

if TYPE_CHECKING:  # imported on first use (__getattr__ below)
    from bastion.estimators.jax import JaxClassifier
    from bastion.estimators.keras import KerasClassifier
    from bastion.estimators.onnx import OnnxClassifier
    from bastion.estimators.tensorflow import TensorFlowClassifier

__all__ = [
    "CAPABILITIES",
    "EOT",
    "BlackBoxClassifier",
    "CatBoostClassifier",
    "Classifier",
    "DefendedEstimator",
    "EstimatorWrapper",
    "ExpectationOverTransformation",
    "JaxClassifier",
    "KerasClassifier",
    "LightGBMClassifier",
    "OnnxClassifier",
    "RemoteClassifier",
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
    "TensorFlowClassifier",
    "TorchClassifier",
    "Tree",
    "TreeEnsemble",
    "XGBoostClassifier",
    "ensemble_from_sklearn",
    "require_capabilities",
]


_LAZY = {
    "JaxClassifier": "bastion.estimators.jax",
    "KerasClassifier": "bastion.estimators.keras",
    "TensorFlowClassifier": "bastion.estimators.tensorflow",
}


def __getattr__(name: str) -> Any:
    # OnnxClassifier is imported on first use, so ``import bastion`` stays light (ONNX Runtime
    # itself is imported only when one is built).
    if name == "OnnxClassifier":
        from bastion.estimators.onnx import OnnxClassifier

        return OnnxClassifier
    # The classes of other frameworks are imported on first use too; their modules import
    # JAX, Keras or TensorFlow only when an estimator computes.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
