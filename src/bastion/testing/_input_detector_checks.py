"""Generic checks that every detector of adversarial inputs (a subclass of
:class:`~bastion.defenses.detection.InputDetector`: ``fit``, ``score``, ``calibrate``,
``detect``, ``guard``) must pass.

How a check runs a detector: it builds it on the digits MLP of :func:`torch_problem` with
:func:`input_detector_params` (fast settings and ``random_state=0`` where the class takes
one, refined by the ``params`` of its :class:`~bastion.testing.ConformanceSpec`), fits it on
the problem's 200 clean training images and their labels, and judges it on 40 clean test
images and their PGD-Linf adversarial examples (bastion's PGD, eps 0.2, 20 steps of eps/4,
which the MLP gets almost all wrong) of :func:`input_detector_problem`. The spec's ``min_auc``
is the ROC AUC the detector must reach on them, and its ``skip`` names the checks it skips,
each with a reason.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bastion.exceptions import EstimatorError, InputError, InvalidParameterError, NotFittedError
from bastion.testing._attack_checks import (
    check_parametrized_signature,
    expect_invalid_params,
    fast_params,
    run_checks,
    without_skips,
)
from bastion.testing._capability_view import CapabilityView
from bastion.testing._detector_checks import _section
from bastion.testing._problems import _digits8, blackbox_problem, torch_problem
from bastion.testing._specs import conformance_spec

__all__ = [
    "InputDetectorProblem",
    "check_input_detector",
    "input_detector_checks",
    "input_detector_params",
    "input_detector_problem",
]

#: The L-infinity budget of the adversarial examples the detectors are judged on.
EPS = 0.2


@dataclasses.dataclass(frozen=True, eq=False)
class InputDetectorProblem:
    """A trained classifier, clean data to fit and calibrate a detector on, and clean and
    adversarial inputs to judge it on."""

    estimator: Any  # the digits MLP of torch_problem (float32, clip_values (0, 1))
    x_fit: np.ndarray  # (200, 1, 8, 8) clean training images
    y_fit: np.ndarray
    x_cal: np.ndarray  # (100, 1, 8, 8) held-out clean images, to calibrate on
    x: np.ndarray  # (40, 1, 8, 8) clean test images
    y: np.ndarray
    x_adv: np.ndarray  # PGD-Linf examples of x, eps EPS


@functools.lru_cache(maxsize=2)
def _problem(dtype: torch.dtype) -> InputDetectorProblem:
    from bastion.attacks.evasion import PGD

    base = torch_problem(40, dtype=dtype)
    x_all, _ = _digits8()
    pgd = PGD(base.estimator, eps=EPS, eps_step=EPS / 4, max_iter=20, random_state=0)
    x_adv = np.asarray(pgd.generate(base.x, base.y))
    base.estimator.reset_counts()
    x_cal = x_all[1300:1400].astype(base.x.dtype)
    return InputDetectorProblem(
        base.estimator, base.x_train, base.y_train, x_cal, base.x, base.y, x_adv
    )


def input_detector_problem(*, dtype: torch.dtype = torch.float32) -> InputDetectorProblem:
    """The digits MLP of :func:`torch_problem`, its 200 training images to fit on, 100
    held-out clean images to calibrate on, and 40 clean test images with their PGD-Linf
    examples (eps 0.2) to judge on (cached: copy an array before writing into it)."""
    return _problem(dtype)


InputDetectorCheck = Callable[[Any, InputDetectorProblem], None]

#: Fast settings applied when the detector has these parameters.
_FAST: dict[str, Any] = {"epochs": 10}


def input_detector_params(cls: Any, **overrides: Any) -> dict[str, Any]:
    """Small, fast hyper-parameters for ``cls`` (its spec's ``params`` refine them)."""
    return fast_params(cls, _FAST, overrides)


def _make(cls: Any, problem: InputDetectorProblem, estimator: Any = None, **over: Any) -> Any:
    """An unfitted detector: the spec's ``factory(cls, problem, **params)`` where it has
    one, else ``cls(problem.estimator, **params)``; ``estimator`` replaces the problem's."""
    if estimator is not None:
        problem = dataclasses.replace(problem, estimator=estimator)
    params = input_detector_params(cls, **over)
    factory = conformance_spec(cls).factory
    if factory is not None:
        return factory(cls, problem, **params)
    return cls(problem.estimator, **params)


def _fitted(cls: Any, problem: InputDetectorProblem, **over: Any) -> Any:
    det = _make(cls, problem, **over)
    assert det.fit(problem.x_fit, problem.y_fit) is det, "fit must return the detector"
    return det


@functools.lru_cache(maxsize=16)
def _cached(cls: Any, problem: InputDetectorProblem) -> Any:
    """A detector fitted on ``problem``, shared by the checks (cached); a check that
    calibrates works on a shallow copy (``calibrate`` only rebinds the threshold)."""
    return _fitted(cls, problem)


def _copy(cls: Any, problem: InputDetectorProblem) -> Any:
    return copy.copy(_cached(cls, problem))


def _writable(a: np.ndarray) -> np.ndarray:
    return np.array(a, copy=True)


def _labels01(n_clean: int, n_adv: int) -> np.ndarray:
    return np.r_[np.zeros(n_clean), np.ones(n_adv)]


# --------------------------------------------------------------------------- checks


def check_signature(cls: Any, problem: InputDetectorProblem) -> None:
    """Estimator first, every other parameter keyword-only with a default; ``__init__`` only
    stores (no validation); ``get_params``/``set_params``/``repr`` work from the signature;
    ``fit(x, y=None)``, ``score(x)``, ``calibrate(x_clean, *, fpr)``, ``detect(x)``,
    ``guard(estimator=None, ...)``."""
    check_parametrized_signature(cls, problem.estimator, input_detector_params(cls))
    assert list(inspect.signature(cls.fit).parameters)[1:3] == ["x", "y"], "fit(x, y=None)"
    assert inspect.signature(cls.fit).parameters["y"].default is None, "y must default to None"
    for name, first in (("score", "x"), ("detect", "x"), ("calibrate", "x_clean")):
        params = list(inspect.signature(getattr(cls, name)).parameters)
        assert params[1] == first, f"{cls.__name__}.{name} must take {first} first"
    fpr = inspect.signature(cls.calibrate).parameters["fpr"]
    assert fpr.kind is fpr.KEYWORD_ONLY, "calibrate's fpr must be keyword-only"
    assert isinstance(cls.differentiable, property), "differentiable must be a property"


def check_docstring(cls: Any, problem: InputDetectorProblem) -> None:
    """numpydoc class docstring: every parameter documented, References (with a year) and a
    runnable Examples section."""
    doc = inspect.getdoc(cls) or ""
    documented = _section(doc, "Parameters")
    for name in ["estimator", *cls._param_names()]:
        entry = rf"^(?:\w+, )*{name}(?:, \w+)*(?: :|$)"  # "name : type" or "a, name, b"
        assert re.search(entry, documented, re.M), f"{cls.__name__}: {name!r} undocumented"
    refs = _section(doc, "References")
    assert any(str(y) in refs for y in range(1990, 2031)), f"{cls.__name__}: no dated reference"
    assert ">>>" in _section(doc, "Examples"), f"{cls.__name__}: the example must be runnable"


def check_invalid_params(cls: Any, problem: InputDetectorProblem) -> None:
    """Each constrained parameter rejects a bad value at ``fit`` with an
    :class:`InvalidParameterError` naming the parameter and the detector; so does
    ``calibrate`` for an ``fpr`` outside ``(0, 1)``."""
    x, y = problem.x_fit[:40], problem.y_fit[:40]
    expect_invalid_params(
        cls,
        lambda name, value: _make(cls, problem, **{name: value}).fit(x, y),
    )
    det = _copy(cls, problem)
    for fpr in (0.0, 1.0, 1.5, -0.1, True, "0.1"):
        try:
            det.calibrate(problem.x_cal, fpr=fpr)
        except InvalidParameterError as err:
            assert "fpr" in str(err), f"the message must name fpr: {err}"
            continue
        raise AssertionError(f"{cls.__name__}.calibrate accepted fpr={fpr!r}")


def check_result(cls: Any, problem: InputDetectorProblem) -> None:
    """``fit`` returns the detector and sets a finite ``threshold_``; ``detect`` returns an
    :class:`~bastion.defenses.detection.InputDetectionResult` whose ``scores`` are finite
    floats and ``is_adversarial`` bools, one per input, with ``is_adversarial == scores >
    threshold``; ``score`` gives the same scores; same type out as in (NumPy or tensor, on
    the input's device), and tensors give the NumPy results."""
    from bastion.defenses.detection import InputDetectionResult

    det = _cached(cls, problem)
    assert np.isfinite(det.threshold_), "threshold_ must be finite after fit"
    x = np.concatenate([problem.x, problem.x_adv])
    res = det.detect(x)
    assert isinstance(res, InputDetectionResult), f"detect returned {type(res).__name__}"
    for name, value in (("scores", res.scores), ("is_adversarial", res.is_adversarial)):
        assert isinstance(value, np.ndarray), f"NumPy in: {name} is {type(value).__name__}"
        assert value.shape == (len(x),), f"{name} has shape {value.shape}"
    assert np.issubdtype(res.scores.dtype, np.floating), f"scores are {res.scores.dtype}"
    assert np.isfinite(res.scores).all(), "scores must be finite"
    assert res.is_adversarial.dtype == np.bool_, f"is_adversarial is {res.is_adversarial.dtype}"
    assert res.threshold == det.threshold_, "the result's threshold is not threshold_"
    np.testing.assert_array_equal(res.is_adversarial, res.scores > res.threshold)
    np.testing.assert_array_equal(det.score(x), res.scores, err_msg="score and detect differ")
    assert res.n_flagged == int(res.is_adversarial.sum())
    xt = torch.as_tensor(x)
    rt = det.detect(xt)
    assert isinstance(rt.scores, torch.Tensor) and isinstance(rt.is_adversarial, torch.Tensor)
    assert rt.scores.device == xt.device and rt.is_adversarial.dtype == torch.bool
    assert rt.scores.is_floating_point(), f"scores are {rt.scores.dtype}"
    assert isinstance(det.score(xt), torch.Tensor), "a tensor in, a tensor out of score"
    np.testing.assert_allclose(rt.scores.numpy(), res.scores, rtol=1e-5, atol=1e-5)
    assert np.mean(rt.is_adversarial.numpy() != res.is_adversarial) <= 0.02


def check_calibrate(cls: Any, problem: InputDetectorProblem) -> None:
    """``calibrate(x_clean, fpr=f)`` returns the detector and flags a fraction ``f`` of
    ``x_clean`` (within two samples), for ``f`` of 0.05, 0.1 and 0.3."""
    det = _copy(cls, problem)
    n = len(problem.x_cal)
    for fpr in (0.05, 0.1, 0.3):
        assert det.calibrate(problem.x_cal, fpr=fpr) is det, "calibrate must return the detector"
        rate = det.detect(problem.x_cal).is_adversarial.mean()
        assert abs(rate - fpr) <= 2 / n + 1e-9, f"fpr={fpr}: {rate:.3f} of x_clean flagged"


def check_input_not_mutated(cls: Any, problem: InputDetectorProblem) -> None:
    """Neither ``fit`` nor ``calibrate``, ``score`` or ``detect`` writes into its inputs
    (NumPy arrays or tensors)."""
    xf, yf, xc, x = (
        _writable(a) for a in (problem.x_fit, problem.y_fit, problem.x_cal, problem.x_adv)
    )
    det = _make(cls, problem).fit(xf, yf)
    det.calibrate(xc, fpr=0.1)
    det.score(x)
    det.detect(x)
    for got, want, what in ((xf, problem.x_fit, "x of fit"), (yf, problem.y_fit, "y of fit")):
        np.testing.assert_array_equal(got, want, err_msg=f"{what} was modified")
    np.testing.assert_array_equal(xc, problem.x_cal, err_msg="x_clean was modified")
    np.testing.assert_array_equal(x, problem.x_adv, err_msg="x was modified")
    xt = torch.tensor(problem.x_adv)
    det.detect(xt)
    det.score(xt)
    det.calibrate(xt, fpr=0.1)
    assert torch.equal(xt, torch.as_tensor(problem.x_adv)), "the tensor x was modified"


def check_seeded_determinism(cls: Any, problem: InputDetectorProblem) -> None:
    """Two detectors with the same parameters (``random_state`` included), fitted on the same
    data, give the same scores; a fitted detector scores the same input the same way
    twice."""
    x = np.concatenate([problem.x, problem.x_adv])
    a, b = _cached(cls, problem), _fitted(cls, problem)
    np.testing.assert_array_equal(a.score(x), b.score(x), err_msg="same parameters, other scores")
    np.testing.assert_array_equal(a.score(x), a.score(x), err_msg="scores change between calls")
    assert a.threshold_ == b.threshold_, "same parameters, another threshold"


def check_batch_size_invariance(cls: Any, problem: InputDetectorProblem) -> None:
    """Scores do not depend on ``batch_size`` (a forward-pass setting), up to float
    rounding."""
    x = np.concatenate([problem.x, problem.x_adv])
    a = _fitted(cls, problem, batch_size=len(problem.x_fit)).score(x)
    b = _fitted(cls, problem, batch_size=7).score(x)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg="scores depend on batch_size")


