"""Generic checks that every input preprocessor (``preprocessor(x) -> x'``, a subclass of
:class:`~bastion.defenses.preprocessing.Preprocessor`) and every output postprocessor
(:func:`postprocessor_checks`) must pass.

How a check runs a preprocessor: it builds it with :func:`preprocessor_params` (the fast
settings below and ``random_state=0`` where the class takes one, refined by the ``params`` of
its :class:`~bastion.testing.ConformanceSpec`) and applies it to the small image batches of
:func:`preprocessor_problem`: 8 random RGB images ``(8, 3, 8, 8)`` and 8 greyscale images
``(8, 1, 8, 8)`` in ``[0, 1]``. The output shape is the input's, unless the spec's
``output_shape`` says otherwise (:class:`~bastion.defenses.preprocessing.ThermometerEncoding`
multiplies the channels). The ``skip`` of the spec names the checks a class skips, each with a
reason.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError, InvalidParameterError
from bastion.testing._attack_checks import (
    check_params_protocol,
    expect_invalid_params,
    fast_params,
    run_checks,
    without_skips,
)
from bastion.testing._detector_checks import _section
from bastion.testing._specs import conformance_spec

__all__ = [
    "PreprocessorProblem",
    "check_preprocessor",
    "postprocessor_checks",
    "postprocessor_problem",
    "preprocessor_checks",
    "preprocessor_params",
    "preprocessor_problem",
]


@dataclasses.dataclass(frozen=True)
class PreprocessorProblem:
    """Small image batches for the preprocessor suite (float32, inside ``(0, 1)``)."""

    rgb: np.ndarray  # (8, 3, 8, 8)
    grey: np.ndarray  # (8, 1, 8, 8)

    @property
    def batches(self) -> tuple[np.ndarray, np.ndarray]:
        return self.rgb, self.grey


@functools.lru_cache(maxsize=1)
def _images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((8, 3, 8, 8), dtype=np.float32), rng.random((8, 1, 8, 8), dtype=np.float32)


def preprocessor_problem() -> PreprocessorProblem:
    """8 random RGB images ``(8, 3, 8, 8)`` and 8 greyscale images ``(8, 1, 8, 8)`` in
    ``[0, 1]`` (float32; a fresh copy each call)."""
    rgb, grey = _images()
    return PreprocessorProblem(rgb.copy(), grey.copy())


PreprocessorCheck = Callable[[Any, PreprocessorProblem], None]

#: Fast settings applied when the preprocessor has these parameters.
_FAST: dict[str, Any] = {"max_iter": 5}


def preprocessor_params(cls: Any, **overrides: Any) -> dict[str, Any]:
    """Small, fast hyper-parameters for ``cls`` (its spec's ``params`` refine them)."""
    return fast_params(cls, _FAST, overrides)


def _make(cls: Any, **overrides: Any) -> Any:
    return cls(**preprocessor_params(cls, **overrides))


def _expected_shape(cls: Any, obj: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    rule = conformance_spec(cls).output_shape
    return tuple(rule(obj, shape)) if rule is not None else tuple(shape)


def _np(out: Any) -> np.ndarray:
    return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


# --------------------------------------------------------------------------- checks


def check_api(cls: Any, problem: PreprocessorProblem) -> None:
    """Every parameter keyword-only with a default; ``__init__`` only stores (no validation:
    a bad value is accepted until the first call); ``get_params``/``set_params``/``repr``
    work from the signature; the instance is callable and has ``apply_tensor``, ``bpda`` and
    ``reset``; the class flags ``differentiable`` and ``randomized`` are bools, and a
    randomised class takes a ``random_state``."""
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        assert p.kind is p.KEYWORD_ONLY, f"{cls.__name__}.{p.name} must be keyword-only"
        assert p.default is not p.empty, f"{cls.__name__}.{p.name} needs a default"
    given = preprocessor_params(cls)
    obj = cls(**given)
    check_params_protocol(cls, obj, given)
    cls(**{k: object() for k in cls._parameter_constraints})  # stores, does not validate
    assert callable(obj), f"{cls.__name__} instances must be callable"
    for name in ("apply_tensor", "bpda", "reset"):
        assert callable(getattr(obj, name, None)), f"{cls.__name__} has no {name}()"
    for flag in ("differentiable", "randomized"):
        assert isinstance(getattr(cls, flag), bool), f"{cls.__name__}.{flag} must be a bool"
    if cls.randomized:
        assert "random_state" in cls._param_names(), "a randomised class needs random_state"
    assert "clip_values" in cls._param_names(), f"{cls.__name__} needs clip_values"


def check_docstring(cls: Any, problem: PreprocessorProblem) -> None:
    """numpydoc class docstring: every parameter documented, References (with a year) and a
    runnable Examples section."""
    doc = inspect.getdoc(cls) or ""
    documented = _section(doc, "Parameters")
    for name in cls._param_names():
        assert f"{name} :" in documented, f"{cls.__name__}: parameter {name!r} undocumented"
    refs = _section(doc, "References")
    assert any(str(y) in refs for y in range(1990, 2031)), f"{cls.__name__}: no dated reference"
    assert ">>>" in _section(doc, "Examples"), f"{cls.__name__}: the example must be runnable"


def check_invalid_params(cls: Any, problem: PreprocessorProblem) -> None:
    """Each constrained parameter rejects a bad value at the first call with an
    :class:`InvalidParameterError` naming the parameter and the class; so does the kernel
    ``apply_tensor``."""
    x = problem.rgb
    expect_invalid_params(cls, lambda name, value: _make(cls, **{name: value})(x))
    try:
        _make(cls, clip_values=(1.0, 0.0)).apply_tensor(torch.as_tensor(x))
    except InvalidParameterError:
        return
    raise AssertionError(f"{cls.__name__}.apply_tensor accepted clip_values=(1, 0)")


def check_types_preserved(cls: Any, problem: PreprocessorProblem) -> None:
    """NumPy in, NumPy out; a tensor in, a tensor out; the dtype (float32, float64) and the
    device kept; the shape kept (or as the spec's ``output_shape`` says), for RGB and
    greyscale images and a single image."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for x in (*problem.batches, problem.rgb[:1]):
        for dtype in (np.float32, np.float64):
            obj = _make(cls)
            want = _expected_shape(cls, obj, x.shape)
            out = obj(x.astype(dtype))
            assert isinstance(out, np.ndarray), f"NumPy in, {type(out).__name__} out"
            assert out.dtype == dtype, f"{dtype.__name__} in, {out.dtype} out"
            assert out.shape == want, f"shape {x.shape} in, {out.shape} out (expected {want})"
            for device in devices:
                xt = torch.as_tensor(x.astype(dtype), device=device)
                out_t = _make(cls)(xt)
                assert isinstance(out_t, torch.Tensor), f"a tensor in, {type(out_t).__name__} out"
                assert out_t.dtype == xt.dtype, f"{xt.dtype} in, {out_t.dtype} out"
                assert out_t.device == xt.device, f"{xt.device} in, {out_t.device} out"
                assert tuple(out_t.shape) == want, f"shape {tuple(out_t.shape)} (want {want})"
                kernel = _make(cls).apply_tensor(xt)
                assert kernel.dtype == xt.dtype and tuple(kernel.shape) == want, "apply_tensor"
                surrogate = _make(cls).bpda(xt)
                assert tuple(surrogate.shape) == want, "bpda must match apply_tensor's shape"
                assert surrogate.dtype == xt.dtype and surrogate.device == xt.device, "bpda"


def check_values_in_clip_values(cls: Any, problem: PreprocessorProblem) -> None:
    """The output is finite and inside ``clip_values`` for the default ``(0, 1)`` and for a
    ``(0, 255)`` range, for random images and for images at the bounds."""
    for lo, hi in ((0.0, 1.0), (0.0, 255.0)):
        for x in (*problem.batches, np.round(problem.rgb)):
            scaled = (x.astype(np.float64) * (hi - lo) + lo).astype(np.float32)
            out = _make(cls, clip_values=(lo, hi))(scaled)
            assert np.isfinite(out).all(), "non-finite output"
            assert out.min() >= lo and out.max() <= hi, (
                f"output in [{out.min():g}, {out.max():g}], outside clip_values ({lo:g}, {hi:g})"
            )


def check_input_not_mutated(cls: Any, problem: PreprocessorProblem) -> None:
    """Neither the call nor ``apply_tensor`` nor ``bpda`` writes into its input (NumPy or
    tensor)."""
    x = problem.rgb.copy()
    _make(cls)(x)
    np.testing.assert_array_equal(x, problem.rgb, err_msg="the NumPy input was modified")
    xt = torch.as_tensor(problem.rgb).clone()
    obj = _make(cls)
    obj(xt)
    obj.apply_tensor(xt)
    obj.bpda(xt)
    assert torch.equal(xt, torch.as_tensor(problem.rgb)), "the tensor input was modified"


def check_seeded_determinism(cls: Any, problem: PreprocessorProblem) -> None:
    """Randomised: the same ``random_state`` gives the same outputs (call after call), a
    second call draws afresh, :meth:`reset` restarts an int seed's stream, another seed and
    a seeded ``torch.Generator`` work; deterministic: the same output every call."""
    x = problem.rgb
    a, b = _make(cls), _make(cls)
    first, again = a(x), b(x)
    np.testing.assert_array_equal(first, again, err_msg="the same seed gave other outputs")
    if not cls.randomized:
        np.testing.assert_array_equal(a(x), first, err_msg="a deterministic class differs")
        return
    second = a(x)
    np.testing.assert_array_equal(second, b(x), err_msg="the streams of one seed diverge")
    assert not np.array_equal(first, second), "a second call drew the same randomness"
    a.reset()
    np.testing.assert_array_equal(a(x), first, err_msg="reset() did not restart the stream")
    other = _make(cls, random_state=1)(x)
    assert not np.array_equal(other, first), "random_state=1 gave the output of random_state=0"
    g1 = _make(cls, random_state=torch.Generator().manual_seed(3))(x)
    g2 = _make(cls, random_state=torch.Generator().manual_seed(3))(x)
    np.testing.assert_array_equal(g1, g2, err_msg="equal generators gave other outputs")


def check_batch_size_invariance(cls: Any, problem: PreprocessorProblem) -> None:
    """Deterministic: the batch's output is the concatenation of the outputs of its samples,
    one at a time (no sample depends on another)."""
    for x in problem.batches:
        whole = _make(cls)(x)
        alone = np.concatenate([_make(cls)(x[i : i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(
            whole, alone, rtol=0, atol=1e-6, err_msg="the batch's output differs from per-sample"
        )


def check_bad_input(cls: Any, problem: PreprocessorProblem) -> None:
    """NaN, inf, values above or below ``clip_values``, an empty batch, a single value, and
    non-numeric data raise :class:`InputError` (nothing is silently clipped)."""
    x = problem.rgb
    nan, inf = x.copy(), x.copy()
    nan[0, 0, 0, 0] = np.nan
    inf[1, 1, 2, 3] = np.inf
    cases: dict[str, Any] = {
        "NaN": nan,
        "inf": inf,
        "values above clip_values": x + 1.5,
        "values below clip_values": x - 1.5,
        "one value just outside": np.where(np.arange(x.size).reshape(x.shape) == 5, 1.01, x),
        "an empty batch": x[:0],
        "a 0-d value": np.float32(0.5),
        "tensor with NaN": torch.as_tensor(nan),
    }
    for what, bad in cases.items():
        try:
            _make(cls)(bad)
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__} did not raise InputError for {what}")
    try:
        _make(cls)(np.full(x.shape, "a"))
    except (InputError, TypeError):
        pass
    else:
        raise AssertionError(f"{cls.__name__} accepted non-numeric data")


def _fd_check(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, what: str) -> None:
    """The autograd gradient of ``sum(w * f(x))`` against central finite differences along
    three random directions (float64)."""
    gen = torch.Generator().manual_seed(0)
    xr = x.clone().requires_grad_(True)
    out = f(xr)
    w = torch.randn(out.shape, generator=gen, dtype=x.dtype)
    (grad,) = torch.autograd.grad((w * out).sum(), xr, allow_unused=True)
    grad = torch.zeros_like(x) if grad is None else grad
    assert torch.isfinite(grad).all(), f"{what}: non-finite gradient"
    h = 1e-6
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        with torch.no_grad():
            fd = ((w * f(x + h * v)).sum() - (w * f(x - h * v)).sum()) / (2 * h)
        auto = (grad * v).sum()
        assert torch.isclose(auto, fd, rtol=1e-4, atol=1e-6), (
            f"{what}: autograd {float(auto):.6g} against finite differences {float(fd):.6g}"
        )


def _interior(problem: PreprocessorProblem) -> torch.Tensor:
    """RGB images in ``[0.2, 0.8]`` (float64), off the clipping bounds."""
    return torch.as_tensor(problem.rgb[:4], dtype=torch.float64) * 0.6 + 0.2


def check_gradient(cls: Any, problem: PreprocessorProblem) -> None:
    """``differentiable``: the autograd gradient of ``apply_tensor`` matches finite
    differences (float64; a randomised class is reset before each evaluation, so that every
    evaluation draws the same randomness)."""
    obj = _make(cls)

    def f(t: torch.Tensor) -> torch.Tensor:
        obj.reset()
        return obj.apply_tensor(t)

    _fd_check(f, _interior(problem), f"{cls.__name__}.apply_tensor")


def check_bpda_gradient(cls: Any, problem: PreprocessorProblem) -> None:
    """``bpda`` (the surrogate whose gradient a BPDA attacker uses) is differentiable and its
    autograd gradient matches finite differences (float64); it is deterministic."""
    obj = _make(cls)
    x = _interior(problem)
    _fd_check(obj.bpda, x, f"{cls.__name__}.bpda")
    assert torch.equal(obj.bpda(x), obj.bpda(x)), "bpda must be deterministic"


def preprocessor_checks(cls: Any) -> Iterator[PreprocessorCheck]:
    """The checks that apply to ``cls``, minus those it skips with a written reason:
    seeded determinism for every class (fresh draws and ``reset`` for the randomised ones),
    batch-size invariance for the deterministic ones, the finite-difference check of
    ``apply_tensor`` where ``differentiable``, and of ``bpda`` always."""
    checks: list[PreprocessorCheck] = [
        check_api,
        check_docstring,
        check_invalid_params,
        check_types_preserved,
        check_values_in_clip_values,
        check_input_not_mutated,
        check_seeded_determinism,
        check_bad_input,
        check_bpda_gradient,
    ]
    if not cls.randomized:
        checks.append(check_batch_size_invariance)
    if cls.differentiable:
        checks.append(check_gradient)
    return without_skips(cls, checks)


def check_preprocessor(cls: Any, problem: PreprocessorProblem | None = None) -> list[str]:
    """Run every applicable check on preprocessor class ``cls``; return the names run.

    Parameters
    ----------
    cls : type
        A :class:`~bastion.defenses.preprocessing.Preprocessor` subclass (not an instance).
    problem : PreprocessorProblem, optional
        The images; default: :func:`preprocessor_problem`.

    Returns
    -------
    list of str
        The names of the checks run.

    Raises
    ------
    AssertionError
        Naming the failed check.
    """
    return run_checks(cls, problem or preprocessor_problem(), preprocessor_checks(cls))


# =========================================================================== postprocessors
# Output postprocessors (``postprocessor(probabilities) -> probabilities``, subclasses of
# :class:`~bastion.defenses.postprocessing.Postprocessor`). The bad-input table checks their
# bad probabilities, bad parameters and the kind (type, dtype, shape) of their output; these
# checks add what the table does not: valid probabilities out, inputs not mutated, seeded
# determinism and batch-size invariance.


@functools.lru_cache(maxsize=1)
def _probabilities() -> np.ndarray:
    rng = np.random.default_rng(0)
    peaked = rng.dirichlet(np.full(10, 0.3), size=8)
    flat = rng.dirichlet(np.full(10, 5.0), size=8)
    return np.concatenate([peaked, flat]).astype(np.float32)


def postprocessor_problem() -> np.ndarray:
    """16 rows of class probabilities over 10 classes (float32; 8 peaked, 8 flat; a fresh
    copy each call)."""
    return _probabilities().copy()


def _make_post(cls: Any, **overrides: Any) -> Any:
    return cls(**fast_params(cls, {}, overrides))


def check_probabilities(cls: Any, probs: np.ndarray) -> None:
    """The output has the input's shape and dtype, and holds finite values in ``[0, 1]``
    (float32 and float64)."""
    for dtype in (np.float32, np.float64):
        out = np.asarray(_make_post(cls)(probs.astype(dtype)))
        assert out.shape == probs.shape and out.dtype == dtype, f"{out.shape}, {out.dtype}"
        assert np.isfinite(out).all(), "non-finite probabilities"
        assert out.min() >= 0 and out.max() <= 1 + 1e-6, f"values in [{out.min()}, {out.max()}]"


def check_rows_sum_to_one(cls: Any, probs: np.ndarray) -> None:
    """Every output row sums to one (the output is a distribution)."""
    out = np.asarray(_make_post(cls)(probs), dtype=np.float64)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5, err_msg="rows must sum to one")


def check_post_input_not_mutated(cls: Any, probs: np.ndarray) -> None:
    """The call writes into neither a NumPy nor a tensor input."""
    x = probs.copy()
    _make_post(cls)(x)
    np.testing.assert_array_equal(x, probs, err_msg="the NumPy input was modified")
    xt = torch.as_tensor(probs).clone()
    _make_post(cls)(xt)
    assert torch.equal(xt, torch.as_tensor(probs)), "the tensor input was modified"


def check_post_seeded_determinism(cls: Any, probs: np.ndarray) -> None:
    """The same parameters (``random_state`` included) give the same outputs, call after
    call; a randomised one (with a ``random_state``) draws afresh at each call, and another
    seed gives another output."""
    a, b = _make_post(cls), _make_post(cls)
    first = np.asarray(a(probs))
    np.testing.assert_array_equal(first, b(probs), err_msg="the same seed gave other outputs")
    second = np.asarray(a(probs))
    np.testing.assert_array_equal(second, b(probs), err_msg="the streams of one seed diverge")
    if "random_state" not in cls._param_names():
        np.testing.assert_array_equal(first, second, err_msg="a deterministic class differs")
        return
    assert not np.array_equal(first, second), "a second call drew the same randomness"
    other = _make_post(cls, random_state=1)(probs)
    assert not np.array_equal(other, first), "random_state=1 gave the output of random_state=0"


def check_post_batch_size_invariance(cls: Any, probs: np.ndarray) -> None:
    """Deterministic: the output of the batch is that of its rows, one at a time."""
    whole = np.asarray(_make_post(cls)(probs))
    alone = np.concatenate([np.asarray(_make_post(cls)(probs[i : i + 1])) for i in range(16)])
    np.testing.assert_allclose(whole, alone, rtol=0, atol=1e-7, err_msg="rows depend on others")


def postprocessor_checks(cls: Any) -> Iterator[Callable[[Any, np.ndarray], None]]:
    """The checks that apply to postprocessor class ``cls`` (run on
    :func:`postprocessor_problem`), minus those it skips with a written reason; batch-size
    invariance for the deterministic ones (without ``random_state``)."""
    checks: list[Callable[[Any, np.ndarray], None]] = [
        check_probabilities,
        check_rows_sum_to_one,
        check_post_input_not_mutated,
        check_post_seeded_determinism,
    ]
    if "random_state" not in cls._param_names():
        checks.append(check_post_batch_size_invariance)
    return without_skips(cls, checks)
