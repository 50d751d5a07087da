"""Generic checks that every public certificate of :mod:`bastion.certification` must pass.

A certificate is one of three families, told apart by its methods:

- *bounds* (``bounds(x, *, eps, norm)`` -> ``(lower, upper)`` logit bounds over the input
  ball: :class:`~bastion.certification.IntervalBounds`,
  :class:`~bastion.certification.CrownBounds`), run on :func:`relu_problem` (a small ReLU CNN
  with the estimator's own normalisation);
- *smoothing* (``certify(x, *, n0, n, alpha, batch_size)`` -> ``(prediction, L2 radius)``:
  :class:`~bastion.certification.RandomizedSmoothing`), run on :func:`torch_problem`;
- *patch* (``certify(x, *, patch_size)`` -> ``(prediction, certified)``:
  :class:`~bastion.certification.DerandomizedSmoothing`), run on :func:`patch_problem`.

Every certificate gets the same checks: API conventions, docstring, invalid parameters, types
preserved (NumPy in, NumPy out; a tensor in, tensors out on its device), its input and the
estimator's model not changed, seeded determinism, batch-size invariance, the missing
capability named, and soundness against attacks (bounds contain every sampled and
PGD-optimised point of the ball; a certified smoothed prediction is the one ``predict``
gives; a certified patch prediction survives a patch of random content at every location).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.estimators import BlackBoxClassifier, TorchClassifier
from bastion.exceptions import EstimatorError
from bastion.testing._attack_checks import (
    check_params_protocol,
    expect_invalid_params,
    fast_params,
    run_checks,
    without_skips,
)
from bastion.testing._detector_checks import _section
from bastion.testing._problems import Problem, _digits8, torch_problem

__all__ = [
    "certificate_checks",
    "certificate_family",
    "certificate_problem",
    "check_certificate",
    "patch_problem",
    "relu_problem",
]

CertificateCheck = Callable[[Any, Problem], None]


# --------------------------------------------------------------------------- problems


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # seeded init without the global RNG
        for param in module.parameters():
            bound = 1.0 / math.sqrt(max(param[0].numel(), 1)) if param.ndim > 1 else 0.1
            param.uniform_(-bound, bound, generator=gen)
    return module


@functools.lru_cache(maxsize=1)
def _relu_cnn() -> TorchClassifier:
    x, y = _digits8()
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    clf = TorchClassifier(
        _seeded(net, 0),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        preprocessing=(0.3, 0.4),
    )
    clf.fit(x[:1200], y[:1200], epochs=6, batch_size=64, learning_rate=1e-2, random_state=0)
    return clf


def relu_problem(n: int = 12) -> Problem:
    """A small ReLU CNN (``Conv2d(1, 4, 3), ReLU, Flatten, Linear(256, 16), ReLU,
    Linear(16, 10)``, normalisation ``(x - 0.3) / 0.4`` inside the estimator) trained on 8x8
    digits: what bound propagation supports. The estimator is shared (cached); callers must
    not retrain it."""
    x, y = _digits8()
    clf = _relu_cnn()
    clf.reset_counts()
    return Problem(clf, x[1200 : 1200 + n], y[1200 : 1200 + n], x[:200], y[:200])


class _ColumnVoter(nn.Module):
    """A base classifier for derandomized smoothing on 8x8 digits (2 encoded channels): the
    class scores are a fixed linear read-out of the kept pixels, so every ablation votes and
    votes differ between samples."""

    def __init__(self) -> None:
        super().__init__()
        self.read = _seeded(nn.Linear(2 * 64, 10), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read(x.flatten(1)) * 4.0


def patch_problem(n: int = 8) -> Problem:
    """8x8 digits and a base classifier over the two-channel ablation encoding of
    derandomized smoothing (Levine and Feizi 2020): ``(2, 8, 8)`` inputs."""
    x, y = _digits8()
    clf = TorchClassifier(_ColumnVoter(), input_shape=(2, 8, 8), nb_classes=10, clip_values=(0, 1))
    return Problem(clf, x[1200 : 1200 + n], y[1200 : 1200 + n], x[:200], y[:200])


def certificate_family(cls: Any) -> str:
    """``"bounds"``, ``"smoothing"`` or ``"patch"``: how a certificate class is called."""
    if callable(getattr(cls, "bounds", None)):
        return "bounds"
    certify = getattr(cls, "certify", None)
    if not callable(certify):
        raise TypeError(f"{cls.__name__} has neither bounds() nor certify()")
    names = inspect.signature(certify).parameters
    if "patch_size" in names:
        return "patch"
    if "n0" in names:
        return "smoothing"
    raise TypeError(f"{cls.__name__}.certify takes neither n0 nor patch_size")


def certificate_problem(cls: Any) -> Problem:
    """The problem a certificate class is checked on (see the module docstring)."""
    return {"bounds": relu_problem, "smoothing": torch_problem, "patch": patch_problem}[
        certificate_family(cls)
    ]()


#: Fast settings applied when the certificate has these parameters.
_FAST: dict[str, Any] = {"alpha_iter": 5, "batch_size": 64}
_EPS = 0.05
_SMOOTH_CALL = {"n0": 16, "n": 128, "alpha": 0.01}
_PATCH = 2


def _make(cls: Any, problem: Problem, **overrides: Any) -> Any:
    return cls(problem.estimator, **fast_params(cls, _FAST, overrides))


def _call(obj: Any, x: Any, **kwargs: Any) -> tuple[Any, ...]:
    family = certificate_family(type(obj))
    if family == "bounds":
        return tuple(obj.bounds(x, eps=kwargs.pop("eps", _EPS), norm=kwargs.pop("norm", "inf")))
    if family == "smoothing":
        return tuple(obj.certify(x, **{**_SMOOTH_CALL, **kwargs}))
    return tuple(obj.certify(x, patch_size=kwargs.pop("patch_size", _PATCH), **kwargs))


def _np(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _equal(a: tuple[Any, ...], b: tuple[Any, ...], atol: float, what: str) -> None:
    assert len(a) == len(b), f"{what}: {len(a)} outputs, then {len(b)}"
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_allclose(_np(u), _np(v), rtol=0, atol=atol, err_msg=f"{what}, out {i}")


# --------------------------------------------------------------------------- checks


def check_api(cls: Any, problem: Problem) -> None:
    """The estimator first, then keyword-only parameters with defaults; ``__init__`` only
    stores (a bad value is accepted until the first call); ``get_params``, ``set_params``
    and ``repr`` work from the signature."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert params and params[0].name == "estimator", f"{cls.__name__}: the estimator first"
    for p in params[1:]:
        assert p.kind is p.KEYWORD_ONLY, f"{cls.__name__}.{p.name} must be keyword-only"
        assert p.default is not p.empty, f"{cls.__name__}.{p.name} needs a default"
    given = fast_params(cls, _FAST, {})
    obj = cls(problem.estimator, **given)
    check_params_protocol(cls, obj, given)
    cls(problem.estimator, **{k: object() for k in cls._parameter_constraints})


