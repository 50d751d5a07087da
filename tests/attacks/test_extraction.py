"""Copycat CNN and Knockoff Nets steal the digits CNN; query accounting; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.extraction import CopycatCNN, KnockoffNets
from bastion.defenses.postprocessing import LabelsOnly, PostprocessedClassifier
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.metrics.extraction import fidelity
from bastion.zoo import SmallCNN

BUDGET = 500  # victim queries: about 37% of the 1,347 digits the attacker holds


def fresh_thief(seed: int = 1) -> TorchClassifier:
    return TorchClassifier(
        SmallCNN(in_channels=1, nb_classes=10, random_state=seed),
        input_shape=(1, 28, 28),
        nb_classes=10,
    )


def test_copycat_steals_the_digits_cnn(digits_cnn, digits28):
    (x_pool, _), (x_te, _) = digits28
    before = digits_cnn.query_count
    attack = CopycatCNN(
        digits_cnn, thief=fresh_thief(), nb_queries=BUDGET, epochs=10, random_state=0
    )
    thief = attack.extract(x_pool)
    assert thief is attack.thief
    assert attack.queries_ == BUDGET
    assert digits_cnn.query_count - before == BUDGET
    assert attack.y_queried_.shape == (BUDGET,)  # hard labels
    assert fidelity(digits_cnn, thief, x_te) >= 0.90  # measured 0.969


@pytest.mark.parametrize("sampling", ["random", "adaptive"])
def test_knockoff_steals_the_digits_cnn(digits_cnn, digits28, sampling):
    (x_pool, _), (x_te, _) = digits28
    attack = KnockoffNets(
        digits_cnn,
        thief=fresh_thief(),
        nb_queries=BUDGET,
        sampling=sampling,
        epochs=10,
        random_state=0,
    )
    thief = attack.extract(x_pool)
    assert attack.queries_ == BUDGET
    assert attack.y_queried_.shape == (BUDGET, 10)  # soft labels
    assert fidelity(digits_cnn, thief, x_te) >= 0.90  # measured 0.973 random, 0.964 adaptive
    if sampling == "adaptive":
        assert attack.actions_.shape == (BUDGET,)
        assert torch.isclose(attack.policy_.sum(), torch.tensor(1.0))


def test_knockoff_adaptive_policy_prefers_rewarding_actions():
    """Two coarse classes: one whose samples the victim labels with certainty, one where it is
    unsure. With the certainty reward the bandit must learn to prefer the first."""
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[4.0, 0.0], [-4.0, 0.0]])
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(w)
        net.bias.zero_()
    victim = TorchClassifier(net, input_shape=(2,), nb_classes=2, clip_values=None)
    thief = TorchClassifier(torch.nn.Linear(2, 2), input_shape=(2,), nb_classes=2, clip_values=None)
    sure = torch.rand(300, 2, generator=g) + torch.tensor([2.0, 0.0])  # far from x0 = 0
    unsure = 0.05 * torch.randn(300, 2, generator=g)  # on the boundary
    x_pool = torch.cat([sure, unsure])
    y_pool = torch.cat([torch.zeros(300), torch.ones(300)]).long()
    attack = KnockoffNets(
        victim,
        thief=thief,
        nb_queries=200,
        sampling="adaptive",
        reward="cert",
        policy_learning_rate=0.5,
        epochs=1,
        random_state=0,
    )
    attack.extract(x_pool, y_pool=y_pool)
    counts = torch.bincount(attack.actions_, minlength=2)
    assert attack.policy_[0] > 0.8
    assert counts[0] > 2 * counts[1]


def test_knockoff_actions_are_the_pools_clusters():
    """Without coarse labels, the actions are k-means clusters of the pool (the library's
    seeded k-means++ / Lloyd): four far-apart groups of pool samples are four actions."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    group = torch.arange(200) % 4
    x_pool = centres[group] + 0.3 * torch.randn(200, 2, generator=g)
    victim, thief = (
        TorchClassifier(torch.nn.Linear(2, 3), input_shape=(2,), nb_classes=3, clip_values=None)
        for _ in range(2)
    )
    attack = KnockoffNets(
        victim, thief=thief, nb_queries=120, sampling="adaptive", nb_actions=4, random_state=0
    )
    attack.extract(x_pool)
    queried = torch.cdist(attack.x_queried_, centres).argmin(1)  # group of each query
    pairs = set(zip(attack.actions_.tolist(), queried.tolist(), strict=True))
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4  # action <-> group, 1 to 1


