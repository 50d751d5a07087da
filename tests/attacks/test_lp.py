"""The Lp geometry against brute-force solutions."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from bastion.attacks._lp import (
    lp_norm,
    project_lp,
    project_lp_box,
    random_in_ball,
    steepest_direction,
)


def _brute_projection(v, x, eps, norm):
    """min ||d - v||^2 s.t. ||d||_p <= eps, 0 <= x + d <= 1, solved with SLSQP on a smooth
    reformulation (L1: d = u - w with u, w >= 0)."""
    d = len(v)
    if norm == "1":
        f = lambda z: np.sum((z[:d] - z[d:] - v) ** 2)  # noqa: E731
        bounds = [(0, 1 - t) for t in x] + [(0, t) for t in x]
        cons = [{"type": "ineq", "fun": lambda z: eps - z.sum()}]
        res = minimize(
            f,
            np.zeros(2 * d),
            bounds=bounds,
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        return res.x[:d] - res.x[d:]
    cons = [{"type": "ineq", "fun": lambda z: eps**2 - np.sum(z**2)}]
    res = minimize(
        lambda z: np.sum((z - v) ** 2),
        np.zeros(d),
        bounds=list(zip(-x, 1 - x, strict=True)),
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return res.x


@pytest.mark.parametrize("norm", ["1", "2"])
def test_projection_onto_ball_and_box_is_exact(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 7, generator=g, dtype=torch.float64)
    v = torch.randn(6, 7, generator=g, dtype=torch.float64)
    eps = torch.full((6, 1), 0.6, dtype=torch.float64)
    p = project_lp_box(v, x, eps, norm, (0.0, 1.0))
    for i in range(6):
        expected = _brute_projection(v[i].numpy(), x[i].numpy(), 0.6, norm)
        np.testing.assert_allclose(p[i].numpy(), expected, atol=1e-6)
    assert torch.all(lp_norm(p, norm) <= 0.6 + 1e-9)
    assert torch.all((x + p >= 0) & (x + p <= 1))


def test_projection_inside_is_identity_and_linf_is_clamp():
    x = torch.full((2, 3), 0.5)
    v = torch.tensor([[0.1, -0.1, 0.0], [0.3, -0.4, 0.2]])
    eps = torch.tensor([[1.0], [0.25]])
    torch.testing.assert_close(project_lp_box(v, x, eps, "2", (0, 1))[0], v[0])
    torch.testing.assert_close(
        project_lp_box(v, x, eps, "inf", (0, 1)),
        torch.tensor([[0.1, -0.1, 0.0], [0.25, -0.25, 0.2]]),
    )


def test_l1_ball_projection_matches_closed_form():
    # Duchi et al.: soft-thresholding at theta=2 (resp. 1/3) gives unit L1 norm
    out = project_lp(torch.tensor([[3.0, 1.0, 0.0], [0.5, -0.5, 1.0]]), torch.tensor([[1.0]]), "1")
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0], [1 / 6, -1 / 6, 2 / 3]]))


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_random_in_ball_is_inside_and_fills_it(norm):
    g = torch.Generator().manual_seed(0)
    r = random_in_ball((4000, 3), torch.tensor(2.0), norm, g, device=torch.device("cpu"))
    n = lp_norm(r, norm)
    assert torch.all(n <= 2.0 + 1e-6)
    # uniform in a 3-d ball: P(||r|| <= 2 * 0.5^(1/3)) = 1/2
    assert abs(float((n <= 2 * 0.5 ** (1 / 3)).double().mean()) - 0.5) < 0.03
    assert abs(float(r.mean())) < 0.05


def test_steepest_directions():
    g = torch.tensor([[3.0, -1.0, 0.0, 0.5]])
    torch.testing.assert_close(steepest_direction(g, "inf"), torch.tensor([[1.0, -1.0, 0.0, 1.0]]))
    torch.testing.assert_close(lp_norm(steepest_direction(g, "2"), "2"), torch.tensor([1.0]))
    # sparse L1: only the largest coordinate, unit L1 norm
    torch.testing.assert_close(
        steepest_direction(g, "1", l1_sparsity=0.8), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    )
    # a coordinate at the box bound whose gradient points outwards is skipped
    x = torch.tensor([[1.0, 0.5, 0.5, 0.5]])
    d = steepest_direction(g, "1", x=x, clip_values=(0, 1), l1_sparsity=0.8)
    torch.testing.assert_close(d, torch.tensor([[0.0, -1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_project_point_agrees_with_delta_projection(norm):
    from bastion.attacks._lp import project_point

    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 8, generator=g, dtype=torch.float64)
    cand = x + torch.randn(5, 8, generator=g, dtype=torch.float64)
    eps = torch.full((5, 1), 0.4, dtype=torch.float64)
    expected = x + project_lp_box(cand - x, x, eps, norm, (0.0, 1.0))
    torch.testing.assert_close(project_point(cand, x, eps, norm, (0.0, 1.0)), expected)
