"""Carlini and Wagner L2 and L-infinity attacks: closed forms on a logistic regression, strength
on the digits CNN compared with PGD, and the conformance suite."""

import numpy as np
import pytest
import torch

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion import PGD
from bastion.attacks.evasion.carlini_wagner import CW, CarliniWagnerL2, CarliniWagnerLinf
from bastion.estimators.base import EstimatorWrapper
from bastion.exceptions import InvalidParameterError
from bastion.testing import check_attack

# Fast settings for the CNN (the defaults are lr 0.01, 9 x 100 steps, c0 = 1e-3).
FAST_L2 = dict(learning_rate=0.05, max_iter=50, binary_search_steps=6, initial_const=0.1)


def test_alias_and_conformance():
    assert CW is CarliniWagnerL2
    for cls in (CarliniWagnerL2, CarliniWagnerLinf):
        assert "check_minimum_norm" in check_attack(cls)


def test_parameter_errors_name_the_parameter(digits_cnn, digits_test):
    x, y = digits_test
    with pytest.raises(InvalidParameterError, match="'binary_search_steps' parameter of Carlini"):
        CW(digits_cnn, binary_search_steps=0).generate(x[:2], y[:2])
    with pytest.raises(InvalidParameterError, match="'tau_decrease' parameter"):
        CarliniWagnerLinf(digits_cnn, tau_decrease=1.0).generate(x[:2], y[:2])


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
    return SklearnClassifier(model, clip_values=(0, 1)), x[correct], y[correct], w, score[correct]


def _inside(x, delta, lo=0.01, hi=0.99):
    return np.all((x + delta > lo) & (x + delta < hi), axis=1)


def test_l2_reaches_the_exact_distance_to_a_linear_boundary(logistic):
    """The minimal L2 distance to the boundary w.x + b = 0 is |w.x + b| / ||w||; on samples whose
    minimal perturbation stays inside the box, CW-L2 finds it within a few percent."""
    clf, x, y, w, score = logistic
    step = -(score / (w @ w))[:, None] * w
    keep = np.flatnonzero(_inside(x, 1.05 * step))[:40]
    x, y, score = x[keep], y[keep], score[keep]
    x_adv = CW(clf).generate(x, y)
    assert np.all(clf.predict(x_adv).argmax(1) != y)
    ratio = perturbation_norms(x, x_adv, 2) / (np.abs(score) / np.linalg.norm(w))
    assert ratio.min() >= 1 - 1e-3  # nothing beats the exact minimum
    assert np.median(ratio) <= 1.01 and ratio.max() <= 1.1


def test_l2_confidence_and_mask_closed_forms(logistic):
    """With confidence kappa the distance is (|s| + kappa) / ||w||; with a mask, the distance
    is |s| / ||w * mask||."""
    clf, x, y, w, score = logistic
    mask = (np.arange(x.shape[1]) % 2).astype(np.float32)
    kappa = 1.0
    step_k = -((score + np.sign(score) * kappa) / (w @ w))[:, None] * w
    step_m = -(score / ((w * mask) @ (w * mask)))[:, None] * (w * mask)
    keep = np.flatnonzero(_inside(x, 1.05 * step_k) & _inside(x, 1.05 * step_m))[:30]
    assert len(keep) >= 20
    x, y, score = x[keep], y[keep], score[keep]

    x_adv = CW(clf, confidence=kappa).generate(x, y)
    logits = clf.logits(x_adv)
    margin = np.where(y == 1, logits[:, 0] - logits[:, 1], logits[:, 1] - logits[:, 0])
    assert np.all(margin >= kappa)
    ratio = perturbation_norms(x, x_adv, 2) / ((np.abs(score) + kappa) / np.linalg.norm(w))
    assert ratio.min() >= 1 - 1e-3 and np.median(ratio) <= 1.02

    x_adv = CW(clf).generate(x, y, mask=mask)
    np.testing.assert_array_equal(x_adv[:, mask == 0], x[:, mask == 0])
    assert np.all(clf.predict(x_adv).argmax(1) != y)
    ratio = perturbation_norms(x, x_adv, 2) / (np.abs(score) / np.linalg.norm(w * mask))
    assert ratio.min() >= 1 - 1e-3 and np.median(ratio) <= 1.02


