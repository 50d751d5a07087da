"""Generic checks that every evasion attack must pass."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bastion._validation import Boolean, Constraint, Interval, Options, RandomState
from bastion.attacks._lp import canonical_norm
from bastion.attacks.base import (
    EvasionAttack,
    FixedBudgetAttack,
    MinimumNormAttack,
    perturbation_norms,
)
from bastion.attacks.query import QueryAttack
from bastion.estimators import BlackBoxClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError, ModelError
from bastion.testing._problems import Problem, blackbox_problem, torch_problem, tree_problem
from bastion.testing._specs import conformance_spec

AttackCheck = Callable[[Any, Problem], None]

#: Fast settings applied when the attack has these parameters.
_FAST = {"max_iter": 5, "eps": 0.2, "eps_step": 0.05, "batch_size": 7, "num_random_init": 1}
_NORM_BUDGETS = {"inf": 0.2, "2": 1.0, "1": 4.0}


def conformance_params(cls: Any, **overrides: Any) -> dict[str, Any]:
    """Small, fast hyper-parameters for ``cls`` (its :class:`ConformanceSpec` ``params`` refine
    them)."""
    return fast_params(cls, _FAST, overrides)


def fast_params(cls: Any, fast: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``fast`` that ``cls`` accepts, ``random_state=0`` when it has one, then
    its spec's ``params`` (:func:`conformance_spec`), then ``overrides`` (shared by every
    conformance suite)."""
    names = cls._param_names()
    params = {k: v for k, v in fast.items() if k in names}
    if "random_state" in names:
        params["random_state"] = 0
    params.update(conformance_spec(cls).params)
    params.update(overrides)
    return params


def _make(cls: Any, problem: Problem, **overrides: Any) -> Any:
    return cls(problem.estimator, **conformance_params(cls, **overrides))


def _norms(cls: Any) -> list[Any]:
    if "norm" not in cls._param_names():
        return [getattr(cls, "norm", None)]  # an attack of one fixed norm, or none
    allowed = cls._parameter_constraints.get("norm", [])
    out = []
    for candidate in ("inf", 2, 1, 0):
        if any(c.is_satisfied_by(candidate) for c in allowed):
            out.append(candidate)
    return out


def _budget_overrides(cls: Any, norm: Any) -> dict[str, Any]:
    if norm is None or "norm" not in cls._param_names():
        return {}
    key = canonical_norm(norm)
    over: dict[str, Any] = {"norm": norm}
    if "eps" in cls._param_names() and key in _NORM_BUDGETS:
        over["eps"] = _NORM_BUDGETS[key]
        if "eps_step" in cls._param_names():
            over["eps_step"] = _NORM_BUDGETS[key] / 4
    return over


def _invalid_value(constraints: list[Constraint]) -> Any:
    candidates: list[Any] = []
    for c in constraints:
        if isinstance(c, Interval):
            if c.left is not None:
                candidates.append(c.left - 1 if c.kind is int else c.left - 1.0)
            if c.right is not None:
                candidates.append(c.right + 1 if c.kind is int else c.right + 1.0)
        elif isinstance(c, (Options, Boolean)):
            candidates.append("not-an-option")
        elif isinstance(c, RandomState):
            candidates.append(-1)
    candidates += ["not-an-option", -1, -1.5, object()]
    for value in candidates:
        if not any(c.is_satisfied_by(value) for c in constraints):
            return value
    raise AssertionError("could not construct an invalid value")  # pragma: no cover


# --------------------------------------------------------------------------- checks


def check_signature(cls: Any, problem: Problem) -> None:
    """Estimator first, every other parameter keyword-only with a default; ``__init__`` only
    stores; ``get_params``/``set_params``/``repr`` work from the signature."""
    check_parametrized_signature(cls, problem.estimator, conformance_params(cls), batch_size=3)