def check_bad_input(cls: Any, problem: InputDetectorProblem) -> None:
    """``score``, ``calibrate`` and ``detect`` before ``fit`` raise :class:`NotFittedError`;
    NaN or inf, a wrong sample shape, a wrong ndim, values outside ``clip_values``, data that
    is not numeric and an empty input raise :class:`InputError` from ``detect``, ``score``,
    ``calibrate`` and ``fit``; so do labels out of range or of the wrong number at ``fit``."""
    fresh = _make(cls, problem)
    for what, call in (
        ("detect", lambda: fresh.detect(problem.x)),
        ("score", lambda: fresh.score(problem.x)),
        ("calibrate", lambda: fresh.calibrate(problem.x_cal, fpr=0.1)),
    ):
        try:
            call()
        except NotFittedError:
            continue
        raise AssertionError(f"{cls.__name__}.{what} before fit did not raise NotFittedError")
    x = problem.x[:12]
    nan, inf = _writable(x), _writable(x)
    nan[0, 0, 0, 0] = np.nan
    inf[1, 0, 2, 2] = np.inf
    cases = {
        "NaN": nan,
        "inf": inf,
        "wrong sample shape": x[:, :, :-1],
        "wrong ndim": x[0],
        "outside clip_values": x + 2.0,
        "not numeric": np.full(x.shape, "a"),
        "empty": x[:0],
    }
    det = _cached(cls, problem)
    for what, bad in cases.items():
        for method in ("detect", "score"):
            try:
                getattr(det, method)(bad)
            except InputError:
                continue
            raise AssertionError(f"{cls.__name__}.{method} did not raise InputError for {what}")
    for what in ("NaN", "outside clip_values", "wrong sample shape"):
        try:
            det.calibrate(cases[what], fpr=0.1)
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__}.calibrate did not raise InputError for {what}")
    xf, yf = problem.x_fit[:40], problem.y_fit[:40]
    bad_fit = {
        "NaN in x": (np.where(np.arange(40)[:, None, None, None] == 0, np.nan, xf), yf),
        "x outside clip_values": (xf + 2.0, yf),
        "label out of range": (xf, np.where(np.arange(40) == 0, 10, yf)),
        "wrong number of labels": (xf, yf[:-1]),
    }
    for what, (xb, yb) in bad_fit.items():
        try:
            _make(cls, problem).fit(xb, yb)
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__}.fit did not raise InputError for {what}")