def test_l2_without_clip_values_is_unconstrained(logistic):
    """Without clip_values there is no box: the exact distance holds for every sample, also those
    whose minimal perturbation leaves [0, 1]."""
    from bastion.estimators import SklearnClassifier

    clf, x, y, w, score = logistic
    free = SklearnClassifier(clf.model)
    # Adam's steps (0.01 per feature) limit the precision on samples closer than that.
    keep = np.flatnonzero(np.abs(score) / np.linalg.norm(w) > 0.05)[:40]
    x, y, score = x[keep], y[keep], score[keep]
    assert not np.all(_inside(x, -(score / (w @ w))[:, None] * w, 0.0, 1.0))
    x_adv = CW(free).generate(x, y)
    assert np.all(free.predict(x_adv).argmax(1) != y)
    ratio = perturbation_norms(x, x_adv, 2) / (np.abs(score) / np.linalg.norm(w))
    assert ratio.min() >= 1 - 1e-3 and np.median(ratio) <= 1.01 and ratio.max() <= 1.1


def test_linf_reaches_the_exact_distance_to_a_linear_boundary(logistic):
    """The minimal L-infinity distance is |w.x + b| / ||w||_1 (step -tau * sign(w)); CW-Linf
    comes within ~10% (its bound shrinks by 0.9 per success), on samples well above its 1/256
    stopping precision whose minimal perturbation fits in the box."""
    clf, x, y, w, score = logistic
    dist = np.abs(score) / np.abs(w).sum()
    step = -np.sign(score)[:, None] * np.sign(w) * dist[:, None]
    keep = np.flatnonzero(_inside(x, 1.15 * step, 0.0, 1.0) & (dist > 0.01))[:40]
    x, y, dist = x[keep], y[keep], dist[keep]
    x_adv = CarliniWagnerLinf(clf).generate(x, y)
    assert np.all(clf.predict(x_adv).argmax(1) != y)
    ratio = perturbation_norms(x, x_adv, "inf") / dist
    assert ratio.min() >= 1 - 1e-3
    assert np.median(ratio) <= 1.03 and ratio.max() <= 1.12


class ScoresWithoutGraph(EstimatorWrapper):
    """Logits as another framework would give them: values without a torch graph. Gradients
    come only from the estimator's gradient kernels."""

    forwarded = frozenset({"predict", "logits", "class_gradient"})

    def _logits(self, x):
        return self.estimator.logits_tensor(x).detach()


@pytest.mark.parametrize("cls", [CarliniWagnerL2, CarliniWagnerLinf])
def test_gradients_come_from_the_estimator(logistic, cls):
    """The attacks take input gradients from objective_gradient_tensor (and apply the chain
    rule of the tanh variable themselves): logits without a graph give the same result, and the
    estimator counts every gradient itself (one per sample and step, no query)."""
    clf, x, y, _, _ = logistic
    x, y = x[:8], y[:8]
    wrapped = ScoresWithoutGraph(clf)
    params = {"max_iter": 20, **({"binary_search_steps": 3} if cls is CW else {})}
    x_adv = cls(wrapped, **params).generate(x, y)
    np.testing.assert_array_equal(x_adv, cls(clf, **params).generate(x, y))
    wrapped.reset_counts()
    cls(wrapped, abort_early=False, **params).generate(x, y)
    assert wrapped.query_count <= len(x)  # the template's one check of the result, no more
    if cls is CW:
        assert wrapped.gradient_count == len(x) * 20 * 3
    else:
        assert wrapped.gradient_count > 0


# --------------------------------------------------------------------------- digits CNN


@pytest.fixture(scope="module")
def correct20(digits_cnn, digits_test):
    x, y = digits_test
    ok = np.asarray(digits_cnn.predict(x)).argmax(1) == y
    return x[ok][:20], y[ok][:20]


def test_l2_untargeted_is_near_minimal_on_the_cnn(digits_cnn, correct20):
    """CW-L2 fools every sample, with perturbations so small that PGD-L2 given 0.8 times each
    sample's CW norm almost never succeeds, and PGD-L2 at the mean CW norm fails often."""
    x, y = correct20
    x_adv = CW(digits_cnn, **FAST_L2).generate(x, y)
    pred = np.asarray(digits_cnn.predict(x_adv)).argmax(1)
    assert np.mean(pred != y) >= 0.98
    norms = perturbation_norms(x, x_adv, 2)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    pgd = PGD(digits_cnn, norm=2, max_iter=40, num_random_init=0)
    under = pgd.set_params(eps=0.8 * norms, eps_step=0.1 * norms).generate(x, y)
    assert np.mean(np.asarray(digits_cnn.predict(under)).argmax(1) != y) <= 0.25
    mean = float(norms.mean())
    at_mean = pgd.set_params(eps=mean, eps_step=mean / 8).generate(x, y)
    assert np.mean(np.asarray(digits_cnn.predict(at_mean)).argmax(1) != y) <= 0.8


