"""Complete verification (MILP, Tjeng et al. 2019) against an exact brute force over ReLU
activation patterns, attacks and grids, CROWN's verdicts and the time limit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from bastion.certification import verify
from bastion.certification._bounds import BoundNetwork, box_domain, margin_spec
from bastion.certification._milp import MilpVerifier
from bastion.estimators import TorchClassifier


def _net(seed: int, sizes=(2, 6, 6, 3)) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=torch.float64))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g, dtype=torch.float64) * 0.5)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def _brute_force_min_margin(net: nn.Sequential, lo: np.ndarray, up: np.ndarray, y: int) -> float:
    """min over the box of ``z_y - max_j z_j``: a depth-first enumeration of the activation
    patterns of the two hidden layers, pruning empty regions, one LP per competitor and
    region (``min z_y - z_j`` is linear on a region)."""
    (w1, b1), (w2, b2), (w3, b3) = [
        (m.weight.detach().numpy(), m.bias.detach().numpy())
        for m in net
        if isinstance(m, nn.Linear)
    ]
    box = list(zip(lo, up, strict=False))

    def feasible(a_ub: list[np.ndarray], b_ub: list[float]) -> bool:
        if not a_ub:
            return True
        res = linprog(np.zeros(len(lo)), A_ub=np.array(a_ub), b_ub=np.array(b_ub), bounds=box)
        return res.status == 0

    best = np.inf

    def affine_of(pattern1: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        d1 = np.diag(pattern1)
        return w2 @ d1 @ w1, w2 @ d1 @ b1 + b2  # layer-2 pre-activations, affine in x

    def dfs(pattern: tuple[int, ...], a_ub: list[np.ndarray], b_ub: list[float]) -> None:
        nonlocal best
        n1 = w1.shape[0]
        k = len(pattern)
        if k == n1 + w2.shape[0]:
            m2, c2 = affine_of(pattern[:n1])
            d2 = np.diag(pattern[n1:])
            mo, co = w3 @ d2 @ m2, w3 @ d2 @ c2 + b3
            for j in range(mo.shape[0]):
                if j == y:
                    continue
                res = linprog(
                    mo[y] - mo[j],
                    A_ub=np.array(a_ub) if a_ub else None,
                    b_ub=np.array(b_ub) if b_ub else None,
                    bounds=box,
                )
                if res.status == 0:
                    best = min(best, float(res.fun + co[y] - co[j]))
            return
        if k < n1:
            row, off = w1[k], b1[k]
        else:
            m2, c2 = affine_of(pattern[:n1])
            row, off = m2[k - n1], c2[k - n1]
        for s in (1, 0):
            # s = 1: row @ x + off >= 0, i.e. -row @ x <= off; s = 0: row @ x <= -off.
            a_new = [*a_ub, -row if s else row]
            b_new = [*b_ub, off if s else -off]
            if feasible(a_new, b_new):
                dfs((*pattern, s), a_new, b_new)

    dfs((), [], [])
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_minimal_margin_equals_brute_force(seed):
    net = _net(seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand((1, 2), generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = int(net(x).argmax(1))
    eps = 0.3
    solver = MilpVerifier(net, (2,))
    out = solver.solve(x[0], y, eps, (0.0, 1.0), stop_at_negative=False)
    dom = box_domain(x, eps, "inf", (0.0, 1.0))
    lo, up = dom.lower[0].numpy(), dom.upper[0].numpy()
    exact = _brute_force_min_margin(net, lo, up, y)
    assert abs(out.minimum - exact) < 1e-5, (out.minimum, exact)
    # The optimum is attained: the model's margin at the argmin is the minimum.
    assert abs(solver.margin(out.argmin, y) - exact) < 1e-6
    assert out.margin_lower <= exact + 1e-6
    # Neither a dense grid nor PGD with restarts finds a smaller margin.
    grid = np.stack(
        np.meshgrid(np.linspace(lo[0], up[0], 151), np.linspace(lo[1], up[1], 151)), -1
    ).reshape(-1, 2)
    with torch.no_grad():
        z = net(torch.as_tensor(grid))
    others = z.clone()
    others[:, y] = -np.inf
    grid_min = float((z[:, y] - others.max(1).values).min())
    assert grid_min >= exact - 1e-9
    assert grid_min <= exact + 0.05  # the grid gets close: the brute force is not vacuous
    xs = torch.as_tensor(lo) + torch.rand(
        (64, 2), generator=g, dtype=torch.float64
    ) * torch.as_tensor(up - lo)
    for _ in range(100):
        xs.requires_grad_(True)
        z = net(xs)
        m = z[:, y] - torch.cat([z[:, :y], z[:, y + 1 :]], 1).max(1).values
        (grad,) = torch.autograd.grad(m.sum(), xs)
        with torch.no_grad():
            xs = torch.minimum(
                torch.maximum(xs - 0.01 * grad.sign(), torch.as_tensor(lo)), torch.as_tensor(up)
            )
    with torch.no_grad():
        z = net(xs)
        pgd_min = float((z[:, y] - torch.cat([z[:, :y], z[:, y + 1 :]], 1).max(1).values).min())
    assert pgd_min >= exact - 1e-9


def test_linear_region_minimum_is_found_exactly():
    """Where every ReLU is stable on the ball the network is affine there: the minimum is at a
    corner of the box, which the MILP must reach to 1e-9."""
    net = _net(3)
    x = torch.full((1, 2), 0.5, dtype=torch.float64)
    with torch.no_grad():
        y = int(net(x).argmax(1))
    eps = 1e-3
    out = MilpVerifier(net, (2,)).solve(x[0], y, eps, None, stop_at_negative=False)
    corners = torch.tensor(list(itertools.product([-eps, eps], repeat=2)), dtype=torch.float64) + x
    with torch.no_grad():
        z = net(corners)
    others = z.clone()
    others[:, y] = -np.inf
    exact = float((z[:, y] - others.max(1).values).min())
    assert abs(out.minimum - exact) < 1e-9


def _classifier(net: nn.Module, d: int, k: int) -> TorchClassifier:
    return TorchClassifier(net, input_shape=(d,), nb_classes=k, clip_values=(0.0, 1.0))


def test_complete_agrees_with_crown_and_finds_counterexamples():
    net = _net(4, sizes=(3, 8, 8, 3))
    clf = _classifier(net, 3, 3)
    g = torch.Generator().manual_seed(5)
    x = torch.rand((12, 3), generator=g, dtype=torch.float64).numpy()
    y = np.asarray(clf.predict(x)).argmax(1)
    eps = 0.08
    crown = verify(clf, x, y, eps=eps, method="crown")
    complete = verify(clf, x, y, eps=eps, method="complete")
    assert set(complete.status) <= {"verified", "falsified"}  # no time limit: exact answers
    assert np.all(complete.verified[crown.verified])  # CROWN is sound
    assert np.all(complete.margin_lower >= crown.margin_lower - 1e-6)
    falsified = complete.status == "falsified"
    assert falsified.any() and complete.verified.any()
    # Each counterexample is inside the set and changes the prediction.
    ce = complete.counterexample[falsified]
    assert np.all(np.abs(ce - x[falsified]) <= eps + 1e-9) and np.all((ce >= 0) & (ce <= 1))
    assert np.all(np.asarray(clf.predict(ce)).argmax(1) != y[falsified])
    assert np.isnan(complete.counterexample[~falsified]).all()
    # The private entry point always solves, also samples CROWN verifies: same verdicts.
    solver = MilpVerifier(net, (3,))
    for i in np.flatnonzero(crown.verified)[:3]:
        out = solver.solve(torch.as_tensor(x[i]), int(y[i]), eps, (0.0, 1.0))
        assert out.status == "verified" and out.margin_lower > 0


def test_complete_with_conv_maxpool_and_residual_matches_sampling():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 2)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(2, 2)
            self.head = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.flatten(self.pool(torch.relu(self.conv(x))), 1)
            return self.head(torch.relu(self.fc(h)) + h)

    g = torch.Generator().manual_seed(6)
    net = Block().double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.rand((1, 1, 3, 3), generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = int(net(x).argmax(1))
    eps = 0.15
    out = MilpVerifier(net, (1, 3, 3)).solve(x[0], y, eps, (0.0, 1.0), stop_at_negative=False)
    dom = box_domain(x, eps, "inf", (0.0, 1.0))
    pts = dom.lower + torch.rand((200_000, 1, 3, 3), generator=g, dtype=torch.float64) * (
        dom.upper - dom.lower
    )
    with torch.no_grad():
        z = net(pts)
    sampled = float((z[:, y] - z[:, 1 - y]).min())
    assert out.minimum <= sampled + 1e-9  # the MILP's minimum is below every sample
    assert sampled - out.minimum < 0.05  # and close to the sampled one
    assert abs(MilpVerifier(net, (1, 3, 3)).margin(out.argmin, y) - out.minimum) < 1e-6


def test_time_limit_gives_unknown():
    net = _net(7, sizes=(20, 60, 60, 10)).float()
    clf = _classifier(net, 20, 10)
    x = torch.rand((1, 20), generator=torch.Generator().manual_seed(8)).numpy()
    res = verify(clf, x, eps=0.3, method="complete", time_limit=0.01)
    assert res.status.tolist() == ["unknown"] and not res.verified[0]
    assert np.isnan(res.counterexample).all()


def test_misclassified_sample_is_falsified_by_itself():
    net = _net(9, sizes=(2, 6, 6, 3))
    clf = _classifier(net, 2, 3)
    x = np.array([[0.3, 0.6]])
    pred = int(np.asarray(clf.predict(x)).argmax(1)[0])
    wrong = np.array([(pred + 1) % 3])
    for method in ("ibp", "crown", "complete"):
        res = verify(clf, x, wrong, eps=0.01, method=method)
        assert res.status.tolist() == ["falsified"]
        z = np.asarray(clf.logits(torch.as_tensor(x)).detach())[0]
        actual = z[wrong[0]] - np.delete(z, wrong[0]).max()
        assert res.margin_lower[0] <= actual + 1e-9
        np.testing.assert_array_equal(res.counterexample, x)


def test_crown_spec_bound_matches_margin_rows():
    net = _net(10)
    bn = BoundNetwork(net, (2,))
    x = torch.rand((2, 2), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    dom = box_domain(x, 0.05, "inf", (0.0, 1.0))
    y = torch.tensor([0, 2])
    with torch.no_grad():
        lo, _ = bn.crown(dom, spec=margin_spec(y, 3, dtype=torch.float64))
    for i in range(2):
        out = MilpVerifier(net, (2,)).solve(
            x[i], int(y[i]), 0.05, (0.0, 1.0), stop_at_negative=False
        )
        for r, j in enumerate([c for c in range(3) if c != int(y[i])]):
            assert float(lo[i, r]) <= out.optima[j] + 1e-7
