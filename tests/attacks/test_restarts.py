"""The restart combinator, on a scripted "attack" whose every run has a known outcome per sample,
and a replay of a restarted attack from single runs (used by the attacks' own tests)."""

import numpy as np
import pytest
import torch

from bastion.attacks._restarts import Best, Outcome, best_of_restarts

# Per run (rows) and sample (columns): success, and the score (lower is better).
SUCCESS = torch.tensor(
    [
        [False, True, False, False, False],
        [True, True, False, False, False],
        [False, False, True, False, True],
        [True, True, True, False, True],
    ]
)
SCORE = torch.tensor(
    [
        [5.0, 4.0, 3.0, 2.0, 9.0],
        [1.0, 0.5, 3.0, 1.0, 8.0],
        [0.2, 9.0, 0.1, 1.0, 7.0],
        [0.0, 0.0, 2.0, 0.5, 0.3],
    ]
)


class ScriptedAttack:
    """Run ``r`` gives sample ``i`` the candidate ``10 r + i`` (one feature) with the scripted
    success and score; every call is recorded."""

    def __init__(self, success=SUCCESS, score=SCORE):
        self.success, self.score = success, score
        self.calls: list[tuple[int, list[int] | None]] = []
        self.seen: list[Best] = []

    def __call__(self, r: int, idx: torch.Tensor | None, best: Best) -> Outcome:
        n = self.success.shape[1]
        rows = torch.arange(n) if idx is None else idx
        self.calls.append((r, None if idx is None else idx.tolist()))
        self.seen.append(Best(*(t.clone() for t in best)))
        x = (10.0 * r + rows.to(torch.float32)).unsqueeze(1)
        return Outcome(x, self.success[r, rows], self.score[r, rows])


X = -torch.ones(5, 1)  # the clean batch: -1 marks "kept the input"


def test_fixed_budget_keeps_each_samples_first_success_else_its_lowest_score():
    attack = ScriptedAttack()
    best = best_of_restarts(attack, X, 4)
    # sample 0: fooled by run 1; 1: by run 0; 2: by run 2; 3: never (lowest score 0.5 in run
    # 3); 4: by run 2
    assert best.run.tolist() == [1, 0, 2, 3, 2]
    assert best.x.squeeze(1).tolist() == [10.0, 1.0, 22.0, 33.0, 24.0]
    assert best.success.tolist() == [True, True, True, False, True]
    assert best.score.tolist() == pytest.approx([1.0, 4.0, 0.1, 0.5, 7.0])
    # run 0 on all samples, later runs only on those not yet fooled, in batch order
    assert attack.calls == [(0, None), (1, [0, 2, 3, 4]), (2, [2, 3, 4]), (3, [3])]
    # a later success replaces the best even with a higher score; a later failure only with a
    # lower one (sample 3 went 2.0 -> 1.0 -> 1.0 (a tie keeps run 1) -> 0.5)
    assert attack.seen[3].run.tolist() == [1, 0, 2, 1, 2]


def test_the_first_run_is_the_single_run_and_restarts_stop_when_all_are_fooled():
    attack = ScriptedAttack()
    single = best_of_restarts(attack, X, 1)
    assert attack.calls == [(0, None)]
    assert single.x.squeeze(1).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert single.success.tolist() == SUCCESS[0].tolist()
    # everything fooled after run 1: runs 2 and 3 never happen
    success = SUCCESS.clone()
    success[1] = True
    attack = ScriptedAttack(success=success)
    best = best_of_restarts(attack, X, 4)
    assert [r for r, _ in attack.calls] == [0, 1]
    assert best.success.all() and best.run.tolist() == [1, 0, 1, 1, 1]
    # never fooled: every run on every sample, each keeping its lowest score
    attack = ScriptedAttack(success=torch.zeros_like(SUCCESS))
    best = best_of_restarts(attack, X, 4)
    assert attack.calls == [(0, None), (1, None), (2, None), (3, None)]
    assert best.score.tolist() == pytest.approx(SCORE.amin(0).tolist())
    assert best.run.tolist() == SCORE.argmin(0).tolist()