def test_l2_targeted_reaches_the_targets(digits_cnn, correct20):
    x, y = correct20
    target = (y + 3) % 10
    x_adv = CW(digits_cnn, targeted=True, **FAST_L2).generate(x, target)
    hit = np.asarray(digits_cnn.predict(x_adv)).argmax(1) == target
    assert hit.mean() >= 0.95


def test_l2_failures_come_back_unchanged(digits_cnn, correct20):
    """With one short run some samples fail: they are returned exactly, and the others are
    adversarial."""
    x, y = correct20
    xt = torch.as_tensor(x)
    weak = CW(digits_cnn, binary_search_steps=1, max_iter=10, initial_const=1.0, learning_rate=0.05)
    x_adv = weak.generate(xt, torch.as_tensor(y)).numpy()
    changed = np.any((x_adv != x).reshape(len(x), -1), axis=1)
    assert 0 < changed.sum() < len(x)
    pred = np.asarray(digits_cnn.predict(x_adv)).argmax(1)
    assert np.all(pred[changed] != y[changed])
    np.testing.assert_array_equal(x_adv[~changed], x[~changed])


def test_l2_early_abort_saves_gradients(digits_cnn, correct20):
    x, y = correct20
    results = {}
    params = dict(learning_rate=0.01, max_iter=100, binary_search_steps=4, initial_const=0.1)
    for abort in (True, False):
        digits_cnn.reset_counts()
        x_adv = CW(digits_cnn, abort_early=abort, **params).generate(x, y)
        success = np.asarray(digits_cnn.predict(x_adv)).argmax(1) != y
        results[abort] = (digits_cnn.gradient_count, success.mean(), perturbation_norms(x, x_adv))
    assert results[False][0] == len(x) * params["max_iter"] * params["binary_search_steps"]
    assert results[True][0] < 0.98 * results[False][0]  # 4% fewer here
    assert results[True][1] >= results[False][1] - 0.05
    assert results[True][2].mean() <= 1.05 * results[False][2].mean()


def test_l2_small_budget_runs_add_up(digits_cnn, correct20):
    """Ten runs of ten Adam steps at learning rate 0.01 from c = 0.01 fool every sample: each
    run goes on from the last iterate of the run before. Restarting every run from x (the
    paper's code) reaches at most 10 * 0.01 in tanh space and fooled 2 of these 20."""
    x, y = correct20
    x_adv = CW(
        digits_cnn, binary_search_steps=10, max_iter=10, learning_rate=0.01, initial_const=0.01
    ).generate(x, y)
    assert np.mean(np.asarray(digits_cnn.predict(x_adv)).argmax(1) != y) >= 0.95


def test_linf_is_near_minimal_on_the_cnn(digits_cnn, correct20):
    """CW-Linf fools every sample with a median norm far below the usual 0.3 budget, and PGD
    given 0.9 times each sample's CW norm rarely succeeds."""
    x, y = correct20
    x_adv = CarliniWagnerLinf(digits_cnn).generate(x, y)
    pred = np.asarray(digits_cnn.predict(x_adv)).argmax(1)
    assert np.mean(pred != y) >= 0.95
    norms = perturbation_norms(x, x_adv, "inf")
    assert np.median(norms) < 0.12
    under = PGD(
        digits_cnn, eps=0.9 * norms, eps_step=0.09 * norms, max_iter=50, num_random_init=0
    ).generate(x, y)
    assert np.mean(np.asarray(digits_cnn.predict(under)).argmax(1) != y) <= 0.15


def test_linf_targeted(digits_cnn, correct20):
    x, y = correct20
    target = (y + 3) % 10
    x_adv = CarliniWagnerLinf(digits_cnn, targeted=True, initial_const=1.0).generate(x, target)
    assert np.mean(np.asarray(digits_cnn.predict(x_adv)).argmax(1) == target) >= 0.95