def check_capabilities(cls: Any, problem: InputDetectorProblem) -> None:
    """Without any one of the capabilities it needs, the estimator is refused at ``fit`` with
    an :class:`EstimatorError` naming it (the estimator seen through a
    :class:`~bastion.testing._capability_view.CapabilityView`, and a predict-only black
    box)."""
    probe = _make(cls, problem)
    needs = [c for c in probe._needed_capabilities() if c != "predict"]
    full = problem.estimator
    xf, yf = problem.x_fit[:40], problem.y_fit[:40]
    for missing in needs:
        view = CapabilityView(full, set(full.capabilities) - {missing})
        try:
            _make(cls, problem, view).fit(xf, yf)
        except EstimatorError as err:
            assert repr(missing) in str(err) or missing in str(err), f"name {missing!r}: {err}"
        else:
            raise AssertionError(f"{cls.__name__} worked without {missing!r}")
    if needs:
        try:
            _make(cls, problem, blackbox_problem(4).estimator).fit(xf, yf)
        except EstimatorError:
            pass
        else:
            raise AssertionError(f"{cls.__name__} worked on a predict-only black box")


def check_effective(cls: Any, problem: InputDetectorProblem) -> None:
    """The ROC AUC of the scores, clean test inputs against their PGD-Linf examples (eps
    0.2), reaches the spec's ``min_auc``."""
    det = _cached(cls, problem)
    res = det.detect(np.concatenate([problem.x, problem.x_adv]))
    auc = res.roc_auc(_labels01(len(problem.x), len(problem.x_adv)))
    want = conformance_spec(cls).min_auc
    assert auc >= want, f"ROC AUC {auc:.3f} < {want} (clean against PGD-Linf eps {EPS})"


