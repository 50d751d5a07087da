"""Functionally equivalent extraction recovers a random one-hidden-layer ReLU network."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.extraction import FunctionallyEquivalentExtraction
from bastion.defenses.postprocessing import PostprocessedClassifier, Rounding
from bastion.estimators import TorchClassifier
from bastion.exceptions import InvalidParameterError


def random_net(d: int, h: int, m: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(h, d, generator=g, dtype=torch.float64)
    b1 = torch.randn(h, generator=g, dtype=torch.float64)
    W2 = torch.randn(m, h, generator=g, dtype=torch.float64)
    b2 = torch.randn(m, generator=g, dtype=torch.float64)
    return W1, b1, W2, b2


def aligned_errors(fee, W1, b1, W2, b2):
    """Relative errors after matching units (permutation) and normalising rows (scale)."""
    norm = W1.norm(dim=1)
    Wt, bt, W2t = W1 / norm[:, None], b1 / norm, W2 * norm
    perm = (fee.W1_ @ Wt.T).abs().argmax(1)
    assert sorted(perm.tolist()) == list(range(W1.shape[0]))  # a permutation
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    params = torch.cat([fee.W1_.flatten(), fee.b1_, fee.W2_.flatten(), fee.b2_])
    truth = torch.cat([Wt[perm].flatten(), bt[perm], W2t[:, perm].flatten(), b2])
    return rel(fee.W1_, Wt[perm]), rel(fee.W2_, W2t[:, perm]), rel(params, truth)


@pytest.mark.parametrize(("seed", "h", "m"), [(0, 8, 3), (1, 5, 1), (2, 10, 2)])
def test_recovers_the_weights_of_a_random_relu_net(seed, h, m):
    d = 10
    W1, b1, W2, b2 = random_net(d, h, m, seed)
    f = lambda x: torch.relu(x @ W1.T + b1) @ W2.T + b2  # noqa: E731
    fee = FunctionallyEquivalentExtraction(f, nb_neurons=h, input_dim=d, random_state=seed)
    model = fee.extract()
    e1, e2, e_all = aligned_errors(fee, W1, b1, W2, b2)
    assert e_all < 1e-3  # measured ~1e-9
    assert e1 < 1e-3 and e2 < 1e-3
    assert fee.queries_ <= 4000  # measured ~1,550 for h=8 (one or two rounds of 4 lines)
    x = 3 * torch.randn(100, d, dtype=torch.float64)
    assert torch.allclose(model(x).reshape(100, -1), f(x).reshape(100, -1), atol=1e-6)


def test_a_wrong_sign_would_be_caught():
    """Flipping one recovered unit (and keeping its output weight) changes the function:
    the sign step matters and the comparison above can fail."""
    W1, b1, W2, b2 = random_net(10, 6, 2, 5)
    f = lambda x: torch.relu(x @ W1.T + b1) @ W2.T + b2  # noqa: E731
    fee = FunctionallyEquivalentExtraction(f, nb_neurons=6, input_dim=10, random_state=0)
    fee.extract()
    fee.W1_[0] *= -1
    fee.b1_[0] *= -1
    assert aligned_errors(fee, W1, b1, W2, b2)[2] > 1e-2


def test_estimator_victims_logits_and_probabilities():
    d, h, m = 10, 6, 3
    W1, b1, W2, b2 = random_net(d, h, m, 3)
    net = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, m))
    net = net.to(torch.float64)
    with torch.no_grad():
        net[0].weight.copy_(W1)
        net[0].bias.copy_(b1)
        net[2].weight.copy_(W2)
        net[2].bias.copy_(b2)
    victim = TorchClassifier(net, input_shape=(d,), nb_classes=m, clip_values=None)
    fee = FunctionallyEquivalentExtraction(victim, nb_neurons=h, random_state=0)
    stolen = fee.extract()
    assert fee.queries_ == victim.query_count
    assert aligned_errors(fee, W1, b1, W2, b2)[2] < 1e-3
    x = 2 * torch.randn(200, d, dtype=torch.float64)
    assert torch.allclose(stolen.predict(x), victim.predict(x), atol=1e-8)

    # predict-only: centred log-probabilities, i.e. the logits up to a per-sample shift
    api = PostprocessedClassifier(victim, postprocessors=[])
    fee = FunctionallyEquivalentExtraction(api, nb_neurons=h, random_state=0)
    stolen = fee.extract()
    assert fee.queries_ == api.query_count
    W2c, b2c = W2 - W2.mean(0), b2 - b2.mean()
    assert aligned_errors(fee, W1, b1, W2c, b2c)[0] < 1e-3
    assert torch.allclose(stolen.predict(x), victim.predict(x), atol=1e-6)


def test_rounded_outputs_defeat_it():
    """Rounding the probabilities hides the kinks: the attack fails loudly."""
    net = torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    victim = TorchClassifier(net.double(), input_shape=(10,), nb_classes=3, clip_values=None)
    api = PostprocessedClassifier(victim, postprocessors=[Rounding(decimals=2)])
    fee = FunctionallyEquivalentExtraction(api, nb_neurons=6, max_rounds=2, random_state=0)
    with pytest.raises(RuntimeError, match="hidden units"):
        fee.extract()


def test_errors():
    f = lambda x: x.sum(1)  # noqa: E731
    with pytest.raises(InvalidParameterError, match="input_dim"):
        FunctionallyEquivalentExtraction(f, nb_neurons=2).extract()
    with pytest.raises(InvalidParameterError, match="nb_neurons"):
        FunctionallyEquivalentExtraction(f, nb_neurons=5, input_dim=3).extract()
    with pytest.raises(InvalidParameterError, match="grid_size"):
        FunctionallyEquivalentExtraction(f, nb_neurons=2, input_dim=3, grid_size=2).extract()
