"""sklearn-style parameters, shared by every attack, defence and trigger.

``__init__`` only stores each parameter under its own name; ``get_params`` / ``set_params`` /
``repr`` read the names from the signature, and :meth:`Parametrized._validate` checks the values
against the class's ``_parameter_constraints`` when work starts (never in ``__init__``).

Parameter names follow one glossary (:data:`GLOSSARY`, enforced by the conformance suite). A
class that renamed a parameter lists ``_renamed = {"old": "new"}``: the old keyword still works
in the constructor and in ``set_params``, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from bastion._validation import Constraint, validate_params
from bastion.exceptions import InvalidParameterError

__all__ = ["GLOSSARY", "Parametrized", "glossary_violations", "renamed_keywords"]

#: One spelling per idea. Each entry: a pattern that must not match a parameter name, and what
#: to call it instead.
GLOSSARY: tuple[tuple[str, str], ...] = (
    (r"^(n_|num_)(?!random_init$)|_num_", "counts start with 'nb_' (restarts: 'num_random_init')"),
    (r"restart", "restarts are 'num_random_init'"),
    (r"(^|_)lr$", "learning rates end with 'learning_rate'"),
    (r"^(step_size|lmbda|step)$", "input-space step sizes are 'eps_step'"),
    (r"^(starting_points?|x0|init_point|x_start)$", "starting points are 'x_init'"),
    (r"^(n_iter|nb_iter|num_iter|iterations|steps|nb_steps)$", "iteration counts are 'max_iter'"),
    (r"^(seed|rng|generator)$", "randomness is 'random_state'"),
    (r"^(epsilon)$", "budgets are 'eps' (step sizes 'eps_step')"),
)


def glossary_violations(names: list[str]) -> list[str]:
    """Messages for the parameter names that break the :data:`GLOSSARY`."""
    out = []
    for name in names:
        for pattern, rule in GLOSSARY:
            if re.search(pattern, name):
                out.append(f"{name!r}: {rule}")
    return out


def _rename_keywords(owner: str, renames: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the deprecated names of ``renames`` replaced (one warning each)."""
    if not any(k in renames for k in kwargs):
        return kwargs
    out = {}
    for key, value in kwargs.items():
        rule = renames.get(key)
        if rule is None:
            out[key] = value
            continue
        new, convert = rule if isinstance(rule, tuple) else (rule, None)
        if new in kwargs:
            raise InvalidParameterError(
                f"{owner} got both {key!r} and its new name {new!r}; give {new!r} only."
            )
        warnings.warn(
            f"The {key!r} parameter of {owner} is now called {new!r}; the old name will be "
            "removed in a future release.",
            DeprecationWarning,
            stacklevel=4,
        )
        out[new] = value if convert is None else convert(value)
    return out


def renamed_keywords(**renames: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: a function or method also accepts the old names of renamed keyword
    arguments (``@renamed_keywords(lr="learning_rate")``), with a ``DeprecationWarning``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **_rename_keywords(fn.__qualname__, renames, kwargs))

        return wrapper

    return decorate


def _accept_renamed(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``__init__`` so that old keyword names still work, with a warning."""

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs = type(self)._translate(kwargs)
        init(self, *args, **kwargs)

    return wrapper


class Parametrized:
    """Mixin: parameters read from ``__init__``'s signature, validated when used.

    ``_not_params`` names the constructor arguments that are not hyper-parameters (the model an
    attack or a defence works on); ``repr`` shows their type only.
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    _not_params: ClassVar[tuple[str, ...]] = ()
    #: Renamed parameters, ``{"old name": "new name"}`` or ``{"old name": ("new name",
    #: convert)}`` where the meaning of the value changed too: the old keywords keep working
    #: (with a ``DeprecationWarning``) in the constructor and in ``set_params``.
    _renamed: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls._renamed and "__init__" in cls.__dict__:
            cls.__init__ = _accept_renamed(cls.__dict__["__init__"])  # type: ignore[method-assign]

    @classmethod
    def _translate(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with deprecated names replaced by their new ones (warning once each)."""
        return _rename_keywords(cls.__name__, cls._renamed, kwargs) if cls._renamed else kwargs

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        names = []
        for p in sig.parameters.values():
            if p.name == "self" or p.name in cls._not_params:
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ must not take *args or **kwargs")
            names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters as given."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Any:
        """Set hyper-parameters by name; returns ``self``. Values are validated when next used."""
        valid = self._param_names()
        params = type(self)._translate(params)
        for key, value in params.items():
            if key not in valid:
                raise InvalidParameterError(
                    f"Invalid parameter {key!r} for {type(self).__name__}. "
                    f"Valid parameters are: {sorted(valid)!r}."
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        parts = [
            f"{name}={type(getattr(self, name)).__name__}"
            for name in self._not_params
            if hasattr(self, name)
        ]
        for name in self._param_names():
            value, default = getattr(self, name), sig.parameters[name].default
            try:
                same = bool(value == default) and type(value) is type(default)
            except Exception:
                same = False
            if not same:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _validate(self) -> None:
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)
