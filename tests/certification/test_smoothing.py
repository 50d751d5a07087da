"""Randomized smoothing (Cohen et al. 2019): known answers of CERTIFY and PREDICT, soundness
against attacks on the smoothed classifier, determinism, batch-size invariance, types, and
bad input; the certified-accuracy metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from bastion.certification import GaussianNoiseTrainer, RandomizedSmoothing
from bastion.certification._smoothing import clopper_pearson_lower, smoothing_radius
from bastion.certification._smoothing_training import smooth_adv_pgd
from bastion.datasets import load_digits
from bastion.estimators import BlackBoxClassifier, TorchClassifier
from bastion.exceptions import InputError
from bastion.metrics import certified_accuracy, certified_accuracy_curve
from bastion.testing._bad_inputs_smoothing import certified_accuracy_cases, smoothing_cases
from bastion.zoo import MLP

# --------------------------------------------------------------------------- base classifiers


def _constant(label: int, nb_classes: int = 4, dim: int = 3) -> BlackBoxClassifier:
    def answer(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), nb_classes), dtype=np.float32)
        out[:, label] = 1.0
        return out

    return BlackBoxClassifier(answer, input_shape=(dim,), nb_classes=nb_classes, clip_values=None)


class _Halfspace(torch.nn.Module):
    """Class 1 where the first coordinate is positive, else 0 (logits +-10)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.where(x[:, 0] > 0, 10.0, -10.0)
        return torch.stack([-s, s], dim=1)


def _halfspace() -> TorchClassifier:
    return TorchClassifier(_Halfspace(), input_shape=(5,), nb_classes=2, clip_values=None)


# --------------------------------------------------------------------------- statistics


def test_radius_of_p_lower_098_is_2054_sigma():
    assert smoothing_radius(0.98, 1.0) == pytest.approx(2.0537489, abs=1e-6)
    assert smoothing_radius(0.98, 0.25) == pytest.approx(0.25 * 2.0537489, abs=1e-6)
    assert smoothing_radius(0.5, 0.25) == 0.0
    assert smoothing_radius(0.3, 0.25) == 0.0


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (7, 10), (10, 10), (9_000, 10_000), (50, 100)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_matches_scipy_binomtest_and_beta(k, n, alpha):
    ours = float(clopper_pearson_lower(k, n, alpha))
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert ours == pytest.approx(ci.low, rel=1e-9, abs=1e-12)
    if 0 < k:
        assert ours == pytest.approx(stats.beta.ppf(alpha, k, n - k + 1), rel=1e-12)
    # By hand: k = n gives alpha^(1/n); k = 0 gives 0.
    if k == n:
        assert ours == pytest.approx(alpha ** (1 / n), rel=1e-12)
    if k == 0:
        assert ours == 0.0
    # The bound is a (1 - alpha) bound: P_p(K >= k) = alpha at p = bound (k > 0).
    if 0 < k:
        assert stats.binom.sf(k - 1, n, ours) == pytest.approx(alpha, rel=1e-6)


def test_constant_classifier_certifies_sigma_phi_inv_alpha_pow_1_over_n():
    n, alpha, sigma = 5_000, 0.001, 0.5
    rs = RandomizedSmoothing(_constant(2), sigma=sigma, random_state=0)
    x = np.zeros((3, 3), dtype=np.float32)
    pred, radius = rs.certify(x, n0=10, n=n, alpha=alpha, batch_size=700)
    assert pred.tolist() == [2, 2, 2]
    expected = sigma * stats.norm.ppf(alpha ** (1 / n))
    np.testing.assert_allclose(radius, expected, rtol=1e-6)
    assert radius.dtype == np.float32
    _, radius64 = rs.certify(x.astype(np.float64), n0=10, n=n, alpha=alpha)
    assert radius64.dtype == np.float64
    np.testing.assert_allclose(radius64, expected, rtol=1e-12)


def test_halfspace_radius_is_sound_and_close_to_the_exact_one():
    """For f(x) = [x_0 > 0] the smoothed classifier's exact radius is |x_0| (p_A =
    Phi(|x_0| / sigma)); the certified one must stay below it and come close for large n."""
    sigma = 0.5
    x0 = np.array([0.3, -0.6, 1.0, -1.4], dtype=np.float32)
    x = np.zeros((4, 5), dtype=np.float32)
    x[:, 0] = x0
    rs = RandomizedSmoothing(_halfspace(), sigma=sigma, random_state=3)
    pred, radius = rs.certify(x, n0=100, n=20_000, alpha=0.001)
    assert pred.tolist() == [1, 0, 1, 0]
    assert np.all(radius <= np.abs(x0) + 1e-9)
    assert np.all(radius >= 0.8 * np.abs(x0))