def check_docstring(cls: Any, problem: Problem) -> None:
    """numpydoc class docstring: every parameter documented, References (with a year) and a
    runnable Examples section."""
    doc = inspect.getdoc(cls) or ""
    documented = _section(doc, "Parameters")
    for name in cls._param_names():
        assert f"{name} :" in documented, f"{cls.__name__}: parameter {name!r} undocumented"
    refs = _section(doc, "References")
    assert any(str(y) in refs for y in range(1990, 2031)), f"{cls.__name__}: no dated reference"
    assert ">>>" in _section(doc, "Examples"), f"{cls.__name__}: the example must be runnable"


def check_invalid_params(cls: Any, problem: Problem) -> None:
    """Each constrained parameter rejects a bad value at the first call with an
    :class:`~bastion.exceptions.InvalidParameterError` naming it and the class."""
    x = problem.x[:2]
    expect_invalid_params(cls, lambda name, value: _call(_make(cls, problem, **{name: value}), x))


def check_types_preserved(cls: Any, problem: Problem) -> None:
    """NumPy in, NumPy out; a tensor in, tensors out on its device; floating outputs (bounds,
    radii) in the input's floating dtype; one row per sample."""
    x = problem.x[:3]
    for dtype in (np.float32, np.float64):
        out = _call(_make(cls, problem), x.astype(dtype))
        for i, o in enumerate(out):
            assert isinstance(o, np.ndarray), f"NumPy in, output {i} is {type(o).__name__}"
            assert o.shape[0] == len(x), f"output {i} has {o.shape[0]} rows for {len(x)}"
            if np.issubdtype(o.dtype, np.floating):
                assert o.dtype == dtype, f"{dtype.__name__} in, output {i} is {o.dtype}"
    xt = torch.as_tensor(x, dtype=torch.float64)
    out_t = _call(_make(cls, problem), xt)
    for i, o in enumerate(out_t):
        assert isinstance(o, torch.Tensor), f"a tensor in, output {i} is {type(o).__name__}"
        assert o.device == xt.device, f"{xt.device} in, output {i} on {o.device}"
        if o.is_floating_point():
            assert o.dtype == torch.float64, f"float64 in, output {i} is {o.dtype}"