def check_parametrized_signature(
    cls: Any, estimator: Any, given: dict[str, Any], **settable: Any
) -> None:
    """The signature conventions every public class built on an estimator follows (shared by
    the attack and detector suites): ``cls(estimator, **given)`` stores ``given`` as is, and
    ``set_params(**settable)`` sets them."""
    params = list(inspect.signature(cls.__init__).parameters.values())
    assert params[1].name == "estimator", f"{cls.__name__}: first parameter must be 'estimator'"
    for p in params[2:]:
        assert p.kind is p.KEYWORD_ONLY, f"{cls.__name__}.{p.name} must be keyword-only"
        assert p.default is not p.empty, f"{cls.__name__}.{p.name} needs a default"
    check_params_protocol(cls, cls(estimator, **given), given, **settable)
    # No work (and no validation) in __init__: a bad value is only reported when used.
    bad = {k: _invalid_value(c) for k, c in cls._parameter_constraints.items()}
    cls(estimator, **bad)


def check_params_protocol(cls: Any, obj: Any, given: dict[str, Any], **settable: Any) -> None:
    """``obj`` (built with ``given``) stores them as is; ``get_params`` lists exactly the
    signature's parameters; ``set_params(**settable)`` sets and returns ``obj``, and rejects
    an unknown name; ``repr`` names the class (shared by every conformance suite)."""
    got = obj.get_params()
    for k, v in given.items():
        assert got[k] is v, f"{cls.__name__} must store {k!r} as given"
    assert set(got) == set(cls._param_names())
    assert set(cls._parameter_constraints) <= set(got), "constraints for unknown parameters"
    assert obj.set_params(**settable) is obj
    assert all(getattr(obj, k) == v for k, v in settable.items())
    try:
        obj.set_params(not_a_parameter=1)
    except InvalidParameterError as err:
        assert "not_a_parameter" in str(err)
    else:
        raise AssertionError("set_params accepted an unknown parameter")
    assert repr(obj).startswith(cls.__name__ + "(")


def check_invalid_params(cls: Any, problem: Problem) -> None:
    """Each constrained parameter rejects a bad value with a message naming it."""
    expect_invalid_params(
        cls,
        lambda name, value: _make(cls, problem, **{name: value}).generate(
            problem.x[:2], problem.y[:2]
        ),
    )


def expect_invalid_params(cls: Any, use: Callable[[str, Any], Any]) -> None:
    """For each constrained parameter of ``cls``, ``use(name, bad_value)`` (build with it and
    run) must raise :class:`InvalidParameterError` naming the parameter and the class (shared
    by every conformance suite)."""
    for name, allowed in cls._parameter_constraints.items():
        value = _invalid_value(allowed)
        try:
            use(name, value)
        except InvalidParameterError as err:
            assert repr(name) in str(err), f"message must name {name!r}: {err}"
            assert cls.__name__ in str(err)
        else:
            raise AssertionError(f"{cls.__name__} accepted {name}={value!r}")


def check_types_preserved(cls: Any, problem: Problem) -> None:
    """NumPy in, NumPy out (dtype kept); tensor in, tensor out (device and dtype kept)."""
    x, y = problem.x[:5], problem.y[:5]
    for dtype in (np.float32, np.float64):
        out = _make(cls, problem).generate(x.astype(dtype), y)
        assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == x.shape
    xt = torch.as_tensor(x, dtype=torch.float64)
    out_t = _make(cls, problem).generate(xt, torch.as_tensor(y))
    assert isinstance(out_t, torch.Tensor)
    assert out_t.dtype == torch.float64 and out_t.device == xt.device and out_t.shape == xt.shape


def check_budget_and_bounds(cls: Any, problem: Problem) -> None:
    """Fixed-budget attacks stay in the eps-ball (+1e-6) in every norm they support, also with
    per-sample budgets where they accept them; every attack stays inside ``clip_values``."""
    x, y = problem.x, problem.y
    lo, hi = problem.estimator.clip_values or (-np.inf, np.inf)
    for norm in _norms(cls):
        over = _budget_overrides(cls, norm)
        x_adv = _make(cls, problem, **over).generate(x, y)
        assert x_adv.min() >= lo and x_adv.max() <= hi, "left clip_values"
        if issubclass(cls, FixedBudgetAttack):
            eps = over.get("eps", conformance_params(cls)["eps"])
            norms = perturbation_norms(x, x_adv, norm)
            assert np.all(norms <= eps + 1e-6), f"norm {norm}: {norms.max()} > eps"
            per_sample = np.linspace(0.0, eps, len(x))
            if not any(c.is_satisfied_by(per_sample) for c in cls._parameter_constraints["eps"]):
                continue  # this attack takes one budget for all samples
            x_adv = _make(cls, problem, **{**over, "eps": per_sample}).generate(x, y)
            assert np.all(perturbation_norms(x, x_adv, norm) <= per_sample + 1e-6)


