"""BIM and MIM on the bundled digits CNN."""

import inspect

import numpy as np
import pytest
import torch

from bastion.attacks import perturbation_norms
from bastion.attacks._lp import project_point
from bastion.attacks.evasion import PGD
from bastion.attacks.evasion.iterative import (
    BIM,
    MIM,
    BasicIterativeMethod,
    MomentumIterativeMethod,
)
from bastion.exceptions import InvalidParameterError
from conftest import accuracy


def test_aliases():
    assert BIM is BasicIterativeMethod and MIM is MomentumIterativeMethod


def test_bim_breaks_the_digits_cnn_within_budget(digits_cnn, digits_test):
    x, y = digits_test
    x_adv = BIM(digits_cnn, eps=0.3, eps_step=0.01, max_iter=40).generate(x, y)
    assert accuracy(digits_cnn, x_adv, y) < 0.05
    assert perturbation_norms(x, x_adv, "inf").max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_bim_is_pgd_without_random_start(digits_cnn, digits_test):
    x, y = digits_test[0][:40], digits_test[1][:40]
    for norm, eps, step in (("inf", 0.1, 0.02), (2, 1.0, 0.2)):
        kw = dict(eps=eps, eps_step=step, max_iter=8, norm=norm)
        bim = BIM(digits_cnn, **kw).generate(x, y)
        pgd = PGD(digits_cnn, num_random_init=0, **kw).generate(x, y)
        np.testing.assert_array_equal(bim, pgd)
        # deterministic: no random start, so two runs agree
        np.testing.assert_array_equal(bim, BIM(digits_cnn, **kw).generate(x, y))


def test_bim_has_no_random_start_parameters(digits_cnn):
    params = inspect.signature(BIM.__init__).parameters
    assert "num_random_init" not in params and "random_state" not in params
    attack = BIM(digits_cnn, eps=0.1)
    assert set(attack.get_params()) == {
        "eps",
        "eps_step",
        "max_iter",
        "norm",
        "targeted",
        "l1_sparsity",
        "batch_size",
        "verbose",
    }
    assert attack.num_random_init == 0
    assert repr(attack) == "BasicIterativeMethod(estimator=TorchClassifier, eps=0.1)"
    with pytest.raises(InvalidParameterError, match="Valid parameters are"):
        attack.set_params(num_random_init=1)
    with pytest.raises(InvalidParameterError, match="'eps_step' parameter of BasicIterative"):
        BIM(digits_cnn, eps_step=-1.0).generate(np.zeros((1, 1, 28, 28), np.float32))


def test_mim_breaks_the_digits_cnn_within_budget(digits_cnn, digits_test):
    x, y = digits_test
    x_adv = MIM(digits_cnn, eps=0.3).generate(x, y)  # paper defaults: 10 steps of eps / 10
    assert accuracy(digits_cnn, x_adv, y) < 0.10
    assert perturbation_norms(x, x_adv, "inf").max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    x_l2 = MIM(digits_cnn, eps=2.0, eps_step=0.25, norm=2).generate(x[:60], y[:60])
    assert perturbation_norms(x[:60], x_l2, 2).max() <= 2.0 * (1 + 1e-6)
    assert accuracy(digits_cnn, x_l2, y[:60]) < 0.5


def test_mim_without_momentum_is_bim(digits_cnn, digits_test):
    """decay=0: g_t = grad / ||grad||_1, whose sign is sign(grad): the BIM step exactly."""
    x, y = digits_test[0][:60], digits_test[1][:60]
    kw = dict(eps=0.2, eps_step=0.03, max_iter=10)
    mim = MIM(digits_cnn, decay=0.0, **kw).generate(x, y)
    np.testing.assert_array_equal(mim, BIM(digits_cnn, **kw).generate(x, y))
    # ... and momentum does change the path
    assert np.any(MIM(digits_cnn, decay=1.0, **kw).generate(x, y) != mim)


@pytest.mark.parametrize("norm", ["inf", 2])
def test_mim_follows_the_papers_update(digits_cnn, digits_test, norm):
    """A hand-written MI-FGSM loop (Dong et al., Algorithm 1 and its L2 variant)."""
    x = torch.as_tensor(digits_test[0][:20])
    y = torch.as_tensor(digits_test[1][:20])
    eps, step, mu, steps = (0.2, 0.05, 0.8, 5) if norm == "inf" else (1.5, 0.4, 0.8, 5)
    g = torch.zeros_like(x)
    x_ref = x.clone()
    for _ in range(steps):
        grad = digits_cnn.loss_gradient_tensor(x_ref, y)
        g = mu * g + grad / grad.abs().sum(dim=(1, 2, 3), keepdim=True)
        if norm == "inf":
            d = g.sign()
        else:
            d = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        x_ref = project_point(x_ref + step * d, x, torch.tensor(eps), str(norm), (0.0, 1.0))
    out = MIM(digits_cnn, eps=eps, eps_step=step, max_iter=steps, decay=mu, norm=norm).generate(
        x, y
    )
    torch.testing.assert_close(out, x_ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [BIM, MIM])
def test_targeted_variants_reach_their_targets(digits_cnn, digits_test, cls):
    x, y = digits_test[0][:100], digits_test[1][:100]
    target = (y + 3) % 10
    kw = dict(eps_step=0.02, max_iter=40) if cls is BIM else {}
    x_adv = cls(digits_cnn, eps=0.3, targeted=True, **kw).generate(x, target)
    hit = np.asarray(digits_cnn.predict(x_adv)).argmax(1) == target
    assert hit.mean() > 0.8
    assert perturbation_norms(x, x_adv, "inf").max() <= 0.3 + 1e-6


def test_mask_and_per_sample_budgets(digits_cnn, digits_test):
    x, y = digits_test[0][:20], digits_test[1][:20]
    mask = np.zeros((1, 28, 28), np.float32)
    mask[:, 7:21, 7:21] = 1
    eps = np.linspace(0.0, 0.3, 20)
    for attack in (BIM(digits_cnn, eps=eps, max_iter=10), MIM(digits_cnn, eps=eps)):
        x_adv = attack.generate(x, y, mask=mask)
        np.testing.assert_array_equal(x_adv[..., mask[0] == 0], x[..., mask[0] == 0])
        assert np.all(perturbation_norms(x, x_adv, "inf") <= eps + 1e-6)


def test_mim_rejects_norm_1(digits_cnn, digits_test):
    with pytest.raises(InvalidParameterError, match=r"'norm' parameter of MomentumIterative"):
        MIM(digits_cnn, norm=1).generate(digits_test[0][:2], digits_test[1][:2])