def check_not_mutated(cls: Any, problem: Problem) -> None:
    """Neither the input (NumPy or tensor) nor the estimator's model (weights, training
    mode) is changed by a call."""
    x = problem.x[:3].copy()
    xt = torch.as_tensor(x).clone()
    module = getattr(problem.estimator, "model", None)
    before = {k: v.clone() for k, v in module.state_dict().items()} if module is not None else {}
    modes = [m.training for m in module.modules()] if module is not None else []
    obj = _make(cls, problem)
    _call(obj, x)
    _call(obj, xt)
    np.testing.assert_array_equal(x, problem.x[:3], err_msg="the NumPy input was modified")
    assert torch.equal(xt, torch.as_tensor(problem.x[:3])), "the tensor input was modified"
    if module is not None:
        for k, v in module.state_dict().items():
            assert torch.equal(v, before[k]), f"the model's {k!r} changed"
        assert [m.training for m in module.modules()] == modes, "the model's mode changed"


def check_seeded_determinism(cls: Any, problem: Problem) -> None:
    """The same ``random_state`` (an int) gives the same result twice; a deterministic
    certificate gives it every call."""
    x = problem.x[:4]
    _equal(_call(_make(cls, problem), x), _call(_make(cls, problem), x), 0.0, "two seeded runs")


def check_batch_size_invariance(cls: Any, problem: Problem) -> None:
    """The batch's result is the concatenation of its samples' results (bounds to 1e-5)."""
    x = problem.x[:4]
    whole = _call(_make(cls, problem), x)
    alone = [_call(_make(cls, problem), x[i : i + 1]) for i in range(len(x))]
    joined = tuple(np.concatenate([_np(a[k]) for a in alone]) for k in range(len(whole)))
    _equal(whole, joined, 1e-5, "the batch against its samples one at a time")
    if "batch_size" in cls._param_names():
        small = _call(_make(cls, problem, batch_size=1), x)
        _equal(whole, small, 1e-5, "batch_size=1 against the default")


def check_missing_capability(cls: Any, problem: Problem) -> None:
    """A certificate that needs the torch module (bound propagation) raises an
    :class:`~bastion.exceptions.EstimatorError` naming the capability on a predict-only
    estimator; one that needs only predictions runs on it."""
    est = problem.estimator
    x = problem.x[:2]

    def api(batch: np.ndarray) -> np.ndarray:
        # The model's own answer anywhere (noisy inputs of smoothing leave clip_values).
        with torch.no_grad():
            return est.predict_tensor(torch.as_tensor(batch, dtype=est.dtype)).cpu().numpy()

    black = BlackBoxClassifier(
        api, input_shape=est.input_shape, nb_classes=est.nb_classes, clip_values=None
    )
    if certificate_family(cls) == "bounds":
        try:
            _call(_make(cls, problem.__class__(black, x, problem.y[:2], x, problem.y[:2])), x)
        except EstimatorError as err:
            assert "module" in str(err), f"the error must name the capability: {err}"
            return
        raise AssertionError(f"{cls.__name__} ran on a predict-only estimator")
    out = _call(_make(cls, problem.__class__(black, x, problem.y[:2], x, problem.y[:2])), x)
    assert len(out[0]) == len(x)