def test_abstains_on_the_boundary():
    """On the boundary of a half-space, the base classifier answers 0 or 1 with probability
    1/2 each under the noise: CERTIFY and PREDICT must abstain (with probability >= 1 -
    alpha each; a fixed seed)."""
    x = np.zeros((6, 5), dtype=np.float32)
    rs = RandomizedSmoothing(_halfspace(), sigma=0.25, random_state=0)
    pred, radius = rs.certify(x, n0=100, n=2_000, alpha=0.001)
    assert pred.tolist() == [-1] * 6
    assert radius.tolist() == [0.0] * 6
    assert rs.predict(x, n=2_000, alpha=0.001).tolist() == [-1] * 6
    counts = rs.noisy_counts(x, n=2_000)
    assert counts.sum(1).tolist() == [2_000] * 6
    assert np.all(np.abs(counts[:, 0] - 1_000) < 150)
    # Far from the boundary it predicts.
    x[:, 0] = [1, -1, 1, -1, 1, -1]
    assert rs.predict(x, n=200).tolist() == [1, 0, 1, 0, 1, 0]


def test_predict_uses_the_two_sided_binomial_test():
    """Counts 60/40 of n = 100 give a p-value of 0.057: abstain at alpha 0.05, answer at 0.1
    (a base classifier that returns class 0 for the first 60 noisy copies of each batch of
    100, class 1 for the others)."""

    def answer(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), 3), dtype=np.float32)
        k = np.arange(len(x)) % 100
        out[k < 60, 0] = 1
        out[k >= 60, 1] = 1
        return out

    clf = BlackBoxClassifier(answer, input_shape=(2,), nb_classes=3, clip_values=None)
    rs = RandomizedSmoothing(clf, sigma=0.1, random_state=0)
    x = np.zeros((2, 2), dtype=np.float32)
    p = stats.binomtest(60, 100, 0.5).pvalue
    assert 0.05 < p < 0.1
    assert rs.predict(x, n=100, alpha=0.05, batch_size=100).tolist() == [-1, -1]
    assert rs.predict(x, n=100, alpha=0.1, batch_size=100).tolist() == [0, 0]


# --------------------------------------------------------------------------- the procedure


def _digits_mlp() -> tuple[TorchClassifier, np.ndarray, np.ndarray]:
    (x, y), (xt, yt) = load_digits(size=8)
    clf = TorchClassifier(
        MLP(64, 10, hidden=(64,), random_state=0), input_shape=(1, 8, 8), nb_classes=10
    )
    GaussianNoiseTrainer(
        clf,
        sigma=0.25,
        epochs=15,
        batch_size=64,
        optimizer="adam",
        learning_rate=3e-3,
        schedule=None,
        random_state=0,
    ).fit(x, y)
    return clf, xt, yt


@pytest.fixture(scope="module")
def smoothed_digits():
    return _digits_mlp()


