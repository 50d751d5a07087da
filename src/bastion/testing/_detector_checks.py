"""Generic checks that every poison detector (``detect(x, y) -> DetectionResult``) must pass.

How a check runs a detector: it builds it with :func:`detector_params` (fast settings, refined
by the ``params`` of the class's :class:`~bastion.testing.ConformanceSpec`), prepares it on the
problem's held-out clean data when the detector needs that first (``fit(x_clean)`` for run-time
detectors such as STRIP, ``reverse_engineer(x_clean)`` for trigger reverse engineering), and
calls ``detect(x, y)``, filling the keyword arguments ``sources``, ``x_val`` and ``y_val`` from
the problem when ``detect`` takes them (provenance-based detectors); the ``skip`` of its spec
names the checks it skips, each with a reason.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bastion.defenses.poisoning.base import DetectionResult
from bastion.exceptions import EstimatorError, InputError, NotFittedError
from bastion.testing._attack_checks import (
    check_parametrized_signature,
    expect_invalid_params,
    fast_params,
    run_checks,
    without_skips,
)
from bastion.testing._capability_view import CapabilityView
from bastion.testing._problems import PoisonProblem, blackbox_problem, poison_problem

DetectorCheck = Callable[[Any, PoisonProblem], None]

#: Fast settings applied when the detector has these parameters. The expected poison
#: fraction is that of the target class of :func:`poison_problem` (27 of 82 samples).
_FAST: dict[str, Any] = {
    "expected_poison_fraction": 0.3,
    "nb_samples": 8,
    "max_epochs": 40,
    "patience": 2,
    "early_stop_patience": 4,
    "fit_params": {"epochs": 1},
}

#: Keyword arguments of ``detect`` the problem can fill in.
_EXTRAS = ("sources", "x_val", "y_val")


def detector_params(cls: Any, **overrides: Any) -> dict[str, Any]:
    """Small, fast hyper-parameters for ``cls`` (its spec's ``params`` refine them)."""
    return fast_params(cls, _FAST, overrides)


def _prepared(
    cls: Any, problem: PoisonProblem, estimator: Any = None, x_clean: Any = None, **over: Any
) -> Any:
    """A detector built with fast parameters and prepared on clean data where it needs it."""
    est = problem.estimator if estimator is None else estimator
    det = cls(est, **detector_params(cls, **over))
    clean = problem.x_clean if x_clean is None else x_clean
    for method in ("fit", "reverse_engineer"):
        if callable(getattr(det, method, None)):
            getattr(det, method)(clean)
    return det


def _detect(det: Any, problem: PoisonProblem, x: Any, y: Any) -> Any:
    """``det.detect(x, y)`` with the extra keyword arguments its signature asks for."""
    wanted = inspect.signature(det.detect).parameters
    extras = {
        "sources": problem.sources[: len(x)] if len(x) <= len(problem.sources) else None,
        "x_val": problem.x_clean,
        "y_val": problem.y_clean,
    }
    return det.detect(x, y, **{k: v for k, v in extras.items() if k in wanted})


def _run(cls: Any, problem: PoisonProblem, x: Any = None, y: Any = None, **over: Any) -> Any:
    det = _prepared(cls, problem, **over)
    return _detect(det, problem, problem.x if x is None else x, problem.y if y is None else y)


def _section(doc: str, title: str) -> str:
    """The body of a numpydoc section ('' when absent)."""
    match = re.search(
        rf"^\s*{title}\n\s*-{{{len(title)}}}\n(.*?)(?=^\s*\w[\w ]*\n\s*-{{3,}}\n|\Z)",
        doc,
        re.M | re.S,
    )
    return match.group(1) if match else ""


# --------------------------------------------------------------------------- checks


def check_signature(cls: Any, problem: PoisonProblem) -> None:
    """Estimator first, every other parameter keyword-only with a default; ``__init__`` only
    stores (no validation); ``get_params``/``set_params``/``repr`` work from the signature;
    ``detect(x, y, ...)``."""
    check_parametrized_signature(cls, problem.estimator, detector_params(cls), verbose=True)
    detect = list(inspect.signature(cls.detect).parameters)
    assert detect[1:3] == ["x", "y"], f"{cls.__name__}.detect must take (x, y, ...)"


def check_docstring(cls: Any, problem: PoisonProblem) -> None:
    """numpydoc class docstring: every parameter documented, a References section citing the
    paper (authors, venue and year), Examples; ``detect`` documents Parameters and Returns
    (a DetectionResult)."""
    doc = inspect.getdoc(cls) or ""
    for section in ("Parameters", "References", "Examples"):
        assert _section(doc, section).strip(), f"{cls.__name__}: no {section} section"
    documented = _section(doc, "Parameters")
    for name in ["estimator", *cls._param_names()]:
        assert re.search(rf"^{name}\b.* :", documented, re.M), f"parameter {name!r} undocumented"
    refs = _section(doc, "References")
    assert re.search(r"\b(19|20)\d\d\b", refs), f"{cls.__name__}: the reference needs a year"
    assert ">>>" in _section(doc, "Examples"), f"{cls.__name__}: the example must be runnable"
    ddoc = inspect.getdoc(cls.detect) or ""
    assert _section(ddoc, "Parameters").strip(), f"{cls.__name__}.detect: no Parameters"
    assert "DetectionResult" in _section(ddoc, "Returns"), f"{cls.__name__}.detect: no Returns"


def check_invalid_params(cls: Any, problem: PoisonProblem) -> None:
    """Each constrained parameter rejects a bad value (when the detector starts working) with
    an :class:`InvalidParameterError` naming the parameter and the detector."""
    x, y = problem.x[:40], problem.y[:40]
    expect_invalid_params(cls, lambda name, value: _run(cls, problem, x, y, **{name: value}))


def check_result(cls: Any, problem: PoisonProblem) -> None:
    """``detect`` returns a :class:`DetectionResult`: ``is_poison`` a bool array and ``scores``
    finite floats, one per sample of ``x``; ``labels`` (when set) are ``y``; ``report`` has
    one entry per label present, whose sizes and flag counts add up."""
    x, y = problem.x, problem.y
    res = _run(cls, problem)
    assert isinstance(res, DetectionResult), f"detect returned {type(res).__name__}"
    assert isinstance(res.is_poison, np.ndarray), "is_poison must be a NumPy array"
    assert res.is_poison.dtype == np.bool_, f"is_poison has dtype {res.is_poison.dtype}"
    assert res.is_poison.shape == (len(x),), f"is_poison has shape {res.is_poison.shape}"
    assert isinstance(res.scores, np.ndarray), "scores must be a NumPy array"
    assert res.scores.shape == (len(x),), f"scores have shape {res.scores.shape}"
    assert np.issubdtype(res.scores.dtype, np.floating), f"scores are {res.scores.dtype}"
    assert np.all(np.isfinite(res.scores)), "scores must be finite"
    assert res.method.startswith(cls.__name__), f"method {res.method!r}"
    if res.labels is not None:
        np.testing.assert_array_equal(res.labels, y)
    assert sorted(res.report) == np.unique(y).tolist(), "one report entry per label"
    for c, entry in res.report.items():
        assert isinstance(c, int) and not isinstance(c, bool), "report keys are int labels"
        assert entry["size"] == int((y == c).sum()), f"report[{c}]['size']"
        assert entry["n_flagged"] == int(res.is_poison[y == c].sum()), f"report[{c}]"
    assert res.n_flagged == int(res.is_poison.sum())


def check_input_not_mutated(cls: Any, problem: PoisonProblem) -> None:
    """Neither ``detect`` nor the preparation on clean data writes into its inputs (NumPy
    arrays or tensors)."""
    x, y, clean = problem.x.copy(), problem.y.copy(), problem.x_clean.copy()
    _detect(_prepared(cls, problem, x_clean=clean), problem, x, y)
    np.testing.assert_array_equal(x, problem.x)
    np.testing.assert_array_equal(y, problem.y)
    np.testing.assert_array_equal(clean, problem.x_clean)
    xt, yt = torch.as_tensor(problem.x).clone(), torch.as_tensor(problem.y).clone()
    cleant = torch.as_tensor(problem.x_clean).clone()
    _detect(_prepared(cls, problem, x_clean=cleant), problem, xt, yt)
    assert torch.equal(xt, torch.as_tensor(problem.x)), "x was modified"
    assert torch.equal(yt, torch.as_tensor(problem.y)), "y was modified"
    assert torch.equal(cleant, torch.as_tensor(problem.x_clean)), "the clean data was modified"


def check_tensor_input(cls: Any, problem: PoisonProblem) -> None:
    """Tensors give the same result as NumPy arrays (the result holds NumPy arrays)."""
    a = _run(cls, problem)
    b = _run(cls, problem, torch.as_tensor(problem.x), torch.as_tensor(problem.y))
    assert isinstance(b.is_poison, np.ndarray) and isinstance(b.scores, np.ndarray)
    np.testing.assert_array_equal(a.is_poison, b.is_poison)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-9)


