"""Generic checks that every model-extraction attack (``extract(x_pool) -> thief``) must pass.

How a check builds an attack: extraction attacks are built on the victim (positional) and,
most of them, a fresh ``thief`` model to train; each class says how in its
:class:`~bastion.testing.ConformanceSpec` (:func:`~bastion.testing.conformance_spec`):

- ``factory``: ``factory(cls, problem, **params)`` returns an instance of ``cls``
  (default: ``cls(problem.victim, thief=problem.make_thief(0), **params)``, a fresh seeded
  thief on every call); ``problem`` is an :class:`ExtractionProblem`;
- ``params``: small, fast hyper-parameters (``random_state=0`` is added where it applies);
- ``problem``: ``"relu"`` for :func:`relu_extraction_problem`, else
  :func:`extraction_problem`;
- ``queries``: ``queries(params, n_pool)``, the documented most victim queries one
  ``extract`` may spend (absent: only the accounting of ``queries_`` is checked);
- ``min_fidelity``: the agreement with the victim on held-out inputs the stolen model must
  reach (default 0.4; chance is about ``1 / nb_classes``);
- ``skip``: ``{"check_name": "reason"}``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError
from bastion.testing._attack_checks import (
    _invalid_value,
    check_params_protocol,
    expect_invalid_params,
    fast_params,
    run_checks,
    without_skips,
)
from bastion.testing._detector_checks import _section
from bastion.testing._problems import (
    ExtractionProblem,
    extraction_problem,
    relu_extraction_problem,
)
from bastion.testing._specs import conformance_spec

ExtractionCheck = Callable[[Any, ExtractionProblem], None]

_PROBLEMS: dict[str, Callable[[], ExtractionProblem]] = {
    "digits": extraction_problem,
    "relu": relu_extraction_problem,
}
_FAST = {"nb_queries": 100, "epochs": 3, "batch_size": 32, "learning_rate": 1e-2}


def extraction_params(cls: Any, **overrides: Any) -> dict[str, Any]:
    """Small, fast hyper-parameters for ``cls`` (tiny query budgets and training, then
    its spec's ``params``)."""
    return fast_params(cls, _FAST, overrides)


def default_extraction_problem(cls: Any) -> ExtractionProblem:
    """The problem ``cls`` runs on (its spec's ``problem``, default ``"digits"``)."""
    return _PROBLEMS[conformance_spec(cls).problem or "digits"]()


def _make(cls: Any, problem: ExtractionProblem, **overrides: Any) -> Any:
    factory = conformance_spec(cls).factory
    params = extraction_params(cls, **overrides)
    if factory is None:
        assert problem.make_thief is not None, "the problem has no thief to train"
        return cls(problem.victim, thief=problem.make_thief(0), **params)
    return factory(cls, problem, **params)


def _np(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _stolen_predictions(stolen: Any, x: np.ndarray) -> np.ndarray:
    if hasattr(stolen, "predict"):
        return _np(stolen.predict(x))
    with torch.no_grad():  # a bare torch module (a callable victim)
        return _np(stolen(torch.as_tensor(x, dtype=torch.float64)))


def _victim_labels(problem: ExtractionProblem) -> np.ndarray:
    return _np(problem.victim.predict(problem.x_test)).argmax(1)


# --------------------------------------------------------------------------- checks


def check_signature(cls: Any, problem: ExtractionProblem) -> None:
    """The victim is the only positional parameter, every other parameter keyword-only (the
    thief and the victim's architecture are required); ``__init__`` stores values as given and
    validates nothing; ``get_params``/``set_params``/``repr`` work from the signature;
    ``extract(x_pool, ...)``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert params[0].name == "victim", f"{cls.__name__}: the first parameter must be 'victim'"
    assert params[0].kind is params[0].POSITIONAL_OR_KEYWORD
    for p in params[1:]:
        assert p.kind is p.KEYWORD_ONLY, f"{cls.__name__}.{p.name} must be keyword-only"
    extract = list(inspect.signature(cls.extract).parameters)
    assert len(extract) >= 2 and extract[1].startswith("x_"), f"{cls.__name__}.extract(x_...)"
    given = extraction_params(cls)
    obj = _make(cls, problem)
    got = obj.get_params()
    check_params_protocol(cls, obj, given, **({"verbose": True} if "verbose" in got else {}))
    # No work (and no validation) in __init__: a bad value is only reported when used.
    bad = {
        p.name: _invalid_value(cls._parameter_constraints[p.name])
        if p.name in cls._parameter_constraints
        else got[p.name]
        for p in params
    }
    cls(bad.pop("victim"), **bad)


def check_docstring(cls: Any, problem: ExtractionProblem) -> None:
    """numpydoc class docstring: every parameter documented, a References section citing the
    paper with its year, a runnable Examples section."""
    doc = inspect.getdoc(cls) or ""
    for section in ("Parameters", "References", "Examples"):
        assert _section(doc, section).strip(), f"{cls.__name__}: no {section} section"
    documented = _section(doc, "Parameters")
    for name in list(inspect.signature(cls.__init__).parameters)[1:]:
        assert re.search(rf"^{name}\b.*:", documented, re.M), f"parameter {name!r} undocumented"
    refs = _section(doc, "References")
    assert re.search(r"\b(19|20)\d\d\b", refs), f"{cls.__name__}: the reference needs a year"
    assert ">>>" in _section(doc, "Examples"), f"{cls.__name__}: the example must be runnable"


def check_extract_docstring(cls: Any, problem: ExtractionProblem) -> None:
    """``extract`` documents its Parameters (every one) and what it Returns."""
    doc = inspect.getdoc(cls.extract) or ""
    documented = _section(doc, "Parameters")
    for name in list(inspect.signature(cls.extract).parameters)[1:]:
        name = name.lstrip("*")
        assert re.search(rf"^\**{name}\b", documented, re.M), f"extract: {name!r} undocumented"
    assert _section(doc, "Returns").strip(), f"{cls.__name__}.extract: no Returns section"


def check_invalid_params(cls: Any, problem: ExtractionProblem) -> None:
    """Each constrained parameter rejects a bad value (when ``extract`` runs) with an
    :class:`InvalidParameterError` naming the parameter and the attack."""
    expect_invalid_params(
        cls,
        lambda name, value: _make(cls, problem).set_params(**{name: value}).extract(problem.x_pool),
    )


def check_result(cls: Any, problem: ExtractionProblem) -> None:
    """``extract`` returns the stolen model: an estimator with the victim's ``input_shape`` and
    ``nb_classes`` whose ``predict`` gives finite probabilities, one row per sample."""
    stolen = _make(cls, problem).extract(problem.x_pool)
    victim = problem.victim
    assert hasattr(stolen, "predict"), f"extract returned a {type(stolen).__name__}"
    assert tuple(stolen.input_shape) == tuple(victim.input_shape), "input_shape differs"
    assert stolen.nb_classes == victim.nb_classes, f"nb_classes {stolen.nb_classes}"
    probs = _np(stolen.predict(problem.x_test))
    assert probs.shape == (len(problem.x_test), victim.nb_classes), f"predict: {probs.shape}"
    assert np.all(np.isfinite(probs)), "predict returned non-finite values"
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4, err_msg="not probabilities")


def check_query_budget(cls: Any, problem: ExtractionProblem) -> None:
    """The victim's ``query_count`` grows by exactly ``queries_`` (every query counted), which
    is positive and at most the documented budget (its spec's ``queries``)."""
    attack = _make(cls, problem)
    start = problem.victim.query_count
    attack.extract(problem.x_pool)
    spent = problem.victim.query_count - start
    assert spent > 0, "the victim was never queried"
    assert attack.queries_ == spent, f"queries_={attack.queries_}, but the victim saw {spent}"
    budget = conformance_spec(cls).queries
    if budget is not None:
        most = int(budget(extraction_params(cls), len(problem.x_pool)))
        assert spent <= most, f"{spent} victim queries, over the budget of {most}"


def check_input_not_mutated(cls: Any, problem: ExtractionProblem) -> None:
    """``extract`` never writes into the attacker's data (NumPy arrays or tensors)."""
    x = problem.x_pool.copy()
    _make(cls, problem).extract(x)
    np.testing.assert_array_equal(x, problem.x_pool, err_msg="x_pool was modified")
    xt = torch.as_tensor(problem.x_pool).clone()
    _make(cls, problem).extract(xt)
    assert torch.equal(xt, torch.as_tensor(problem.x_pool)), "x_pool was modified"


def check_seeded_determinism(cls: Any, problem: ExtractionProblem) -> None:
    """The same parameters (``random_state`` included, the same fresh thief) give a stolen
    model with the same predictions (up to 1e-9, rounding); NumPy and tensor pools give the
    same model (up to 1e-6)."""
    a = _stolen_predictions(_make(cls, problem).extract(problem.x_pool), problem.x_test)
    b = _stolen_predictions(_make(cls, problem).extract(problem.x_pool), problem.x_test)
    # up to rounding: BLAS may sum in another order from one call to the next
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, err_msg="two seeded runs differ")
    xt = torch.as_tensor(problem.x_pool)
    c = _stolen_predictions(_make(cls, problem).extract(xt), problem.x_test)
    np.testing.assert_allclose(c, a, atol=1e-6, err_msg="a tensor pool gives another model")


def _expect_input_error(cls: Any, problem: ExtractionProblem, cases: dict[str, Any]) -> None:
    for what, x in cases.items():
        try:
            _make(cls, problem).extract(x)
        except InputError:
            continue
        raise AssertionError(f"{cls.__name__} did not raise InputError for {what}")


def check_nan_input(cls: Any, problem: ExtractionProblem) -> None:
    """NaN in ``x_pool`` raises :class:`InputError`."""
    nan = problem.x_pool.copy()
    nan.reshape(len(nan), -1)[0, 0] = np.nan
    _expect_input_error(cls, problem, {"NaN in x_pool": nan})


def check_bad_input(cls: Any, problem: ExtractionProblem) -> None:
    """A pool of the wrong sample shape or ndim raises :class:`InputError`."""
    x = problem.x_pool
    _expect_input_error(cls, problem, {"wrong sample shape": x[..., :-1], "wrong ndim": x[0]})


def check_effective(cls: Any, problem: ExtractionProblem) -> None:
    """With tiny budgets the stolen model already agrees with the victim's top-1 label on
    held-out inputs far above chance (its spec's ``min_fidelity``, default 0.4)."""
    stolen = _make(cls, problem).extract(problem.x_pool)
    ours = _stolen_predictions(stolen, problem.x_test).argmax(1)
    fidelity = float(np.mean(ours == _victim_labels(problem)))
    least = float(conformance_spec(cls).min_fidelity)
    assert fidelity >= least, f"fidelity {fidelity:.2f} < {least}"


def extraction_checks(cls: Any) -> Iterator[ExtractionCheck]:
    """The checks that apply to ``cls``, minus those it skips with a written reason."""
    checks: list[ExtractionCheck] = [
        check_signature,
        check_docstring,
        check_extract_docstring,
        check_invalid_params,
        check_result,
        check_query_budget,
        check_input_not_mutated,
        check_seeded_determinism,
        check_nan_input,
        check_bad_input,
        check_effective,
    ]
    return without_skips(cls, checks)


def check_extraction_attack(cls: Any, problem: ExtractionProblem | None = None) -> list[str]:
    """Run every applicable check on model-extraction attack class ``cls``; return the names
    run.

    Parameters
    ----------
    cls : type
        A model-extraction attack class of :mod:`bastion.attacks.extraction` (not an
        instance).
    problem : ExtractionProblem, optional
        Default: the class's own (:func:`extraction_problem`, or
        :func:`relu_extraction_problem` where its spec's ``problem`` is ``"relu"``).

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
    >>> from bastion.attacks.extraction import CopycatCNN
    >>> from bastion.testing import check_extraction_attack
    >>> "check_query_budget" in check_extraction_attack(CopycatCNN)
    True
    """
    return run_checks(cls, problem or default_extraction_problem(cls), extraction_checks(cls))
