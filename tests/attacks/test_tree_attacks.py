"""Attacks on tree models: DecisionTreeAttack (Papernot et al. 2016) and the exact MILP attack
of Kantchelian et al. (2016), checked against brute force and HopSkipJump."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from bastion.attacks.base import perturbation_norms
from bastion.attacks.evasion import (
    FGSM,
    DecisionTreeAttack,
    HopSkipJump,
    KantchelianAttack,
    TreeEnsembleMILPAttack,
)
from bastion.estimators import SklearnClassifier
from bastion.exceptions import EstimatorError


def _digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


# ----------------------------------------------------------------- DecisionTreeAttack


def test_decision_tree_attack_flips_25_of_25_digits():
    x, y = _digits()
    clf = SklearnClassifier(
        DecisionTreeClassifier(random_state=0).fit(x[:1200], y[:1200]), clip_values=(0, 1)
    )
    xs = x[1200:1225]
    clean = clf.predict(xs).argmax(1)
    x_adv = DecisionTreeAttack(clf).generate(xs)
    assert np.all(clf.model.predict(x_adv) != clean)  # the tree's own prediction changed
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    changed = (x_adv != xs).sum(1)
    assert np.all(changed >= 1)


def _hand_made_tree():
    # A tree over 3 features whose class-1 leaves need 1 change (feature 2) or 2 changes
    # (features 0 and 1) from x = (0, 0, 0).
    xt = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.1, 0.1, 0.1],
            [0.0, 0.0, 0.9],
            [0.9, 0.9, 0.0],
            [0.9, 0.0, 0.0],
            [0.0, 0.9, 0.0],
        ]
    )
    yt = np.array([0, 0, 1, 1, 0, 0])
    return DecisionTreeClassifier(random_state=0).fit(xt, yt)


def test_decision_tree_attack_changes_the_fewest_features():
    tree = _hand_made_tree()
    clf = SklearnClassifier(tree, clip_values=(0, 1))
    x = np.zeros((1, 3), dtype=np.float32)
    x_adv = DecisionTreeAttack(clf, offset=0.01).generate(x, np.array([0]))
    assert tree.predict(x_adv)[0] == 1
    assert (x_adv != x).sum() == 1 and x_adv[0, 2] > 0
    # with feature 2 frozen, the two-feature route is the only one
    mask = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    x_adv = DecisionTreeAttack(clf, offset=0.01).generate(x, np.array([0]), mask=mask)
    assert tree.predict(x_adv)[0] == 1
    assert (x_adv != x).sum() == 2 and x_adv[0, 2] == 0
    # targeted at the class it already has: nothing to change
    same = DecisionTreeAttack(clf, targeted=True).generate(x, np.array([0]))
    np.testing.assert_array_equal(same, x)


def test_decision_tree_attack_targeted_and_types():
    x, y = _digits()
    clf = SklearnClassifier(
        DecisionTreeClassifier(max_depth=8, random_state=0).fit(x[:1200], y[:1200]),
        clip_values=(0, 1),
    )
    xs = torch.as_tensor(x[1200:1210], dtype=torch.float64)
    target = (clf.predict(xs).argmax(1) + 1) % 10
    x_adv = DecisionTreeAttack(clf, targeted=True).generate(xs, target)
    assert isinstance(x_adv, torch.Tensor) and x_adv.dtype == torch.float64
    assert bool((clf.predict(x_adv).argmax(1) == target).all())


def test_decision_tree_attack_refuses_a_forest():
    x, y = _digits()
    clf = SklearnClassifier(
        RandomForestClassifier(n_estimators=3, random_state=0).fit(x[:300], y[:300])
    )
    with pytest.raises(EstimatorError, match="single decision tree"):
        DecisionTreeAttack(clf).generate(x[:2])


# ----------------------------------------------------------------- the MILP attack


def _tiny(kind):
    gen = np.random.default_rng(0)
    if kind == "binary":
        x = gen.uniform(0, 1, size=(200, 2))
        y = (x[:, 0] + 0.5 * x[:, 1] > 0.7).astype(int)
        model = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0)
    else:
        x = gen.uniform(0, 1, size=(300, 3))
        y = np.digitize(x[:, 0] + x[:, 1] - 0.5 * x[:, 2], [0.4, 0.9])
        model = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0)
    model.fit(x, y)
    return x.astype(np.float32), model


def _brute_force(ens, x0, y0, norm, margin, clip=(0.0, 1.0)):
    """The exact minimum over the cells of the threshold grid: each feature's cells lie
    between consecutive thresholds (and the box edges); a cell is adversarial when some other
    class's score beats the label's by ``margin``; its distance is that of its closed box."""
    edges = []
    for f in range(ens.n_features):
        ts = sorted(
            {float(t) for tr in ens.trees for t in tr.threshold[tr.feature == f]} | set(clip)
        )
        ts = [t for t in ts if clip[0] <= t <= clip[1]]
        edges.append(list(itertools.pairwise(ts)))
    best = np.inf
    for cell in itertools.product(*edges):
        lo = np.array([c[0] for c in cell])
        hi = np.array([c[1] for c in cell])
        s = ens.decision_scores(((lo + hi) / 2)[None])[0]
        if np.max(np.delete(s, y0) - s[y0]) < margin:
            continue
        gap = np.maximum(0, np.maximum(lo - x0, x0 - hi))
        best = min(best, gap.max() if norm == "inf" else gap.sum())
    return best


@pytest.mark.parametrize("norm", ["inf", 1])
@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_milp_distance_equals_brute_force(kind, norm):
    x, model = _tiny(kind)
    clf = SklearnClassifier(model, clip_values=(0, 1))
    ens = clf.trees()
    xs = x[:12]
    y = clf.predict(xs).argmax(1)
    attack = TreeEnsembleMILPAttack(clf, norm=norm)
    x_adv = attack.generate(xs)
    assert attack.optimal_.all()
    for i in range(len(xs)):
        want = _brute_force(ens, xs[i].astype(np.float64), y[i], norm, attack.margin)
        assert np.isfinite(want)
        assert abs(attack.distances_[i] - want) <= 1e-6, (i, attack.distances_[i], want)
    got = perturbation_norms(xs, x_adv, norm)
    np.testing.assert_allclose(got, attack.distances_, atol=1e-6)
    assert np.all(clf.predict(x_adv).argmax(1) != y)  # every returned point is misclassified
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_milp_targeted_and_mask():
    x, model = _tiny("multiclass")
    clf = SklearnClassifier(model, clip_values=(0, 1))
    xs = x[:8]
    target = (clf.predict(xs).argmax(1) + 1) % 3
    attack = KantchelianAttack(clf, targeted=True)
    x_adv = attack.generate(xs, target)
    hit = clf.predict(x_adv).argmax(1) == target
    assert np.all(hit == np.isfinite(attack.distances_))
    assert hit.mean() > 0.5
    mask = np.array([1.0, 0.0, 1.0], dtype=np.float32)
    x_adv = TreeEnsembleMILPAttack(clf).generate(xs, mask=mask)
    np.testing.assert_array_equal(x_adv[:, 1], xs[:, 1])


def test_milp_never_worse_than_hop_skip_jump_on_a_forest():
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.min(0)) / (x.max(0) - x.min(0))).astype(np.float32)
    rf = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x[:400], y[:400])
    clf = SklearnClassifier(rf, clip_values=(0, 1))
    xs = x[400:410]
    labels = clf.predict(xs).argmax(1)
    milp = TreeEnsembleMILPAttack(clf)
    x_milp = milp.generate(xs, labels)
    assert milp.optimal_.all()
    assert np.all(clf.predict(x_milp).argmax(1) != labels)
    hsj = HopSkipJump(clf, norm="inf", max_queries=300, random_state=0)
    x_hsj = hsj.generate(xs, labels)
    ok = clf.predict(x_hsj).argmax(1) != labels
    assert ok.sum() >= 5
    d_milp = perturbation_norms(xs, x_milp, "inf")
    d_hsj = perturbation_norms(xs, x_hsj, "inf")
    assert np.all(d_milp[ok] <= d_hsj[ok] + 1e-6)


def test_fgsm_on_a_forest_names_the_capability_and_the_tree_attacks():
    x, y = _digits()
    clf = SklearnClassifier(RandomForestClassifier(n_estimators=3).fit(x[:300], y[:300]))
    with pytest.raises(EstimatorError) as err:
        FGSM(clf, eps=0.1).generate(x[:2])
    message = str(err.value)
    assert "loss_gradient" in message
    assert "TreeEnsembleMILPAttack" in message and "DecisionTreeAttack" in message
    assert "HopSkipJump" in message


def test_tree_attacks_need_the_trees_capability():
    x, y = _digits()
    from sklearn.linear_model import LogisticRegression

    clf = SklearnClassifier(LogisticRegression(max_iter=200).fit(x[:300], y[:300]))
    for cls in (DecisionTreeAttack, TreeEnsembleMILPAttack):
        with pytest.raises(EstimatorError, match="'trees'"):
            cls(clf).generate(x[:2])


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_milp_on_boosting_libraries_equals_brute_force(name):
    # XGBoost splits with x < t (left_if="lt"), LightGBM with x <= t: both exact.
    from bastion.estimators import LightGBMClassifier, XGBoostClassifier

    lib = pytest.importorskip(
        name, reason=f"{name} is not installed: pip install 'bastion[boosting]'"
    )
    gen = np.random.default_rng(1)
    x = gen.uniform(0, 1, size=(300, 2)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.7).astype(int)
    if name == "xgboost":
        clf = XGBoostClassifier(
            lib.XGBClassifier(n_estimators=4, max_depth=2, n_jobs=1).fit(x, y), clip_values=(0, 1)
        )
    else:
        model = lib.LGBMClassifier(n_estimators=4, num_leaves=4, n_jobs=1, verbose=-1)
        clf = LightGBMClassifier(model.fit(x, y), clip_values=(0, 1))
    xs = x[:10]
    labels = clf.predict(xs).argmax(1)
    attack = TreeEnsembleMILPAttack(clf)
    x_adv = attack.generate(xs, labels)
    ens = clf.trees()
    for i in range(len(xs)):
        want = _brute_force(ens, xs[i].astype(np.float64), labels[i], "inf", attack.margin)
        assert abs(attack.distances_[i] - want) <= 1e-6
    assert np.all(clf.predict(x_adv).argmax(1) != labels)


def test_milp_on_catboost_equals_brute_force():
    # CatBoost's oblivious trees, parsed into full binary trees (x > border goes right).
    from bastion.estimators import CatBoostClassifier

    lib = pytest.importorskip(
        "catboost",
        reason="catboost is not installed: pip install -c constraints.txt --no-deps catboost "
        "&& pip install -c constraints.txt pandas six",
    )
    gen = np.random.default_rng(2)
    x = gen.uniform(0, 1, size=(300, 2)).astype(np.float32)
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1], [0.5, 0.9])
    model = lib.CatBoostClassifier(
        iterations=4, depth=2, verbose=0, thread_count=1, random_seed=0, allow_writing_files=False
    )
    clf = CatBoostClassifier(model.fit(x, y), clip_values=(0, 1))
    xs = x[:10]
    labels = clf.predict(xs).argmax(1)
    attack = TreeEnsembleMILPAttack(clf)
    x_adv = attack.generate(xs, labels)
    assert attack.optimal_.all()
    ens = clf.trees()
    for i in range(len(xs)):
        want = _brute_force(ens, xs[i].astype(np.float64), labels[i], "inf", attack.margin)
        assert np.isfinite(want)
        assert abs(attack.distances_[i] - want) <= 1e-6, (i, attack.distances_[i], want)
    assert np.all(clf.predict(x_adv).argmax(1) != labels)


def test_milp_time_limit_flags_samples_not_proven_optimal():
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.min(0)) / (x.max(0) - x.min(0))).astype(np.float32)
    rf = RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0).fit(x[:400], y[:400])
    clf = SklearnClassifier(rf, clip_values=(0, 1))
    xs = x[400:404]
    labels = clf.predict(xs).argmax(1)
    attack = TreeEnsembleMILPAttack(clf, time_limit=1e-4)
    x_adv = attack.generate(xs, labels)
    assert not attack.optimal_.all()
    changed = np.any(x_adv != xs, axis=1)
    assert np.all(clf.predict(x_adv).argmax(1)[changed] != labels[changed])
