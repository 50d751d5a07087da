"""The black-box template: per-sample query budgets, exact accounting, no hidden queries."""

from __future__ import annotations

import re
import warnings
from typing import ClassVar

import numpy as np
import pytest
import torch

from bastion._validation import BATCH_SIZE, BUDGET, MAX_QUERIES, RANDOM_STATE
from bastion.attacks._queries import QueryCounter
from bastion.attacks._search import bisect, first_adversarial
from bastion.attacks.base import FixedBudgetAttack, MinimumNormAttack
from bastion.attacks.evasion.boundary import BoundaryAttack
from bastion.attacks.evasion.geoda import GeoDA
from bastion.attacks.evasion.hop_skip_jump import HopSkipJump
from bastion.attacks.evasion.nes import BanditsAttack, NESAttack
from bastion.attacks.evasion.sign_opt import SignOPT
from bastion.attacks.evasion.simba import SimBA
from bastion.attacks.query import AttackInterruptedError, QueryAttack
from bastion.estimators import BlackBoxClassifier
from bastion.exceptions import EstimatorError, ModelError
from bastion.testing import ConformanceSpec, check_attack, register_conformance
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


@pytest.fixture(autouse=True, scope="module")
def _random_search_spec():
    """How the conformance suite runs the toy random search, registered for this module."""
    skip = {"check_batch_size_invariance": "random draws depend on batch composition"}
    previous = register_conformance(_RandomSearch, ConformanceSpec(skip=skip))
    yield
    register_conformance(_RandomSearch, previous)


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


# --------------------------------------------------------------------------- nothing silent


def _flaky(fail_after: int, *, labels_only: bool = False, n_features: int | None = None):
    """The digits MLP behind an endpoint that raises ConnectionError from call
    ``fail_after + 1`` on; ``calls`` counts every call, answered or not."""
    net = blackbox_problem(4).estimator
    calls = []

    def endpoint(batch):
        calls.append(len(batch))
        if len(calls) > fail_after:
            raise ConnectionError("the endpoint went down")
        return np.asarray(net.predict(batch))

    clf = BlackBoxClassifier(
        endpoint, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1), labels_only=labels_only
    )
    return clf, calls


def test_counter_charges_only_answered_queries():
    clf, calls = _flaky(1)
    x = torch.as_tensor(blackbox_problem(4).x).repeat(40, 1, 1, 1)  # 160 rows: 3 calls of 64
    counter = QueryCounter(clf, 5, 40, torch.device("cpu"))
    with pytest.raises(ModelError) as info:
        counter.predict(x, torch.arange(40).repeat_interleave(4))
    assert isinstance(info.value.__cause__, ConnectionError)
    assert calls == [64, 64]  # the second call failed, the third was never made
    assert counter.used.sum().item() == clf.query_count == 64
    assert counter.used[:16].tolist() == [4] * 16 and counter.used[16:].sum() == 0


def test_counter_never_sends_nan():
    clf, calls = _flaky(10)
    counter = QueryCounter(clf, 5, 2, torch.device("cpu"))
    x = torch.full((2, 1, 8, 8), 0.5)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        counter.predict(x, torch.arange(2))
    assert calls == [] and counter.used.sum() == 0


def test_watch_keeps_the_closest_adversarial_point():
    # One feature, class 1 above 0.5: from x = 0.2 (class 0) the closest answered class-1
    # point is 0.6; with a radius of 0.3 none counts.
    clf = BlackBoxClassifier(
        lambda b: (b[:, 0] > 0.5).astype(int), input_shape=(1,), nb_classes=2, labels_only=True
    )
    x, y = torch.tensor([[0.2], [0.2]]), torch.tensor([0, 0])
    queries = torch.tensor([[0.9], [0.4], [0.6], [0.6], [0.7]])
    owners = torch.tensor([0, 0, 0, 1, 1])
    for radius, best, found in (
        (None, [[0.6], [0.6]], [True, True]),
        (torch.tensor([0.3, 0.45]), [[0.2], [0.6]], [False, True]),
    ):
        counter = QueryCounter(clf, 10, 2, torch.device("cpu"))
        counter.watch(x, y, 0, adversarial=lambda p, t: p.argmax(1) != t, norm="2", radius=radius)
        counter.predict(queries, owners)
        got_best, got_found = counter.watched()
        assert torch.allclose(got_best, torch.tensor(best)) and got_found.tolist() == found


