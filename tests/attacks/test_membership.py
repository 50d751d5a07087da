"""Membership inference: loss threshold, gap, LiRA and RMIA on an overfit digits MLP.

The problem (clean labels): the digits reduced to 12 of their 64 pixels (rows 0, 2, 4, 6 x
columns 1, 4, 7: a 4 x 3 image), a pool of 500 of them, an MLP(128) without regularisation
trained on a random half (250 members; about 92 % training accuracy against 60 % on the other
half, the 250 non-members). So few pixels make the task hard enough that the model memorises:
the loss attack's AUC is clearly above 0.5 (0.65 to 0.70 over seeds 0 to 4), while its TPR at
1 % FPR stays near chance, and LiRA online with 16 reference models is the strongest attack
at low FPR (docs/inference.md has the numbers for seeds 0 to 4; this module uses seed 1, on
which the ordering is strict: on seed 0 RMIA ties the loss attack at 1 % FPR, on seed 2 it
ties LiRA online).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from bastion.attacks.inference._base import logit_confidence
from bastion.attacks.inference.lira import LiRA, image_augmentations
from bastion.attacks.inference.membership import GapAttack, LossThreshold
from bastion.attacks.inference.rmia import RMIA
from bastion.estimators import SklearnClassifier
from bastion.exceptions import InputError, InvalidParameterError
from bastion.metrics.privacy import membership_advantage, membership_report, roc_auc

#: The optimizer object of an MLPClassifier trained with Adam, which skops does not trust by
#: default.
ADAM = "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"
N = 500  # the pool: N // 2 members, the rest non-members
SEED = 1
IMAGE = (1, 4, 3)  # the pixels kept, as an image


def digits_12px() -> tuple[np.ndarray, np.ndarray]:
    """The digits, 12 pixels each (rows 0, 2, 4, 6 x columns 1, 4, 7), scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32).reshape(-1, 8, 8)[:, ::2, 1::3]
    return np.ascontiguousarray(x.reshape(len(x), -1)), y


def train_mlp(x, y, random_state):
    """The training recipe of the target and of every reference / shadow model."""
    model = MLPClassifier(
        (128,),
        alpha=1e-6,
        learning_rate_init=0.01,
        max_iter=300,
        tol=1e-9,
        n_iter_no_change=300,
        random_state=random_state,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(x).reshape(len(x), -1), np.asarray(y))
    return SklearnClassifier(model, clip_values=(0.0, 1.0))


