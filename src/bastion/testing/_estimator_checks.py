"""Generic checks that every estimator must pass, finite-difference gradient checks included."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bastion.estimators.base import CAPABILITIES, Classifier
from bastion.exceptions import EstimatorError, InputError
from bastion.testing._problems import Problem

EstimatorCheck = Callable[[Problem], None]


def _tol(est: Classifier) -> tuple[float, float]:
    """(step, relative tolerance) for finite differences in the estimator's precision."""
    return (1e-6, 1e-5) if est.dtype == torch.float64 else (1e-3, 2e-2)


def check_predict(problem: Problem) -> None:
    """Probabilities of shape (N, K) that sum to one, counted as N queries, independent of
    batch size, in the caller's type."""
    est, x = problem.estimator, problem.x
    before = est.query_count
    p = est.predict(x, batch_size=5)
    assert isinstance(p, np.ndarray) and p.shape == (len(x), est.nb_classes)
    assert np.all(p >= 0) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert est.query_count - before == len(x), "query_count must grow by the number of samples"
    np.testing.assert_allclose(est.predict(x, batch_size=len(x)), p, atol=1e-5)
    pt = est.predict(torch.as_tensor(x, dtype=torch.float64))
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float64
    assert set(est.capabilities) <= set(CAPABILITIES)
    assert repr(est).startswith(type(est).__name__)


def check_bad_input(problem: Problem) -> None:
    """NaN, wrong shape, values outside clip_values, empty input: :class:`InputError`."""
    est, x = problem.estimator, problem.x[:3]
    nan = x.copy()
    nan.reshape(-1)[0] = np.nan
    bad = [nan, x.reshape(len(x), -1)[:, :-1], x[:0]]
    if est.clip_values is not None:
        bad.append(x + (est.clip_values[1] - est.clip_values[0]) + 1.0)
    for xb in bad:
        try:
            est.predict(xb)
        except InputError:
            continue
        raise AssertionError(f"predict accepted bad input of shape {xb.shape}")


def check_capability_errors(problem: Problem) -> None:
    """Methods of missing capabilities raise :class:`EstimatorError`."""
    est, x, y = problem.estimator, problem.x[:2], problem.y[:2]
    calls = {
        "loss_gradient": lambda: est.loss_gradient(x, y),
        "class_gradient": lambda: est.class_gradient(x),
        "logits": lambda: est.logits(x),
        "activations": lambda: est.get_activations(x, 0),
    }
    for cap, call in calls.items():
        if cap in est.capabilities:
            continue
        try:
            call()
        except EstimatorError as err:
            assert cap in str(err)
        else:
            raise AssertionError(f"{cap} worked without the capability")


def check_logits(problem: Problem) -> None:
    """softmax(logits) equals predict."""
    est, x = problem.estimator, problem.x
    z = est.logits(x)
    np.testing.assert_allclose(
        torch.softmax(torch.as_tensor(z), 1).numpy(), est.predict(x), atol=1e-5
    )


def _directional(
    est: Classifier, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    h, _ = _tol(est)
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


def check_loss_gradient(problem: Problem) -> None:
    """``loss_gradient`` matches central finite differences of the loss along random
    directions, and rows are per-sample gradients (independent of the rest of the batch)."""
    est = problem.estimator
    x = torch.as_tensor(problem.x[:6], dtype=est.dtype, device=est.device)
    y = torch.as_tensor(problem.y[:6], device=est.device)
    lo, hi = est.clip_values or (-np.inf, np.inf)
    x = x.clamp(lo + 0.01, hi - 0.01)  # room for the finite-difference steps
    grad = torch.as_tensor(est.loss_gradient(x, y))
    gen = torch.Generator().manual_seed(0)
    _, rtol = _tol(est)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return est.loss_gradient_tensor(z, y, return_outputs=True)[1]

    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=est.dtype).to(est.device)
        v = v / v.reshape(len(v), -1).norm(dim=1).reshape(-1, *[1] * (v.ndim - 1))
        fd = _directional(est, loss, x, v)
        an = (grad * v).reshape(len(v), -1).sum(1)
        np.testing.assert_allclose(an.cpu().numpy(), fd.cpu().numpy(), rtol=rtol, atol=rtol * 0.1)
    single = torch.as_tensor(est.loss_gradient(x[:1], y[:1]))
    np.testing.assert_allclose(single[0].cpu().numpy(), grad[0].cpu().numpy(), atol=1e-5)