@pytest.mark.parametrize("cls", [_RandomSearch, _DecisionToy])
def test_success_is_what_the_model_says(cls):
    problem = blackbox_problem(12, labels_only=cls is _DecisionToy)
    attack = cls(problem.estimator, max_queries=10)
    mask = np.zeros((1, 8, 8), dtype=np.float32)
    mask[:, 3] = 1  # one row may change: some samples break, some do not
    x_adv = attack.generate(problem.x, problem.y, mask=mask)
    adversarial = problem.estimator.predict(x_adv).argmax(1) != problem.y
    assert attack.success_.dtype == bool
    np.testing.assert_array_equal(attack.success_, adversarial)
    assert adversarial.any() and not adversarial.all()  # the check is not vacuous


def test_a_sample_that_got_no_query_is_reported():
    problem = blackbox_problem(5)
    with pytest.warns(RuntimeWarning, match=r"sent no query for 5 of 5 samples \(max_queries=1"):
        x_adv = _RandomSearch(problem.estimator, max_queries=1).generate(problem.x)
    np.testing.assert_array_equal(x_adv, problem.x)


def test_failure_while_predicting_the_labels():
    clf, _ = _flaky(0)
    problem = blackbox_problem(4)
    attack = _RandomSearch(clf, max_queries=10)
    with pytest.raises(AttackInterruptedError, match="0 of 4 samples finished") as info:
        attack.generate(problem.x)
    partial = info.value.partial_result
    np.testing.assert_array_equal(partial.x_adv, problem.x)
    assert not partial.finished.any() and not partial.success.any()
    assert partial.queries.sum() == 0


# The attacks on the template, with small settings for the 8x8 digits MLP.
_BLACK_BOX = [
    (HopSkipJump, {"max_queries": 150, "nb_init_evals": 20}),
    (BoundaryAttack, {"max_queries": 150}),
    (GeoDA, {"max_queries": 150}),
    (SignOPT, {"max_queries": 150, "nb_init_directions": 10, "nb_grad_queries": 10}),
    (SimBA, {"max_queries": 100}),
    (NESAttack, {"max_queries": 110, "nb_samples": 10, "sigma": 0.01}),
    (BanditsAttack, {"max_queries": 90, "tile_size": 2, "online_learning_rate": 10.0}),
]


@pytest.mark.parametrize(("cls", "params"), _BLACK_BOX, ids=lambda v: getattr(v, "__name__", ""))
def test_endpoint_failure_keeps_what_was_found(cls, params):
    """A labels-only (decision-based) or score endpoint that stops answering in the second
    batch: the first batch's results are kept exactly, the second keeps the closest
    adversarial points its answered queries showed, and every count is exact."""
    labels_only = not cls._needs_scores
    problem = blackbox_problem(8)
    x, y = problem.x, problem.y
    # How many calls the first batch makes alone (its random draws come first either way).
    healthy, calls = _flaky(10**6, labels_only=labels_only)
    first = cls(healthy, random_state=0, batch_size=4, **params)
    x_first = first.generate(x[:4], y[:4])
    flaky, calls = _flaky(len(calls) + 3, labels_only=labels_only)
    attack = cls(flaky, random_state=0, batch_size=4, **params)
    with pytest.raises(ModelError) as info:
        attack.generate(x, y)
    err = info.value
    assert isinstance(err, AttackInterruptedError) and "4 of 8 samples finished" in str(err)
    assert isinstance(err.__cause__, ModelError)
    assert isinstance(err.__cause__.__cause__, ConnectionError)
    partial = err.partial_result
    assert partial.finished.tolist() == [True] * 4 + [False] * 4
    np.testing.assert_array_equal(partial.x_adv[:4], x_first)
    np.testing.assert_array_equal(partial.success[:4], first.success_)
    np.testing.assert_array_equal(partial.queries[:4], first.queries_)
    assert partial.queries.sum() == flaky.query_count == attack.queries_.sum()
    assert partial.queries[4:].sum() > 0
    np.testing.assert_array_equal(attack.success_, partial.success)
    # Successes are real; elsewhere the clean input (minimum-norm) or a point in the ball.
    pred = problem.estimator.predict(partial.x_adv).argmax(1)
    assert np.all(pred[partial.success] != y[partial.success])
    changed = np.any((partial.x_adv != x).reshape(8, -1), axis=1)
    if issubclass(cls, MinimumNormAttack):
        np.testing.assert_array_equal(changed[4:], partial.success[4:])
    else:
        assert np.abs(partial.x_adv - x).max() <= attack.eps + 1e-6
    # Resuming where it stopped completes the run.
    rest = cls(healthy, random_state=0, batch_size=4, **params).generate(
        x[~partial.finished], y[~partial.finished]
    )
    assert rest.shape == (4, 1, 8, 8)


