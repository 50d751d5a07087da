"""Virtual adversarial perturbations: power iteration finds the dominant eigenvector of the
Hessian of the KL divergence."""

import numpy as np
import torch
from torch import nn

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion import VirtualAdversarialMethod
from bastion.estimators import TorchClassifier


def _double_mlp():
    g = torch.Generator().manual_seed(0)
    a = nn.Linear(6, 8, device="meta").to_empty(device="cpu").double()
    b = nn.Linear(8, 3, device="meta").to_empty(device="cpu").double()
    with torch.no_grad():
        for p in (*a.parameters(), *b.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return nn.Sequential(a, nn.Tanh(), b)


def test_direction_is_the_top_eigenvector_of_the_kl_hessian():
    clf = TorchClassifier(_double_mlp(), input_shape=(6,), nb_classes=3, clip_values=None)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = VirtualAdversarialMethod(clf, eps=1.0, max_iter=30, xi=1e-4, random_state=0).generate(x) - x
    for i in range(4):
        p = torch.softmax(clf.model(x[i : i + 1]), 1).detach()

        def kl(r, i=i, p=p):
            q = torch.log_softmax(clf.model(x[i : i + 1] + r), 1)
            return (p * (p.log() - q)).sum()

        h = torch.autograd.functional.hessian(kl, torch.zeros(1, 6, dtype=torch.float64))
        vals, vecs = torch.linalg.eigh(h.reshape(6, 6))
        top = vecs[:, -1]
        assert vals[-1] > 1.2 * vals[-2].abs()  # power iteration converges: 30 steps suffice
        cos = torch.dot(d[i], top) / d[i].norm()
        assert abs(float(cos)) > 0.999


def test_budget_and_label_free(digits_cnn, digits_test):
    x, y = digits_test
    x_adv = VirtualAdversarialMethod(digits_cnn, eps=3.0, random_state=0).generate(x)
    assert perturbation_norms(x, x_adv, 2).max() <= 3.0 + 1e-5
    # labels are not used: passing wrong labels changes nothing
    again = VirtualAdversarialMethod(digits_cnn, eps=3.0, random_state=0).generate(x, (y + 1) % 10)
    np.testing.assert_array_equal(x_adv, again)
    changed = np.asarray(digits_cnn.predict(x_adv)).argmax(1) != np.asarray(
        digits_cnn.predict(x)
    ).argmax(1)
    # far more damaging than random noise of the same L2 norm
    g = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    noise = np.clip(
        x + 3.0 * g / np.linalg.norm(g.reshape(len(x), -1), axis=1)[:, None, None, None], 0, 1
    )
    noise_changed = np.asarray(digits_cnn.predict(noise)).argmax(1) != np.asarray(
        digits_cnn.predict(x)
    ).argmax(1)
    assert changed.mean() > noise_changed.mean() + 0.1
