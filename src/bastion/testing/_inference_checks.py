"""Generic checks that every inference attack (membership, attribute inference, model
inversion, reconstruction) must pass.

Inference attacks fall into families that take and return different things, so each class
names its family, and says how it is built and run, in its
:class:`~bastion.testing.ConformanceSpec` (:func:`~bastion.testing.conformance_spec`):

- ``family``: ``"membership"`` (``fit(x, y)`` where the attack calibrates, ``infer(x, y) ->
  scores``, higher meaning more likely a member), ``"attribute"`` (``fit(records)`` where
  the attack learns, ``infer(known features, ...) -> values`` of the hidden attribute),
  ``"inversion"`` (``infer(x, y) -> x_inverted``, class representatives) or
  ``"reconstruction"`` (``reconstruct(x, y) -> (x_target, y_target)``, the missing record);
  each family has its problem (:func:`membership_problem`, :func:`attribute_problem`,
  :func:`inversion_problem`, :func:`reconstruction_problem`);
- ``factory``: ``factory(cls, problem, **params)`` returns an instance of ``cls``
  (default: ``cls(problem.estimator, **params)``, with ``attack_feature=problem.
  attack_feature`` for attribute inference); ``problem`` is an :class:`InferenceProblem`;
- ``params``: small, fast hyper-parameters (``random_state=0`` is added where it applies);
- ``fit``: ``fit(attack, problem, **problem.fit_inputs)`` (default: ``attack.fit(x, y)``
  for membership attacks that need a fit, ``attack.fit(x)`` for attribute attacks with a
  ``fit``; none for the others);
- ``infer``: ``infer(attack, problem, **problem.inputs)`` returns the result (default:
  ``attack.infer(x, y)``, ``attack.reconstruct(x, y)`` for reconstruction); the inputs it
  names are those the attack uses (the bad-input check changes only those);
- ``score_range``: ``(low, high)``, the range membership scores lie in (default: any
  finite value);
- ``decide``: ``decide(attack, problem, x, y)`` returns membership verdicts, for attacks
  that give them;
- ``queries``: ``queries(params, n)``, the most target queries one ``infer`` on ``n``
  samples may spend (absent: the query count is not checked), counted by the estimator's
  ``query_count`` or by the counter named in ``counter`` (``"gradient_count"``);
- ``min_auc``: the ROC AUC a membership attack must reach on the overfit target (default
  0.6; chance is 0.5);
- ``skip``: ``{"check_name": "reason"}``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError, NotFittedError
from bastion.metrics.privacy import roc_auc
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
from bastion.testing._problems import (
    InferenceProblem,
    attribute_problem,
    inversion_problem,
    membership_problem,
    reconstruction_problem,
)
from bastion.testing._specs import ConformanceSpec, conformance_spec

InferenceCheck = Callable[[Any, InferenceProblem], None]

_PROBLEMS: dict[str, Callable[[], InferenceProblem]] = {
    "membership": membership_problem,
    "attribute": attribute_problem,
    "inversion": inversion_problem,
    "reconstruction": reconstruction_problem,
}
_FAST = {"nb_shadow_models": 2, "nb_reference_models": 4, "max_queries": 50}


def _family_defaults(cls: Any, family: str) -> dict[str, Any]:
    if family == "membership":
        fit = (lambda a, p, x, y: a.fit(x, y)) if getattr(cls, "_needs_fit", False) else None
        return {"fit": fit, "infer": lambda a, p, x, y: a.infer(x, y)}
    if family == "attribute":
        return {
            "factory": lambda cls, p, **kw: cls(
                p.estimator, **{"attack_feature": p.attack_feature, **kw}
            ),
            "fit": (lambda a, p, x: a.fit(x)) if hasattr(cls, "fit") else None,
        }
    if family == "reconstruction":
        return {"infer": lambda a, p, x, y: a.reconstruct(x, y)}
    return {"infer": lambda a, p, x, y: a.infer(x, y)}


def _conf(cls: Any) -> ConformanceSpec:
    """The class's spec, with its family's defaults where it leaves ``factory``, ``fit`` or
    ``infer`` unset."""
    own = conformance_spec(cls)
    family = own.family
    assert family in _PROBLEMS, (
        f"{cls.__name__}: its ConformanceSpec's family must be one of {list(_PROBLEMS)}"
        " (bastion.testing.register_conformance)"
    )
    defaults = _family_defaults(cls, family)
    return dataclasses.replace(
        own, **{k: v for k, v in defaults.items() if getattr(own, k) is None}
    )


def _family(cls: Any) -> str:
    """The class's family (checked by :func:`_conf`)."""
    family = _conf(cls).family
    assert family is not None
    return family


