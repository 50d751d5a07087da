"""Auto-PGD: strength on the digits CNN, the checkpoint schedule, the step-size rules."""

import numpy as np
import pytest
import torch
from test_restarts import log_p_true, replay_restarts

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion import PGD
from bastion.attacks.evasion.auto_pgd import (
    APGD,
    AutoProjectedGradientDescent,
    _checkpoints,
    _dlr_loss,
)
from bastion.estimators import TorchClassifier
from bastion.exceptions import InvalidParameterError
from bastion.testing import ConformanceSpec, check_attack, register_conformance
from conftest import accuracy


@pytest.fixture(scope="module")
def digits50(digits_test):
    x, y = digits_test
    return x[:50], y[:50]


def test_alias_and_conformance():
    assert APGD is AutoProjectedGradientDescent
    check_attack(AutoProjectedGradientDescent)


def test_conformance_with_the_dlr_loss():
    dlr = type("_DLR", (AutoProjectedGradientDescent,), {})
    register_conformance(dlr, ConformanceSpec(params={"max_iter": 5, "loss": "dlr"}))
    try:
        check_attack(dlr)
    finally:
        register_conformance(dlr, None)


# --------------------------------------------------------------------------- digits CNN


def test_apgd_linf_at_least_as_strong_as_pgd(digits_cnn, digits50):
    x, y = digits50
    clean = accuracy(digits_cnn, x, y)
    pgd = min(
        accuracy(
            digits_cnn,
            PGD(digits_cnn, eps=0.1, eps_step=s, max_iter=20, random_state=0).generate(x, y),
            y,
        )
        for s in (0.01, 0.02)
    )
    digits_cnn.reset_counts()
    x_ce = APGD(digits_cnn, eps=0.1, max_iter=20, random_state=0).generate(x, y)
    # samples are dropped once adversarial: far fewer than 50 * 21 gradients
    assert digits_cnn.gradient_count < 0.5 * 50 * 21
    x_dlr = APGD(digits_cnn, eps=0.1, max_iter=20, loss="dlr", random_state=0).generate(x, y)
    acc_ce, acc_dlr = accuracy(digits_cnn, x_ce, y), accuracy(digits_cnn, x_dlr, y)
    assert acc_ce <= pgd + 0.02 and acc_dlr <= pgd + 0.04  # one sample of slack
    assert max(acc_ce, acc_dlr) < clean - 0.5
    for x_adv in (x_ce, x_dlr):
        assert perturbation_norms(x, x_adv, "inf").max() <= 0.1 + 1e-6
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_targeted_dlr_reaches_most_targets(digits_cnn, digits50):
    x, y = digits50
    target = (y + 3) % 10
    x_adv = APGD(
        digits_cnn, eps=0.3, max_iter=20, loss="dlr", targeted=True, random_state=0
    ).generate(x, target)
    hit = np.asarray(digits_cnn.predict(x_adv)).argmax(1) == target
    assert hit.mean() >= 0.8
    assert perturbation_norms(x, x_adv, "inf").max() <= 0.3 + 1e-6


@pytest.mark.parametrize(("norm", "eps", "worst"), [(2, 1.5, 0.4), (1, 10.0, 0.6)])
def test_l2_l1_lower_accuracy_within_budget(digits_cnn, digits50, norm, eps, worst):
    x, y = digits50
    x_adv = APGD(digits_cnn, eps=eps, norm=norm, max_iter=20, random_state=0).generate(x, y)
    norms = perturbation_norms(x, x_adv, norm)
    assert norms.max() <= eps * (1 + 1e-6) + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert accuracy(digits_cnn, x, y) > 0.9
    assert accuracy(digits_cnn, x_adv, y) < worst  # measured 0.26 (L2), 0.50 (L1)
    assert np.median(norms) > 0.9 * eps  # the budget is used


def test_restarts_only_improve(digits_cnn, digits50):
    """A restarted APGD is its single runs composed (see test_restarts.replay_restarts): the
    first run is the single run with the same seed, later runs attack only what earlier ones
    did not fool."""
    x, y = digits50
    kw = dict(eps=0.05, max_iter=10, batch_size=len(x))
    one = APGD(digits_cnn, num_random_init=1, random_state=0, **kw).generate(x, y)
    many = APGD(digits_cnn, num_random_init=3, random_state=0, **kw).generate(x, y)
    expected, fooled, first = replay_restarts(
        lambda gen: APGD(digits_cnn, num_random_init=1, random_state=gen, **kw),
        x,
        y,
        3,
        0,
        digits_cnn.predict,
        log_p_true,
    )
    np.testing.assert_array_equal(many, expected)
    pred_one = np.asarray(digits_cnn.predict(one)).argmax(1)
    pred_many = np.asarray(digits_cnn.predict(many)).argmax(1)
    np.testing.assert_array_equal(pred_many != y, fooled)
    np.testing.assert_array_equal(many[first == 0], one[first == 0])
    assert np.all(pred_many[pred_one != y] != y[pred_one != y])


