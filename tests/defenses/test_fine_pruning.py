"""Fine-Pruning: dormant channels go first, accuracy bound respected, backdoor weakened."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
from bastion.datasets import load_digits
from bastion.defenses.poisoning.fine_pruning import FinePruning
from bastion.estimators import SklearnClassifier, TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.metrics import attack_success_rate, clean_accuracy
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
    assert report["clean_accuracy_after"] >= 0.75  # measured 0.84 (0.976 before)
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
    with pytest.raises(EstimatorError, match="TorchClassifier"):
        FinePruning(sk).fit(x.reshape(10, -1), y)
