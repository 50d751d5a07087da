"""Elastic-net attack (EAD): the exact L2 distance on a logistic regression when beta is small,
sparser perturbations than CW-L2 with the L1 rule, strength and L1 norms on the digits CNN, and
the conformance suite."""

import numpy as np
import pytest
import torch

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion.carlini_wagner import CW
from bastion.attacks.evasion.elastic_net import EAD, ElasticNet
from bastion.exceptions import InvalidParameterError
from bastion.testing import check_attack

# Fast settings for the CNN (the defaults are lr 0.01, 9 x 100 steps, c0 = 1e-3).
FAST = dict(learning_rate=0.05, max_iter=50, binary_search_steps=5, initial_const=0.1)
FAST_CW = dict(learning_rate=0.05, max_iter=50, binary_search_steps=5, initial_const=0.1)


def test_alias_and_conformance():
    assert EAD is ElasticNet
    assert "check_minimum_norm" in check_attack(ElasticNet)


def test_parameter_errors_name_the_parameter(digits_cnn, digits_test):
    x, y = digits_test
    with pytest.raises(InvalidParameterError, match="'decision_rule' parameter of ElasticNet"):
        EAD(digits_cnn, decision_rule="L2").generate(x[:2], y[:2])
    with pytest.raises(InvalidParameterError, match="'optimizer' parameter"):
        EAD(digits_cnn, optimizer="adam").generate(x[:2], y[:2])


# --------------------------------------------------------------------------- logistic regression


@pytest.fixture(scope="module")
def logistic():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MinMaxScaler

    from bastion.estimators import SklearnClassifier

    x, y = load_breast_cancer(return_X_y=True)
    x = MinMaxScaler().fit_transform(x).astype(np.float32)
    model = LogisticRegression(max_iter=5000).fit(x, y)
    correct = model.predict(x) == y
    w, b = model.coef_[0], model.intercept_[0]
    score = x @ w + b
    clf = SklearnClassifier(model, clip_values=(0, 1))
    # Samples whose minimal L2 step -s w / ||w||^2 stays inside the box.
    x, y, score = x[correct], y[correct], score[correct]
    step = -(score / (w @ w))[:, None] * w
    inside = np.all((x + 1.05 * step > 0.01) & (x + 1.05 * step < 0.99), axis=1)
    keep = np.flatnonzero(inside)[:40]
    return clf, x[keep], y[keep], w, score[keep]


@pytest.mark.parametrize("optimizer", ["fista", "ista"])
def test_small_beta_reaches_the_exact_l2_distance(logistic, optimizer):
    """With beta -> 0 EAD is CW-L2 solved by projected gradient: it finds the minimal distance
    |w.x + b| / ||w||_2 to the linear boundary."""
    clf, x, y, w, score = logistic
    x_adv = EAD(clf, beta=1e-5, optimizer=optimizer).generate(x, y)
    assert np.all(clf.predict(x_adv).argmax(1) != y)
    ratio = perturbation_norms(x, x_adv, 2) / (np.abs(score) / np.linalg.norm(w))
    assert ratio.min() >= 1 - 1e-3  # nothing beats the exact minimum
    assert np.median(ratio) <= 1.01 and ratio.max() <= 1.05


def test_l1_rule_and_larger_beta_give_sparser_perturbations_than_cw(logistic):
    """The shrinkage zeroes the features with small weights: with beta = 0.05 and the L1 rule
    EAD changes far fewer features than CW-L2 (which moves all 30) at a smaller L1 norm."""
    clf, x, y, _, _ = logistic
    x_cw = CW(clf).generate(x, y)
    x_ead = EAD(clf, beta=0.05, decision_rule="L1").generate(x, y)
    assert np.all(clf.predict(x_ead).argmax(1) != y)

    def nonzeros(x_adv):
        return (np.abs(x_adv - x) > 1e-6).sum(1)

    assert np.median(nonzeros(x_ead)) <= 0.5 * np.median(nonzeros(x_cw))
    assert np.median(perturbation_norms(x, x_ead, 1)) < np.median(perturbation_norms(x, x_cw, 1))


def test_decision_rules_pick_from_the_same_iterates(logistic):
    """Both rules run the same iterates and only keep different ones: per sample the L1 rule's
    L1 norm is at most the EN rule's, and the EN rule's elastic-net distance at most the L1's."""
    clf, x, y, _, _ = logistic
    beta = 0.05
    x_en = EAD(clf, beta=beta, decision_rule="EN").generate(x, y)
    x_l1 = EAD(clf, beta=beta, decision_rule="L1").generate(x, y)
    l1_en, l1_l1 = perturbation_norms(x, x_en, 1), perturbation_norms(x, x_l1, 1)
    en_en = perturbation_norms(x, x_en, 2) ** 2 + beta * l1_en
    en_l1 = perturbation_norms(x, x_l1, 2) ** 2 + beta * l1_l1
    assert np.all(l1_l1 <= l1_en + 1e-6) and np.all(en_en <= en_l1 + 1e-6)
    assert np.any(l1_l1 < l1_en - 1e-4)  # the rules do differ


