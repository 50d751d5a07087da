"""Shadow-model and label-only membership inference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from bastion.attacks.inference.label_only import LabelOnly
from bastion.attacks.inference.shadow import ShadowModelAttack
from bastion.estimators import SklearnClassifier
from bastion.exceptions import InputError, InvalidParameterError
from bastion.metrics.privacy import roc_auc


def train_mlp(x, y, random_state):
    model = MLPClassifier(
        (64,), alpha=1e-6, max_iter=200, tol=1e-6, n_iter_no_change=200, random_state=random_state
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(x), np.asarray(y))
    return SklearnClassifier(model, clip_values=(0.0, 1.0))


@pytest.fixture(scope="module")
def problem():
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order].copy()
    flip = rng.random(len(x)) < 0.1  # mislabelled points: what a model memorises
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    member = np.zeros(600, dtype=bool)
    member[:300] = True
    target = train_mlp(x[:300], y[:300], 12345)
    return {
        "x": x[:600],
        "y": y[:600],
        "member": member,
        "target": target,
        "x_shadow": x[600:1200],
        "y_shadow": y[600:1200],
    }


@pytest.mark.parametrize("mode", ["per_class", "global"])
def test_shadow_models_find_members(problem, mode):
    attack = ShadowModelAttack(
        problem["target"],
        shadow_trainer=train_mlp,
        nb_shadow_models=6,
        attack_model=mode,
        random_state=0,
    )
    attack.fit(problem["x_shadow"], problem["y_shadow"])
    assert len(attack.shadow_models_) == 6
    keys = set(attack.attack_models_)
    assert keys == ({"global"} if mode == "global" else set(range(10)))
    scores = attack.infer(problem["x"], problem["y"])
    assert ((scores >= 0) & (scores <= 1)).all()
    auc = roc_auc(scores, problem["member"])
    print(mode, "AUC", round(auc, 3))
    assert auc > 0.55


def test_shadow_errors(problem):
    x, y = problem["x"][:10], problem["y"][:10]
    with pytest.raises(InputError, match="fitted"):
        ShadowModelAttack(problem["target"], shadow_trainer=train_mlp).infer(x, y)
    with pytest.raises(InputError, match="shadow_trainer"):
        ShadowModelAttack(problem["target"]).fit(x, y)
    with pytest.raises(InvalidParameterError, match="'attack_model' parameter"):
        ShadowModelAttack(problem["target"], attack_model="x").fit(x, y)


def _linear_binary():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(200, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5, 0.0, 0.2]) > 0.35).astype(int)
    lr = LogisticRegression(C=100, max_iter=1000).fit(x, y)
    return SklearnClassifier(lr, clip_values=(0.0, 1.0)), lr, x[:30], y[:30]


def test_boundary_distance_matches_the_exact_distance():
    clf, lr, x, y = _linear_binary()
    scores = LabelOnly(clf, max_queries=400, gamma=0.01, random_state=0).infer(x, y)
    margin = (x @ lr.coef_[0] + lr.intercept_[0]) / np.linalg.norm(lr.coef_[0])
    correct = lr.predict(x) == y
    exact = np.where(correct, np.abs(margin), 0.0)
    assert (scores[~correct] == 0).all()
    # HopSkipJump's distance is an upper bound; within 10 % of the exact one. A sample whose
    # boundary lies outside the box can be farther (bounded by the box diameter).
    far = scores > exact * 1.1
    assert (scores >= exact * 0.999).all()
    assert far.mean() < 0.2, (scores[far], exact[far])


def test_augmentation_robustness_is_monotone_in_the_margin():
    clf, lr, x, y = _linear_binary()
    attack = LabelOnly(
        clf, method="augmentation", nb_augmentations=64, noise_std=0.1, random_state=0
    )
    scores = attack.infer(x, y)
    margin = (x @ lr.coef_[0] + lr.intercept_[0]) * np.where(y == 1, 1, -1)
    assert set(np.round(scores * 65).astype(int)) <= set(range(66))  # multiples of 1/65
    assert (scores[margin > 0.5 * np.linalg.norm(lr.coef_[0])] == 1).all()  # 5 sigma away
    assert np.corrcoef(scores, margin)[0, 1] > 0.5


def test_label_only_on_digits(problem):
    x, y, member = problem["x"], problem["y"], problem["member"]
    shift = LabelOnly(problem["target"], method="augmentation", augmentation="shift")
    with pytest.raises(InputError, match="images"):
        shift.infer(x[:4], y[:4])
    img = SklearnClassifier(problem["target"].model, input_shape=(1, 8, 8), clip_values=(0, 1))
    s_shift = LabelOnly(img, method="augmentation", augmentation="shift").infer(
        x.reshape(-1, 1, 8, 8), y
    )
    s_noise = LabelOnly(
        problem["target"], method="augmentation", noise_std=0.1, random_state=0
    ).infer(x, y)
    sub = slice(0, 600, 5)  # boundary distances on 120 samples: 300 queries each
    s_bound = LabelOnly(problem["target"], max_queries=300, random_state=0).infer(x[sub], y[sub])
    for name, s, m in (
        ("shift", s_shift, member),
        ("noise", s_noise, member),
        ("boundary", s_bound, member[sub]),
    ):
        auc = roc_auc(s, m)
        print(name, "AUC", round(auc, 3))
        assert auc > 0.52


def test_tensor_in_tensor_out():
    clf, _, x, y = _linear_binary()
    out = LabelOnly(clf, method="augmentation", random_state=0).infer(
        torch.as_tensor(x), torch.as_tensor(y)
    )
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