def make_problem(seed: int = SEED) -> dict:
    x, y = digits_12px()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    member = np.zeros(N, dtype=bool)
    member[rng.permutation(N)[: N // 2]] = True
    target = train_mlp(x[:N][member], y[:N][member], 12345)
    return {
        "x": x[:N],
        "y": y[:N],
        "member": member,
        "target": target,
        "x_rest": x[N:],  # disjoint data of the same distribution (shadow / RMIA population)
        "y_rest": y[N:],
    }


@pytest.fixture(scope="module")
def problem():
    return make_problem()


@pytest.fixture(scope="module")
def loss_scores(problem):
    return LossThreshold(problem["target"]).infer(problem["x"], problem["y"])


@pytest.fixture(scope="module")
def lira(problem):
    attack = LiRA(
        problem["target"], reference_trainer=train_mlp, nb_reference_models=16, random_state=0
    )
    return attack.fit(problem["x"], problem["y"])


RESULTS: dict[str, dict[str, float]] = {}


def _record(name, scores, member):
    RESULTS[name] = membership_report(scores, member)
    return RESULTS[name]


# ---------------------------------------------------------------------- loss and gap


def test_loss_attack_beats_chance(problem, loss_scores):
    r = _record("loss", loss_scores, problem["member"])
    assert r["auc"] >= 0.6  # clearly above chance (0.65 to 0.70 over seeds 0 to 4)
    # The score is log p_y, exactly.
    p = problem["target"].predict(problem["x"])[np.arange(N), problem["y"]]
    np.testing.assert_allclose(np.exp(loss_scores), p, rtol=1e-4)


def test_loss_threshold_fit_and_predict(problem):
    x, y, member = problem["x"], problem["y"], problem["member"]
    attack = LossThreshold(problem["target"])
    with pytest.raises(InputError, match="threshold"):
        attack.predict(x, y)
    # Yeom et al.: the threshold is the average training loss.
    attack.fit(x[member], y[member])
    loss = -attack.infer(x, y)
    assert attack.threshold_ == pytest.approx(loss[member].mean())
    assert np.array_equal(attack.predict(x, y), loss <= attack.threshold_)
    # Given ground truth on both sides, the threshold maximises the advantage.
    attack.fit(x, y, is_member=member)
    best = membership_advantage(-loss, member)
    pred = attack.predict(x, y)
    assert pred[member].mean() - pred[~member].mean() == pytest.approx(best)


def test_gap_attack_is_the_generalisation_gap(problem):
    x, y, member = problem["x"], problem["y"], problem["member"]
    scores = GapAttack(problem["target"]).infer(x, y)
    correct = problem["target"].predict(x).argmax(1) == y
    assert np.array_equal(scores, correct.astype(float))
    gap = correct[member].mean() - correct[~member].mean()
    assert gap > 0.05
    assert membership_advantage(scores, member, threshold=0.5) == pytest.approx(gap)
    _record("gap", scores, member)


# ---------------------------------------------------------------------- LiRA and RMIA


def test_lira_online_beats_the_loss_attack_threefold(problem, lira, loss_scores):
    member = problem["member"]
    loss = membership_report(loss_scores, member)
    on = _record("lira_online", lira.infer(problem["x"], problem["y"]), member)
    assert on["tpr@0.01fpr"] >= 3 * loss["tpr@0.01fpr"]
    assert on["tpr@0.01fpr"] >= 0.05
    assert on["auc"] > loss["auc"]


def test_lira_offline_and_rmia_sit_between(problem, lira, loss_scores):
    x, y, member = problem["x"], problem["y"], problem["member"]
    loss = membership_report(loss_scores, member)
    on = membership_report(lira.infer(x, y), member)
    lira.set_params(online=False)  # same reference models, OUT ones only
    try:
        off = _record("lira_offline", lira.infer(x, y), member)
    finally:
        lira.set_params(online=True)
    rmia_attack = RMIA(problem["target"], reference_trainer=train_mlp, random_state=0)
    rmia = _record("rmia_1ref", rmia_attack.fit(x, y).infer(x, y), member)
    for r in (off, rmia):
        assert loss["tpr@0.01fpr"] <= r["tpr@0.01fpr"] <= on["tpr@0.01fpr"]
        assert loss["auc"] < r["auc"] <= on["auc"] + 0.01
    assert max(off["tpr@0.01fpr"], rmia["tpr@0.01fpr"]) > loss["tpr@0.01fpr"]


def test_lira_per_example_variance_runs(problem, lira):
    lira.set_params(fix_variance=False)
    try:
        r = _record(
            "lira_online_per_example_var", lira.infer(problem["x"], problem["y"]), problem["member"]
        )
    finally:
        lira.set_params(fix_variance="auto")
    assert r["auc"] > 0.6


def test_lira_gaussian_test_closed_form():
    """IN ~ N(2, 1), OUT ~ N(0, 1): the log-likelihood ratio is 2 phi - 2; offline: phi."""
    attack = LiRA(None, nb_reference_models=4, fix_variance=False)
    stats = torch.tensor([1.0, 3.0, -1.0, 1.0], dtype=torch.float64)[:, None, None]  # (M, 1, 1)
    is_in = torch.tensor([[True], [True], [False], [False]])
    target = torch.tensor([[0.5]], dtype=torch.float64)
    assert float(attack._score(target, stats, is_in)) == pytest.approx(2 * 0.5 - 2)
    attack.set_params(online=False)
    assert float(attack._score(target, stats, is_in)) == pytest.approx(0.5)
    # Two augmentations: the mean of the per-augmentation scores.
    stats2 = torch.cat([stats, 2 * stats], dim=2)  # IN ~ N(4, 4), OUT ~ N(0, 4) for the second
    target2 = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    assert float(attack._score(target2, stats2, is_in)) == pytest.approx((0.5 + 0.5) / 2)


def test_logit_confidence_is_stable():
    z = torch.tensor([[40.0, 0.0, 0.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    phi = logit_confidence(z, y)
    p = torch.softmax(z, 1)[1, 2]
    assert float(phi[1]) == pytest.approx(float(torch.log(p / (1 - p))))
    assert float(phi[0]) == pytest.approx(40 - np.log(2))  # 1 - p_y underflows in float32


def test_lira_matching_save_load_and_outside_candidates(problem, tmp_path):
    x, y, member = problem["x"][:120], problem["y"][:120], problem["member"][:120]
    calls = []

    def counting(xs, ys, random_state):
        calls.append(random_state)
        return train_mlp(xs, ys, random_state)

    kw = dict(reference_trainer=counting, nb_reference_models=4, save_path=tmp_path, random_state=1)
    a = LiRA(problem["target"], **kw).fit(x, y)
    assert len(calls) == 4 and sorted(p.name for p in tmp_path.glob("model_*")) == [
        f"model_{i:03d}.skops" for i in range(4)
    ]
    assert a.keep_.shape == (4, 120) and (a.keep_.sum(0) == 2).all()
    s1 = a.infer(x, y)
    # skops does not trust the Adam optimizer object an MLPClassifier keeps: loading needs an
    # explicit opt-in, which the error names; nothing is trained meanwhile.
    with pytest.raises(InputError, match=r"AdamOptimizer.*trusted_types"):
        LiRA(problem["target"], **{**kw, "random_state": 7}).fit(x, y)
    assert len(calls) == 4
    # A second attack loads the models: no training, same scores.
    b = LiRA(problem["target"], **{**kw, "random_state": 7, "trusted_types": [ADAM]}).fit(x, y)
    assert len(calls) == 4
    np.testing.assert_allclose(b.infer(x, y), s1)
    # Matching by content equals matching by index, in any order.
    perm = np.random.default_rng(0).permutation(120)
    np.testing.assert_allclose(a.infer(x[perm], y[perm]), s1[perm])
    np.testing.assert_allclose(a.infer(x[perm], y[perm], population_index=perm), s1[perm])
    # Candidates outside the population: online falls back to offline, with a warning.
    with pytest.warns(UserWarning, match="offline"):
        a.infer(problem["x"][200:210], problem["y"][200:210])
    a.set_params(online=False)
    assert np.isfinite(a.infer(problem["x"][200:210], problem["y"][200:210])).all()
    # Another population in the same directory is refused.
    with pytest.raises(InputError, match="another population"):
        LiRA(problem["target"], **kw).fit(x[:60], y[:60])
    del member


def test_augmentation_queries():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    augs = image_augmentations()
    views = [a(x) for a in augs]
    assert len(views) == 10 and torch.equal(views[0], x)
    assert torch.equal(views[1], x.flip(-1))
    assert all(v.shape == x.shape for v in views)
    shifted = views[2]  # dx = 1: the image moves left by one pixel, edge replicated
    assert torch.equal(shifted[..., :3], x[..., 1:]) and torch.equal(shifted[..., 3], x[..., 3])


def test_lira_with_augmentations_on_images(problem):
    x = problem["x"][:200].reshape(-1, *IMAGE)
    y, member = problem["y"][:200], problem["member"][:200]
    target = SklearnClassifier(problem["target"].model, input_shape=IMAGE, clip_values=(0.0, 1.0))

    def train_img(xs, ys, random_state):
        est = train_mlp(xs, ys, random_state)
        return SklearnClassifier(est.model, input_shape=IMAGE, clip_values=(0.0, 1.0))

    attack = LiRA(
        target,
        reference_trainer=train_img,
        nb_reference_models=4,
        augmentations=image_augmentations(mirror=False),
        random_state=0,
    )
    scores = attack.fit(x, y).infer(x, y)
    assert attack.population_statistics_.shape == (4, 200, 5)
    assert roc_auc(scores, member) > 0.55  # 4 models trained on 100 samples, target on 250


# ---------------------------------------------------------------------- API


@pytest.mark.parametrize("cls", [LossThreshold, GapAttack, LiRA, RMIA])
def test_api_conventions(problem, cls):
    target = problem["target"]
    attack = cls(target)
    assert repr(attack).startswith(cls.__name__ + "(estimator=SklearnClassifier")
    assert "estimator" not in attack.get_params()
    with pytest.raises(InvalidParameterError, match="not_a_parameter"):
        attack.set_params(not_a_parameter=1)
    for name in cls._parameter_constraints:
        bad = cls(target, **{name: -1.5 if name != "reference_trainer" else 3})
        call = bad.fit if name == "reference_trainer" else bad.infer
        with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of {cls.__name__}"):
            call(problem["x"][:4], problem["y"][:4])


def test_types_and_errors(problem, lira):
    x, y = problem["x"][:10], problem["y"][:10]
    out = LossThreshold(problem["target"]).infer(torch.as_tensor(x), torch.as_tensor(y))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (10,)
    out = lira.infer(x, y)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    with pytest.raises(InputError, match="fitted"):
        LiRA(problem["target"], reference_trainer=train_mlp).infer(x, y)
    with pytest.raises(InputError, match="reference_trainer"):
        LiRA(problem["target"]).fit(x, y)
    with pytest.raises(InputError, match="labels"):
        LossThreshold(problem["target"]).infer(x, y[:5])


def test_seeded_determinism(problem):
    x, y = problem["x"][:80], problem["y"][:80]
    runs = [
        RMIA(problem["target"], reference_trainer=train_mlp, nb_reference_models=2, random_state=3)
        .fit(x, y)
        .infer(x, y)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*runs)


def test_zz_print_numbers():
    """Print the recorded numbers (pytest -s shows them; the report quotes them)."""
    for name, r in RESULTS.items():
        print(name, {k: round(v, 3) for k, v in r.items()})
