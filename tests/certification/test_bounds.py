"""Bound propagation: soundness by sampling and attacks on random networks of every supported
layer, ordering IBP >= CROWN >= alpha-CROWN (widths), exact known answers, gradients by finite
differences, and errors on unsupported layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.certification import CrownBounds, IntervalBounds
from bastion.certification._bounds import BoundNetwork, InputDomain, box_domain, margin_spec
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError, ModelError
from bastion.zoo import SmallResNet


def _randomize(module: nn.Module, seed: int, scale: float = 0.6) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


class _Residual(nn.Module):
    """A residual MLP written with functional calls, methods and an addition."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(12, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc0(torch.flatten(x, 1)))
        r = self.fc2(torch.relu(self.fc1(h)))
        h = (r + h).relu()
        return self.out(h.view(h.size(0), -1) * 0.5 + 0.1)


def _networks() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    nets: dict[str, tuple[nn.Module, tuple[int, ...]]] = {
        "mlp": (
            nn.Sequential(
                nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4)
            ),
            (6,),
        ),
        "conv": (
            nn.Sequential(
                nn.Conv2d(1, 3, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(36, 3),
            ),
            (1, 6, 6),
        ),
        "batchnorm": (
            nn.Sequential(
                nn.Conv2d(1, 3, 3),
                nn.BatchNorm2d(3),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(48, 8),
                nn.BatchNorm1d(8),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(8, 3),
            ),
            (1, 6, 6),
        ),
        "avgpool": (
            nn.Sequential(
                nn.Conv2d(2, 4, 3, padding=1),
                nn.ReLU(),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(36, 3),
            ),
            (2, 6, 6),
        ),
        "maxpool": (
            nn.Sequential(
                nn.Conv2d(1, 3, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=1, padding=1),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(27, 3),
            ),
            (1, 6, 6),
        ),
        "residual": (_Residual(), (12,)),
        # The zoo's residual network: BatchNorm, shortcut convolutions, adaptive pooling.
        "resnet": (
            SmallResNet(3, in_channels=1, width=2, blocks=(1, 1, 1), random_state=0),
            (1, 6, 6),
        ),
    }
    out = {}
    for i, (name, (m, shape)) in enumerate(nets.items()):
        out[name] = (_randomize(m, i), shape)
    # The estimator's normalisation, included by torch_module().
    clf = TorchClassifier(
        _randomize(nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)), 9),
        input_shape=(8,),
        nb_classes=3,
        clip_values=(0.0, 1.0),
        preprocessing=(0.4, 0.3),
    )
    out["normalised"] = (clf.torch_module(), (8,))
    return out


NETWORKS = _networks()