# --------------------------------------------------------------------------- schedule


def test_checkpoints_follow_the_recurrence():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (next 1.05 > 1), w_j = ceil(100 p_j)
    assert _checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # N = 10: ceil(2.2, 4.1, 5.7, 7.0, 8.0, 8.7, 9.3, 9.9) without repeats
    assert _checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert _checkpoints(0) == []


def _expected_eta(start, halvings, n_iter=100):
    """Step size before each step when it halves at the given checkpoints."""
    eta, out = start, []
    for t in range(n_iter):
        if t in halvings:
            eta = eta / 2
        out.append(eta)
    return out


def test_step_size_halves_when_progress_stalls():
    """A linear two-class model: the first Linf step reaches the corner of the ball that
    maximises the loss, later steps cannot increase it, so the step halves at every checkpoint
    and the result is that corner."""
    net = torch.nn.Linear(4, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 0.0, 0.0]]))
        net.bias.copy_(torch.tensor([10.0, 0.0]))  # class 0 survives any eps-0.1 change
    clf = TorchClassifier(net, input_shape=(4,), nb_classes=2, clip_values=(0.0, 1.0))
    x, y = torch.full((3, 4), 0.5), torch.zeros(3, dtype=torch.long)
    attack = APGD(clf, eps=0.1, max_iter=100, num_random_init=0)
    trace: list[torch.Tensor] = []
    eps = torch.full((3, 1), 0.1)
    out, success, _ = attack._run(x, y, None, torch.Generator(), eps, None, trace)
    expected = _expected_eta(0.2, set(_checkpoints(100)))
    got = torch.stack(trace)
    assert got.shape == (100, 3)
    torch.testing.assert_close(got, torch.tensor(expected).unsqueeze(1).expand(100, 3))
    assert not success.any()
    corner = x - 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0])
    torch.testing.assert_close(out, corner)


class _Scripted:
    """A stand-in estimator whose loss follows a script, one value per gradient call; the
    samples are never adversarial."""

    capabilities = frozenset({"predict", "loss_gradient"})
    input_shape = (2,)
    nb_classes = 3
    clip_values = None
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, losses, grads=None):
        self.losses = losses
        self.grads = grads
        self.calls = 0
        self.seen = []

    def loss_gradient_tensor(self, x, y, *, return_outputs=False):
        self.seen.append(x.clone())
        value = self.losses[self.calls]
        grad = 1.0 if self.grads is None else self.grads[self.calls]
        self.calls += 1
        logits = torch.nn.functional.one_hot(y, 3).to(x.dtype) * 10
        return torch.full_like(x, grad), torch.full((x.shape[0],), float(value)), logits


def _eta_trace(losses, estimator=None):
    estimator = estimator or _Scripted(losses)
    attack = APGD(estimator, eps=0.1, max_iter=100, num_random_init=0)
    x, y = torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)
    trace: list[torch.Tensor] = []
    attack._run(x, y, None, torch.Generator(), torch.full((1, 1), 0.1), None, trace)
    return torch.cat(trace).tolist()


def test_no_halving_while_the_loss_keeps_increasing():
    assert _eta_trace(list(range(101))) == pytest.approx([0.2] * 100)


def test_condition_one_halves_at_every_checkpoint():
    # the loss goes up only every other step (50% < rho), while the best keeps improving
    losses = [c if c % 2 == 0 else c - 1.5 for c in range(101)]
    expected = _expected_eta(0.2, set(_checkpoints(100)))
    assert _eta_trace(losses) == pytest.approx(expected)


def test_condition_two_halves_when_the_best_loss_is_stuck():
    # the start (loss 10) stays the best, while almost every step increases the loss: condition
    # 1 never holds, condition 2 holds at every other checkpoint (it needs a step size that did
    # not change at the previous one)
    losses = [10.0] + [0.01 * c for c in range(100)]
    expected = _expected_eta(0.2, {22, 57, 80, 93})
    assert _eta_trace(losses) == pytest.approx(expected)


def test_halving_restarts_from_the_best_point():
    # x0 = 0 has the best loss and gradient +1; every later gradient is -1, so the iterates go
    # to the corner -0.1 of the ball. At checkpoint 22 (condition 2) the attack restarts from
    # x0 with its gradient: the next step goes to +0.1.
    est = _Scripted([10.0] + [0.01 * c for c in range(100)], grads=[1.0] + [-1.0] * 100)
    _eta_trace(None, est)
    seen = torch.stack([v[0, 0] for v in est.seen])
    assert seen[0] == 0 and seen[1] == pytest.approx(0.1)
    # momentum: x^(2) = 0.1 + 0.75 * (-0.1 - 0.1) + 0.25 * (0.1 - 0) = -0.025
    assert seen[2] == pytest.approx(-0.025)
    assert torch.allclose(seen[3:23], torch.tensor(-0.1))  # x^(3) .. x^(22)
    assert seen[23] == pytest.approx(0.1)