def test_mask_and_no_clip_values(logistic):
    """Masked features never change; without clip_values the iterates may leave [0, 1]."""
    from bastion.estimators import SklearnClassifier

    clf, x, y, w, score = logistic
    mask = (np.arange(x.shape[1]) % 2).astype(np.float32)
    x_adv = EAD(clf, beta=1e-3).generate(x, y, mask=mask)
    np.testing.assert_array_equal(x_adv[:, mask == 0], x[:, mask == 0])
    assert np.all(clf.predict(x_adv).argmax(1) != y)
    ratio = perturbation_norms(x, x_adv, 2) / (np.abs(score) / np.linalg.norm(w * mask))
    assert ratio.min() >= 1 - 1e-3

    # Shifted by 0.5 every clean point leaves [0, 1]: only the unconstrained fallback can reach
    # the exact distance |s'| / ||w|| with s' = s + 0.5 * sum(w).
    free = SklearnClassifier(clf.model)
    shifted, moved = x + np.float32(0.5), score + 0.5 * w.sum()
    pred = free.predict(shifted).argmax(1)
    x_adv = EAD(free, beta=1e-5).generate(shifted, pred)
    assert np.all(free.predict(x_adv).argmax(1) != pred)
    ratio = perturbation_norms(shifted, x_adv, 2) / (np.abs(moved) / np.linalg.norm(w))
    assert ratio.min() >= 1 - 1e-3 and np.median(ratio) <= 1.01


def test_gradients_come_from_the_estimator(logistic):
    """The step's gradient is the estimator's objective gradient plus 2 d: logits without a
    torch graph (as another framework gives them) change nothing, and the estimator counts one
    gradient per sample and step."""
    from bastion.estimators.base import EstimatorWrapper

    class ScoresWithoutGraph(EstimatorWrapper):
        forwarded = frozenset({"predict", "logits", "class_gradient"})

        def _logits(self, x):
            return self.estimator.logits_tensor(x).detach()

    clf, x, y, _, _ = logistic
    x, y = x[:8], y[:8]
    wrapped = ScoresWithoutGraph(clf)
    params = dict(max_iter=20, binary_search_steps=3, abort_early=False)
    x_adv = EAD(wrapped, **params).generate(x, y)
    np.testing.assert_array_equal(x_adv, EAD(clf, **params).generate(x, y))
    assert wrapped.gradient_count == len(x) * 20 * 3


# --------------------------------------------------------------------------- digits CNN


@pytest.fixture(scope="module")
def correct20(digits_cnn, digits_test):
    x, y = digits_test
    ok = np.asarray(digits_cnn.predict(x)).argmax(1) == y
    return x[ok][:20], y[ok][:20]


def test_untargeted_has_smaller_l1_than_cw(digits_cnn, correct20):
    """The paper's point: EAD fools the CNN with a much smaller L1 norm than CW-L2."""
    x, y = correct20
    x_ead = EAD(digits_cnn, beta=1e-2, decision_rule="L1", **FAST).generate(x, y)
    x_cw = CW(digits_cnn, **FAST_CW).generate(x, y)
    ok_ead = np.asarray(digits_cnn.predict(x_ead)).argmax(1) != y
    ok_cw = np.asarray(digits_cnn.predict(x_cw)).argmax(1) != y
    assert ok_ead.mean() >= 0.95
    assert x_ead.min() >= 0 and x_ead.max() <= 1
    both = ok_ead & ok_cw
    l1_ead, l1_cw = perturbation_norms(x, x_ead, 1)[both], perturbation_norms(x, x_cw, 1)[both]
    assert np.median(l1_ead / l1_cw) <= 0.8


def test_targeted_reaches_the_targets(digits_cnn, correct20):
    x, y = correct20
    target = (y + 3) % 10
    x_adv = EAD(digits_cnn, targeted=True, **FAST).generate(x, target)
    hit = np.asarray(digits_cnn.predict(x_adv)).argmax(1) == target
    assert hit.mean() >= 0.9


def test_failures_come_back_unchanged(digits_cnn, correct20):
    """With one short run some samples fail: they are returned exactly, and the others are
    adversarial."""
    x, y = correct20
    xt = torch.as_tensor(x)
    weak = EAD(
        digits_cnn, binary_search_steps=1, max_iter=10, initial_const=1.0, learning_rate=0.05
    )
    x_adv = weak.generate(xt, torch.as_tensor(y)).numpy()
    changed = np.any((x_adv != x).reshape(len(x), -1), axis=1)
    assert 0 < changed.sum() < len(x)
    pred = np.asarray(digits_cnn.predict(x_adv)).argmax(1)
    assert np.all(pred[changed] != y[changed])
    np.testing.assert_array_equal(x_adv[~changed], x[~changed])