def check_seeded_determinism(cls: Any, problem: PoisonProblem) -> None:
    """The same parameters (``random_state`` included) give the same result."""
    a, b = _run(cls, problem), _run(cls, problem)
    np.testing.assert_array_equal(a.is_poison, b.is_poison)
    np.testing.assert_array_equal(a.scores, b.scores)


def check_batch_size_invariance(cls: Any, problem: PoisonProblem) -> None:
    """Results do not depend on ``batch_size`` (a forward-pass setting), up to 1% of the
    samples, for floating-point rounding of batched computations."""
    a = _run(cls, problem, batch_size=len(problem.x))
    b = _run(cls, problem, batch_size=7)
    assert np.mean(a.is_poison != b.is_poison) <= 0.01, "is_poison depends on batch_size"
    close = np.isclose(a.scores, b.scores, rtol=1e-4, atol=1e-6)
    assert close.mean() >= 0.99, "scores depend on batch_size"


def _preparation(det: Any) -> str | None:
    """The method that prepares ``det`` on clean data, if it has one."""
    return next((m for m in ("fit", "reverse_engineer") if callable(getattr(det, m, None))), None)


def check_bad_input(cls: Any, problem: PoisonProblem) -> None:
    """Bad data raises :class:`InputError`: NaN or inf, wrong shape, wrong ndim, values
    outside ``clip_values``, data that is not numeric, labels out of range, fractional or
    not numeric, the wrong number of labels, an empty input; an unknown layer (name or
    index) when the detector reads a layer; bad clean data for its preparation (``fit`` or
    ``reverse_engineer``); and ``detect`` before ``fit`` raises :class:`NotFittedError`."""
    x, y = problem.x[:12], problem.y[:12]
    nan, inf = x.copy(), x.copy()
    nan[0, 0, 0, 0] = np.nan
    inf[1, 0, 2, 2] = np.inf
    cases = {
        "NaN in x": (nan, y),
        "inf in x": (inf, y),
        "wrong shape": (x[:, :, :-1], y),
        "wrong ndim": (x[0], y[:1]),
        "outside clip_values": (x + 2.0, y),
        "x not numeric": (np.full(x.shape, "a"), y),
        "label out of range": (x, np.where(np.arange(len(y)) == 0, 10, y)),
        "negative label": (x, np.where(np.arange(len(y)) == 0, -1, y)),
        "fractional label": (x, y + 0.5),
        "labels not numeric": (x, np.array(["cat"] * len(y))),
        "labels of shape (N, 1)": (x, y.reshape(-1, 1)),
        "wrong number of labels": (x, y[:-1]),
        "empty input": (x[:0], y[:0]),
    }
    det = _prepared(cls, problem)
    for what, (xb, yb) in cases.items():
        try:
            _detect(det, problem, xb, yb)
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__} did not raise InputError for {what}")
    if "layer" in cls._param_names():
        for layer in ("no such layer", 999):
            try:
                _run(cls, problem, x, y, layer=layer)
            except InputError:
                continue
            raise AssertionError(f"{cls.__name__} did not raise InputError for layer={layer!r}")
    fresh = cls(problem.estimator, **detector_params(cls))
    method = _preparation(fresh)
    if method is None:
        return
    bad_clean = problem.x_clean.copy()
    bad_clean[0, 0, 0, 0] = np.nan
    for what, clean in {"NaN": bad_clean, "wrong shape": problem.x_clean[:, :, :-1]}.items():
        try:
            getattr(fresh, method)(clean)
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__}.{method} did not raise InputError for {what}")
    if method == "fit":
        try:
            _detect(cls(problem.estimator, **detector_params(cls)), problem, x, y)
        except NotFittedError:
            return
        raise AssertionError(f"{cls.__name__}.detect before fit did not raise NotFittedError")


