"""Poison Frogs! feature collision (Shafahi et al. 2018): forward-backward splitting brings the
poison's features onto the target's, and last-layer fine-tuning then pulls the target to the
base class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning.feature_collision import FeatureCollision
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InvalidParameterError
from bastion.zoo import SmallCNN, train_classifier

BASE, TARGET = 8, 3


@pytest.fixture(scope="module")
def setup():
    (x_tr, y_tr), (x_te, y_te) = load_digits(size=8, random_state=0)
    model = train_classifier(
        SmallCNN(input_size=8, random_state=0), x_tr, y_tr, epochs=15, random_state=0
    )
    clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10)
    return clf, (x_tr, y_tr), (x_te, y_te)


def _features(clf, x):
    return torch.as_tensor(clf.get_activations(x, "relu3"))


def _finetune_last_layer(clf, feats, labels):
    """Transfer learning: retrain only fc2 on fixed features (seeded, deterministic)."""
    lin = torch.nn.Linear(128, 10)
    with torch.no_grad():
        lin.weight.copy_(clf.model.fc2.weight)
        lin.bias.copy_(clf.model.fc2.bias)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(feats), labels).backward()
        opt.step()
    return lin


def test_features_collide_and_the_target_moves_to_the_base_class(setup):
    """Measured over 4 seeded (target, 5 bases) draws: poison-to-target / base-to-target
    feature distance 0.02-0.06; target classified as the base class in 2/4 runs, and its
    base-class probability after fine-tuning up from 4e-7..0.06 (clean) to 0.02..0.83."""
    clf, (x_tr, y_tr), (x_te, y_te) = setup
    f_train = _features(clf, x_tr)
    labels = torch.as_tensor(y_tr)
    bases_all, targets_all = x_tr[y_tr == BASE], x_te[y_te == TARGET]
    hits, lifts = 0, []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        target = targets_all[rng.integers(len(targets_all))]
        bases = bases_all[rng.choice(len(bases_all), 5, replace=False)]
        attack = FeatureCollision(
            clf, target, layer="relu3", beta=1.0, learning_rate=0.1, max_iter=300
        )
        x_p, y_p, mask = attack.poison(bases, np.full(5, BASE))
        assert mask.all() and np.all(y_p == BASE)
        assert x_p.min() >= 0 and x_p.max() <= 1
        f_t, f_b, f_p = (_features(clf, a) for a in (target[None], bases, x_p))
        ratio = (f_p - f_t).norm(dim=1) / (f_b - f_t).norm(dim=1)
        assert ratio.max() < 0.15, ratio
        np.testing.assert_allclose(attack.feature_distance_, (f_p - f_t).norm(dim=1), rtol=1e-3)
        lin = _finetune_last_layer(
            clf, torch.cat([f_train, f_p]), torch.cat([labels, torch.full((5,), BASE)])
        )
        lin0 = _finetune_last_layer(clf, f_train, labels)
        with torch.no_grad():
            p, p0 = lin(f_t).softmax(1)[0], lin0(f_t).softmax(1)[0]
        hits += int(p.argmax() == BASE)
        lifts.append(float(p[BASE] / p0[BASE]))
    assert hits >= 1 and min(lifts) > 5, (hits, lifts)


def test_proximal_step_known_answer_for_identity_features():
    """With f = identity (features = input), the paper's splitting (forward step on
    ||p - t||^2, backward step (x + lr beta b) / (1 + lr beta)) has the fixed point
    (2 t + beta b) / (2 + beta), the minimiser of ||p - t||^2 + beta / 2 ||p - b||^2."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity(), torch.nn.Linear(4, 2))
    clf = TorchClassifier(net, input_shape=(1, 2, 2), nb_classes=2, clip_values=(0.0, 1.0))
    g = torch.Generator().manual_seed(0)
    base, target = torch.rand(3, 1, 2, 2, generator=g), torch.rand(1, 2, 2, generator=g)
    beta = 0.5
    attack = FeatureCollision(
        clf, target, layer="1", beta=beta, learning_rate=0.3, max_iter=500, tol=0.0
    )
    x_p, _, _ = attack.poison(base, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(x_p, (2 * target + beta * base) / (2 + beta), atol=1e-4, rtol=0)
    # watermarking: the base becomes (1 - o) b + o t
    wm = FeatureCollision(
        clf, target, layer="1", beta=1e6, opacity=0.3, learning_rate=1e-3, max_iter=3
    ).poison(base, torch.zeros(3, dtype=torch.long))[0]
    torch.testing.assert_close(wm, 0.7 * base + 0.3 * target, atol=1e-3, rtol=0)


def test_deterministic_and_types(setup):
    clf, (x_tr, y_tr), (x_te, _) = setup
    bases = x_tr[y_tr == BASE][:3]
    make = lambda: FeatureCollision(  # noqa: E731
        clf,
        x_te[0],
        layer="relu3",
        beta=1.0,
        learning_rate=0.1,
        max_iter=20,
    )
    a, b = make().poison(bases, np.full(3, BASE)), make().poison(bases, np.full(3, BASE))
    np.testing.assert_array_equal(a[0], b[0])
    assert isinstance(a[0], np.ndarray) and a[0].dtype == np.float32 and a[2].dtype == np.bool_
    out = make().poison(torch.from_numpy(bases).double(), torch.full((3,), BASE))
    assert isinstance(out[0], torch.Tensor) and out[0].dtype == torch.float64
    assert isinstance(out[2], torch.Tensor) and bool(out[2].all())


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"beta": -1.0}, "beta"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"max_iter": -1}, "max_iter"),
        ({"decay": 1.0}, "decay"),
        ({"opacity": 1.0}, "opacity"),
        ({"layer": "nope"}, "layer"),
        ({"layer": 99}, "layer"),
        ({"layer": 1.5}, "layer"),
        ({"target": np.zeros((2, 1, 8, 8))}, "target"),
        ({"target": "cat"}, "target"),
        ({"target": np.full((1, 8, 8), 2.0)}, "target"),  # outside clip_values
    ],
)
def test_bad_parameters_name_the_parameter(setup, params, name):
    clf, (x_tr, y_tr), (x_te, _) = setup
    kw = {"target": x_te[0], "max_iter": 1}
    kw.update(params)
    with pytest.raises(InvalidParameterError, match=f"'{name}'"):
        FeatureCollision(clf, **kw).poison(x_tr[:2], y_tr[:2])


def test_needs_a_feature_estimator(setup):
    _, (x_tr, y_tr), (x_te, _) = setup
    with pytest.raises(EstimatorError):
        FeatureCollision(torch.nn.Linear(2, 2), x_te[0]).poison(x_tr[:2], y_tr[:2])