def _infer(cls: Any) -> Callable[..., Any]:
    """The class's ``infer`` callable (its own, or its family's default)."""
    infer = _conf(cls).infer
    assert infer is not None, f"{cls.__name__}: its ConformanceSpec needs an infer callable"
    return infer


def inference_params(cls: Any, **overrides: Any) -> dict[str, Any]:
    """Small, fast hyper-parameters for ``cls`` (few shadow or reference models, small query
    budgets, then its spec's ``params``)."""
    return fast_params(cls, _FAST, overrides)


def default_inference_problem(cls: Any) -> InferenceProblem:
    """The problem of ``cls``'s family (its spec's ``family``)."""
    return _PROBLEMS[_family(cls)]()


def _make(cls: Any, problem: InferenceProblem, **overrides: Any) -> Any:
    factory = _conf(cls).factory
    params = inference_params(cls, **overrides)
    if factory is None:
        return cls(problem.estimator, **params)
    return factory(cls, problem, **params)


def _fitted(
    attack: Any, problem: InferenceProblem, fit_inputs: dict[str, Any] | None = None
) -> Any:
    fit = _conf(type(attack)).fit
    if fit is not None:
        fit(attack, problem, **(problem.fit_inputs if fit_inputs is None else fit_inputs))
    return attack


def _uses(cls: Any) -> list[str]:
    """The inputs the class's ``infer`` callable names."""
    params = list(inspect.signature(_infer(cls)).parameters.values())[2:]
    return [p.name for p in params if p.kind is not p.VAR_KEYWORD]


def _run(
    cls: Any,
    problem: InferenceProblem,
    inputs: dict[str, Any] | None = None,
    fit_inputs: dict[str, Any] | None = None,
    **over: Any,
) -> Any:
    """Build ``cls``, fit it where it fits, and run it on ``inputs`` (default: the
    problem's)."""
    attack = _fitted(_make(cls, problem, **over), problem, fit_inputs)
    given = problem.inputs if inputs is None else inputs
    return _infer(cls)(attack, problem, **{k: given[k] for k in _uses(cls)})


def _np(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _outputs(result: Any) -> tuple[Any, ...]:
    return result if isinstance(result, tuple) else (result,)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).clone() for k, v in arrays.items()}


def _method(cls: Any) -> Any:
    return cls.reconstruct if _family(cls) == "reconstruction" else cls.infer


# --------------------------------------------------------------------------- checks