def check_capabilities(cls: Any, problem: PoisonProblem) -> None:
    """Without any one of its required capabilities, the estimator is refused with an
    :class:`EstimatorError` naming it (the full estimator seen through a
    :class:`~bastion.testing._capability_view.CapabilityView`, and a predict-only black box);
    a raw ``torch.nn.Module`` is refused with a hint."""
    needs = [c for c in cls._estimator_requirements if c != "predict"]
    full = problem.estimator
    for missing in needs:
        view = CapabilityView(full, set(full.capabilities) - {missing})
        try:
            _run(cls, problem, estimator=view)
        except EstimatorError as err:
            assert repr(missing) in str(err), f"message must name {missing!r}: {err}"
        else:
            raise AssertionError(f"{cls.__name__} worked without {missing!r}")
    bb = blackbox_problem(4).estimator  # predict only
    if needs:
        try:
            _run(cls, problem, estimator=bb)
        except EstimatorError as err:
            assert any(repr(c) in str(err) for c in needs), f"message must name it: {err}"
        else:
            raise AssertionError(f"{cls.__name__} worked without {needs}")
    try:
        _run(cls, problem, estimator=torch.nn.Linear(2, 2))
    except EstimatorError as err:
        assert "TorchClassifier" in str(err)
    else:
        raise AssertionError("accepted a raw torch module")


