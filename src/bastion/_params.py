"""sklearn-style parameters, shared by every attack, defence and trigger.

``__init__`` only stores each parameter under its own name; ``get_params`` / ``set_params`` /
``repr`` read the names from the signature, and :meth:`Parametrized._validate` checks the values
against the class's ``_parameter_constraints`` when work starts (never in ``__init__``).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from bastion._validation import Constraint, validate_params
from bastion.exceptions import InvalidParameterError

__all__ = ["Parametrized"]


class Parametrized:
    """Mixin: parameters read from ``__init__``'s signature, validated when used.

    ``_not_params`` names the constructor arguments that are not hyper-parameters (the model an
    attack or a defence works on); ``repr`` shows their type only.
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    _not_params: ClassVar[tuple[str, ...]] = ()

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
