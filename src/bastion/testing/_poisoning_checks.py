"""Generic checks that every poisoning attack (``poison(x, y) -> (x_p, y_p, mask)``) must pass.

How a check builds an attack: poisoning attacks are built on different things (a trigger, a
model, target images, a validation set), so each class says how in its
:class:`~bastion.testing.ConformanceSpec` (:func:`~bastion.testing.conformance_spec`):

- ``factory``: ``factory(cls, problem, **params)`` returns an instance of ``cls``
  (default: ``cls(problem.estimator, **params)``); ``problem`` is a :class:`PoisoningProblem`;
- ``params``: small, fast hyper-parameters (``random_state=0`` is added where it applies);
- ``problem``: ``"svm"`` for :func:`svm_poisoning_problem`, else :func:`poisoning_problem`;
- ``clean_label``: True if labels are never changed (else poisoned labels must change);
- ``stamps_trigger``: True if every poisoned sample carries the problem's trigger;
- ``budget``: the name of an L-infinity budget bounding ``|x_p - x|`` (outside the trigger);
- ``progress``: ``(attribute, "up" | "down")``, a history of the attack's objective (a list,
  or a list of lists, one per attack point) that must improve from first to last value;
- ``skip``: ``{"check_name": "reason"}``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError, InvalidParameterError
from bastion.testing._attack_checks import (
    _invalid_value,
    check_parametrized_signature,
    check_params_protocol,
    expect_invalid_params,
    fast_params,
    run_checks,
    without_skips,
)
from bastion.testing._detector_checks import _section
from bastion.testing._problems import PoisoningProblem, poisoning_problem, svm_poisoning_problem
from bastion.testing._specs import conformance_spec

PoisoningCheck = Callable[[Any, PoisoningProblem], None]

_PROBLEMS: dict[str, Callable[[], PoisoningProblem]] = {
    "image": poisoning_problem,
    "svm": svm_poisoning_problem,
}


def poisoning_params(cls: Any, **overrides: Any) -> dict[str, Any]:
    """Small, fast hyper-parameters for ``cls`` (its spec's ``params``)."""
    return fast_params(cls, {}, overrides)


def default_poisoning_problem(cls: Any) -> PoisoningProblem:
    """The problem ``cls`` runs on (its spec's ``problem``, default ``"image"``)."""
    return _PROBLEMS[conformance_spec(cls).problem or "image"]()


def _make(cls: Any, problem: PoisoningProblem, **overrides: Any) -> Any:
    factory = conformance_spec(cls).factory
    params = poisoning_params(cls, **overrides)
    if factory is None:
        return cls(problem.estimator, **params)
    return factory(cls, problem, **params)


def _poison(cls: Any, problem: PoisoningProblem, x: Any = None, y: Any = None, **over: Any) -> Any:
    x = problem.x if x is None else x
    y = problem.y if y is None else y
    return _make(cls, problem, **over).poison(x, y)


def _np(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


# --------------------------------------------------------------------------- checks


def check_signature(cls: Any, problem: PoisoningProblem) -> None:
    """What the attack is built on (``estimator`` first where it has one; a trigger or target
    images) is positional, every other parameter keyword-only; ``__init__`` stores values as
    given and validates nothing; ``get_params``/``set_params``/``repr`` work from the
    signature; ``poison(x, y)``. Constructors that fit the estimator convention of the attack
    suite (estimator, then keyword-only parameters with defaults) are checked by it."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    poison = list(inspect.signature(cls.poison).parameters)
    assert poison[1:3] == ["x", "y"], f"{cls.__name__}.poison must take (x, y)"
    given = poisoning_params(cls)
    fits = (
        params[0].name == "estimator"
        and conformance_spec(cls).factory is None
        and all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in params[1:])
    )
    if fits:
        settable = {"verbose": True} if "verbose" in cls._param_names() else {}
        check_parametrized_signature(cls, problem.estimator, given, **settable)
        return
    positional = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
    assert 1 <= len(positional) <= 2, f"{cls.__name__}: positional parameters {positional}"
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[: len(positional)])
    if "estimator" in [p.name for p in params]:
        assert positional[0] == "estimator", f"{cls.__name__}: 'estimator' must come first"
    obj = _make(cls, problem)
    got = obj.get_params()
    check_params_protocol(cls, obj, given, **({"verbose": True} if "verbose" in got else {}))
    # No work (and no validation) in __init__: a bad value is only reported when used.
    bad = {
        p.name: _invalid_value(cls._parameter_constraints[p.name])
        if p.name in cls._parameter_constraints
        else problem.estimator
        for p in params
    }
    cls(*[bad[n] for n in positional], **{k: v for k, v in bad.items() if k not in positional})


def check_docstring(cls: Any, problem: PoisoningProblem) -> None:
    """numpydoc class docstring: every parameter documented, a References section citing the
    paper with its year, a runnable Examples section; ``poison`` documents Parameters and
    Returns."""
    doc = inspect.getdoc(cls) or ""
    for section in ("Parameters", "References", "Examples"):
        assert _section(doc, section).strip(), f"{cls.__name__}: no {section} section"
    documented = _section(doc, "Parameters")
    names = list(inspect.signature(cls.__init__).parameters)[1:]
    for name in names:
        assert re.search(rf"^{name}\b.*:", documented, re.M), f"parameter {name!r} undocumented"
    refs = _section(doc, "References")
    assert re.search(r"\b(19|20)\d\d\b", refs), f"{cls.__name__}: the reference needs a year"
    assert ">>>" in _section(doc, "Examples"), f"{cls.__name__}: the example must be runnable"
    pdoc = inspect.getdoc(cls.poison) or ""
    assert _section(pdoc, "Parameters").strip(), f"{cls.__name__}.poison: no Parameters"
    assert _section(pdoc, "Returns").strip(), f"{cls.__name__}.poison: no Returns"


def check_invalid_params(cls: Any, problem: PoisoningProblem) -> None:
    """Each constrained parameter rejects a bad value (when ``poison`` runs) with an
    :class:`InvalidParameterError` naming the parameter and the attack."""
    expect_invalid_params(
        cls,
        lambda name, value: (
            _make(cls, problem).set_params(**{name: value}).poison(problem.x, problem.y)
        ),
    )


def check_result(cls: Any, problem: PoisoningProblem) -> None:
    """``x_p`` has the shape and dtype of ``x``, ``y_p`` the shape and dtype of ``y``; the
    mask is a bool NumPy array, one entry per sample, not all False; samples outside the mask
    are unchanged in ``x`` and ``y``; every value stays inside the problem's bounds."""
    x, y = problem.x, problem.y
    x_p, y_p, mask = _poison(cls, problem)
    assert isinstance(x_p, np.ndarray), f"x_p is a {type(x_p).__name__}"
    assert x_p.shape == x.shape and x_p.dtype == x.dtype, f"x_p: {x_p.shape} {x_p.dtype}"
    assert isinstance(y_p, np.ndarray), f"y_p is a {type(y_p).__name__}"
    assert y_p.shape == y.shape and y_p.dtype == y.dtype, f"y_p: {y_p.shape} {y_p.dtype}"
    assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_, "mask must be a bool array"
    assert mask.shape == (len(x),), f"mask has shape {mask.shape}"
    assert mask.any(), "nothing was poisoned"
    np.testing.assert_array_equal(x_p[~mask], x[~mask], err_msg="x changed outside the mask")
    np.testing.assert_array_equal(y_p[~mask], y[~mask], err_msg="y changed outside the mask")
    lo, hi = problem.clip_values
    assert x_p.min() >= lo and x_p.max() <= hi, "x_p left the bounds"


def check_input_not_mutated(cls: Any, problem: PoisoningProblem) -> None:
    """``poison`` never writes into its inputs (NumPy arrays or tensors)."""
    x, y = problem.x.copy(), problem.y.copy()
    _poison(cls, problem, x, y)
    np.testing.assert_array_equal(x, problem.x, err_msg="x was modified")
    np.testing.assert_array_equal(y, problem.y, err_msg="y was modified")
    xt, yt = torch.as_tensor(problem.x).clone(), torch.as_tensor(problem.y).clone()
    _poison(cls, problem, xt, yt)
    assert torch.equal(xt, torch.as_tensor(problem.x)), "x was modified"
    assert torch.equal(yt, torch.as_tensor(problem.y)), "y was modified"


def check_types_preserved(cls: Any, problem: PoisoningProblem) -> None:
    """Float64 NumPy in gives float64 out; tensors in give tensors out (x_p of x's dtype and
    device, a bool mask tensor) holding the same result as NumPy input."""
    x_p, y_p, mask = _poison(cls, problem)
    x64 = _poison(cls, problem, problem.x.astype(np.float64))[0]
    assert isinstance(x64, np.ndarray) and x64.dtype == np.float64, "float64 not preserved"
    xt, yt = torch.as_tensor(problem.x), torch.as_tensor(problem.y)
    xt_p, yt_p, mask_t = _poison(cls, problem, xt, yt)
    assert isinstance(xt_p, torch.Tensor) and xt_p.dtype == xt.dtype, "x_p type not kept"
    assert xt_p.device == xt.device and xt_p.shape == xt.shape
    assert isinstance(yt_p, torch.Tensor) and yt_p.shape == yt.shape, "y_p type not kept"
    assert isinstance(mask_t, torch.Tensor) and mask_t.dtype == torch.bool, "mask type"
    np.testing.assert_array_equal(_np(mask_t), mask, err_msg="mask differs for tensors")
    np.testing.assert_array_equal(_np(yt_p), y_p, err_msg="y_p differs for tensors")
    np.testing.assert_allclose(_np(xt_p), x_p, atol=1e-5, err_msg="x_p differs for tensors")


def check_seeded_determinism(cls: Any, problem: PoisoningProblem) -> None:
    """The same parameters (``random_state`` included) give the same result."""
    a, b = _poison(cls, problem), _poison(cls, problem)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def _expect_input_error(cls: Any, problem: PoisoningProblem, cases: dict[str, Any]) -> None:
    for what, (xb, yb) in cases.items():
        try:
            _poison(cls, problem, xb, yb)
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__} did not raise InputError for {what}")


def check_nan_input(cls: Any, problem: PoisoningProblem) -> None:
    """NaN in ``x`` raises :class:`InputError`."""
    nan = problem.x.copy()
    nan.reshape(len(nan), -1)[0, 0] = np.nan
    _expect_input_error(cls, problem, {"NaN in x": (nan, problem.y)})


def check_bad_input(cls: Any, problem: PoisoningProblem) -> None:
    """Bad data raises :class:`InputError`: a wrong ndim, a wrong number of labels, an empty
    batch, samples outside the problem's bounds (the estimator's, the trigger's or the
    attack's ``clip_values``), integer samples, NaN or negative labels, labels that are not
    numbers."""
    x, y = problem.x, problem.y
    outside = x.copy()
    outside[0] = problem.clip_values[1] + 1.0
    nan_label = y.astype(np.float64)
    nan_label[0] = np.nan
    negative = y.copy()
    negative[0] = -1
    _expect_input_error(
        cls,
        problem,
        {
            "wrong ndim": (x[0], y[:1]),
            "wrong number of labels": (x, y[:-1]),
            "an empty batch": (x[:0], y[:0]),
            "samples outside the bounds": (outside, y),
            "integer samples": (x.astype(np.int64), y),
            "a NaN label": (x, nan_label),
            "a negative label": (x, negative),
            "labels that are not numbers": (x, np.array(["a"] * len(y))),
        },
    )


def check_wrong_sample_shape(cls: Any, problem: PoisoningProblem) -> None:
    """Attacks built on a model with an ``input_shape`` and ``nb_classes`` (the image problem):
    samples of another shape, and a label beyond the model's classes, raise
    :class:`InputError`."""
    beyond = problem.y.copy()
    beyond[0] = problem.estimator.nb_classes
    _expect_input_error(
        cls,
        problem,
        {
            "wrong shape": (problem.x[..., :-1], problem.y),
            "a label beyond nb_classes": (problem.x, beyond),
        },
    )


def check_class_parameters(cls: Any, problem: PoisoningProblem) -> None:
    """A parameter that names a class (a target, a source: the template's
    ``_class_parameters``) outside the classes of the labels raises an
    :class:`InvalidParameterError` naming the parameter and the value, when ``poison`` runs."""
    for name in cls._class_parameters:
        try:
            _poison(cls, problem, **{name: 10_000})
        except InvalidParameterError as err:
            assert repr(name) in str(err) and "10000" in str(err), f"unclear message: {err}"
            continue
        raise AssertionError(f"{cls.__name__} accepted {name}=10000, outside the classes")


def check_labels(cls: Any, problem: PoisoningProblem) -> None:
    """Clean-label attacks leave every label as it was; the others relabel what they
    poison."""
    _, y_p, mask = _poison(cls, problem)
    if conformance_spec(cls).clean_label:
        np.testing.assert_array_equal(y_p, problem.y, err_msg="a clean-label attack relabelled")
    else:
        assert np.all(y_p[mask] != problem.y[mask]), "poisoned samples kept their labels"


def check_trigger(cls: Any, problem: PoisoningProblem) -> None:
    """Attacks that stamp the trigger (the problem's 2x2 white patch, bottom-right): every
    poisoned sample carries it, and differs from its clean version elsewhere by at most the
    attack's budget (0 when it has none)."""
    x_p, _, mask = _poison(cls, problem)
    assert np.all(x_p[mask][..., -2:, -2:] == 1.0), "a poisoned sample lacks the trigger"
    name = conformance_spec(cls).budget
    eps = float(poisoning_params(cls)[name]) if name else 0.0
    outside = np.abs(x_p - problem.x)[mask]
    outside[..., -2:, -2:] = 0.0
    assert outside.max() <= eps + 1e-6, f"changed by {outside.max():.3g} outside the trigger"


def check_budget(cls: Any, problem: PoisoningProblem) -> None:
    """Attacks with an L-infinity budget stay within it (+1e-6) (outside the trigger where they
    stamp one, see ``check_trigger``)."""
    name = conformance_spec(cls).budget
    assert name is not None, f"{cls.__name__} declares no budget"
    eps = float(poisoning_params(cls)[name])
    x_p, _, _ = _poison(cls, problem)
    delta = np.abs(x_p - problem.x)
    if conformance_spec(cls).stamps_trigger:
        delta[..., -2:, -2:] = 0.0
    assert delta.max() <= eps + 1e-6, f"perturbation {delta.max():.3g} > {name}={eps}"


def check_progress(cls: Any, problem: PoisoningProblem) -> None:
    """The attack's recorded objective improves from its first to its last value."""
    progress = conformance_spec(cls).progress
    assert progress is not None, f"{cls.__name__} declares no progress"
    attr, direction = progress
    attack = _make(cls, problem)
    attack.poison(problem.x, problem.y)
    history = getattr(attack, attr)
    runs = history if history and isinstance(history[0], list) else [history]
    for run in runs:
        first, last = float(run[0]), float(run[-1])
        better = last > first if direction == "up" else last < first
        assert better, f"{attr} went from {first:.4g} to {last:.4g}, not {direction}"


def poisoning_checks(cls: Any) -> Iterator[PoisoningCheck]:
    """The checks that apply to ``cls``, minus those it skips with a written reason."""
    spec = conformance_spec(cls)
    checks: list[PoisoningCheck] = [
        check_signature,
        check_docstring,
        check_invalid_params,
        check_result,
        check_input_not_mutated,
        check_types_preserved,
        check_seeded_determinism,
        check_nan_input,
        check_bad_input,
        check_labels,
    ]
    if "estimator" in inspect.signature(cls.__init__).parameters and spec.problem is None:
        checks.append(check_wrong_sample_shape)
    if getattr(cls, "_class_parameters", ()):
        checks.append(check_class_parameters)
    if spec.stamps_trigger:
        checks.append(check_trigger)
    if spec.budget:
        checks.append(check_budget)
    if spec.progress:
        checks.append(check_progress)
    return without_skips(cls, checks)


def check_poisoning_attack(cls: Any, problem: PoisoningProblem | None = None) -> list[str]:
    """Run every applicable check on poisoning attack class ``cls``; return the names run.

    Parameters
    ----------
    cls : type
        A :class:`~bastion.attacks.poisoning.PoisoningAttack` subclass (not an instance).
    problem : PoisoningProblem, optional
        Default: the class's own (:func:`poisoning_problem`, or
        :func:`svm_poisoning_problem` where its spec's ``problem`` is ``"svm"``).

    Returns
    -------
    list of str
        The names of the checks run.

    Raises
    ------
    AssertionError
        Naming the failed check.
    """
    return run_checks(cls, problem or default_poisoning_problem(cls), poisoning_checks(cls))