def check_input_not_mutated(cls: Any, problem: Problem) -> None:
    """``generate`` never writes into its inputs."""
    x, y = problem.x[:6].copy(), problem.y[:6].copy()
    _make(cls, problem).generate(x, y)
    np.testing.assert_array_equal(x, problem.x[:6])
    np.testing.assert_array_equal(y, problem.y[:6])
    xt = torch.as_tensor(problem.x[:6]).clone()
    _make(cls, problem).generate(xt, torch.as_tensor(y))
    assert torch.equal(xt, torch.as_tensor(problem.x[:6]))


def check_seeded_determinism(cls: Any, problem: Problem) -> None:
    """The same ``random_state`` gives the same result."""
    a = _make(cls, problem).generate(problem.x, problem.y)
    b = _make(cls, problem).generate(problem.x, problem.y)
    np.testing.assert_array_equal(a, b)


def check_batch_size_invariance(cls: Any, problem: Problem) -> None:
    """Results do not depend on ``batch_size`` (in the attack's deterministic configuration:
    random draws depend on batch composition). Up to 0.1% of values may differ, because
    batched floating-point reductions may round differently."""
    det = {"num_random_init": 0} if "num_random_init" in cls._param_names() else {}
    a = _make(cls, problem, batch_size=len(problem.x), **det).generate(problem.x, problem.y)
    b = _make(cls, problem, batch_size=5, **det).generate(problem.x, problem.y)
    assert np.mean(np.abs(a - b) > 1e-5) <= 1e-3, "result depends on batch_size"


def check_bad_input(cls: Any, problem: Problem) -> None:
    """Bad data raises :class:`InputError`."""
    x, y = problem.x[:4], problem.y[:4]
    nb = problem.estimator.nb_classes
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    cases = {
        "NaN in x": (nan, y),
        "wrong shape": (x[:, :, :-1], y),
        "wrong ndim": (x[0], y[:1]),
        "outside clip_values": (x + 2.0, y),
        "label out of range": (x, np.array([0, 1, 2, nb])),
        "negative label": (x, np.array([0, 1, 2, -1])),
        "wrong number of labels": (x, y[:3]),
        "empty input": (x[:0], y[:0]),
    }
    for what, (xb, yb) in cases.items():
        try:
            _make(cls, problem).generate(xb, yb)
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__} did not raise InputError for {what}")