def test_extraction_against_a_labels_only_api(digits_cnn, digits28):
    (x_pool, _), (x_te, _) = digits28
    api = PostprocessedClassifier(digits_cnn, postprocessors=[LabelsOnly()])
    attack = CopycatCNN(api, thief=fresh_thief(), nb_queries=300, epochs=8, random_state=0)
    thief = attack.extract(x_pool)
    assert attack.queries_ == 300 and api.query_count == 300
    assert fidelity(digits_cnn, thief, x_te) >= 0.85


def test_seeded_runs_are_reproducible():
    x = torch.rand(60, 4, generator=torch.Generator().manual_seed(0))

    def run():
        victim = TorchClassifier(
            torch.nn.Sequential(torch.nn.Linear(4, 3)), input_shape=(4,), nb_classes=3
        )
        with torch.no_grad():
            victim.model[0].weight.copy_(torch.arange(12.0).reshape(3, 4) / 6 - 1)
            victim.model[0].bias.zero_()
        thief_net = torch.nn.Linear(4, 3)
        torch.nn.init.zeros_(thief_net.weight)
        torch.nn.init.zeros_(thief_net.bias)
        thief = TorchClassifier(thief_net, input_shape=(4,), nb_classes=3)
        attack = KnockoffNets(
            victim,
            thief=thief,
            nb_queries=30,
            sampling="adaptive",
            nb_actions=3,
            epochs=2,
            random_state=3,
        )
        attack.extract(x)
        return attack.x_queried_, thief.model.weight.detach().clone()

    (xa, wa), (xb, wb) = run(), run()
    assert torch.equal(xa, xb) and torch.equal(wa, wb)


def test_numpy_pool_and_params():
    victim = TorchClassifier(torch.nn.Linear(4, 3), input_shape=(4,), nb_classes=3)
    thief = TorchClassifier(torch.nn.Linear(4, 3), input_shape=(4,), nb_classes=3)
    attack = CopycatCNN(victim, thief=thief, nb_queries=1000, epochs=1, random_state=0)
    assert attack.get_params()["nb_queries"] == 1000
    assert "nb_queries=1000" not in repr(attack) and "epochs=1" in repr(attack)
    attack.extract(np.random.default_rng(0).random((20, 4), dtype=np.float32))
    assert attack.queries_ == 20  # the pool is smaller than the budget


def test_errors_name_the_problem():
    victim = TorchClassifier(torch.nn.Linear(4, 3), input_shape=(4,), nb_classes=3)
    thief = TorchClassifier(torch.nn.Linear(4, 3), input_shape=(4,), nb_classes=3)
    x = torch.rand(10, 4)
    with pytest.raises(InvalidParameterError, match="nb_queries"):
        CopycatCNN(victim, thief=thief, nb_queries=0).extract(x)
    with pytest.raises(InvalidParameterError, match="sampling"):
        KnockoffNets(victim, thief=thief, sampling="greedy").extract(x)
    with pytest.raises(InputError, match="x_pool"):
        CopycatCNN(victim, thief=thief).extract(torch.rand(10, 5))
    other = TorchClassifier(torch.nn.Linear(4, 2), input_shape=(4,), nb_classes=2)
    with pytest.raises(InputError, match="nb_classes"):
        CopycatCNN(victim, thief=other).extract(x)
    with pytest.raises(EstimatorError):
        CopycatCNN(torch.nn.Linear(4, 3), thief=thief).extract(x)
    with pytest.raises(InputError, match="y_pool"):
        KnockoffNets(victim, thief=thief, sampling="adaptive").extract(x, y_pool=torch.zeros(3))
