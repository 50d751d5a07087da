"""Fidelity, thief accuracy and the accuracy-versus-queries curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.extraction import CopycatCNN
from bastion.estimators import BlackBoxClassifier, TorchClassifier
from bastion.exceptions import EstimatorError, InputError
from bastion.metrics.extraction import accuracy_vs_queries, fidelity, thief_accuracy


def fixed(labels):
    """A label-only model answering ``labels[i]`` for the i-th row (by its first feature)."""
    lab = np.asarray(labels)
    return BlackBoxClassifier(
        lambda x: lab[x[:, 0].astype(int)],
        input_shape=(2,),
        nb_classes=3,
        labels_only=True,
    )


def test_fidelity_and_accuracy_known_answers():
    x = np.stack([np.arange(6), np.zeros(6)], 1).astype(np.float32)
    a, b = fixed([0, 1, 2, 0, 1, 2]), fixed([0, 1, 2, 1, 1, 0])
    assert fidelity(a, b, x) == pytest.approx(4 / 6)
    assert fidelity(a, a, x) == 1.0
    assert thief_accuracy(b, x, [0, 1, 2, 0, 1, 2]) == pytest.approx(4 / 6)
    assert thief_accuracy(
        b, torch.from_numpy(x), torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    ) == pytest.approx(4 / 6)
    assert a.query_count == 18  # every prediction of a is counted (6 + 12)
    with pytest.raises(InputError):
        thief_accuracy(b, x, [0, 1])
    with pytest.raises(EstimatorError):
        fidelity(torch.nn.Linear(2, 3), b, x)


def test_accuracy_vs_queries_grows_with_the_budget():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 2, generator=g)
    y = (x[:, 0] > x[:, 1]).long() + (x.sum(1) > 1.2).long()
    net, thief_net = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    with torch.no_grad():  # seeded: the modules' default init draws from the global RNG
        for p in (*net.parameters(), *thief_net.parameters()):
            p.uniform_(-0.5, 0.5, generator=g)
    victim = TorchClassifier(net, input_shape=(2,), nb_classes=3)
    victim.fit(x, y, epochs=60, learning_rate=0.05, random_state=0)
    thief = TorchClassifier(thief_net, input_shape=(2,), nb_classes=3)
    w0 = thief_net.weight.detach().clone()
    attack = CopycatCNN(
        victim, thief=thief, nb_queries=1, epochs=20, learning_rate=0.05, random_state=0
    )
    before = victim.query_count
    curve = accuracy_vs_queries(attack, x[:400], x[400:], y[400:], budgets=[3, 300])
    assert curve["queries"] == [3, 300]
    assert curve["fidelity"][1] >= 0.9 and curve["fidelity"][1] > curve["fidelity"][0]
    assert curve["accuracy"][1] > curve["accuracy"][0]
    assert torch.equal(thief_net.weight, w0) and attack.nb_queries == 1  # left untouched
    assert victim.query_count - before == 303 + 2 * 200  # attacks + fidelity predictions
    with pytest.raises(InputError):
        accuracy_vs_queries(attack, x, x, y, budgets=[])
