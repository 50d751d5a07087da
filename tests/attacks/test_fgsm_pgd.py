"""FGSM and PGD on the bundled digits CNN and on a logistic regression."""

import numpy as np
import pytest
import torch
from test_restarts import log_p_true, replay_restarts

from bastion.attacks import MinimumNormAttack, perturbation_norms
from bastion.attacks.evasion import FGSM, PGD, FastGradientMethod, ProjectedGradientDescent
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from conftest import accuracy


def test_aliases():
    assert FGSM is FastGradientMethod and PGD is ProjectedGradientDescent


def test_pgd_linf_breaks_the_digits_cnn(digits_cnn, digits_test):
    """Done-when of the foundation issue: PGD (Linf, eps=0.3, 40 steps) < 5% accuracy."""
    x, y = digits_test
    assert accuracy(digits_cnn, x, y) > 0.9
    x_adv = PGD(digits_cnn, eps=0.3, eps_step=0.01, max_iter=40, random_state=0).generate(x, y)
    assert accuracy(digits_cnn, x_adv, y) < 0.05
    assert perturbation_norms(x, x_adv, "inf").max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_fgsm_lowers_accuracy_markedly(digits_cnn, digits_test):
    x, y = digits_test
    clean = accuracy(digits_cnn, x, y)
    for eps in (0.1, 0.2):
        x_adv = FGSM(digits_cnn, eps=eps).generate(x, y)
        assert accuracy(digits_cnn, x_adv, y) < clean - 0.3
        assert perturbation_norms(x, x_adv, "inf").max() <= eps + 1e-6
    # PGD is at least as strong as FGSM at the same budget
    x_pgd = PGD(digits_cnn, eps=0.1, eps_step=0.01, max_iter=20, random_state=0).generate(x, y)
    assert accuracy(digits_cnn, x_pgd, y) <= accuracy(
        digits_cnn, FGSM(digits_cnn, eps=0.1).generate(x, y), y
    )


@pytest.mark.parametrize(("norm", "eps", "step"), [(2, 2.0, 0.25), (1, 12.0, 1.5)])
def test_pgd_l2_l1_stay_in_budget_and_work(digits_cnn, digits_test, norm, eps, step):
    x, y = digits_test
    x_adv = PGD(
        digits_cnn, eps=eps, eps_step=step, max_iter=20, norm=norm, random_state=0
    ).generate(x, y)
    norms = perturbation_norms(x, x_adv, norm)
    assert norms.max() <= eps * (1 + 1e-6) + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert accuracy(digits_cnn, x_adv, y) < 0.5
    # the attack uses its budget on most samples
    assert np.median(norms) > 0.5 * eps


def test_pgd_l1_steps_are_sparse(digits_cnn, digits_test):
    x, y = digits_test
    x_adv = PGD(
        digits_cnn, eps=5.0, eps_step=5.0, max_iter=1, norm=1, num_random_init=0, l1_sparsity=0.99
    ).generate(x[:10], y[:10])
    changed = (np.abs(x_adv - x[:10]).reshape(10, -1) > 0).sum(1)
    assert changed.max() <= 0.02 * 784


def test_targeted_pgd_reaches_targets(digits_cnn, digits_test):
    x, y = digits_test
    target = (y + 3) % 10
    x_adv = PGD(
        digits_cnn, eps=0.3, eps_step=0.02, max_iter=40, targeted=True, random_state=0
    ).generate(x, target)
    hit = np.asarray(digits_cnn.predict(x_adv)).argmax(1) == target
    assert hit.mean() > 0.9
    with pytest.raises(InputError, match="target labels"):
        PGD(digits_cnn, targeted=True).generate(x)


def test_restarts_keep_the_best_per_sample(digits_cnn, digits_test):
    """A restarted PGD is its single runs composed: run r (drawing on from the same seeded
    generator) attacks only the samples no earlier run fooled, and each sample keeps the first
    run that fooled it, else its run of highest loss. So the first run is the single run with
    the same seed, and the restarted result fools exactly the union of what the runs fool."""
    x, y = digits_test
    # one batch: later batches' random starts come after the earlier batches' restarts
    kw = dict(eps=0.08, eps_step=0.02, max_iter=5, batch_size=len(x))
    single = PGD(digits_cnn, num_random_init=1, random_state=0, **kw).generate(x, y)
    many = PGD(digits_cnn, num_random_init=4, random_state=0, **kw).generate(x, y)
    expected, fooled, first = replay_restarts(
        lambda gen: PGD(digits_cnn, num_random_init=1, random_state=gen, **kw),
        x,
        y,
        4,
        0,
        digits_cnn.predict,
        log_p_true,
    )
    np.testing.assert_array_equal(many, expected)
    fooled_single = np.asarray(digits_cnn.predict(single)).argmax(1) != y
    fooled_many = np.asarray(digits_cnn.predict(many)).argmax(1) != y
    np.testing.assert_array_equal(fooled_many, fooled)
    np.testing.assert_array_equal(many[first == 0], single[first == 0])
    assert np.all(fooled_many[fooled_single])