def _samples(dom, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` points of each sample's set: uniform in the box (Linf) or in the L2 ball then
    clipped (clipping a point of the ball keeps it in the ball, as the centre is in the box)."""
    n = dom.center.shape[0]
    shape = (k, *dom.center.shape)
    if dom.norm == "inf":
        return dom.lower + torch.rand(shape, generator=g) * (dom.upper - dom.lower)
    d = dom.center[0].numel()
    z = torch.randn((k, n, d), generator=g)
    z = z / z.norm(dim=-1, keepdim=True)
    r = torch.rand((k, n, 1), generator=g) ** (1.0 / d)
    pts = dom.center.reshape(1, n, d) + z * r * dom.eps.reshape(1, n, 1)
    return torch.minimum(torch.maximum(pts.reshape(shape), dom.lower), dom.upper)


def _project(x: torch.Tensor, dom) -> torch.Tensor:
    if dom.norm == 2:
        n = x.shape[0]
        delta = (x - dom.center).reshape(n, -1)
        norm = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
        delta = delta * torch.clamp(dom.eps.reshape(n, 1) / norm, max=1.0)
        x = dom.center + delta.reshape(x.shape)
    return torch.minimum(torch.maximum(x, dom.lower), dom.upper)


def _pgd_extremes(module, dom, g: torch.Generator, steps: int = 40):
    """Per logit, the smallest and largest values PGD finds in the set."""
    lows, highs = [], []
    k = module(dom.center).shape[1]
    for sign in (1.0, -1.0):
        best = []
        for j in range(k):
            x = _samples(dom, 1, g)[0].clone()
            step = (dom.upper - dom.lower).amax() / 10 + 1e-12
            for _ in range(steps):
                x.requires_grad_(True)
                out = module(x)[:, j].sum() * sign
                (grad,) = torch.autograd.grad(out, x)
                with torch.no_grad():
                    if dom.norm == "inf":
                        x = x - step * grad.sign()
                    else:
                        gn = grad.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12)
                        x = x - step * grad / gn.reshape(-1, *[1] * (x.ndim - 1))
                    x = _project(x, dom)
            with torch.no_grad():
                best.append(module(x)[:, j])
        (lows if sign > 0 else highs).append(torch.stack(best, 1))
    return lows[0], highs[0]


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("norm", ["inf", 2])
def test_bounds_contain_sampled_and_attacked_outputs(name, norm):
    module, shape = NETWORKS[name]
    module.train()  # the mode must not matter: BatchNorm uses its running statistics
    g = torch.Generator().manual_seed(1)
    x = torch.rand((3, *shape), generator=g) * 0.8 + 0.1
    eps = 0.08 if norm == "inf" else 0.4
    dom = box_domain(x, eps, norm, (0.0, 1.0))
    net = BoundNetwork(module, shape)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(net.forward(x), module(x), atol=1e-5)
        ibp = net.interval(dom)
        crown = net.crown(dom)
        alpha = net.crown(dom, alpha=True, alpha_iter=10)
        crown_ibp = net.crown(dom, intermediate="ibp")
        pts = _samples(dom, 10_000, g)
        out = module(pts.reshape(-1, *shape)).reshape(10_000, 3, -1)
    lo_pgd, hi_pgd = _pgd_extremes(module, dom, g)
    true_lo = torch.minimum(out.min(0).values, lo_pgd)
    true_hi = torch.maximum(out.max(0).values, hi_pgd)
    tol = 1e-5
    for lo, up in (ibp, crown, alpha, crown_ibp):
        assert bool((lo <= true_lo + tol).all()), (lo - true_lo).max()
        assert bool((up >= true_hi - tol).all()), (true_hi - up).max()
    # CROWN takes the tighter of CROWN and IBP per neuron: never looser than IBP.
    assert bool((crown[0] >= ibp[0] - 1e-6).all()) and bool((crown[1] <= ibp[1] + 1e-6).all())
    # alpha-CROWN keeps the best slopes, starting from CROWN's: never looser than CROWN.
    assert bool((alpha[0] >= crown[0] - 1e-6).all()) and bool((alpha[1] <= crown[1] + 1e-6).all())
    # Not vacuous: the bounds are finite and the network is not trivially constant.
    assert bool(torch.isfinite(crown[0]).all()) and float((true_hi - true_lo).max()) > 1e-3


def test_crown_is_tighter_than_ibp_somewhere():
    module, shape = NETWORKS["mlp"]
    x = torch.rand((4, *shape), generator=torch.Generator().manual_seed(2))
    dom = box_domain(x, 0.1, "inf", (0.0, 1.0))
    net = BoundNetwork(module, shape)
    with torch.no_grad():
        lo_i, up_i = net.interval(dom)
        lo_c, up_c = net.crown(dom)
        lo_a, up_a = net.crown(dom, alpha=True)
    assert float((up_c - lo_c).sum()) < 0.9 * float((up_i - lo_i).sum())
    assert float((up_a - lo_a).sum()) < float((up_c - lo_c).sum())


def test_margin_spec_rows_and_spec_bounds():
    y = torch.tensor([2, 0])
    c = margin_spec(y, 3)
    assert c.shape == (2, 2, 3)
    expected = torch.tensor([[[-1.0, 0, 1], [0, -1, 1]], [[1.0, -1, 0], [1, 0, -1]]])
    assert torch.equal(c, expected)
    module, shape = NETWORKS["mlp"]
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(3))
    dom = box_domain(x, 0.05, "inf", (0.0, 1.0))
    net = BoundNetwork(module, shape)
    spec = margin_spec(torch.tensor([1, 3]), 4)
    with torch.no_grad():
        lo, up = net.crown(dom, spec=spec)
        pts = _samples(dom, 5000, torch.Generator().manual_seed(4))
        z = module(pts.reshape(-1, *shape)).reshape(5000, 2, 4)
        margins = torch.einsum("nsk,mnk->mns", spec, z)
    assert bool((margins.min(0).values >= lo - 1e-5).all())
    assert bool((margins.max(0).values <= up + 1e-5).all())


def test_linear_network_bounds_are_exact():
    """A network without ReLU: the bounds of a linear map over a box are its exact range,
    ``W x0 +- |W| r`` (Linf), and ``W x0 +- eps ||W_k||_2`` over an L2 ball inside the box."""
    g = torch.Generator().manual_seed(5)
    module = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    _randomize(module, 5)
    w = module[1].weight @ module[0].weight
    b = module[1].weight @ module[0].bias + module[1].bias
    x = torch.rand((4, 5), generator=g) * 0.5 + 0.25
    net = BoundNetwork(module, (5,))
    with torch.no_grad():
        dom = box_domain(x, 0.1, "inf", (0.0, 1.0))
        center = x @ w.T + b
        rad = 0.1 * w.abs().sum(1)
        for lo, up in (net.crown(dom), net.crown(dom, alpha=True)):
            assert torch.allclose(lo, center - rad, atol=1e-5)
            assert torch.allclose(up, center + rad, atol=1e-5)
        # IBP is exact for one affine layer only: two stacked ones lose the correlations.
        lo_i, up_i = net.interval(dom)
        assert bool((up_i - lo_i > 2 * rad + 1e-3).all())
        one = BoundNetwork(module[:1], (5,))
        lo1, _up1 = one.interval(dom)
        w1, b1 = module[0].weight, module[0].bias
        assert torch.allclose(lo1, x @ w1.T + b1 - 0.1 * w1.abs().sum(1), atol=1e-5)
        dom2 = box_domain(x, 0.2, 2, (0.0, 1.0))  # the ball lies inside [0, 1]^5
        lo, up = net.crown(dom2)
        rad2 = 0.2 * w.norm(dim=1)
        assert torch.allclose(lo, center - rad2, atol=1e-5)
        assert torch.allclose(up, center + rad2, atol=1e-5)


def test_pre_activation_bounds_after_stacked_affine_layers_are_exact():
    """Two affine layers before a ReLU: IBP loses their correlation, CROWN's intermediate
    bound of the pre-activation is the exact range ``W2 W1 x0 +- |W2 W1| r`` (computed for
    the neurons that IBP leaves unstable: the others need no tighter bound)."""
    module = _randomize(
        nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)), 13
    )
    x = torch.rand((3, 5), generator=torch.Generator().manual_seed(13)) * 0.5 + 0.25
    dom = box_domain(x, 0.3, "inf", (0.0, 1.0))
    net = BoundNetwork(module, (5,))
    w = module[1].weight @ module[0].weight
    b = module[1].weight @ module[0].bias + module[1].bias
    with torch.no_grad():
        lo, up = net._all_bounds(dom, "crown")[2]
        lo_i, up_i = net._all_bounds(dom, "ibp")[2]
        exact_lo = (
            ((dom.upper + dom.lower) / 2) @ w.T + b - ((dom.upper - dom.lower) / 2) @ w.abs().T
        )
        exact_up = (
            ((dom.upper + dom.lower) / 2) @ w.T + b + ((dom.upper - dom.lower) / 2) @ w.abs().T
        )
    unstable = ((lo_i < 0) & (up_i > 0)).any(0)
    assert int(unstable.sum()) >= 2
    assert torch.allclose(lo[:, unstable], exact_lo[:, unstable], atol=1e-5)
    assert torch.allclose(up[:, unstable], exact_up[:, unstable], atol=1e-5)
    assert bool((up_i - lo_i > up - lo + 1e-3)[:, unstable].all())
    assert bool((lo >= lo_i - 1e-6).all() and (up <= up_i + 1e-6).all())


def test_l2_ball_cut_by_the_clip_box_is_exact_for_linear_maps():
    """Minimum of ``a @ x`` over the L2 ball intersected with the box, by the Lagrangian dual,
    against SciPy's constrained optimiser."""
    from scipy.optimize import minimize

    module = _randomize(nn.Sequential(nn.Linear(3, 2)), 6)
    x = torch.tensor([[0.05, 0.9, 0.5]], dtype=torch.float64)
    module = module.double()
    net = BoundNetwork(module, (3,))
    dom = box_domain(x, 0.4, 2, (0.0, 1.0))
    with torch.no_grad():
        lo, up = net.crown(dom)
    w = module[0].weight.detach().numpy()
    b = module[0].bias.detach().numpy()
    x0 = x.numpy()[0]
    for k in range(2):
        for sign, bound in ((1, lo[0, k]), (-1, -up[0, k])):
            res = minimize(
                lambda v, sign=sign, k=k: sign * (w[k] @ v + b[k]),
                x0,
                bounds=[(0, 1)] * 3,
                constraints=[{"type": "ineq", "fun": lambda v: 0.16 - np.sum((v - x0) ** 2)}],
                method="SLSQP",
            )
            assert float(bound) <= res.fun + 1e-7
            assert float(bound) >= res.fun - 1e-5


@pytest.mark.parametrize("name", ["mlp", "conv", "maxpool", "residual"])
def test_zero_radius_gives_the_logits(name):
    module, shape = NETWORKS[name]
    module.eval()
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(7))
    net = BoundNetwork(module, shape)
    dom = box_domain(x, 0.0, "inf", (0.0, 1.0))
    with torch.no_grad():
        z = module(x)
        for lo, up in (net.interval(dom), net.crown(dom), net.crown(dom, alpha=True)):
            assert torch.allclose(lo, z, atol=1e-5) and torch.allclose(up, z, atol=1e-5)


@pytest.mark.parametrize("method", ["interval", "crown-ibp", "crown"])
def test_bounds_are_differentiable_wrt_weights(method):
    """The gradient of a lower bound w.r.t. a weight matches central finite differences."""
    g = torch.Generator().manual_seed(8)
    module = _randomize(
        nn.Sequential(
            nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)
        ),
        8,
    ).double()
    net = BoundNetwork(module, (1, 4, 4))
    x = torch.rand((3, 1, 4, 4), generator=g, dtype=torch.float64)
    dom = box_domain(x, 0.05, "inf", (0.0, 1.0))
    spec = margin_spec(torch.tensor([0, 1, 2]), 3, dtype=torch.float64)

    def objective() -> torch.Tensor:
        if method == "interval":
            return net.interval(dom)[0].sum()
        inter = "ibp" if method == "crown-ibp" else "crown"
        return net.crown(dom, spec=spec, intermediate=inter)[0].sum()

    weight = module[3].weight
    (grad,) = torch.autograd.grad(objective(), weight)
    h = 1e-6
    for idx in [(0, 0), (1, 3), (4, 7), (2, 5)]:
        with torch.no_grad():
            weight[idx] += h
            up = float(objective())
            weight[idx] -= 2 * h
            down = float(objective())
            weight[idx] += h
        assert abs((up - down) / (2 * h) - float(grad[idx])) < 1e-5 * max(
            1.0, abs(float(grad[idx]))
        )
    assert float(grad.abs().sum()) > 0


def test_training_mode_and_parameter_updates_are_followed():
    module, shape = NETWORKS["batchnorm"]
    net = BoundNetwork(module, shape)
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(9))
    dom = box_domain(x, 0.0, "inf", (0.0, 1.0))
    module.train()
    with torch.no_grad():
        lo, _ = net.interval(dom)
        module.eval()
        assert torch.allclose(lo, module(x), atol=1e-5)
        module[-1].bias += 1.0  # the network reads parameters live
        lo2, _ = net.interval(dom)
        module[-1].bias -= 1.0
    assert torch.allclose(lo2, lo + 1.0, atol=1e-5)


class _Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_unsupported_layer_is_named():
    with pytest.raises(ModelError, match=r"body\.1.*Tanh.*Supported: nn\.Linear"):
        BoundNetwork(_Tanh(), (4,), owner="IBPTrainer")


def test_unsupported_function_and_product_are_named():
    class Square(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    class Sigmoid(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(x)

    with pytest.raises(ModelError, match="two input-dependent"):
        BoundNetwork(Square(), (3,))
    with pytest.raises(ModelError, match="sigmoid"):
        BoundNetwork(Sigmoid(), (3,))


# ------------------------------------------------------------------ public classes


def _clf(dtype=torch.float32) -> TorchClassifier:
    module, _ = NETWORKS["mlp"]
    return TorchClassifier(module.to(dtype), input_shape=(6,), nb_classes=4, clip_values=(0.0, 1.0))


def test_public_bounds_same_type_as_input():
    clf = _clf()
    x = np.random.default_rng(0).uniform(0.1, 0.9, size=(5, 6)).astype(np.float32)
    lo, up = IntervalBounds(clf).bounds(x, eps=0.05)
    assert isinstance(lo, np.ndarray) and lo.shape == (5, 4) and lo.dtype == np.float32
    lo_c, up_c = CrownBounds(clf, batch_size=2).bounds(torch.as_tensor(x), eps=0.05)
    assert isinstance(lo_c, torch.Tensor) and lo_c.shape == (5, 4)
    assert bool((lo_c.numpy() >= lo - 1e-6).all()) and bool((up_c.numpy() <= up + 1e-6).all())
    lo_a, up_a = CrownBounds(clf, alpha=True, alpha_iter=5).bounds(x, eps=0.2, norm=2)
    lo_c2, up_c2 = CrownBounds(clf).bounds(x, eps=0.2, norm=2)
    assert (lo_a >= lo_c2 - 1e-6).all() and (up_a <= up_c2 + 1e-6).all()
    # Per-sample budgets: row i equals the bounds computed with eps[i] alone.
    eps = np.array([0.0, 0.01, 0.02, 0.03, 0.04])
    lo_v, _ = CrownBounds(clf).bounds(x, eps=eps)
    lo_3, _ = CrownBounds(clf).bounds(x[3:4], eps=0.03)
    np.testing.assert_allclose(lo_v[3:4], lo_3, atol=1e-6)
    np.testing.assert_allclose(
        lo_v[0], clf.logits(torch.as_tensor(x[:1]))[0].detach().numpy(), atol=1e-5
    )


def test_public_bounds_bad_inputs():
    clf = _clf()
    x = np.full((2, 6), 0.5, dtype=np.float32)
    with pytest.raises(InvalidParameterError, match="eps"):
        IntervalBounds(clf).bounds(x, eps=-0.1)
    with pytest.raises(InvalidParameterError, match="norm"):
        CrownBounds(clf).bounds(x, eps=0.1, norm=1)
    with pytest.raises(InputError, match="clip_values"):
        CrownBounds(clf).bounds(x + 1.0, eps=0.1)
    with pytest.raises(InputError, match="shape"):
        CrownBounds(clf).bounds(x[:, :5], eps=0.1)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        CrownBounds(clf).bounds(bad, eps=0.1)
    with pytest.raises(InvalidParameterError, match="alpha_iter"):
        CrownBounds(clf, alpha=True, alpha_iter=0).bounds(x, eps=0.1)
    from bastion.testing._problems import sklearn_problem

    with pytest.raises(EstimatorError, match=r"module.*RandomizedSmoothing"):
        IntervalBounds(sklearn_problem("logistic").estimator).bounds(x, eps=0.1)
    tanh = TorchClassifier(_Tanh(), input_shape=(4,), nb_classes=4, clip_values=(0.0, 1.0))
    with pytest.raises(ModelError, match="Tanh"):
        CrownBounds(tanh).bounds(np.zeros((1, 4), np.float32), eps=0.1)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1)])
def test_maxpool_bounds_are_exact_on_a_box(pool):
    """Over a box, ``max`` of a window ranges exactly over [max of lowers, max of uppers]:
    the relaxation must give both ends, dominated windows or not (then a linear layer after it
    checks that the backward rule is the same relaxation)."""
    g = torch.Generator().manual_seed(11)
    module = nn.Sequential(pool, nn.Flatten())
    lower = torch.rand((3, 2, 6, 6), generator=g)
    # Some windows dominated (one value far above the others), some not; boxes of unequal
    # widths, so the input of largest lower bound need not have the largest upper bound.
    lower[:, :, ::3, ::3] += 2.0 * (torch.rand((3, 2, 2, 2), generator=g) > 0.5)
    upper = lower + torch.rand((3, 2, 6, 6), generator=g) ** 2
    dom = InputDomain(lower, upper, (lower + upper) / 2, torch.zeros(3), "inf")
    net = BoundNetwork(module, (2, 6, 6))
    with torch.no_grad():
        exact_lo, exact_up = module(dom.lower), module(dom.upper)
        for lo, up in (net.interval(dom), net.crown(dom, intermediate="ibp"), net.crown(dom)):
            assert torch.allclose(lo, exact_lo, atol=1e-6)
            assert torch.allclose(up, exact_up, atol=1e-6)
        head = nn.Linear(exact_lo.shape[1], 1)
        _randomize(head, 12)
        full = BoundNetwork(nn.Sequential(pool, nn.Flatten(), head), (2, 6, 6))
        lo, up = full.crown(dom, intermediate="ibp")
        w = head.weight[0]
        true_lo = (w.clamp(min=0) * exact_lo + w.clamp(max=0) * exact_up).sum(1) + head.bias
        true_up = (w.clamp(min=0) * exact_up + w.clamp(max=0) * exact_lo).sum(1) + head.bias
        # Sound (the pooled values vary independently only within their windows' ranges).
        assert bool((lo[:, 0] <= true_up).all()) and bool((up[:, 0] >= true_lo).all())
        pts = _samples(dom, 4000, g)
        z = full.forward(pts.reshape(-1, 2, 6, 6)).reshape(4000, 3)
        assert bool((z.min(0).values >= lo[:, 0] - 1e-5).all())
        assert bool((z.max(0).values <= up[:, 0] + 1e-5).all())
