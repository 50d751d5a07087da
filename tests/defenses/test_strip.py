"""STRIP: entropies on known models, the threshold rule, and BadNets inputs on the digits."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
from bastion.datasets import load_digits
from bastion.defenses.poisoning import DetectionResult
from bastion.defenses.poisoning.strip import STRIP
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.metrics import attack_success_rate
from bastion.zoo import SmallCNN, train_classifier

TARGET = 0


@pytest.fixture(scope="module")
def backdoored():
    """8x8 digits, 10% of every class but 0 patched (2x2, bottom right) and relabelled 0."""
    (x, y), (x_te, y_te) = load_digits(size=8, random_state=0)
    attack = BackdoorAttack(PatchTrigger(size=2), target=TARGET, fraction=0.1, random_state=0)
    x_p, y_p, _ = attack.poison(x, y)
    model = SmallCNN(input_size=8, random_state=0)
    train_classifier(model, x_p, y_p, epochs=20, random_state=0)
    clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10)
    return clf, attack, x_te, y_te


def _constant_classifier(bias, shape=(1, 4, 4)):
    """Ignores its input: the probabilities are softmax(bias) for every input."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(shape), len(bias)))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.as_tensor(bias))
    return TorchClassifier(net, input_shape=shape, nb_classes=len(bias))


def test_flags_triggered_inputs_at_a_low_false_rejection_rate(backdoored):
    clf, attack, x_te, y_te = backdoored
    x_hold, (x_eval, y_eval) = x_te[:150], (x_te[150:], y_te[150:])
    x_trig = attack.apply_trigger(x_eval[y_eval != TARGET])
    assert attack_success_rate(clf, x_trig, TARGET) >= 0.95  # the backdoor works (0.99)
    strip = STRIP(clf, nb_samples=20, false_rejection_rate=0.02, random_state=0).fit(x_hold)
    clean, trig = strip.detect(x_eval, y_eval), strip.detect(x_trig)
    assert isinstance(clean, DetectionResult) and clean.method == "STRIP"
    assert clean.is_poison.mean() <= 0.06  # measured 0.023 on 300 unseen clean inputs
    assert trig.is_poison.mean() >= 0.9  # measured 1.0
    assert np.median(trig.scores) > np.median(clean.scores)  # lower entropy when triggered
    assert sum(r["size"] for r in clean.report.values()) == x_eval.shape[0]
    # the paper's additive superimposition beats a dimming blend on this small patch
    blend = STRIP(clf, superimpose="blend", false_rejection_rate=0.02, random_state=0)
    assert blend.fit(x_hold).detect(x_trig).is_poison.mean() < 0.5


def test_entropy_of_a_constant_model_is_exact():
    bias = [2.0, 0.0, -1.0]
    p = torch.softmax(torch.tensor(bias, dtype=torch.float64), 0)
    expected = float(-(p * p.log()).sum())
    clf = _constant_classifier(bias)
    x = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    strip = STRIP(clf, nb_samples=5, random_state=0).fit(x)
    np.testing.assert_allclose(strip.clean_entropy_, expected, rtol=1e-5)
    result = strip.detect(x[:7].numpy())
    np.testing.assert_allclose(result.scores, -expected, rtol=1e-5)
    # zero spread: the threshold is the mean itself, nothing strictly below it
    assert not result.is_poison.any()


def test_threshold_is_the_normal_quantile_of_clean_entropies():
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 3
    clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=4)
    x = torch.rand(200, 1, 4, 4, generator=g)
    strip = STRIP(clf, nb_samples=10, false_rejection_rate=0.1, random_state=0).fit(x)
    ent = strip.clean_entropy_
    expected = NormalDist(float(ent.mean()), float(ent.std(ddof=1))).inv_cdf(0.1)
    assert strip.threshold_ == pytest.approx(expected, rel=1e-9)
    # detect on the calibration inputs with the same seed reproduces their entropies
    np.testing.assert_allclose(-strip.detect(x).scores, ent, rtol=1e-12)


def test_seeded_and_batch_size_invariant():
    g = torch.Generator().manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=3)
    x = torch.rand(40, 1, 4, 4, generator=g)
    a = STRIP(clf, batch_size=64, random_state=3).fit(x).detect(x[:23])
    b = STRIP(clf, batch_size=5, random_state=3).fit(x).detect(x[:23])
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    # one model call per batch holds all of its blends
    clf.reset_counts()
    STRIP(clf, nb_samples=7, batch_size=10, random_state=0).fit(x)
    assert clf.query_count == 40 * 7
    assert isinstance(STRIP(clf, random_state=0).fit(x).detect(x[:3]).scores, np.ndarray)


def test_bad_parameters_and_inputs():
    clf = _constant_classifier([0.0, 1.0])
    x = torch.rand(10, 1, 4, 4)
    for params, name in [
        ({"nb_samples": 0}, "nb_samples"),
        ({"alpha": 1.0}, "alpha"),
        ({"superimpose": "mix"}, "superimpose"),
        ({"false_rejection_rate": 0.0}, "false_rejection_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"random_state": -1}, "random_state"),
    ]:
        with pytest.raises(InvalidParameterError, match=f"'{name}'"):
            STRIP(clf, **params).fit(x)
    with pytest.raises(InputError, match="fit"):
        STRIP(clf).detect(x)
    with pytest.raises(InputError):
        STRIP(clf).fit(x[:1])
    with pytest.raises(InputError):
        STRIP(clf).fit(torch.rand(10, 1, 5, 5))
    with pytest.raises(EstimatorError):
        STRIP(torch.nn.Linear(2, 2)).fit(x)
    assert "nb_samples=5" in repr(STRIP(clf, nb_samples=5))