#: Budgets below one step (after the clean label and, for decision-based attacks, the starting
#: point and its binary search) on the 8x8 digits.
_TINY = {HopSkipJump: 12, BoundaryAttack: 8, GeoDA: 12, SimBA: 1, NESAttack: 5, BanditsAttack: 2}


def _needed(record) -> int:
    said = [str(w.message) for w in record if "cannot pay for" in str(w.message)]
    assert len(said) == 1, said
    return int(re.search(r"at least (\d+)\.$", said[0]).group(1))


@pytest.mark.parametrize(
    ("cls", "params"),
    [case for case in _BLACK_BOX if case[0] in _TINY],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_budget_below_one_step_warns_and_names_one_that_suffices(cls, params):
    problem = blackbox_problem(8, labels_only=not cls._needs_scores)
    small = {**params, "max_queries": _TINY[cls]}
    with pytest.warns(RuntimeWarning, match="cannot pay for") as record:
        cls(problem.estimator, random_state=0, **small).generate(problem.x, problem.y)
    need = _needed(record)
    assert need > _TINY[cls]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        attack = cls(problem.estimator, random_state=0, **{**params, "max_queries": need})
        attack.generate(problem.x, problem.y)
    assert not [w for w in record if "cannot pay for" in str(w.message)]
    assert attack.queries_.max() == need  # every sample took (at least) one step


def test_sign_opt_budget_below_one_iteration_warns():
    problem = blackbox_problem(8, labels_only=True)
    params = dict(_BLACK_BOX)[SignOPT]
    with pytest.warns(RuntimeWarning, match="sign-gradient estimate") as record:
        SignOPT(problem.estimator, random_state=0, **{**params, "max_queries": 25}).generate(
            problem.x, problem.y
        )
    assert _needed(record) >= 25 + params["nb_grad_queries"] + 1  # a lower bound here


# --------------------------------------------------------------------------- boundary searches


def test_bisect_brackets_each_boundary_to_its_precision():
    # Adversarial above a per-sample threshold: [0.3, 0.71, 0.05]; the third sample may not
    # query, the second wants a precision relative to high.
    threshold = torch.tensor([0.3, 0.71, 0.05])
    asked = []

    def adversarial(t, rows):
        asked.append(rows.clone())
        return t > threshold[rows]

    may = torch.tensor([True, True, False])
    for relative, tol in ((False, 1e-3), (True, torch.tensor([1e-3, 1e-4, 1e-3]))):
        high = bisect(adversarial, torch.zeros(3), torch.ones(3), tol, may_query=lambda: may,
                      relative=relative)  # fmt: skip
        assert bool((high >= threshold)[:2].all()) and high[2] == 1.0
        bound = tol * high if relative else torch.full((3,), tol)
        assert bool((high - threshold <= bound)[:2].all())
    assert all(2 not in r.tolist() for r in asked)
    # scale: the precision is in units of a direction's length.
    high = bisect(adversarial, torch.zeros(3), torch.ones(3), 1e-3, may_query=lambda: may,
                  scale=torch.tensor([10.0, 1.0, 1.0]))  # fmt: skip
    assert 0 <= 10 * (high[0] - 0.3) <= 1e-3


def test_first_adversarial_keeps_the_first_success():
    found = torch.tensor([False, False, True])
    start = torch.zeros(3, 1)
    proposals = torch.tensor([[0.1, 0.6, 0.9], [0.7, 0.2, 0.8], [0.2, 0.3, 0.9]])  # try, sample

    def propose(k, rows):
        return proposals[k, rows].unsqueeze(1)

    everyone = torch.ones(3, dtype=torch.bool)
    start, found = first_adversarial(
        propose, lambda pts, rows: pts[:, 0] > 0.5, 3, start, found, may_query=lambda: everyone
    )
    assert found.tolist() == [True, True, True]
    assert start[:, 0].tolist() == pytest.approx([0.7, 0.6, 0.0])  # sample 2 had its start
