"""The shared iteration machinery of the optimisation attacks: per-sample Adam against
torch.optim.Adam, the early-abort rule step by step, the binary search on c against hand-computed
sequences."""

import math

import pytest
import torch

from bastion.attacks._optim import (
    ConstSearch,
    EarlyAbort,
    adam_step,
    const_search_runs,
    keep_best,
)


def _rosenbrock(p: torch.Tensor) -> torch.Tensor:
    return (1 - p[..., 0]) ** 2 + 100 * (p[..., 1] - p[..., 0] ** 2) ** 2


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_adam_step_matches_torch_adam(betas):
    """Row by row, adam_step follows torch.optim.Adam on the Rosenbrock function for 200 steps
    (each row its own optimiser, the rows batched), up to float64 rounding (which the curved
    valley amplifies to ~1e-7; a wrong bias correction or epsilon would show at 1e-2)."""
    start = torch.tensor([[-1.5, 2.0], [0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)
    mine, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    refs = [row.clone().requires_grad_(True) for row in start]
    opts = [torch.optim.Adam([r], lr=0.05, betas=betas, eps=1e-8) for r in refs]
    for t in range(1, 201):
        p = mine.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_rosenbrock(p).sum(), p)
        mine, m, v = adam_step(mine, g, m, v, t, 0.05, betas=betas)
        for r, opt in zip(refs, opts, strict=True):
            opt.zero_grad()
            _rosenbrock(r).backward()
            opt.step()
    torch.testing.assert_close(mine, torch.stack([r.detach() for r in refs]), rtol=1e-6, atol=1e-6)
    assert bool((_rosenbrock(mine) < _rosenbrock(start)).all())


def test_adam_step_per_row_step_counts_and_rates():
    """A tensor ``t`` and ``lr`` give every row its own bias correction and step size: a row at
    step 3 moves as a fresh Adam at its third step would, and the inputs are not modified."""
    g = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    m, v = torch.full((2, 2), 0.1), torch.full((2, 2), 0.01)
    m0, v0 = m.clone(), v.clone()
    t = torch.tensor([[1.0], [3.0]])
    lr = torch.tensor([[0.1], [0.01]])
    p, m1, v1 = adam_step(torch.zeros(2, 2), g, m, v, t, lr)
    for row in range(2):
        pr, mr, vr = adam_step(
            torch.zeros(2), g[row], m0[row], v0[row], int(t[row]), float(lr[row])
        )
        torch.testing.assert_close(p[row], pr)
        torch.testing.assert_close(m1[row], mr)
        torch.testing.assert_close(v1[row], vr)
    assert torch.equal(m, m0) and torch.equal(v, v0)
    # Known answer of the first step: m_hat = g, v_hat = g^2, so p moves by -lr * sign(g).
    p1, _, _ = adam_step(
        torch.zeros(3), torch.tensor([2.0, -0.5, 1e-3]), *[torch.zeros(3)] * 2, 1, 0.1
    )
    torch.testing.assert_close(p1, torch.tensor([-0.1, 0.1, -0.1]), rtol=0, atol=1e-5)


def _run_abort(abort, values, done=None):
    """Feed per-step values (rows: steps, columns: samples) to ``abort``; return the step
    (1-based) at which each sample stops, or 0 if it never does."""
    n = len(values[0])
    idx = torch.arange(n)
    stopped = torch.zeros(n, dtype=torch.long)
    for step, row in enumerate(values, 1):
        stop = abort.update(
            idx, torch.tensor(row, dtype=torch.float64)[idx], step if done is None else done
        )
        stopped[idx[stop]] = step
        idx = idx[~stop]
    return stopped.tolist()


def test_early_abort_single_values_patience_one():
    """Checks every 2 steps (at steps 2, 4, 6 ...): a sample stops at the first check whose
    value is not 0.01% below the previous check's; the first check never stops one."""
    values = [
        # Sample 0 improves at every check; 1 is flat; 2 improves by exactly 0.01% at step 4
        # (enough: only a value above prev - 1e-4 |prev| stalls), then by 0.005%; 3 improves
        # by 0.005%; 4 is negative and rises.
        [9.0, 5.0, 5.0, 100.0, -1.0],
        [8.0, 5.0, 10000.0, 100.0, -2.0],
        [7.0, 1.0, 9.0, 1.0, -2.0],
        [6.0, 5.0, 9999.0, 99.995, -1.9],
        [5.0, 5.0, 0.0, 0.0, 0.0],
        [4.0, 5.0, 9998.5, 99.0, -1.0],
    ]
    abort = EarlyAbort(5, every=2, dtype=torch.float64)
    assert _run_abort(abort, values) == [0, 4, 6, 4, 4]


def test_early_abort_window_and_patience():
    """With ``window`` the best value over the steps since the last check is compared, and
    with patience 2 a sample stops after two failed checks in a row (an improving check in
    between clears the first)."""
    values = [[5.0, 5.0], [9.0, 9.0], [4.0, 9.0], [9.0, 9.0], [9.0, 3.0], [9.0, 9.0],
              [9.0, 9.0], [9.0, 9.0], [9.0, 9.0], [9.0, 9.0]]  # fmt: skip
    # Window minima at steps 2, 4, 6, 8, 10: sample 0: 5, 4, 9, 9, 9 (fails at 6 and 8);
    # sample 1: 5, 9, 3, 9, 9 (fails at 4, improves at 6, fails at 8 and 10).
    abort = EarlyAbort(2, every=2, patience=2, window=True, dtype=torch.float64)
    assert _run_abort(abort, values) == [8, 10]
    # Without the window the single values at the checks decide: sample 0 sees 9, 9, 9, 9, 9
    # and stops at its second check; sample 1 sees 9, 9, 9, 9, 9 too.
    plain = EarlyAbort(2, every=2, patience=2, dtype=torch.float64)
    assert _run_abort(plain, values) == [6, 6]


def test_early_abort_per_sample_step_counts_and_reset():
    """With one step count per sample, each is checked on its own schedule; ``reset`` clears a
    sample's history (its next check cannot stop it)."""
    abort = EarlyAbort(2, every=3, dtype=torch.float64)
    idx = torch.arange(2)
    # Sample 0 is at its 3rd step (a check), sample 1 at its 2nd (no check).
    stop = abort.update(idx, torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([3, 2]))
    assert stop.tolist() == [False, False]
    stop = abort.update(idx, torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([6, 3]))
    assert stop.tolist() == [True, False]  # 0 did not improve between its checks; 1 first check
    abort.reset(torch.tensor([0]))
    stop = abort.update(idx, torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([3, 6]))
    assert stop.tolist() == [False, True]
    assert abort.prev.tolist() == [1.0, 1.0]


def test_const_search_reproduces_hand_computed_sequences():
    """Per sample: x10 while no run succeeded, then bisection between the largest failure and
    the smallest success."""
    outcomes = torch.tensor(
        [
            [False, False, True, False, True],  # 1 -> 10 -> 100 -> 55 -> 77.5 -> 66.25
            [True, True, False, True, True],  # 1 -> 0.5 -> 0.25 -> 0.375 -> 0.3125 -> 0.28125
            [False, True, True, True, True],  # 1 -> 10 -> 5.5 -> 3.25 -> 2.125 -> 1.5625
        ]
    )
    search = ConstSearch(1.0, 3, dtype=torch.float64)
    seen = [search.const.tolist()]
    for k in range(outcomes.shape[1]):
        seen.append(search.update(outcomes[:, k]).tolist())
    expected = [
        [1.0, 10.0, 100.0, 55.0, 77.5, 66.25],
        [1.0, 0.5, 0.25, 0.375, 0.3125, 0.28125],
        [1.0, 10.0, 5.5, 3.25, 2.125, 1.5625],
    ]
    assert [list(col) for col in zip(*seen, strict=True)] == expected
    assert search.lower.tolist() == [55.0, 0.25, 1.0]
    assert search.upper.tolist() == [77.5, 0.3125, 2.125]


def test_const_search_growth():
    search = ConstSearch(0.01, 1, growth=2.0, dtype=torch.float64)
    for _ in range(3):
        search.update(torch.tensor([False]))
    assert search.const.tolist() == pytest.approx([0.08])
    assert search.update(torch.tensor([True])).tolist() == pytest.approx([0.06])


@pytest.mark.parametrize("abort_early", [True, False])
def test_const_search_runs_drive_the_steps(abort_early):
    """The outer loops: every run starts with every sample; a sample whose objective is flat
    leaves a run after two failed checks (every step here, max_iter // 10 = 1), the others go on;
    after each run the constants move by the run's successes."""
    calls = []
    success_at = {0: 4}  # sample 0 is adversarial at step 4 of every run; 1 and 2 never

    def step(run, it, idx):
        calls.append((run, it, idx.tolist()))
        value = torch.where(idx == 2, 1.0, 10.0 - it).double()  # sample 2 is flat
        success = torch.tensor([success_at.get(int(i)) == it for i in idx])
        return value, success

    search = ConstSearch(1.0, 3, dtype=torch.float64)
    const_search_runs(step, search, 2, 10, abort_early)
    for run in range(2):
        seen = [idx for r, it, idx in calls if r == run]
        assert len(seen) == 10
        assert seen[0] == [0, 1, 2] and seen[2] == [0, 1, 2]
        # The flat sample stalled at its checks after steps 2 and 3 (the first sets the mark).
        assert seen[3] == ([0, 1] if abort_early else [0, 1, 2])
    # Run 0: sample 0 succeeded (1 -> 0.5), 1 and 2 failed (1 -> 10); run 1 again.
    assert search.const.tolist() == [0.25, 100.0, 100.0]


def test_keep_best_updates_only_closer_adversarial_points():
    best = torch.zeros(4, 2)
    best_dist = torch.tensor([math.inf, 1.0, 1.0, math.inf])
    idx = torch.tensor([0, 1, 3])
    point = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    keep_best(
        best,
        best_dist,
        idx,
        point,
        torch.tensor([5.0, 0.5, 0.1]),
        torch.tensor([True, True, False]),
    )
    assert best_dist.tolist() == [5.0, 0.5, 1.0, math.inf]
    assert best.tolist() == [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