def check_effective(cls: Any, problem: PoisonProblem) -> None:
    """On a training set with known backdoor poison: among the samples labelled with the
    target, the poison scores higher on average than the clean samples, and the recall on the
    poison beats the rate at which clean samples are flagged (better than chance)."""
    res = _run(cls, problem)
    poison = problem.is_poison
    same = (problem.y == problem.target) & ~poison
    p, c = res.scores[poison].mean(), res.scores[same].mean()
    assert p > c, f"mean score of the poison {p:.3g} <= that of clean target samples {c:.3g}"
    recall, false_rate = res.is_poison[poison].mean(), res.is_poison[~poison].mean()
    assert recall > false_rate, f"recall {recall:.2f} <= clean flag rate {false_rate:.2f}"


def detector_checks(cls: Any) -> Iterator[DetectorCheck]:
    """The checks that apply to ``cls``, minus those it skips with a written reason."""
    checks: list[DetectorCheck] = [
        check_signature,
        check_docstring,
        check_invalid_params,
        check_result,
        check_input_not_mutated,
        check_tensor_input,
        check_seeded_determinism,
        check_bad_input,
        check_capabilities,
        check_effective,
    ]
    if "batch_size" in cls._param_names():
        checks.append(check_batch_size_invariance)
    return without_skips(cls, checks)


def check_detector(cls: Any, problem: PoisonProblem | None = None) -> list[str]:
    """Run every applicable check on poison detector class ``cls``; return the names run.

    Parameters
    ----------
    cls : type
        A :class:`~bastion.defenses.poisoning.PoisonDetector` subclass (not an instance).
    problem : PoisonProblem, optional
        A poisoned training set and the model trained on it; default:
        :func:`poison_problem`.

    Returns
    -------
    list of str
        The names of the checks run.

    Raises
    ------
    AssertionError
        Naming the failed check.
    """
    return run_checks(cls, problem or poison_problem(), detector_checks(cls))