class _OneSided(torch.nn.Module):
    """Class 1 scores ``4 relu(x_0 - 0.5) - 1``, class 0 scores 0: at ``x_0 = 0.5`` the loss has
    no gradient, so PGD fools a sample iff its random start has ``x_0 > 0.5`` (then the steps
    climb to ``x_0 = 0.8``, score 0.2 > 0): each run succeeds with probability 1/2."""

    def forward(self, x):
        z1 = 4 * torch.relu(x[:, 0] - 0.5) - 1
        return torch.stack([torch.zeros_like(z1), z1], dim=1)


def test_restarts_fool_what_a_single_run_misses():
    clf = TorchClassifier(_OneSided(), input_shape=(3,), nb_classes=2, clip_values=(0.0, 1.0))
    x, y = np.full((64, 3), 0.5, dtype=np.float32), np.zeros(64, dtype=np.int64)
    kw = dict(eps=0.3, eps_step=0.1, max_iter=5, batch_size=64)
    single = PGD(clf, num_random_init=1, random_state=0, **kw).generate(x, y)
    many = PGD(clf, num_random_init=4, random_state=0, **kw).generate(x, y)
    fooled_single = np.asarray(clf.predict(single)).argmax(1) == 1
    fooled_many = np.asarray(clf.predict(many)).argmax(1) == 1
    # about 32 and 60 of 64 (1/2 and 15/16); seeded, so always the same counts
    assert 20 < fooled_single.sum() < 44 and fooled_many.sum() > 54
    assert np.all(fooled_many[fooled_single])
    np.testing.assert_array_equal(many[fooled_single], single[fooled_single])
    expected, fooled, _ = replay_restarts(
        lambda gen: PGD(clf, num_random_init=1, random_state=gen, **kw),
        x,
        y,
        4,
        0,
        clf.predict,
        log_p_true,
    )
    np.testing.assert_array_equal(many, expected)
    np.testing.assert_array_equal(fooled_many, fooled)
    # every sample left unfooled is still at a random start on the flat side (all runs tie on
    # the loss: it keeps its first run's point)
    assert np.all(many[~fooled_many, 0] <= 0.5)


def test_tensor_in_tensor_out_and_per_sample_eps(digits_cnn, digits_test):
    x, y = digits_test
    xt = torch.as_tensor(x[:20], dtype=torch.float64)
    eps = np.linspace(0, 0.3, 20)
    out = PGD(digits_cnn, eps=eps, eps_step=0.05, max_iter=5, random_state=0).generate(
        xt, torch.as_tensor(y[:20])
    )
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    norms = (out - xt).abs().reshape(20, -1).amax(1).numpy()
    assert np.all(norms <= eps + 1e-6) and norms[0] == 0
    with pytest.raises(InputError, match="per-sample"):
        PGD(digits_cnn, eps=np.ones(3)).generate(x[:20], y[:20])


def test_labels_default_to_predictions(digits_cnn, digits_test):
    x, _ = digits_test
    a = FGSM(digits_cnn, eps=0.1).generate(x[:30])
    pred = np.asarray(digits_cnn.predict(x[:30])).argmax(1)
    np.testing.assert_array_equal(a, FGSM(digits_cnn, eps=0.1).generate(x[:30], pred))


def test_progress_bar_only_when_verbose(digits_cnn, digits_test, capsys):
    x, y = digits_test
    FGSM(digits_cnn, eps=0.1, batch_size=10).generate(x[:20], y[:20])
    assert capsys.readouterr().err == ""
    FGSM(digits_cnn, eps=0.1, batch_size=10, verbose=True).generate(x[:20], y[:20])
    assert "FastGradientMethod" in capsys.readouterr().err


def test_parameter_errors_name_the_parameter(digits_cnn, digits_test):
    x, y = digits_test
    with pytest.raises(
        InvalidParameterError, match=r"The 'eps' parameter of ProjectedGradientDescent must be"
    ):
        PGD(digits_cnn, eps=-0.1).generate(x[:2], y[:2])
    with pytest.raises(
        InvalidParameterError, match=r"'norm' parameter .* one of \{'inf', inf, 1, 2\}. Got 3"
    ):
        PGD(digits_cnn, norm=3).generate(x[:2], y[:2])
    with pytest.raises(InvalidParameterError, match="Valid parameters are"):
        PGD(digits_cnn).set_params(epsilon=0.1)


