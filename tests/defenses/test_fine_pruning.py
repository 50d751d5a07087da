"""Fine-Pruning: dormant channels go first, accuracy bound respected, backdoor weakened; the
work goes through the estimator protocol only and leaves the user's model as it was."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
from bastion.datasets import load_digits
from bastion.defenses.poisoning.fine_pruning import FinePruning
from bastion.estimators import SklearnClassifier, TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError, NotFittedError
from bastion.metrics import attack_success_rate, clean_accuracy
from bastion.testing._capability_view import CapabilityView
from bastion.zoo import SmallCNN, train_classifier

TARGET = 0


@pytest.fixture(scope="module")
def backdoored():
    (x, y), (x_te, y_te) = load_digits(size=8, random_state=0)
    attack = BackdoorAttack(PatchTrigger(size=2), target=TARGET, fraction=0.1, random_state=0)
    x_p, y_p, _ = attack.poison(x, y)
    model = SmallCNN(input_size=8, random_state=0)
    train_classifier(model, x_p, y_p, epochs=20, random_state=0)
    clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10)
    return clf, attack, x_te, y_te


def test_lowers_attack_success(backdoored):
    clf, attack, x_te, y_te = backdoored
    x_fit, y_fit, x_ev, y_ev = x_te[:200], y_te[:200], x_te[200:], y_te[200:]
    x_trig = attack.apply_trigger(x_ev[y_ev != TARGET])
    defence = FinePruning(clf, accuracy_drop=0.1, epochs=5, learning_rate=1e-2, random_state=0).fit(
        x_fit, y_fit
    )
    report = defence.evaluate(x_ev, y_ev, x_trig, TARGET)
    assert report["attack_success_before"] >= 0.95  # measured 0.99
    assert report["attack_success_after"] <= 0.4  # measured 0.08
    assert report["clean_accuracy_after"] >= 0.75  # measured 0.83 (0.976 before)
    assert defence.layer_ == "relu2"  # after the last convolution
    assert 0 < defence.prune_ratio_ <= 0.9
    assert defence.accuracy_pruned_ >= defence.accuracy_original_ - 0.1
    # the original model is untouched
    assert attack_success_rate(clf, x_trig, TARGET) == report["attack_success_before"]


def test_prunes_lowest_mean_activation_first_and_respects_the_drop(backdoored):
    clf, _, x_te, y_te = backdoored
    x_fit, y_fit = x_te[:200], y_te[:200]
    defence = FinePruning(clf, accuracy_drop=0.04, epochs=0).fit(x_fit, y_fit)
    acts = clf.get_activations(x_fit, "relu2").mean(axis=(0, 2, 3))
    k = len(defence.pruned_channels_)
    assert k == round(defence.prune_ratio_ * 64) and k > 0
    # the pruned channels are the k least active ones
    np.testing.assert_array_equal(
        np.sort(defence.pruned_channels_), np.sort(np.argsort(acts, kind="stable")[:k])
    )
    # within the allowed drop
    assert defence.accuracy_pruned_ >= defence.accuracy_original_ - 0.04
    assert defence.accuracy_fine_tuned_ == defence.accuracy_pruned_  # no fine-tuning
    pruned = defence.estimator_
    out = pruned.get_activations(x_fit[:5], "relu2")
    assert np.abs(out[:, defence.pruned_channels_]).max() == 0
    assert clean_accuracy(pruned, x_fit, y_fit) == pytest.approx(defence.accuracy_pruned_)


def test_errors():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=2)
    x, y = torch.rand(10, 1, 4, 4), torch.arange(10) % 2
    for params, name in [
        ({"accuracy_drop": 1.0}, "accuracy_drop"),
        ({"max_prune_ratio": 1.0}, "max_prune_ratio"),
        ({"epochs": -1}, "epochs"),
        ({"layer": False}, "layer"),
    ]:
        with pytest.raises(InvalidParameterError, match=f"'{name}'"):
            FinePruning(clf, **params).fit(x, y)
    with pytest.raises(InputError):
        FinePruning(clf).evaluate(x, y)
    with pytest.raises(InputError):
        FinePruning(clf, layer="nope").fit(x, y)
    from sklearn.linear_model import LogisticRegression

    sk = SklearnClassifier(LogisticRegression().fit(x.reshape(10, -1).numpy(), y.numpy()))
    with pytest.raises(EstimatorError, match="'prune'"):
        FinePruning(sk).fit(x.reshape(10, -1), y)


def _small_cnn(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 6, 3),
            act=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(24, 3),
        )
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


def _data(n: int = 60, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return x, torch.randint(0, 3, (n,), generator=g)


def test_works_through_exactly_the_declared_capabilities():
    """An estimator that offers only predict, activations, clone, prune and fit (and no
    model) gives the same defence as the TorchClassifier it views."""
    x, y = _data()
    params = {"accuracy_drop": 0.3, "epochs": 2, "batch_size": 16, "random_state": 0}
    clf = TorchClassifier(_small_cnn(), input_shape=(1, 4, 4), nb_classes=3)
    declared = FinePruning._estimator_requirements
    assert set(declared) == {"predict", "activations", "clone", "prune", "fit"}
    view = CapabilityView(clf, declared)
    direct = FinePruning(clf, **params).fit(x, y)
    seen = FinePruning(view, **params).fit(x, y)
    assert direct.layer_ == seen.layer_ == "act"  # the ReLU after the last convolution
    assert len(direct.pruned_channels_) > 0
    np.testing.assert_array_equal(seen.pruned_channels_, direct.pruned_channels_)
    assert seen.accuracy_fine_tuned_ == direct.accuracy_fine_tuned_
    assert isinstance(seen.estimator_, CapabilityView) and not hasattr(seen.estimator_, "model")
    torch.testing.assert_close(seen.estimator_.predict(x), direct.estimator_.predict(x))
    # the pruned channels stay at zero after fine-tuning
    act = seen.estimator_.get_activations(x, "act")
    assert float(act[:, seen.pruned_channels_].abs().sum()) == 0
    for missing in declared[1:]:
        with pytest.raises(EstimatorError, match=repr(missing)):
            FinePruning(CapabilityView(clf, set(declared) - {missing}), **params).fit(x, y)


def test_the_users_model_is_left_as_it_was():
    net = _small_cnn()
    net.act.eval()  # a mixed-mode model
    modes = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=3)
    x, y = _data()
    before = clf.predict(x)
    defence = FinePruning(clf, accuracy_drop=0.3, epochs=2, random_state=0).fit(x, y)
    assert len(defence.pruned_channels_) > 0
    assert [m.training for m in net.modules()] == modes
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    torch.testing.assert_close(clf.predict(x), before)
    assert not torch.allclose(defence.estimator_.predict(x), before)


def test_default_layer_from_the_layer_kinds():
    """The last convolution's activation; the convolution itself when no activation follows
    it; the penultimate layer without convolutions."""
    x, y = _data(30)
    clf = TorchClassifier(_small_cnn(), input_shape=(1, 4, 4), nb_classes=3)
    assert FinePruning(clf, epochs=0, accuracy_drop=0.5).fit(x, y).layer_ == "act"
    bare = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(1, 2, 3), norm=nn.BatchNorm2d(2), flat=nn.Flatten())
    )
    bare = nn.Sequential(bare, nn.Linear(8, 3))
    clf = TorchClassifier(bare, input_shape=(1, 4, 4), nb_classes=3)
    assert FinePruning(clf, epochs=0, accuracy_drop=0.5).fit(x, y).layer_ == "0.conv"
    dense = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3))
    clf = TorchClassifier(dense, input_shape=(1, 4, 4), nb_classes=3)
    defence = FinePruning(clf, epochs=0, accuracy_drop=0.5).fit(x, y)
    assert defence.layer_ == "2" and set(defence.pruned_channels_) <= set(range(5))


def test_bad_inputs_raise_typed_errors():
    clf = TorchClassifier(_small_cnn(), input_shape=(1, 4, 4), nb_classes=3)
    x, y = _data(20)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    cases = {
        "NaN in x": (nan, y),
        "wrong shape": (x[:, :, :3], y),
        "outside clip_values": (x + 2, y),
        "empty batch": (x[:0], y[:0]),
        "label out of range": (x, torch.where(torch.arange(20) == 0, 3, y)),
        "fractional labels": (x, y + 0.5),
        "labels not numeric": (x, np.array(["a"] * 20)),
        "wrong number of labels": (x, y[:5]),
        "no labels": (x, None),
    }
    for what, (xb, yb) in cases.items():
        with pytest.raises(InputError):
            FinePruning(clf, epochs=0).fit(xb, yb)
            pytest.fail(what)
    for layer in ("nope", 99):
        with pytest.raises(InputError, match="layer"):
            FinePruning(clf, layer=layer).fit(x, y)
    with pytest.raises(NotFittedError, match="fit"):
        FinePruning(clf).evaluate(x, y)
    with pytest.raises(EstimatorError, match="TorchClassifier"):
        FinePruning(clf.model).fit(x, y)
    defence = FinePruning(clf, epochs=0, accuracy_drop=0.5).fit(x, y)
    with pytest.raises(InputError, match="target"):
        defence.evaluate(x, y, x_triggered=x)
