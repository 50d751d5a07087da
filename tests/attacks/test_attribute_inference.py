"""Attribute inference: black-box, baseline and the two white-box decision-tree attacks.

Data: a seeded tabular problem whose hidden categorical feature ``h`` (3 values, priors
0.5 / 0.3 / 0.2) is independent of the other features but shifts the label, so the other
features alone say nothing about ``h`` (the baseline stays at chance) while the model's output
does (the black-box attack recovers it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from bastion.attacks.inference.attribute import (
    AttributeInferenceBaseline,
    AttributeInferenceBlackBox,
    AttributeInferenceWhiteBoxDecisionTree,
    AttributeInferenceWhiteBoxLifestyleDecisionTree,
)
from bastion.estimators import SklearnClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError, NotFittedError

PRIORS = [0.5, 0.3, 0.2]
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h = rng.choice(3, size=n, p=PRIORS)
    z = rng.normal(size=(n, 4))
    logit = z[:, 0] + 0.5 * z[:, 1] + np.array([-2.0, 0.0, 2.0])[h]
    y = (logit + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return np.c_[h, z].astype(np.float32), y


@pytest.fixture(scope="module")
def problem():
    x, y = make_data(3000, 0)
    train, attacker = slice(0, 1500), slice(1500, 3000)
    target = SklearnClassifier(LogisticRegression().fit(x[train], y[train]))
    return x[train], y[train], x[attacker], target


def test_black_box_recovers_hidden_feature_far_better_than_baseline(problem):
    x_train, _, x_attacker, target = problem
    hidden = x_train[:, 0]
    attack = AttributeInferenceBlackBox(target, attack_feature=0, random_state=0).fit(x_attacker)
    guess = attack.infer(x_train[:, 1:], pred=target.predict(x_train))
    labels_only = AttributeInferenceBlackBox(
        target, attack_feature=0, prediction="label", random_state=0
    ).fit(x_attacker)
    guess_label = labels_only.infer(x_train[:, 1:], pred=target.predict(x_train).argmax(1))
    baseline = AttributeInferenceBaseline(attack_feature=0, random_state=0).fit(x_attacker)
    guess_base = baseline.infer(x_train[:, 1:])
    acc, acc_label, acc_base = (
        float((g == hidden).mean()) for g in (guess, guess_label, guess_base)
    )
    # Measured: 0.99 with scores, 0.70 with labels only, 0.45 for the baseline (chance: 0.5).
    assert acc_base <= 0.55
    assert acc >= 0.9 and acc >= acc_base + 0.3
    assert acc_label >= acc_base + 0.15
    np.testing.assert_array_equal(np.unique(attack.values_), [0, 1, 2])
    assert set(np.unique(guess)) <= {0.0, 1.0, 2.0}


def test_tensor_in_tensor_out_and_attack_model_choices(problem):
    x_train, _, x_attacker, target = problem
    attack = AttributeInferenceBlackBox(
        target, attack_feature=0, attack_model="mlp", random_state=0
    ).fit(torch.from_numpy(x_attacker[:500]))
    pred = torch.from_numpy(target.predict(x_train[:100]))
    guess = attack.infer(torch.from_numpy(x_train[:100, 1:]), pred=pred)
    assert isinstance(guess, torch.Tensor) and guess.shape == (100,)
    assert float((guess.numpy() == x_train[:100, 0]).mean()) >= 0.8
    custom = AttributeInferenceBlackBox(
        target, attack_feature=0, attack_model=LogisticRegression(max_iter=500)
    ).fit(x_attacker)
    assert (
        float((custom.infer(x_train[:, 1:], pred=target.predict(x_train)) == x_train[:, 0]).mean())
        >= 0.8
    )
    # The seed makes the attack repeatable.
    a = AttributeInferenceBlackBox(target, random_state=3).fit(x_attacker[:300])
    b = AttributeInferenceBlackBox(target, random_state=3).fit(x_attacker[:300])
    p = target.predict(x_train[:200])
    np.testing.assert_array_equal(
        a.infer(x_train[:200, 1:], pred=p), b.infer(x_train[:200, 1:], pred=p)
    )


def test_attribute_errors(problem):
    x_train, _, x_attacker, target = problem
    with pytest.raises(InvalidParameterError, match="'attack_feature' parameter"):
        AttributeInferenceBlackBox(target, attack_feature=-1).fit(x_attacker)
    with pytest.raises(InvalidParameterError, match="'attack_model'"):
        AttributeInferenceBaseline(attack_model="svm").fit(x_attacker)
    with pytest.raises(InputError, match="not a column"):
        AttributeInferenceBaseline(attack_feature=7).fit(x_attacker)
    with pytest.raises(NotFittedError, match="call fit") as info:
        AttributeInferenceBlackBox(target).infer(x_train[:, 1:], pred=target.predict(x_train))
    assert isinstance(info.value, (InputError, AttributeError))  # as before, and like sklearn
    attack = AttributeInferenceBlackBox(target, random_state=0).fit(x_attacker[:200])
    with pytest.raises(InputError, match="pred has"):
        attack.infer(x_train[:10, 1:], pred=target.predict(x_train[:5]))
    with pytest.raises(InputError, match="class scores"):
        attack.infer(x_train[:10, 1:], pred=np.zeros(10))
    with pytest.raises(EstimatorError, match="DecisionTreeClassifier"):
        AttributeInferenceWhiteBoxDecisionTree(target).infer(x_train[:, 1:], values=[0, 1])
    assert repr(AttributeInferenceBaseline(attack_feature=2)) == (
        "AttributeInferenceBaseline(attack_feature=2)"
    )


def test_white_box_tree_uses_label_and_leaf_counts(problem):
    x_train, y_train, x_attacker, _ = problem
    tree = DecisionTreeClassifier(random_state=0).fit(x_train, y_train)
    attack = AttributeInferenceWhiteBoxDecisionTree(SklearnClassifier(tree), attack_feature=0)
    guess = attack.infer(x_train[:, 1:], y_train, values=[0, 1, 2], priors=PRIORS)
    acc = float((guess == x_train[:, 0]).mean())
    baseline = AttributeInferenceBaseline(attack_feature=0, random_state=0).fit(x_attacker)
    acc_base = float((baseline.infer(x_train[:, 1:]) == x_train[:, 0]).mean())
    # Measured: 0.67 against 0.45 for the baseline.
    assert acc >= 0.6 and acc >= acc_base + 0.1


def test_white_box_tree_known_answers():
    # The label is the hidden bit itself: exactly one value agrees with y, so it is found.
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2, 200)
    x = np.c_[rng.normal(size=200), h, rng.normal(size=200)]
    tree = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x, h)
    attack = AttributeInferenceWhiteBoxDecisionTree(tree, attack_feature=1)
    np.testing.assert_array_equal(attack.infer(x[:, [0, 2]], h, values=[0, 1]), h)
    # Without the label, the prior decides between two leaves of equal counts.
    no_label = attack.infer(x[:, [0, 2]], values=[0, 1], priors=[0.1, 0.9])
    expected = 1 if (h == 1).sum() * 0.9 > (h == 0).sum() * 0.1 else 0
    assert (no_label == expected).all()
    # Two values both agreeing with y: the leaf count times the prior decides (Fredrikson).
    x2 = np.r_[np.c_[np.zeros(30)], np.c_[np.ones(10)]]
    tree2 = DecisionTreeClassifier(random_state=0).fit(
        np.c_[x2, np.zeros(40)], np.r_[np.zeros(30), np.ones(5), np.zeros(5)].astype(int)
    )
    leaf_guess = AttributeInferenceWhiteBoxDecisionTree(tree2, attack_feature=0).infer(
        np.zeros((1, 1)), np.array([0]), values=[0.0, 1.0]
    )
    np.testing.assert_array_equal(leaf_guess, [0.0])  # 30 samples in the h=0 leaf vs 10


def _lifestyle_reference(tree, x, feature, values, priors):
    """ART's per-row formulation of Mehnaz et al.'s attack, written with loops."""
    n = x.shape[0]
    phi = []
    for v in values:
        leaves = {}
        for row in x:
            full = np.insert(row, feature, v).reshape(1, -1)
            leaf = tree.apply(full)[0]
            leaves[leaf] = tree.tree_.n_node_samples[leaf]
        phi.append(sum(leaves.values()) / n)
    out = []
    for row in x:
        scores = []
        for i, v in enumerate(values):
            leaf = tree.apply(np.insert(row, feature, v).reshape(1, -1))[0]
            scores.append(tree.tree_.n_node_samples[leaf] / n * priors[i] / phi[i])
        out.append(values[int(np.argmax(scores))])
    return np.array(out)


def test_lifestyle_matches_reference():
    rng = np.random.default_rng(2)
    n = 600
    z = rng.normal(size=(n, 3))
    h = (z[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(float)  # h follows z0
    y = (h + z[:, 1] > 0.5).astype(int)
    x = np.c_[z[:, 0], h, z[:, 1:]].astype(np.float32)
    tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(x, y)
    attack = AttributeInferenceWhiteBoxLifestyleDecisionTree(tree, attack_feature=1)
    known = np.delete(x, 1, axis=1)
    guess = attack.infer(known[:150], values=[0.0, 1.0], priors=[0.5, 0.5])
    ref = _lifestyle_reference(tree, known[:150], 1, [0.0, 1.0], [0.5, 0.5])
    np.testing.assert_array_equal(guess, ref)
    # Leaf counts alone barely inform on this data (measured accuracy 0.51): the label-free
    # variant is weak here, the equality with the reference is what is checked.
    assert set(np.unique(guess)) <= {0.0, 1.0}
    with pytest.raises(InputError, match="priors"):
        attack.infer(known, values=[0.0, 1.0], priors=[1.0])