def test_repr_and_params(digits_cnn):
    attack = PGD(digits_cnn, eps=0.1, max_iter=7)
    assert (
        repr(attack) == "ProjectedGradientDescent(estimator=TorchClassifier, eps=0.1, max_iter=7)"
    )
    assert attack.get_params()["max_iter"] == 7
    assert attack.set_params(max_iter=3).max_iter == 3


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
    return SklearnClassifier(model, clip_values=(0, 1)), x, y, model


def test_fgsm_on_a_linear_model_is_the_closed_form(logistic):
    """For a linear model the FGSM-Linf step is eps * sign(w) away from the true class."""
    clf, x, y, model = logistic
    x_adv = FGSM(clf, eps=0.05).generate(x, y)
    w = model.coef_[0]
    direction = np.where(y[:, None] == 1, -np.sign(w), np.sign(w))
    expected = np.clip(x + 0.05 * direction, 0, 1)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def test_pgd_l2_on_a_linear_model_crosses_iff_budget_allows(logistic):
    """Exact minimal L2 distance to a linear boundary is |w.x + b| / ||w||: PGD with a budget 10%
    above it succeeds (box permitting), with a budget 10% below it never does."""
    clf, x, y, model = logistic
    correct = model.predict(x) == y
    x, y = x[correct][:60], y[correct][:60]
    w, b = model.coef_[0], model.intercept_[0]
    dist = np.abs(x @ w + b) / np.linalg.norm(w)
    over = PGD(
        clf, eps=1.1 * dist, eps_step=0.05 * dist, max_iter=60, norm=2, num_random_init=0
    ).generate(x, y)
    under = PGD(
        clf, eps=0.9 * dist, eps_step=0.05 * dist, max_iter=60, norm=2, num_random_init=0
    ).generate(x, y)
    unclipped = np.all((x > 0.05) & (x < 0.95), axis=1)  # boundary reachable without the box
    assert np.all(model.predict(under) == y)
    assert np.mean(model.predict(over)[unclipped] != y[unclipped]) > 0.95


def test_gradient_attacks_refuse_predict_only_estimators():
    from bastion.estimators import BlackBoxClassifier

    bb = BlackBoxClassifier(lambda b: np.full((len(b), 2), 0.5), input_shape=(3,), nb_classes=2)
    with pytest.raises(EstimatorError, match="loss_gradient"):
        PGD(bb).generate(np.zeros((2, 3), dtype=np.float32))


# --------------------------------------------------------------------------- minimum-norm template


class _LineSearch(MinimumNormAttack):
    """A real (simple) minimum-norm attack to exercise the template: bisection on the step
    size along the FGSM direction."""

    def __init__(self, estimator, *, targeted=False, steps=12, batch_size=128, verbose=False):
        self.estimator = estimator
        self.targeted = targeted
        self.steps = steps
        self.batch_size = batch_size
        self.verbose = verbose

    def _attack(self, x, y, mask, generator, **_):
        d = self.estimator.loss_gradient_tensor(x, y).sign()
        lo = torch.zeros(len(x), 1, 1, 1)
        hi = torch.ones(len(x), 1, 1, 1)
        for _ in range(self.steps):
            mid = (lo + hi) / 2
            adv = self._is_adversarial(self.estimator.predict_tensor((x + mid * d).clamp(0, 1)), y)
            hi = torch.where(adv.view(-1, 1, 1, 1), mid, hi)
            lo = torch.where(adv.view(-1, 1, 1, 1), lo, mid)
        return x + hi * d


def test_minimum_norm_template_returns_clean_input_where_it_fails(digits_cnn, digits_test):
    x, y = digits_test
    x_adv = _LineSearch(digits_cnn).generate(x[:40], y[:40])
    pred = np.asarray(digits_cnn.predict(x_adv)).argmax(1)
    changed = np.any((x_adv != x[:40]).reshape(40, -1), axis=1)
    assert changed.mean() > 0.8
    assert np.all(pred[changed] != y[:40][changed])
    np.testing.assert_array_equal(x_adv[~changed], x[:40][~changed])
    # with a frozen mask nothing can change, so every sample comes back untouched
    frozen = _LineSearch(digits_cnn).generate(x[:10], y[:10], mask=np.zeros((1, 28, 28)))
    np.testing.assert_array_equal(frozen, x[:10])
