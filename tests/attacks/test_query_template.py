"""The black-box template: per-sample query budgets, exact accounting, no hidden queries."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from bastion.attacks._queries import QueryCounter
from bastion.attacks.base import (
    BATCH_SIZE,
    BUDGET,
    MAX_QUERIES,
    RANDOM_STATE,
    FixedBudgetAttack,
    MinimumNormAttack,
    QueryAttack,
)
from bastion.exceptions import EstimatorError
from bastion.testing import check_attack
from bastion.testing._problems import blackbox_problem


class _RandomSearch(QueryAttack, FixedBudgetAttack):
    """Toy score-based attack: random sign perturbations, one query per step per sample."""

    _parameter_constraints: ClassVar[dict] = {
        "eps": BUDGET,
        "max_queries": MAX_QUERIES,
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
    }
    norm = "inf"
    _conformance: ClassVar[dict] = {
        "skip": {"check_batch_size_invariance": "random draws depend on batch composition"}
    }

    def __init__(self, estimator, *, eps=0.3, max_queries=30, batch_size=64, random_state=None):
        self.estimator = estimator
        self.eps = eps
        self.max_queries = max_queries
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = False

    def _attack(self, x, y, mask, generator, eps, index):
        x_adv = x.clone()
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        while True:
            active &= self._counter.has_budget(index)
            if not bool(active.any()):
                return x_adv
            idx = active.nonzero().squeeze(1)
            noise = torch.randint(0, 2, x[idx].shape, generator=generator, device=x.device)
            cand = (x[idx] + eps[idx] * (2 * noise - 1)).clamp(0, 1)
            if mask is not None:
                cand = x[idx] + (cand - x[idx]) * (mask if mask.shape[0] == 1 else mask[idx])
            won = self._counter.labels(cand, index[idx]) != y[idx]
            x_adv[idx[won]] = cand[won]
            active[idx[won]] = False


class _DecisionToy(QueryAttack, MinimumNormAttack):
    """Toy labels-only attack that reports its own success (no verification query)."""

    _parameter_constraints: ClassVar[dict] = {"max_queries": MAX_QUERIES, "batch_size": BATCH_SIZE}
    _needs_scores = False
    targeted = False

    def __init__(self, estimator, *, max_queries=10, batch_size=64):
        self.estimator = estimator
        self.max_queries = max_queries
        self.batch_size = batch_size
        self.verbose = False

    def _attack(self, x, y, mask, generator, index):
        ok = self._counter.has_budget(index)
        cand = 1.0 - x if mask is None else x + (1.0 - 2 * x) * mask
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        success[ok] = self._counter.labels(cand[ok], index[ok]) != y[ok]
        return cand, success


def test_counter_refuses_queries_beyond_budget():
    problem = blackbox_problem(4)
    counter = QueryCounter(problem.estimator, 2, 4, torch.device("cpu"))
    x = torch.as_tensor(problem.x)
    counter.predict(x, torch.arange(4))
    with pytest.raises(RuntimeError, match="max_queries"):
        counter.predict(x[:2], torch.tensor([3, 3]))  # sample 3 would spend 3 of 2
    assert counter.used.tolist() == [1, 1, 1, 1]


def test_counter_counts_rows_per_sample():
    problem = blackbox_problem(4)
    counter = QueryCounter(problem.estimator, 3, 4, torch.device("cpu"), initial=1)
    x = torch.as_tensor(problem.x)
    counter.predict(x[:3], torch.tensor([0, 0, 2]))
    assert counter.used.tolist() == [3, 1, 2, 1]
    assert counter.has_budget(torch.arange(4)).tolist() == [False, True, True, True]
    assert counter.remaining(torch.tensor([1, 2])).tolist() == [2, 1]
    with pytest.raises(RuntimeError, match="max_queries"):
        counter.predict(x[:1], torch.tensor([0]))
    assert counter.used.tolist() == [3, 1, 2, 1]  # a refused call charges nothing
    assert problem.estimator.query_count == 3


@pytest.mark.parametrize("y_given", [True, False])
def test_template_charges_every_query(y_given):
    problem = blackbox_problem(12)
    attack = _RandomSearch(problem.estimator, eps=0.05, max_queries=7, random_state=0)
    before = problem.estimator.query_count
    attack.generate(problem.x, problem.y if y_given else None)
    assert attack.queries_.max() <= 7
    assert problem.estimator.query_count - before == attack.queries_.sum()
    if not y_given:
        assert attack.queries_.min() >= 1


def test_score_attack_refuses_labels_only():
    problem = blackbox_problem(4, labels_only=True)
    with pytest.raises(EstimatorError, match="decision-based"):
        _RandomSearch(problem.estimator).generate(problem.x, problem.y)


def test_decision_attack_success_spends_no_verification_query():
    problem = blackbox_problem(6, labels_only=True)
    attack = _DecisionToy(problem.estimator, max_queries=1)
    before = problem.estimator.query_count
    x_adv = attack.generate(problem.x, problem.y)
    assert problem.estimator.query_count - before == attack.queries_.sum() == 6
    changed = np.any(x_adv != problem.x, axis=(1, 2, 3))
    pred = problem.estimator.predict(x_adv).argmax(1)
    assert np.all(pred[changed] != problem.y[changed])


@pytest.mark.parametrize("cls", [_RandomSearch, _DecisionToy])
def test_toy_attacks_pass_conformance(cls):
    ran = check_attack(cls)
    assert "check_query_budget" in ran