def check_class_gradient(problem: Problem) -> None:
    """``class_gradient`` (all classes in one call) matches finite differences of the logits,
    the one-class forms (int label, one label per sample), ``objective_gradient_tensor`` and
    ``class_gradient_and_logits_tensor``."""
    est = problem.estimator
    x = torch.as_tensor(problem.x[:4], dtype=est.dtype, device=est.device)
    lo, hi = est.clip_values or (-np.inf, np.inf)
    x = x.clamp(lo + 0.01, hi - 0.01)
    jac = torch.as_tensor(est.class_gradient(x))
    assert jac.shape == (len(x), est.nb_classes, *est.input_shape)
    gen = torch.Generator().manual_seed(1)
    _, rtol = _tol(est)
    v = torch.randn(x.shape, generator=gen, dtype=est.dtype).to(est.device)
    with torch.no_grad():
        fd = _directional(est, est.logits_tensor, x, v)  # (N, K)
    an = (jac * v.unsqueeze(1)).reshape(len(x), est.nb_classes, -1).sum(-1)
    scale = float(fd.abs().max())
    np.testing.assert_allclose(an.cpu().numpy(), fd.cpu().numpy(), rtol=rtol, atol=rtol * scale)
    k = est.nb_classes - 1
    np.testing.assert_allclose(
        np.asarray(est.class_gradient(x, label=k)), jac[:, k].cpu().numpy(), atol=1e-6
    )
    grad, value, logits = est.objective_gradient_tensor(x, lambda z: z[:, 0] - 2 * z[:, k])
    np.testing.assert_allclose(
        grad.cpu().numpy(), (jac[:, 0] - 2 * jac[:, k]).cpu().numpy(), atol=1e-5
    )
    np.testing.assert_allclose(value.cpu().numpy(), (logits[:, 0] - 2 * logits[:, k]).cpu().numpy())
    labels = np.arange(len(x)) % est.nb_classes
    picked = jac[torch.arange(len(x)), torch.as_tensor(labels)]
    np.testing.assert_allclose(
        np.asarray(est.class_gradient(x, label=labels)), picked.cpu().numpy(), atol=1e-6
    )
    both, z = est.class_gradient_and_logits_tensor(x)
    np.testing.assert_allclose(both.cpu().numpy(), jac.cpu().numpy(), atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(
            z.cpu().numpy(), est.logits_tensor(x).cpu().numpy(), rtol=1e-5, atol=1e-6
        )


def check_activations(problem: Problem) -> None:
    """Activations by name and by index, batch-size independent, hooks removed after use."""
    est, x = problem.estimator, problem.x[:5]
    names = est.layer_names
    assert names, "an estimator with activations must name its layers"
    first = est.get_activations(x, names[0], batch_size=2)
    assert first.shape[0] == len(x)
    np.testing.assert_allclose(first, est.get_activations(x, 0, batch_size=5), atol=1e-6)
    last = est.get_activations(x, -1)
    assert last.shape[0] == len(x)
    model = getattr(est, "model", None)
    if isinstance(model, torch.nn.Module):
        assert all(not m._forward_hooks for m in model.modules()), "a hook was left behind"
    try:
        est.get_activations(x, "no-such-layer")
    except InputError:
        pass
    else:
        raise AssertionError("unknown layer name accepted")


def check_activation_gradient(problem: Problem) -> None:
    """``activation_gradient_tensor`` matches finite differences of a function of a layer's
    output, and returns that layer's activations."""
    est = problem.estimator
    x = torch.as_tensor(problem.x[:3], dtype=est.dtype, device=est.device)
    lo, hi = est.clip_values or (-np.inf, np.inf)
    x = x.clamp(lo + 0.01, hi - 0.01)
    layer = est.layer_names[len(est.layer_names) // 2]
    with torch.no_grad():
        ref = est.activations_tensor(x, layer)
    weights = torch.randn(ref[0].shape, generator=torch.Generator().manual_seed(2))
    weights = weights.to(ref.device, ref.dtype)

    def objective(a: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(a) * weights).flatten(1).sum(dim=1)

    grad, value, acts = est.activation_gradient_tensor(x, layer, objective)
    assert grad.shape == x.shape and value.shape == (len(x),)
    np.testing.assert_allclose(acts.cpu().numpy(), ref.cpu().numpy(), rtol=1e-5, atol=1e-6)
    _, rtol = _tol(est)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=est.dtype)
    v = v.to(est.device)
    with torch.no_grad():
        fd = _directional(est, lambda z: objective(est.activations_tensor(z, layer)), x, v)
    an = (grad * v).reshape(len(x), -1).sum(1)
    scale = float(fd.abs().max())
    np.testing.assert_allclose(an.cpu().numpy(), fd.cpu().numpy(), rtol=rtol, atol=rtol * scale)


def check_parameter_gradient(problem: Problem) -> None:
    """``parameter_gradient_tensor``: finite tensors, the gradient of the *mean* loss (the
    batch's gradient is the average of its halves')."""
    est = problem.estimator
    x = torch.as_tensor(problem.x[:4], dtype=est.dtype, device=est.device)
    y = torch.as_tensor(problem.y[:4], device=est.device)
    whole = est.parameter_gradient_tensor(x, y)
    first = est.parameter_gradient_tensor(x[:2], y[:2])
    second = est.parameter_gradient_tensor(x[2:], y[2:])
    assert whole and len(whole) == len(first)
    for g, a, b in zip(whole, first, second, strict=True):
        assert bool(torch.isfinite(g).all())
        np.testing.assert_allclose(
            g.cpu().numpy(), ((a + b) / 2).cpu().numpy(), rtol=1e-4, atol=1e-6
        )


def check_clone(problem: Problem) -> None:
    """``clone()`` predicts like the original, is independent of it (training the clone leaves
    the original's predictions alone), and starts with zero counts."""
    est: Any = problem.estimator
    x = problem.x[:6]
    before = est.predict(x)
    twin: Any = est.clone()
    assert twin is not est and twin.query_count == 0
    np.testing.assert_allclose(twin.predict(x), before, atol=1e-6)
    if "fit" in twin.capabilities:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin.fit(problem.x_train[:64], (problem.y_train[:64] + 1) % est.nb_classes)
        np.testing.assert_allclose(est.predict(x), before, atol=1e-6)


def check_prune(problem: Problem) -> None:
    """``prune(layer, units)`` on a clone zeroes exactly those units of that layer's output;
    an empty set restores it; the original is untouched."""
    est: Any = problem.estimator
    x = problem.x[:5]
    layer = est.layer_names[0]
    original = est.get_activations(x, layer)
    twin: Any = est.clone()
    twin.prune(layer, [0, 1])
    pruned = np.asarray(twin.get_activations(x, layer))
    assert np.all(pruned[:, [0, 1]] == 0)
    np.testing.assert_allclose(pruned[:, 2:], np.asarray(original)[:, 2:], atol=1e-6)
    twin.prune(layer, [])
    np.testing.assert_allclose(twin.get_activations(x, layer), original, atol=1e-6)
    np.testing.assert_allclose(est.get_activations(x, layer), original, atol=1e-6)


def check_fit(problem: Problem) -> None:
    """``fit`` returns the estimator and keeps it usable (on a copy of the example)."""
    est: Any = copy.deepcopy(problem.estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few iterations on purpose: convergence is not checked
        out = est.fit(problem.x_train, problem.y_train)
    assert out is est
    assert est.predict(problem.x).shape == (len(problem.x), est.nb_classes)


def estimator_checks(est: Classifier) -> Iterator[EstimatorCheck]:
    """The checks that apply to ``est`` given its capabilities."""
    yield check_predict
    yield check_bad_input
    yield check_capability_errors
    caps = est.capabilities
    if "logits" in caps:
        yield check_logits
    if "loss_gradient" in caps:
        yield check_loss_gradient
    if "class_gradient" in caps:
        yield check_class_gradient
    if "activations" in caps:
        yield check_activations
    if "activation_gradient" in caps:
        yield check_activation_gradient
    if "parameter_gradient" in caps:
        yield check_parameter_gradient
    if "fit" in caps:
        yield check_fit
    if "clone" in caps:
        yield check_clone
    if "prune" in caps and "clone" in caps:
        yield check_prune


def check_estimator(problem: Problem) -> list[str]:
    """Run every applicable check on ``problem.estimator``; return the names of those run."""
    ran = []
    for check in estimator_checks(problem.estimator):
        try:
            check(problem)
        except AssertionError as err:
            name = type(problem.estimator).__name__
            raise AssertionError(f"{name} failed {check.__name__}: {err}") from err
        ran.append(check.__name__)
    return ran