def check_signature(cls: Any, problem: InferenceProblem) -> None:
    """Estimator first (where the attack has a target), every other parameter keyword-only
    with a default; ``__init__`` stores values as given and validates nothing;
    ``get_params``/``set_params``/``repr`` work from the signature; ``infer(x, ...)``
    (``reconstruct(x, y)``), ``x`` and ``y`` first where the attack takes labels."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    given = inference_params(cls)
    settable = {"verbose": True} if "verbose" in cls._param_names() else {}
    if params and params[0].name == "estimator":
        check_parametrized_signature(cls, problem.estimator, given, **settable)
    else:  # an attack on the data alone (the attribute-inference baseline)
        for p in params:
            assert p.kind is p.KEYWORD_ONLY, f"{cls.__name__}.{p.name} must be keyword-only"
            assert p.default is not p.empty, f"{cls.__name__}.{p.name} needs a default"
        check_params_protocol(cls, cls(**given), given, **settable)
        # No work (and no validation) in __init__: a bad value is only reported when used.
        cls(**{k: _invalid_value(c) for k, c in cls._parameter_constraints.items()})
    names = list(inspect.signature(_method(cls)).parameters)[1:]
    family = _family(cls)
    expected = ["x"] if family == "attribute" else ["x", "y"]
    assert names[: len(expected)] == expected, f"{cls.__name__}: {_method(cls).__name__}{names}"


def check_docstring(cls: Any, problem: InferenceProblem) -> None:
    """numpydoc class docstring: every parameter documented, a References section citing the
    paper with its year, a runnable Examples section; ``infer`` (``reconstruct``) documents
    every parameter and what it Returns."""
    doc = inspect.getdoc(cls) or ""
    for section in ("Parameters", "References", "Examples"):
        assert _section(doc, section).strip(), f"{cls.__name__}: no {section} section"
    documented = _section(doc, "Parameters")
    for name in list(inspect.signature(cls.__init__).parameters)[1:]:
        assert re.search(rf"^{name}\b.*:", documented, re.M), f"parameter {name!r} undocumented"
    refs = _section(doc, "References")
    assert re.search(r"\b(19|20)\d\d\b", refs), f"{cls.__name__}: the reference needs a year"
    assert ">>>" in _section(doc, "Examples"), f"{cls.__name__}: the example must be runnable"
    method = _method(cls)
    mdoc = inspect.getdoc(method) or ""
    documented = _section(mdoc, "Parameters")
    where = f"{cls.__name__}.{method.__name__}"
    for name in list(inspect.signature(method).parameters)[1:]:
        assert re.search(rf"^\**{name}\b", documented, re.M), f"{where}: {name!r} undocumented"
    assert _section(mdoc, "Returns").strip(), f"{where}: no Returns section"


def check_invalid_params(cls: Any, problem: InferenceProblem) -> None:
    """Each constrained parameter rejects a bad value (when the attack fits or infers) with an
    :class:`InvalidParameterError` naming the parameter and the attack."""

    def use(name: str, value: Any) -> Any:
        attack = _fitted(_make(cls, problem).set_params(**{name: value}), problem)
        given = {k: problem.inputs[k] for k in _uses(cls)}
        return _infer(cls)(attack, problem, **given)

    expect_invalid_params(cls, use)


def _check_membership_result(cls: Any, problem: InferenceProblem, scores: Any) -> None:
    n = len(problem.truth)
    assert isinstance(scores, np.ndarray), f"scores are a {type(scores).__name__}"
    assert scores.shape == (n,) and scores.dtype == np.float64, f"scores: {scores.shape}"
    assert np.all(np.isfinite(scores)), "non-finite scores"
    lo, hi = _conf(cls).score_range
    assert scores.min() >= lo and scores.max() <= hi, f"scores outside [{lo}, {hi}]"
    decide = _conf(cls).decide
    if decide is not None:
        x, y = problem.inputs["x"], problem.inputs["y"]
        verdicts = decide(_fitted(_make(cls, problem), problem), problem, x, y)
        assert isinstance(verdicts, np.ndarray) and verdicts.dtype == np.bool_, "verdicts"
        assert verdicts.shape == (n,), f"verdicts: {verdicts.shape}"
        if verdicts.any() and (~verdicts).any():  # a member never scores below a non-member
            assert scores[verdicts].min() >= scores[~verdicts].max(), "verdicts ignore scores"


def _check_attribute_result(cls: Any, problem: InferenceProblem, guess: Any) -> None:
    assert isinstance(guess, np.ndarray), f"the values are a {type(guess).__name__}"
    assert guess.shape == problem.truth.shape, f"values of shape {guess.shape}"
    assert problem.values is not None
    unknown = set(np.unique(guess).tolist()) - set(problem.values.tolist())
    assert not unknown, f"values {sorted(unknown)} are not values of the attribute"


def _check_inversion_result(cls: Any, problem: InferenceProblem, x_inv: Any) -> None:
    x, est = problem.inputs["x"], problem.estimator
    assert isinstance(x_inv, np.ndarray), f"the inversion is a {type(x_inv).__name__}"
    assert x_inv.shape == x.shape and x_inv.dtype == x.dtype, f"{x_inv.shape} {x_inv.dtype}"
    lo, hi = est.clip_values or (-np.inf, np.inf)
    assert x_inv.min() >= lo and x_inv.max() <= hi, "the inversion left clip_values"
    attack = _make(cls, problem)
    start = attack.infer(None, problem.inputs["y"][:3])  # the attack's own starting point
    assert isinstance(start, np.ndarray), "without x the inversion must be a NumPy array"
    assert start.shape == (3, *est.input_shape), f"shape {start.shape}, not input_shape"
    assert start.min() >= lo and start.max() <= hi, "the inversion left clip_values"
    for name, kind in (("n_iter_", "iu"), ("cost_", "f")):
        if hasattr(attack, name):
            value = getattr(attack, name)
            assert value.shape == (3,) and value.dtype.kind in kind, f"{name}: {value.shape}"
    if hasattr(attack, "cost_"):
        assert np.all((attack.cost_ >= 0) & (attack.cost_ <= 1)), "cost_ outside [0, 1]"


def _check_reconstruction_result(cls: Any, problem: InferenceProblem, result: Any) -> None:
    assert isinstance(result, tuple) and len(result) == 2, "must return (x_target, y_target)"
    x_t, y_t = result
    assert isinstance(x_t, np.ndarray) and x_t.shape == problem.truth.shape, "x_target"
    assert np.all(np.isfinite(x_t)), "x_target is not finite"
    assert isinstance(y_t, np.ndarray) and y_t.ndim == 2 and y_t.shape[0] == 1, "y_target"
    np.testing.assert_allclose(y_t.sum(1), 1.0, err_msg="y_target is not one-hot")
    assert set(np.unique(y_t).tolist()) <= {0.0, 1.0}, "y_target is not one-hot"


_RESULT_CHECKS = {
    "membership": _check_membership_result,
    "attribute": _check_attribute_result,
    "inversion": _check_inversion_result,
    "reconstruction": _check_reconstruction_result,
}


def check_result(cls: Any, problem: InferenceProblem) -> None:
    """The result contract of the family, for NumPy inputs: membership scores are finite
    float64, one per sample, in the class's ``score_range``, and verdicts (where the attack
    gives them) a bool array that follows the scores; attribute inference gives one known
    value of the attribute per record; an inversion has the shape and dtype of ``x`` (or the
    estimator's ``input_shape`` when started from nothing) and stays inside ``clip_values``;
    a reconstruction is one finite record and a one-hot label."""
    _RESULT_CHECKS[_family(cls)](cls, problem, _run(cls, problem))


def check_aligned(cls: Any, problem: InferenceProblem) -> None:
    """Results follow the samples: permuting the inputs permutes the results."""
    order = np.random.default_rng(0).permutation(len(problem.truth))
    a = _np(_run(cls, problem))
    b = _np(_run(cls, problem, {k: v[order] for k, v in problem.inputs.items()}))
    np.testing.assert_allclose(b, a[order], rtol=1e-6, atol=1e-9, err_msg="not aligned")


def check_input_not_mutated(cls: Any, problem: InferenceProblem) -> None:
    """Neither ``fit`` nor ``infer`` writes into its inputs (NumPy arrays or tensors)."""
    for convert in (lambda d: {k: v.copy() for k, v in d.items()}, _tensors):
        inputs, fit_inputs = convert(problem.inputs), convert(problem.fit_inputs)
        _run(cls, problem, inputs, fit_inputs)
        for given, original in ((inputs, problem.inputs), (fit_inputs, problem.fit_inputs)):
            for k, v in given.items():
                np.testing.assert_array_equal(_np(v), original[k], err_msg=f"{k} was modified")


def check_tensor_input(cls: Any, problem: InferenceProblem) -> None:
    """Tensors in (``fit`` and ``infer``) give tensors out, of ``x``'s dtype where the
    result is made of inputs, holding the NumPy result."""
    a = _outputs(_run(cls, problem))
    inputs = _tensors(problem.inputs)
    b = _outputs(_run(cls, problem, inputs, _tensors(problem.fit_inputs)))
    for u, v in zip(a, b, strict=True):
        assert isinstance(v, torch.Tensor), f"tensors in gave a {type(v).__name__}"
        assert v.device == inputs["x"].device, "the result left x's device"
        if u.dtype.kind == "f" and _family(cls) in ("inversion", "reconstruction"):
            assert v.dtype == inputs["x"].dtype, f"dtype {v.dtype}, not x's"
        np.testing.assert_allclose(_np(v), u, rtol=1e-5, atol=1e-6, err_msg="tensors differ")


def check_seeded_determinism(cls: Any, problem: InferenceProblem) -> None:
    """The same parameters (``random_state`` included) give the same result."""
    for u, v in zip(_outputs(_run(cls, problem)), _outputs(_run(cls, problem)), strict=True):
        np.testing.assert_array_equal(_np(u), _np(v), err_msg="two seeded runs differ")


def _expect_input_error(cls: Any, problem: InferenceProblem, cases: dict[str, Any]) -> None:
    for what, changes in cases.items():
        try:
            _run(cls, problem, {**problem.inputs, **changes})
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__} did not raise InputError for {what}")


def check_nan_input(cls: Any, problem: InferenceProblem) -> None:
    """NaN in ``x`` raises :class:`InputError`."""
    nan = problem.inputs["x"].astype(np.float64)
    nan.reshape(len(nan), -1)[0, 0] = np.nan
    _expect_input_error(cls, problem, {"NaN in x": {"x": nan}})


def check_bad_input(cls: Any, problem: InferenceProblem) -> None:
    """A wrong sample shape or ndim, empty input, values outside ``clip_values``, labels out of
    range or of the wrong number (or model outputs of the wrong number or width) raise
    :class:`InputError`."""
    x, uses = problem.inputs["x"], _uses(cls)
    rows = {k: v for k, v in problem.inputs.items() if k != "x" and k in uses}
    cases: dict[str, dict[str, Any]] = {
        "wrong sample shape": {"x": x[..., :-1]},
        "wrong ndim": {"x": x[0], **{k: v[:1] for k, v in rows.items()}},
        "empty input": {"x": x[:0], **{k: v[:0] for k, v in rows.items()}},
    }
    for k, v in rows.items():
        cases[f"wrong number of {k}"] = {k: v[:-1]}
    if "y" in rows:
        est = problem.estimator
        nb = est.nb_classes if hasattr(est, "nb_classes") else len(est.classes_)
        y = rows["y"].copy()
        y[0] = nb
        cases["label out of range"] = {"y": y}
        y = rows["y"].copy()
        y[0] = -1
        cases["negative label"] = {"y": y}
    if "pred" in rows and rows["pred"].ndim == 2:
        cases["model outputs of the wrong width"] = {"pred": rows["pred"][:, :-1]}
    clip = getattr(problem.estimator, "clip_values", None)
    if clip is not None:
        cases["outside clip_values"] = {"x": x + 2.0 * (clip[1] - clip[0])}
    _expect_input_error(cls, problem, cases)


def check_infer_before_fit(cls: Any, problem: InferenceProblem) -> None:
    """Attacks that fit refuse to infer before :meth:`fit` with bastion's
    :class:`~bastion.exceptions.NotFittedError`, saying to call ``fit``."""
    attack = _make(cls, problem)
    given = {k: problem.inputs[k] for k in _uses(cls)}
    try:
        _infer(cls)(attack, problem, **given)
    except NotFittedError as err:
        assert "fit" in str(err), f"the message must say to call fit: {err}"
    else:
        raise AssertionError(f"{cls.__name__} inferred before fit")


def check_query_count(cls: Any, problem: InferenceProblem) -> None:
    """``infer`` queries the target (``query_count``, or the estimator counter named by
    its spec's ``counter``, e.g. ``gradient_count``) at least once per sample and at most
    the documented budget (its spec's ``queries``), every query counted; an ``n_iter_``
    never exceeds ``max_iter``."""
    attack = _fitted(_make(cls, problem), problem)
    est, n = problem.estimator, len(problem.truth)
    conf = _conf(cls)
    assert conf.queries is not None, f"{cls.__name__}: its ConformanceSpec gives no queries"
    counter = conf.counter
    before = getattr(est, counter)
    _infer(cls)(attack, problem, **{k: problem.inputs[k] for k in _uses(cls)})
    spent = getattr(est, counter) - before
    params = inference_params(cls)
    most = int(conf.queries(params, n))
    assert n <= spent <= most, f"{spent} target queries for {n} samples (budget {most})"
    if hasattr(attack, "n_iter_") and "max_iter" in params:
        assert np.max(attack.n_iter_) <= params["max_iter"], "n_iter_ exceeds max_iter"


def _effective_membership(cls: Any, problem: InferenceProblem) -> None:
    auc = roc_auc(_np(_run(cls, problem)), problem.truth)
    least = float(_conf(cls).min_auc)
    assert auc >= least, f"AUC {auc:.3f} < {least} on members versus non-members"


def _effective_attribute(cls: Any, problem: InferenceProblem) -> None:
    accuracy = float(np.mean(_np(_run(cls, problem)) == problem.truth))
    _, counts = np.unique(problem.truth, return_counts=True)
    majority = counts.max() / counts.sum()
    assert accuracy >= majority + 0.1, f"accuracy {accuracy:.2f}, majority value {majority:.2f}"


def _effective_inversion(cls: Any, problem: InferenceProblem) -> None:
    k = problem.estimator.nb_classes
    representatives = _make(cls, problem).infer(None, np.arange(k))
    hit = np.mean(_np(problem.estimator.predict(representatives)).argmax(1) == np.arange(k))
    assert hit >= 0.9, f"only {hit:.0%} of the class representatives are of their class"


def _effective_reconstruction(cls: Any, problem: InferenceProblem) -> None:
    x_t, y_t = _run(cls, problem)
    np.testing.assert_allclose(x_t, problem.truth, atol=1e-6, err_msg="wrong record")
    assert int(y_t.argmax()) == problem.truth_label, f"label {int(y_t.argmax())}"


_EFFECTIVE = {
    "membership": _effective_membership,
    "attribute": _effective_attribute,
    "inversion": _effective_inversion,
    "reconstruction": _effective_reconstruction,
}


def check_effective(cls: Any, problem: InferenceProblem) -> None:
    """A known answer on a small problem: membership attacks separate members from
    non-members of an overfit model (ROC AUC at least ``min_auc``, default 0.6); attribute
    inference beats always guessing the majority value by 10 points; every class
    representative MIFace-style inversion finds from its default start (90% of them) is
    classified as its class; the reconstructed record is the missing one (up to 1e-6)."""
    _EFFECTIVE[_family(cls)](cls, problem)


def inference_checks(cls: Any) -> Iterator[InferenceCheck]:
    """The checks that apply to ``cls`` (by its family), minus those it skips with a written
    reason."""
    conf = _conf(cls)
    checks: list[InferenceCheck] = [
        check_signature,
        check_docstring,
        check_invalid_params,
        check_result,
    ]
    if conf.family in ("membership", "attribute"):
        checks.append(check_aligned)
    checks += [
        check_input_not_mutated,
        check_tensor_input,
        check_seeded_determinism,
        check_nan_input,
        check_bad_input,
    ]
    if conf.fit is not None:
        checks.append(check_infer_before_fit)
    if conf.queries is not None:
        checks.append(check_query_count)
    checks.append(check_effective)
    return without_skips(cls, checks)


def check_inference_attack(cls: Any, problem: InferenceProblem | None = None) -> list[str]:
    """Run every applicable check on inference attack class ``cls``; return the names run.

    Parameters
    ----------
    cls : type
        A membership, attribute-inference, model-inversion or reconstruction attack class of
        :mod:`bastion.attacks.inference` (not an instance).
    problem : InferenceProblem, optional
        Default: the problem of the class's family (:func:`membership_problem`,
        :func:`attribute_problem`, :func:`inversion_problem` or
        :func:`reconstruction_problem`).

    Returns
    -------
    list of str
        The names of the checks run.

    Raises
    ------
    AssertionError
        Naming the failed check.

    Examples
    --------
    >>> from bastion.attacks.inference import LossThreshold
    >>> from bastion.testing import check_inference_attack
    >>> "check_effective" in check_inference_attack(LossThreshold)
    True
    """
    return run_checks(cls, problem or default_inference_problem(cls), inference_checks(cls))
