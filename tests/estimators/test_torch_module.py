"""The ``module`` capability: the estimator's model as a torch module of raw inputs."""

from __future__ import annotations

import torch
from torch import nn

from bastion.defenses.preprocessing import FeatureSqueezing
from bastion.estimators import (
    CAPABILITIES,
    EOT,
    BlackBoxClassifier,
    DefendedEstimator,
    SupportsTorchModule,
    TorchClassifier,
)
from bastion.testing._capability_view import CapabilityView


def _clf(**kw) -> TorchClassifier:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    return TorchClassifier(net, input_shape=(4,), nb_classes=3, **kw)


def test_module_is_a_declared_capability():
    assert "module" in CAPABILITIES
    clf = _clf()
    assert "module" in clf.capabilities
    assert isinstance(clf, SupportsTorchModule)


def test_without_preprocessing_the_module_is_the_model():
    clf = _clf()
    assert clf.torch_module() is clf.model


def test_with_preprocessing_the_module_normalises_and_shares_the_parameters():
    clf = _clf(preprocessing=([0.1, 0.2, 0.3, 0.4], 0.5))
    module = clf.torch_module()
    x = torch.rand(5, 4)
    torch.testing.assert_close(module(x), clf.logits(x))
    assert [p for p in module.parameters()] == [p for p in clf.model.parameters()]
    assert set(module.state_dict()) == {f"model.{k}" for k in clf.model.state_dict()}
    # Training the module trains the estimator.
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    module(x).sum().backward()
    opt.step()
    torch.testing.assert_close(module(x), clf.logits(x))


def test_wrappers_do_not_forward_the_module():
    clf = _clf(clip_values=(0, 1))
    defended = DefendedEstimator(clf, preprocessors=[FeatureSqueezing(bit_depth=4)])
    black = BlackBoxClassifier(lambda x: clf.predict(x), input_shape=(4,), nb_classes=3)
    for wrapper in (defended, EOT(clf, nb_samples=2), black):
        assert "module" not in wrapper.capabilities, type(wrapper).__name__


def test_a_capability_view_offers_the_module_only_when_asked():
    clf = _clf()
    assert CapabilityView(clf, ["predict", "module"]).torch_module() is clf.model
    assert "module" not in CapabilityView(clf, ["predict"]).capabilities