def test_minimum_norm_keeps_the_smallest_success_and_reruns_every_sample():
    attack = ScriptedAttack()
    best = best_of_restarts(attack, X, 4, minimum_norm=True)
    assert attack.calls == [(0, None), (1, None), (2, None), (3, None)]
    # smallest score among the successes; sample 3 never succeeds and keeps its input; sample 2
    # succeeds again in run 3, but with a larger score (2.0 > 0.1) that does not replace run 2's
    assert best.run.tolist() == [3, 3, 2, -1, 3]
    assert best.x.squeeze(1).tolist() == [30.0, 31.0, 22.0, -1.0, 34.0]
    assert best.success.tolist() == [True, True, True, False, True]
    assert best.score[3] == float("inf")
    # each run sees the best norm so far (FAB scales its restarts by it)
    assert attack.seen[2].score.tolist() == [1.0, 0.5, float("inf"), float("inf"), float("inf")]
    # a tie keeps the earlier run
    score = SCORE.clone()
    score[3, 2] = 0.1
    best = best_of_restarts(ScriptedAttack(score=score), X, 4, minimum_norm=True)
    assert best.run[2] == 2


def test_ineligible_samples_never_run_and_keep_their_input():
    budget = torch.tensor([True, True, False, True, True])
    asked = []

    def eligible():
        asked.append(1)
        out = budget.clone()
        if len(asked) > 2:
            out[3] = False  # sample 3 runs out of queries after run 1
        return out

    attack = ScriptedAttack()
    best = best_of_restarts(attack, X, 4, eligible=eligible)
    assert attack.calls == [(0, [0, 1, 3, 4]), (1, [0, 3, 4]), (2, [4])]
    assert best.x.squeeze(1).tolist() == [10.0, 1.0, -1.0, 13.0, 24.0]
    assert best.run.tolist() == [1, 0, -1, 1, 2]
    assert best.score[2] == float("inf") and not best.success[2]


def test_runs_cannot_change_the_callers_batch():
    x = torch.zeros(5, 1)
    best_of_restarts(ScriptedAttack(), x, 3)
    assert (x == 0).all()
    with pytest.raises(ValueError, match="n_runs"):
        best_of_restarts(ScriptedAttack(), x, 0)


# --------------------------------------------------------------------------- replay


def replay_restarts(make_single, x, y, n_runs, seed, predict, score):
    """What a restarted attack must return, rebuilt from single runs.

    Run ``r`` is a single-run attack (``make_single(generator)``) on the samples that no earlier
    run fooled, drawing from one generator shared by all runs (seeded like ``random_state=seed``);
    each sample keeps the output of the first run that fooled it, else its output of lowest
    ``score(probs, y)`` (the earliest on ties). Returns that result, which samples it fools and
    which run each sample's output came from.
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    best, fooled = x.copy(), np.zeros(n, dtype=bool)
    best_score, first = np.full(n, np.inf), np.full(n, -1)
    todo = np.arange(n)
    for r in range(n_runs):
        if todo.size == 0:
            break
        out = make_single(gen).generate(x[todo], y[todo])
        probs = np.asarray(predict(out))
        ok = probs.argmax(1) != y[todo]
        s = np.asarray(score(probs, y[todo]))
        take = ok | (r == 0) | (s < best_score[todo])
        best[todo[take]] = out[take]
        fooled[todo[take]] = ok[take]
        best_score[todo[take]] = s[take]
        first[todo[take]] = r
        todo = todo[~ok]
    return best, fooled, first


def log_p_true(probs, y):
    """The loss an untargeted PGD or APGD-CE restart minimises: ``log p_y``."""
    return np.log(np.maximum(probs[np.arange(len(y)), y], 1e-30))