def _sound_bounds(cls: Any, problem: Problem) -> None:
    est = problem.estimator
    assert est.clip_values is not None, "the bounds problem has clip_values"
    lo_clip, hi_clip = (float(v) for v in est.clip_values)
    x = torch.as_tensor(problem.x[:4], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    for norm in ("inf", 2):
        eps = _EPS if norm == "inf" else 0.5
        lower, upper = (
            torch.as_tensor(b) for b in _call(_make(cls, problem), x, eps=eps, norm=norm)
        )
        assert (lower <= upper + 1e-6).all(), "a lower bound above its upper bound"
        n = 256
        noise = torch.rand((n, *x.shape), generator=gen) * 2 - 1
        if norm == 2:  # uniform directions, radii up to eps
            flat = torch.randn((n, len(x), x[0].numel()), generator=gen)
            flat = flat / flat.norm(dim=-1, keepdim=True)
            flat = flat * eps * torch.rand((n, len(x), 1), generator=gen)
            noise = flat.view(n, *x.shape)
        else:
            noise = noise * eps
        pts = (x.unsqueeze(0) + noise).clamp(lo_clip, hi_clip)
        # and the points PGD pushes to each logit's extremes
        z = pts[:8].clone().requires_grad_(True)
        module = est.torch_module()
        for _ in range(10):
            out = module(z.flatten(0, 1)).view(8, len(x), -1)
            grad = torch.autograd.grad(out[..., : out.shape[-1] // 2].sum(), z)[0]
            with torch.no_grad():
                step = grad.sign() * eps / 4 if norm == "inf" else grad * 0.1
                z = z + step * torch.tensor([1.0, -1.0]).repeat(4).view(8, 1, 1, 1, 1)
                delta = z - x
                if norm == "inf":
                    delta = delta.clamp(-eps, eps)
                else:
                    size = delta.flatten(2).norm(dim=-1).clamp_min(eps).view(8, len(x), 1, 1, 1)
                    delta = delta * eps / size
                z = (x + delta).clamp(lo_clip, hi_clip).requires_grad_(True)
        pts = torch.cat([pts, z.detach()])
        with torch.no_grad():
            outs = est.torch_module()(pts.flatten(0, 1)).view(len(pts), len(x), -1)
        slack = 1e-4 * (1 + upper.abs().max())
        below = (outs < lower.unsqueeze(0) - slack).any()
        above = (outs > upper.unsqueeze(0) + slack).any()
        assert not below and not above, f"a point of the L{norm} ball outside its bounds"


def _sound_smoothing(cls: Any, problem: Problem) -> None:
    x = problem.x[:4]
    obj = _make(cls, problem)
    pred, radius = (_np(v) for v in _call(obj, x))
    assert ((pred == -1) == (radius == 0)).all(), "abstain (-1) exactly where the radius is 0"
    sigma = float(obj.sigma)
    n, alpha = _SMOOTH_CALL["n"], _SMOOTH_CALL["alpha"]
    # The largest radius n samples can certify: every count for the top class.
    best = sigma * float(torch.distributions.Normal(0, 1).icdf(torch.tensor(alpha ** (1 / n))))
    assert (radius <= best + 1e-9).all(), f"a radius above {best:g}, the most {n} draws prove"
    again = _np(_make(cls, problem, random_state=1).predict(x, n=2000, alpha=0.001))
    sure = (pred >= 0) & (again >= 0)
    assert (pred[sure] == again[sure]).all(), "certified and predicted classes disagree"


def _sound_patch(cls: Any, problem: Problem) -> None:
    x = torch.as_tensor(problem.x[:6])
    obj = _make(cls, problem)
    pred, certified = (torch.as_tensor(_np(v)) for v in _call(obj, x, patch_size=_PATCH))
    gen = torch.Generator().manual_seed(0)
    h, w = x.shape[-2:]
    for top in range(h - _PATCH + 1):
        for left in range(w - _PATCH + 1):
            patched = x.clone()
            patched[..., top : top + _PATCH, left : left + _PATCH] = torch.rand(
                (len(x), x.shape[1], _PATCH, _PATCH), generator=gen
            )
            now = torch.as_tensor(_np(obj.predict(patched)))
            moved = certified & (now != pred)
            assert not moved.any(), f"a certified prediction moved by a patch at {(top, left)}"


_SOUND = {"bounds": _sound_bounds, "smoothing": _sound_smoothing, "patch": _sound_patch}


def check_sound(cls: Any, problem: Problem) -> None:
    """The certificate holds against attacks: bounds contain 256 random points of the Linf
    and L2 balls (intersected with ``clip_values``) and 8 PGD-optimised ones; a certified
    smoothed class is the class ``predict`` returns with many more draws, no radius exceeds
    what ``n`` draws can prove, and abstention is exactly radius 0; a certified patch
    prediction is unchanged by a patch of random content at every location."""
    _SOUND[certificate_family(cls)](cls, problem)


def certificate_checks(cls: Any) -> Iterator[CertificateCheck]:
    """The checks for certificate class ``cls`` (on :func:`certificate_problem`), minus
    those it skips with a written reason."""
    checks: list[CertificateCheck] = [
        check_api,
        check_docstring,
        check_invalid_params,
        check_types_preserved,
        check_not_mutated,
        check_seeded_determinism,
        check_batch_size_invariance,
        check_missing_capability,
        check_sound,
    ]
    return without_skips(cls, checks)


def check_certificate(cls: Any, problem: Problem | None = None) -> list[str]:
    """Run every applicable check on certificate class ``cls``; return the names of those
    run.

    Parameters
    ----------
    cls : type
        A certificate class of :mod:`bastion.certification` (or your own with the same
        methods).
    problem : Problem, optional
        Default: :func:`certificate_problem`.

    Raises
    ------
    AssertionError
        Naming the failed check.
    """
    problem = problem if problem is not None else certificate_problem(cls)
    return run_checks(cls, problem, certificate_checks(cls))