def check_guard(cls: Any, problem: InputDetectorProblem) -> None:
    """``guard()`` is a classifier with ``nb_classes + 1`` classes whose prediction is the
    extra class ``K`` exactly where ``detect`` flags the input (after a calibration too), and
    the estimator's class elsewhere; ``guard`` of an unfitted detector raises
    :class:`NotFittedError`."""
    det = _copy(cls, problem)
    k = problem.estimator.nb_classes
    x = np.concatenate([problem.x, problem.x_adv, problem.x_cal])
    for fpr in (None, 0.1):
        if fpr is not None:
            det.calibrate(problem.x_cal, fpr=fpr)
        guard = det.guard()
        assert guard.nb_classes == k + 1, f"the guard has {guard.nb_classes} classes"
        probs = np.asarray(guard.predict(x))
        assert probs.shape == (len(x), k + 1), f"predict gave shape {probs.shape}"
        flagged = det.detect(x).is_adversarial
        rejected = probs.argmax(1) == k
        assert flagged.any() and not flagged.all(), "the check needs flagged and unflagged inputs"
        np.testing.assert_array_equal(rejected, flagged, err_msg="argmax == K where not flagged")
        plain = np.asarray(problem.estimator.predict(x)).argmax(1)
        np.testing.assert_array_equal(probs.argmax(1)[~flagged], plain[~flagged])
    try:
        _make(cls, problem).guard()
    except NotFittedError:
        return
    raise AssertionError(f"{cls.__name__}.guard() of an unfitted detector did not raise")