# --------------------------------------------------------------------------- l1-APGD


def test_l1_steps_change_the_top_k_coordinates(digits_cnn, digits50):
    x, y = digits50[0][:10], digits50[1][:10]
    x_adv = APGD(
        digits_cnn, eps=5.0, norm=1, max_iter=1, num_random_init=0, l1_sparsity=0.99
    ).generate(x, y)
    changed = (np.abs(x_adv - x).reshape(10, -1) > 0).sum(1)
    assert changed.min() >= 1 and changed.max() <= 8  # ceil(0.01 * 784)
    assert perturbation_norms(x, x_adv, 1).max() <= 5.0 + 1e-5


def test_l1_checkpoint_follows_the_sparsity_of_the_best_point():
    attack = APGD(None, norm=1)
    x = torch.zeros(2, 100)
    x_best = x.clone()
    x_best[0, :30] = 0.1  # much sparser than before: step size reset, restart
    x_best[1, :97] = 0.01  # about as dense as before: step size shrinks by 1.5
    y, loss, eps = torch.zeros(2, dtype=torch.long), torch.zeros(2), torch.full((2, 1), 3.0)
    s = attack._initial_state(x, y, None, eps, None, x, x, loss, "1")
    s.x_best, s.eta = x_best, torch.tensor([[0.5], [3.0]])
    assert s.last_l0.tolist() == [100.0, 100.0]
    restart = attack._l1_checkpoint(s, 100)
    assert restart.tolist() == [True, False]
    assert s.k.tolist() == [20, 65]  # ceil(l0 / 1.5)
    torch.testing.assert_close(s.eta, torch.tensor([[3.0], [2.0]]))
    for _ in range(10):
        attack._l1_checkpoint(s, 100)
    torch.testing.assert_close(s.eta, torch.tensor([[0.3], [0.3]]))  # never below eps / 10


def test_state_rows_leave_together_and_a_shared_mask_stays():
    attack = APGD(None, norm=2)
    x = torch.arange(6.0).reshape(3, 2)
    y, loss, eps = torch.tensor([0, 1, 2]), torch.tensor([0.1, 0.2, 0.3]), torch.full((3, 1), 1.0)
    mask = torch.ones(1, 2)
    s = attack._initial_state(x, y, mask, eps, torch.tensor([2, 1, 0]), x + 1, x, loss, "2")
    torch.testing.assert_close(s.eta, torch.full((3, 1), 2.0))  # 2 eps for Linf and L2
    kept = s.keep(torch.tensor([True, False, True]))
    assert kept.idx.tolist() == [0, 2] and kept.y.tolist() == [0, 2]
    assert kept.source.tolist() == [2, 0] and kept.loss_best.tolist() == pytest.approx([0.1, 0.3])
    torch.testing.assert_close(kept.x_cur, x[[0, 2]] + 1)
    assert kept.mask is mask
    # a step that raises the loss is counted and becomes the best point
    kept.advance(x[[0, 2]] + 2, x[[0, 2]], torch.tensor([0.5, 0.0]))
    assert kept.n_up.tolist() == [1, 0]
    torch.testing.assert_close(kept.x_best, torch.stack([x[0] + 2, x[2] + 1]))
    kept.restart_from_best(torch.tensor([False, True]))
    torch.testing.assert_close(kept.x_cur, torch.stack([x[0] + 2, x[2] + 1]))
    assert kept.loss.tolist() == pytest.approx([0.5, 0.3])


# --------------------------------------------------------------------------- losses, errors


def test_dlr_loss_values():
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0], [1.0, 5.0, 2.0, 0.0]])
    y = torch.tensor([0, 0])
    # sample 0: -(4 - 3) / (4 - 1); sample 1: -(1 - 5) / (5 - 1)
    torch.testing.assert_close(_dlr_loss(z, y, None), torch.tensor([-1 / 3, 1.0]))
    t = torch.tensor([2, 3])
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    torch.testing.assert_close(_dlr_loss(z, y, t), torch.tensor([-1 / (4 - 0.5), -1 / (5 - 0.5)]))
    # invariant to shifting and scaling the logits
    torch.testing.assert_close(_dlr_loss(3 * z + 7, y, None), _dlr_loss(z, y, None))


def test_dlr_needs_enough_classes():
    net = torch.nn.Linear(4, 2)
    clf = TorchClassifier(net, input_shape=(4,), nb_classes=2)
    x = np.random.default_rng(0).uniform(size=(3, 4)).astype(np.float32)
    with pytest.raises(InvalidParameterError, match=r"'loss' parameter .* at least 3 classes"):
        APGD(clf, loss="dlr").generate(x)
    with pytest.raises(InvalidParameterError, match="'loss' parameter"):
        APGD(clf, loss="hinge").generate(x)
