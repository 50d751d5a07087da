"""JSMA: the linear-time pair choice, sparsity bounds, masks, and a 224x224x1000 memory check."""

import resource

import numpy as np
import torch

from bastion.attacks.evasion.saliency_map import JSMA, SaliencyMapMethod
from bastion.estimators import TorchClassifier
from bastion.testing import check_attack

D_DIGITS = 28 * 28


def _changed(x, x_adv):
    return np.sum((np.asarray(x_adv) != np.asarray(x)).reshape(len(x), -1), axis=1)


def test_conformance():
    assert JSMA is SaliencyMapMethod
    check_attack(SaliencyMapMethod)


def test_beta_is_minus_alpha(digits_cnn, digits_test):
    """The speed-up rests on sum_k dF_k/dx = 0: the other classes' derivatives sum to -dF_t."""
    x = torch.as_tensor(digits_test[0][:4]).requires_grad_(True)
    p = torch.softmax(digits_cnn.model(x), dim=1)
    g_t = torch.autograd.grad(p[:, 3].sum(), x, retain_graph=True)[0]
    g_rest = torch.autograd.grad(p[:, [k for k in range(10) if k != 3]].sum(), x)[0]
    torch.testing.assert_close(g_rest, -g_t, atol=1e-6, rtol=1e-4)


def test_one_step_changes_the_two_largest_gradient_components(digits_cnn, digits_test):
    """One step by hand: the two unsaturated features with the largest dF_t/dx go up by theta."""
    x = torch.as_tensor(digits_test[0][:8])
    t = (torch.as_tensor(digits_test[1][:8]) + 1) % 10
    attack = JSMA(digits_cnn, theta=0.5, gamma=2 / D_DIGITS, targeted=True)  # one step
    x_adv = attack._attack(x, t, None, torch.Generator())
    xr = x.clone().requires_grad_(True)
    p = torch.softmax(digits_cnn.model(xr), dim=1).gather(1, t.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(p, xr)
    score = g.flatten(1).masked_fill(x.flatten(1) >= 1.0, float("-inf"))
    idx = score.topk(2, dim=1).indices
    expected = x.flatten(1).clone()
    expected.scatter_add_(1, idx, torch.full_like(idx, 0, dtype=x.dtype) + 0.5)
    torch.testing.assert_close(x_adv.flatten(1), expected.clamp(0, 1))
    # decreasing: the two most negative components among features above 0
    attack.set_params(theta=-0.5)
    x_dec = attack._attack(x, t, None, torch.Generator())
    score = (-g.flatten(1)).masked_fill(x.flatten(1) <= 0.0, float("-inf"))
    idx = score.topk(2, dim=1).indices
    expected = x.flatten(1).clone()
    expected.scatter_add_(1, idx, torch.full_like(idx, 0, dtype=x.dtype) - 0.5)
    torch.testing.assert_close(x_dec.flatten(1), expected.clamp(0, 1))


def test_targeted_success_and_sparsity_on_digits(digits_cnn, digits_test):
    x, y = digits_test[0][:60], digits_test[1][:60]
    target = (y + 1 + np.arange(len(y)) % 9) % 10  # every wrong class appears
    gamma = 0.15
    x_adv = JSMA(digits_cnn, theta=1.0, gamma=gamma, targeted=True).generate(x, target)
    hit = np.asarray(digits_cnn.predict(x_adv)).argmax(1) == target
    changed = _changed(x, x_adv)
    assert hit.mean() >= 0.9, hit.mean()
    assert np.all(changed <= gamma * D_DIGITS)
    assert np.all(changed[~hit] == 0)  # failures come back unchanged
    # theta = 1 on [0, 1]: every changed pixel is pushed to the upper bound
    moved = np.asarray(x_adv) != np.asarray(x)
    assert np.all(np.asarray(x_adv)[moved] == 1.0)
    frac = np.median(changed[hit]) / D_DIGITS
    print(f"JSMA targeted: success {hit.mean():.3f}, median changed fraction {frac:.4f}")
    assert frac <= 0.08  # paper: about 4% on MNIST


def test_untargeted_and_decreasing(digits_cnn, digits_test):
    x, y = digits_test[0][:40], digits_test[1][:40]
    ok = np.asarray(digits_cnn.predict(x)).argmax(1) == y
    x_adv = JSMA(digits_cnn, gamma=0.1).generate(x, y)
    fooled = (np.asarray(digits_cnn.predict(x_adv)).argmax(1) != y)[ok]
    assert fooled.mean() >= 0.9, fooled.mean()
    assert np.all(_changed(x, x_adv) <= 0.1 * D_DIGITS)
    x_dec = JSMA(digits_cnn, theta=-1.0, gamma=0.1).generate(x, y)
    assert np.all(np.asarray(x_dec) <= np.asarray(x))  # only decreases
    fooled_dec = (np.asarray(digits_cnn.predict(x_dec)).argmax(1) != y)[ok]
    print(f"JSMA untargeted: increase {fooled.mean():.3f}, decrease {fooled_dec.mean():.3f}")
    assert fooled_dec.mean() >= 0.5


def test_mask_restricts_changes(digits_cnn, digits_test):
    x, y = digits_test[0][:20], digits_test[1][:20]
    mask = np.zeros((1, 28, 28), dtype=np.float32)
    mask[:, 7:21, 7:21] = 1  # the centre only
    x_adv = JSMA(digits_cnn, gamma=0.15).generate(x, y, mask=mask)
    diff = np.asarray(x_adv) != np.asarray(x)
    assert not np.any(diff[:, mask == 0])
    assert np.any(diff)  # the attack still changed something inside the mask


def test_imagenet_sized_model_runs_in_little_memory():
    """3x224x224 inputs, 1000 classes, 4 images: no (D x D) or (K x D) table is built."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel_size=8, stride=8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 1000),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    clf = TorchClassifier(net, input_shape=(3, 224, 224), nb_classes=1000, clip_values=(0, 1))
    x = torch.rand(4, 3, 224, 224, generator=g) * 0.5
    target = torch.tensor([1, 2, 3, 4])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    gamma = 0.0005
    attack = JSMA(clf, gamma=gamma, targeted=True)
    x_adv = attack.generate(x, target)
    # the raw iterate, before the template returns failures unchanged
    x_raw = attack._attack(x, target, None, torch.Generator())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    budget = gamma * 3 * 224 * 224  # 75.3: 37 pair steps
    reached = clf.predict_tensor(x_adv).argmax(1) == target
    changed = (x_adv != x).flatten(1).sum(dim=1)
    raw = (x_raw != x).flatten(1).sum(dim=1)
    assert torch.all(changed <= budget) and torch.all(raw <= budget)
    assert torch.all(changed[~reached] == 0)
    assert torch.all((raw == 74) | reached)  # unfinished samples used their whole budget
    grown_mib = (after - before) / 1024
    print(f"JSMA 224x224x1000: peak RSS grew {grown_mib:.1f} MiB, raw changed {raw.tolist()}")
    # a single (D x D) float table would be ~84 GiB, a (K x D) Jacobian ~600 MiB per image
    assert grown_mib < 500