def check_guard_gradient(cls: Any, problem: InputDetectorProblem) -> None:
    """Where the detector is ``differentiable`` (on the float64 MLP), the guard offers
    ``class_gradient``, and its gradient of the rejected logit matches central finite
    differences of ``logits`` along random directions."""
    p64 = input_detector_problem(dtype=torch.float64)
    if not _make(cls, p64).differentiable:
        guard = _cached(cls, problem).guard()
        assert "class_gradient" not in guard.capabilities, "a guard of a non-differentiable one"
        return
    det = _cached(cls, p64)
    guard = det.guard()
    assert {"class_gradient", "loss_gradient"} <= guard.capabilities
    k = guard.nb_classes - 1
    x = torch.as_tensor(p64.x[:4], dtype=torch.float64) * 0.8 + 0.1  # off the clip bounds
    grad = torch.as_tensor(guard.class_gradient(x, label=k))
    gen = torch.Generator().manual_seed(0)
    h = 1e-6
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        hi = torch.as_tensor(guard.logits(x + h * v))[:, k]
        lo = torch.as_tensor(guard.logits(x - h * v))[:, k]
        fd = (hi - lo) / (2 * h)
        auto = (grad * v).flatten(1).sum(1)
        np.testing.assert_allclose(
            auto.numpy(), fd.numpy(), rtol=1e-3, atol=1e-4, err_msg="guard gradient"
        )


def input_detector_checks(cls: Any) -> Iterator[InputDetectorCheck]:
    """The checks that apply to ``cls``, minus those it skips with a written reason
    (batch-size invariance only where the detector has a ``batch_size``)."""
    checks: list[InputDetectorCheck] = [
        check_signature,
        check_docstring,
        check_invalid_params,
        check_result,
        check_calibrate,
        check_input_not_mutated,
        check_seeded_determinism,
        check_bad_input,
        check_capabilities,
        check_effective,
        check_guard,
        check_guard_gradient,
    ]
    if "batch_size" in cls._param_names():
        checks.append(check_batch_size_invariance)
    return without_skips(cls, checks)


def check_input_detector(cls: Any, problem: InputDetectorProblem | None = None) -> list[str]:
    """Run every applicable check on input-detector class ``cls``; return the names run.

    Parameters
    ----------
    cls : type
        An :class:`~bastion.defenses.detection.InputDetector` subclass (not an instance).
    problem : InputDetectorProblem, optional
        Default: :func:`input_detector_problem`.

    Returns
    -------
    list of str
        The names of the checks run.

    Raises
    ------
    AssertionError
        Naming the failed check.
    """
    return run_checks(cls, problem or input_detector_problem(), input_detector_checks(cls))