def test_certified_radius_holds_against_attacks_on_the_smoothed_classifier(smoothed_digits):
    """SmoothAdv's attack (L2 PGD on the soft smoothed classifier, 64 noise draws, 20 steps)
    with eps = 0.9 x each sample's certified radius must not change the smoothed prediction
    (counted with 10,000 fresh noisy samples); at 3x the radius it changes most of them (the
    attack is strong enough to matter)."""
    clf, xt, yt = smoothed_digits
    sigma = 0.25
    rs = RandomizedSmoothing(clf, sigma=sigma, random_state=0)
    pred, radius = rs.certify(xt[:40], n0=100, n=2_000, alpha=0.001)
    assert (pred == yt[:40]).mean() >= 0.8
    keep = pred >= 0
    assert keep.sum() >= 30 and np.median(radius[keep]) > 0.2
    xs, cls = torch.as_tensor(xt[:40][keep]), torch.as_tensor(pred[keep])
    radii = radius[keep]
    module = clf.torch_module().eval()
    noise = sigma * torch.randn((len(xs), 64, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    checker = RandomizedSmoothing(clf, sigma=sigma, random_state=5)
    changed = {}
    for frac in (0.9, 3.0):
        x_adv = torch.cat(
            [
                smooth_adv_pgd(
                    module,
                    xs[i : i + 1],
                    cls[i : i + 1],
                    noise[i : i + 1],
                    eps=frac * float(radii[i]),
                    eps_step=frac * float(radii[i]) / 4,
                    max_iter=20,
                    clip_values=(0.0, 1.0),
                )
                for i in range(len(xs))
            ]
        )
        dist = (x_adv - xs).flatten(1).norm(dim=1).numpy()
        assert np.all(dist <= frac * radii * (1 + 1e-5))
        counts = checker.noisy_counts(x_adv, n=10_000)
        changed[frac] = int((counts.argmax(1) != cls).sum())
    assert changed[0.9] == 0
    assert changed[3.0] >= len(xs) // 2


def test_deterministic_and_batch_size_invariant(smoothed_digits):
    clf, xt, _ = smoothed_digits
    x = xt[:7]
    runs = [
        RandomizedSmoothing(clf, sigma=0.25, random_state=11).certify(
            x, n0=30, n=300, batch_size=bs
        )
        for bs in (1000, 37, 1, 300)
    ]
    for pred, radius in runs[1:]:
        np.testing.assert_array_equal(pred, runs[0][0])
        np.testing.assert_array_equal(radius, runs[0][1])
    counts = [
        RandomizedSmoothing(clf, sigma=0.25, random_state=11).noisy_counts(x, n=2100, batch_size=b)
        for b in (4096, 333)
    ]
    np.testing.assert_array_equal(counts[0], counts[1])
    # A sample's result depends on its values only, not on its position or neighbours.
    rs = RandomizedSmoothing(clf, sigma=0.25, random_state=11)
    alone = [rs.certify(x[i : i + 1], n0=30, n=300) for i in (4, 0)]
    np.testing.assert_array_equal([a[0][0] for a in alone], runs[0][0][[4, 0]])
    np.testing.assert_array_equal([a[1][0] for a in alone], runs[0][1][[4, 0]])
    twice = rs.noisy_counts(np.concatenate([x[:1], x[:1]]), n=500)
    np.testing.assert_array_equal(twice[0], twice[1])
    other = RandomizedSmoothing(clf, sigma=0.25, random_state=12).noisy_counts(x, n=2100)
    assert not np.array_equal(other, counts[0])
    # A generator is advanced (a new draw per call); the caller's global RNG is untouched.
    state = torch.get_rng_state()
    gen = torch.Generator().manual_seed(0)
    rs = RandomizedSmoothing(clf, sigma=0.25, random_state=gen)
    a, b = rs.noisy_counts(x, n=500), rs.noisy_counts(x, n=500)
    assert not np.array_equal(a, b)
    assert torch.equal(state, torch.get_rng_state())


def test_queries_and_types(smoothed_digits):
    clf, xt, _ = smoothed_digits
    rs = RandomizedSmoothing(clf, sigma=0.25, random_state=0)
    clf.reset_counts()
    pred, radius = rs.certify(xt[:5], n0=20, n=100, batch_size=64)
    assert clf.query_count == 5 * 120
    assert isinstance(pred, np.ndarray) and pred.dtype == np.int64 and pred.shape == (5,)
    assert isinstance(radius, np.ndarray) and radius.dtype == np.float32
    tp, tr = rs.certify(torch.as_tensor(xt[:5]), n0=20, n=100, batch_size=64)
    assert isinstance(tp, torch.Tensor) and tp.dtype == torch.int64
    assert isinstance(tr, torch.Tensor) and tr.device == torch.device("cpu")
    np.testing.assert_array_equal(tp.numpy(), pred)
    np.testing.assert_array_equal(tr.numpy(), radius)
    tp64, tr64 = rs.certify(torch.as_tensor(xt[:5], dtype=torch.float64), n0=20, n=100)
    assert tr64.dtype == torch.float64 and tp64.dtype == torch.int64
    p = rs.predict(torch.as_tensor(xt[:5]), n=100)
    assert isinstance(p, torch.Tensor) and p.dtype == torch.int64
    np.testing.assert_array_equal(rs.predict(xt[:5], n=100), p.numpy())
    # float64 input: same answers as float32.
    np.testing.assert_array_equal(
        rs.certify(xt[:5].astype(np.float64), n0=20, n=100, batch_size=64)[0], pred
    )


def test_clip_noisy_clamps_the_noisy_copies():
    seen = []

    def answer(x: np.ndarray) -> np.ndarray:
        seen.append(np.asarray(x).copy())
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(x), 1))

    clf = BlackBoxClassifier(answer, input_shape=(4,), nb_classes=2, clip_values=(0.0, 1.0))
    x = np.full((2, 4), 0.5, dtype=np.float32)
    RandomizedSmoothing(clf, sigma=1.0, random_state=0).certify(x, n0=5, n=50)
    assert min(s.min() for s in seen) < 0 and max(s.max() for s in seen) > 1
    seen.clear()
    RandomizedSmoothing(clf, sigma=1.0, clip_noisy=True, random_state=0).certify(x, n0=5, n=50)
    assert min(s.min() for s in seen) >= 0 and max(s.max() for s in seen) <= 1


