"""Spectral signatures: closed-form scores, removal counts, and BadNets poison in the digits."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
from bastion.datasets import load_digits
from bastion.defenses.poisoning import DetectionResult
from bastion.defenses.poisoning.spectral_signatures import SpectralSignatures
from bastion.estimators import TorchClassifier
from bastion.exceptions import InputError, InvalidParameterError
from bastion.metrics.poisoning import detection_scores
from bastion.zoo import SmallCNN, train_classifier


def _identity_classifier(dim, nb_classes=2):
    net = torch.nn.Sequential(
        OrderedDict(feat=torch.nn.Identity(), out=torch.nn.Linear(dim, nb_classes))
    )
    return TorchClassifier(net, input_shape=(dim,), nb_classes=nb_classes, clip_values=None)


def _reference_scores(r: np.ndarray) -> np.ndarray:
    centred = r - r.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


@pytest.mark.parametrize("dim", [5, 60])  # more samples than features, and fewer
def test_scores_are_squared_projections_on_the_top_singular_vector(dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, dim, generator=g, dtype=torch.float64) * torch.linspace(1, 3, dim)
    y = torch.arange(80) % 2
    result = SpectralSignatures(_identity_classifier(dim), layer="feat").detect(x, y)
    for c in (0, 1):
        sel = (y == c).numpy()
        # the activations pass through float32
        ref = _reference_scores(x[sel].float().double().numpy())
        np.testing.assert_allclose(result.scores[sel], ref, rtol=1e-4, atol=1e-6)


def test_planted_outliers_are_removed_exactly():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=g)
    x[:10] += 6.0 * torch.tensor([1.0, -1, 1, -1, 1, -1, 1, -1])  # 10 of class 0, one direction
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    # 1.5 * eps * 100 = 10 removed per class
    det = SpectralSignatures(_identity_classifier(8), layer="feat", expected_poison_fraction=1 / 15)
    result = det.detect(x, y)
    assert isinstance(result, DetectionResult)
    assert result.is_poison[:100].tolist() == [True] * 10 + [False] * 90
    assert result.report[0]["n_flagged"] == result.report[1]["n_flagged"] == 10
    assert result.report[0]["threshold"] == pytest.approx(np.sort(result.scores[:100])[-10])
    # every class loses its share, clean ones included (the method's trade-off)
    assert result.is_poison[100:].sum() == 10


def test_removal_is_capped_at_the_class():
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(30) % 3
    det = SpectralSignatures(_identity_classifier(3, 3), layer="feat", expected_poison_fraction=1.0)
    assert det.detect(x, y).is_poison.all()


def test_bad_parameters_and_inputs():
    x, y = torch.randn(20, 3), torch.arange(20) % 2
    clf = _identity_classifier(3)
    for params, name in [
        ({"expected_poison_fraction": 0.0}, "expected_poison_fraction"),
        ({"expected_poison_fraction": 1.2}, "expected_poison_fraction"),
        ({"eps_multiplier": 0}, "eps_multiplier"),
        ({"batch_size": 0}, "batch_size"),
        ({"layer": True}, "layer"),
        ({"verbose": "yes"}, "verbose"),
    ]:
        with pytest.raises(InvalidParameterError, match=f"'{name}'"):
            SpectralSignatures(clf, **params).detect(x, y)
    with pytest.raises(InputError, match="labels"):
        SpectralSignatures(clf).detect(x, y[:3])
    with pytest.raises(InputError, match="y"):
        SpectralSignatures(clf).detect(x, None)


def test_catches_most_badnets_poison_on_digits():
    (x, y), _ = load_digits(size=8, random_state=0)
    attack = BackdoorAttack(
        PatchTrigger(size=2), target=7, source=[1], fraction=0.3, random_state=0
    )
    x_p, y_p, mask = attack.poison(x, y)  # 41 poisoned, 23% of the 7s
    model = SmallCNN(input_size=8, random_state=0)
    train_classifier(model, x_p, y_p, epochs=20, random_state=0)
    clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10)
    result = SpectralSignatures(clf, expected_poison_fraction=0.2).detect(x_p, y_p)
    s = detection_scores(result, mask)
    assert s["recall"] >= 0.75, s  # measured 0.88
    in_target = y_p == 7
    # within the target class the removed 30% are far richer in poison than chance (23%)
    assert detection_scores(result.is_poison[in_target], mask[in_target])["precision"] >= 0.6
    # poisoned samples score above the clean samples of their class
    assert np.median(result.scores[mask]) > np.median(result.scores[in_target & ~mask])