def check_mask(cls: Any, problem: Problem) -> None:
    """Features with mask 0 never change."""
    x, y = problem.x[:6], problem.y[:6]
    mask = np.zeros_like(x[0])
    mask[..., : x.shape[-1] // 2] = 1
    x_adv = _make(cls, problem).generate(x, y, mask=mask)
    np.testing.assert_array_equal(x_adv[..., x.shape[-1] // 2 :], x[..., x.shape[-1] // 2 :])
    try:
        _make(cls, problem).generate(x, y, mask=np.ones((3, 3)))
    except InputError:
        pass
    else:
        raise AssertionError("a mask that does not broadcast was accepted")


def check_capabilities(cls: Any, problem: Problem) -> None:
    """An estimator without a required capability raises :class:`EstimatorError`; a raw
    ``torch.nn.Module`` is refused with a hint."""
    needs_gradients = any("gradient" in c for c in cls._estimator_requirements)
    bb = blackbox_problem(len(problem.x))
    if needs_gradients:
        try:
            cls(bb.estimator, **conformance_params(cls)).generate(bb.x, bb.y)
        except EstimatorError as err:
            assert "gradient" in str(err) and "black-box" in str(err)
        else:
            raise AssertionError("gradient attack accepted a predict-only estimator")
    try:
        cls(torch.nn.Linear(2, 2), **conformance_params(cls)).generate(bb.x, bb.y)
    except EstimatorError as err:
        assert "TorchClassifier" in str(err)
    else:
        raise AssertionError("accepted a raw torch module")


def check_targeted(cls: Any, problem: Problem) -> None:
    """Targeted attacks need target labels, and reach some of them."""
    try:
        _make(cls, problem, targeted=True).generate(problem.x)
    except InputError:
        pass
    else:
        raise AssertionError("targeted attack ran without target labels")
    target = (problem.y + 1) % problem.estimator.nb_classes
    strong = _budget_overrides(cls, "inf" if "inf" in map(str, _norms(cls)) else None)
    x_adv = _make(cls, problem, targeted=True, **strong).generate(problem.x, target)
    hit = problem.estimator.predict(x_adv).argmax(1) == target
    assert hit.mean() > 0.0, "targeted attack reached no target"


def check_effective(cls: Any, problem: Problem) -> None:
    """The attack lowers accuracy on a trained model."""
    clean = (problem.estimator.predict(problem.x).argmax(1) == problem.y).mean()
    x_adv = _make(cls, problem).generate(problem.x, problem.y)
    adv = (problem.estimator.predict(x_adv).argmax(1) == problem.y).mean()
    assert adv < clean, f"accuracy {clean:.2f} -> {adv:.2f}"


def check_minimum_norm(cls: Any, problem: Problem) -> None:
    """Unsuccessful samples are returned unchanged; changed samples are adversarial."""
    x_adv = _make(cls, problem).generate(problem.x, problem.y)
    changed = np.any((x_adv != problem.x).reshape(len(x_adv), -1), axis=1)
    pred = problem.estimator.predict(x_adv).argmax(1)
    assert np.all(pred[changed] != problem.y[changed])


def check_query_budget(cls: Any, problem: Problem) -> None:
    """Black-box attacks run on a model behind a plain function, charge every query to a
    sample (the estimator's count grows by exactly ``queries_.sum()``, the clean-label query
    included when ``y`` is omitted) and never exceed ``max_queries``; score-based attacks refuse
    a labels-only model, decision-based ones work with it."""
    budget = conformance_params(cls).get("max_queries", 40)
    for labels_only in (False, True):
        bb = blackbox_problem(len(problem.x), labels_only=labels_only)
        attack = _make(cls, bb, max_queries=budget)
        if labels_only and cls._needs_scores:
            try:
                attack.generate(bb.x, bb.y)
            except EstimatorError as err:
                assert "labels_only" in str(err)
                continue
            raise AssertionError("a score-based attack accepted a labels-only model")
        for y in (bb.y, None):
            before = bb.estimator.query_count
            attack.generate(bb.x, y)
            spent = attack.queries_
            assert spent.shape == (len(bb.x),), "queries_ must hold one count per sample"
            assert spent.max() <= budget, f"{spent.max()} queries > max_queries={budget}"
            assert bb.estimator.query_count - before == spent.sum(), "uncounted queries"
            if y is None:
                assert spent.min() >= 1, "the clean-label query must be charged"


def _check_success(success: Any, problem: Problem, x_adv: Any, *, exact: bool) -> None:
    """Every example ``success`` claims is adversarial for the model; with ``exact`` (a
    minimum-norm attack, whose failures are the clean inputs) every other one is not."""
    assert isinstance(success, np.ndarray) and success.dtype == bool, "success_ must be bool"
    assert success.shape == (len(problem.x),), "success_ must hold one flag per sample"
    adversarial = problem.estimator.predict(x_adv).argmax(1) != problem.y
    wrong = np.flatnonzero(success & ~adversarial)
    assert wrong.size == 0, f"success_ claims samples {wrong.tolist()} the model gets right"
    if exact:
        missed = np.flatnonzero(adversarial & ~success)
        assert missed.size == 0, f"success_ misses the adversarial samples {missed.tolist()}"


def check_query_outcomes(cls: Any, problem: Problem) -> None:
    """Black-box attacks report the outcome of every sample and never fail silently:
    ``success_`` agrees with the model on the returned examples; a budget that leaves nothing
    to do gives a ``RuntimeWarning`` naming ``max_queries``; a model that fails mid-attack
    (an endpoint that stops answering) gives a ``ModelError`` chained to the model's error
    whose ``partial_result`` holds what was found, with exact query counts."""
    labels_only = not cls._needs_scores
    exact = issubclass(cls, MinimumNormAttack)
    bb = blackbox_problem(len(problem.x), labels_only=labels_only)
    attack = _make(cls, bb)
    x_adv = attack.generate(bb.x, bb.y)
    _check_success(attack.success_, bb, x_adv, exact=exact)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = _make(cls, bb, max_queries=1).generate(bb.x)
    assert np.array_equal(same, bb.x), "max_queries=1 spent on the clean label changed x"
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("max_queries" in m for m in said), "no warning that max_queries was too small"

    calls = [0]

    def endpoint(batch: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] > 3:
            raise ConnectionError("the endpoint went down")
        return np.asarray(bb.estimator.predict(batch))

    flaky = BlackBoxClassifier(
        endpoint,
        input_shape=bb.estimator.input_shape,
        nb_classes=bb.estimator.nb_classes,
        clip_values=bb.estimator.clip_values,
        labels_only=labels_only,
    )
    attack = _make(cls, Problem(flaky, bb.x, bb.y, bb.x_train, bb.y_train))
    try:
        attack.generate(bb.x, bb.y)
    except ModelError as err:
        partial = getattr(err, "partial_result", None)
        assert partial is not None, "the error carries no partial_result"
        assert isinstance(err.__cause__, ModelError), "not chained to the model's error"
        assert partial.queries.sum() == flaky.query_count, "partial queries != answered"
        assert np.array_equal(attack.queries_, partial.queries), "queries_ not set"
        assert np.array_equal(attack.success_, partial.success), "success_ not set"
        lo, hi = bb.estimator.clip_values or (-np.inf, np.inf)
        assert partial.x_adv.min() >= lo and partial.x_adv.max() <= hi, "outside clip_values"
        _check_success(partial.success, bb, partial.x_adv, exact=exact)
    else:
        raise AssertionError("no error although the endpoint failed")


def attack_checks(cls: Any) -> Iterator[AttackCheck]:
    """The checks that apply to ``cls``, minus those it skips with a written reason."""
    checks: list[AttackCheck] = [check_signature, check_invalid_params]
    if issubclass(cls, EvasionAttack):
        checks += [
            check_types_preserved,
            check_budget_and_bounds,
            check_input_not_mutated,
            check_bad_input,
            check_mask,
            check_capabilities,
            check_effective,
            check_batch_size_invariance,
        ]
        if "random_state" in cls._param_names():
            checks.append(check_seeded_determinism)
        if "targeted" in cls._param_names():
            checks.append(check_targeted)
        if issubclass(cls, MinimumNormAttack):
            checks.append(check_minimum_norm)
        if issubclass(cls, QueryAttack):
            checks += [check_query_budget, check_query_outcomes]
    return without_skips(cls, checks)


def without_skips(cls: Any, checks: list[Any]) -> Iterator[Any]:
    """``checks`` minus those ``cls`` skips in its spec's ``skip``; every skip needs a
    written reason and must name one of ``checks`` (shared by every conformance suite)."""
    skips = conformance_spec(cls).skip
    for reason in skips.values():
        assert isinstance(reason, str) and reason.strip(), "a skip needs a reason"
    unknown = set(skips) - {c.__name__ for c in checks}
    assert not unknown, f"{cls.__name__} skips unknown checks {sorted(unknown)}"
    return (check for check in checks if check.__name__ not in skips)


def default_attack_problem(cls: Any) -> Problem:
    """The problem an evasion attack is checked on: its spec's ``problem`` (``"tree"``:
    :func:`tree_problem`, for the attacks that read trees), else :func:`torch_problem`."""
    return tree_problem() if conformance_spec(cls).problem == "tree" else torch_problem()


def check_attack(cls: Any, problem: Problem | None = None) -> list[str]:
    """Run every applicable check on attack class ``cls``; return the names of those run.

    Parameters
    ----------
    cls : type
        An attack class (not an instance).
    problem : Problem, optional
        Estimator and data; default: :func:`torch_problem`.

    Raises
    ------
    AssertionError
        Naming the failed check.
    """
    return run_checks(cls, problem or default_attack_problem(cls), attack_checks(cls))


def run_checks(cls: Any, problem: Any, checks: Iterator[Callable[[Any, Any], None]]) -> list[str]:
    """Run ``checks`` on ``cls``; the names of those run, or an AssertionError naming the
    failed one (shared by the attack and detector suites)."""
    ran = []
    for check in checks:
        try:
            check(cls, problem)
        except AssertionError as err:
            raise AssertionError(f"{cls.__name__} failed {check.__name__}: {err}") from err
        ran.append(check.__name__)
    return ran