def test_verbose_progress_and_repr(capsys):
    rs = RandomizedSmoothing(_constant(0), sigma=0.5, verbose=True, random_state=0)
    rs.certify(np.zeros((2, 3), dtype=np.float32), n0=5, n=20)
    assert "RandomizedSmoothing" in capsys.readouterr().err
    assert (
        repr(rs) == "RandomizedSmoothing(estimator=BlackBoxClassifier, sigma=0.5, "
        "random_state=0, verbose=True)"
    )
    assert rs.get_params()["sigma"] == 0.5


@pytest.mark.parametrize("case", smoothing_cases(RandomizedSmoothing), ids=lambda c: c.id)
def test_bad_input(case):
    case.run()


# --------------------------------------------------------------------------- metrics


def test_certified_accuracy_known_answers():
    pred = np.array([0, 1, -1, 2, 1])
    radius = np.array([0.6, 0.2, 0.0, 0.9, 0.4])
    y = np.array([0, 1, 1, 0, 1])
    assert certified_accuracy(pred, radius, y) == pytest.approx(3 / 5)
    assert certified_accuracy(pred, radius, y, radius=0.3) == pytest.approx(2 / 5)
    assert certified_accuracy(pred, radius, y, radius=0.4) == pytest.approx(2 / 5)
    assert certified_accuracy(pred, radius, y, radius=0.6) == pytest.approx(1 / 5)
    assert certified_accuracy(pred, radius, y, radius=0.61) == 0.0
    radii, acc = certified_accuracy_curve(pred, radius, y)
    np.testing.assert_allclose(radii, [0.0, 0.2, 0.4, 0.6])
    np.testing.assert_allclose(acc, [0.6, 0.6, 0.4, 0.2])
    curve = certified_accuracy_curve(
        torch.as_tensor(pred), torch.as_tensor(radius), torch.as_tensor(y), radii=[0.5, 0.0]
    )
    np.testing.assert_allclose(curve.radii, [0.0, 0.5])
    np.testing.assert_allclose(curve.accuracy, [0.6, 0.2])
    # Brute force on random data.
    rng = np.random.default_rng(0)
    p, yy = rng.integers(-1, 4, 200), rng.integers(0, 4, 200)
    r = np.where(p >= 0, rng.random(200), 0.0)
    radii, acc = certified_accuracy_curve(p, r, yy)
    for t, a in zip(radii, acc, strict=True):
        assert a == pytest.approx(np.mean((p == yy) & (r >= t)))
        assert certified_accuracy(p, r, yy, radius=float(t)) == pytest.approx(a)


@pytest.mark.parametrize(
    "case",
    certified_accuracy_cases(certified_accuracy)
    + certified_accuracy_cases(certified_accuracy_curve),
    ids=lambda c: c.id,
)
def test_metric_bad_input(case):
    case.run()


def test_a_base_classifier_that_rejects_noisy_inputs_gets_a_hint(smoothed_digits):
    """A black box whose endpoint refuses inputs outside [0, 1] (here a TorchClassifier's
    public predict): unclipped noise raises an InputError that points to clip_noisy, which
    then works."""
    clf, xt, _ = smoothed_digits
    strict = BlackBoxClassifier(
        lambda b: np.asarray(clf.predict(b)),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    with pytest.raises(InputError, match="clip_noisy=True"):
        RandomizedSmoothing(strict, sigma=0.25, random_state=0).certify(xt[:2], n0=5, n=20)
    pred, _ = RandomizedSmoothing(strict, sigma=0.25, clip_noisy=True, random_state=0).certify(
        xt[:2], n0=5, n=20
    )
    assert pred.shape == (2,)
