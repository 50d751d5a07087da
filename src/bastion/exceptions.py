"""Exception types raised by bastion.

Every error bastion raises on purpose derives from :class:`BastionError`, so callers can catch
the library's errors in one place, while the more specific classes also derive from the standard
exceptions a Python user expects (``ValueError``, ``TypeError``).
"""

from __future__ import annotations

__all__ = [
    "BastionError",
    "EstimatorError",
    "InputError",
    "InvalidParameterError",
    "ModelError",
    "NotFittedError",
]


class BastionError(Exception):
    """Base class of every error raised by bastion."""


class InvalidParameterError(BastionError, ValueError, TypeError):
    """A hyper-parameter has a value outside its allowed set.

    The message always names the parameter, its owner, the allowed values and the value given,
    e.g. ``The 'eps' parameter of PGD must be a float in [0, inf). Got -1 instead.``
    """


class EstimatorError(BastionError, TypeError):
    """An estimator lacks a capability that an attack or defence needs.

    The message names the missing capability and suggests an alternative (typically a black-box
    attack that needs only predictions).
    """


class InputError(BastionError, ValueError):
    """Bad data: wrong shape or ndim, NaN/inf, values outside ``clip_values``, labels out of
    range or of the wrong length, or empty input."""


class NotFittedError(InputError, AttributeError):
    """A method that needs a fitted object (``infer``, ``apply``, ``detect`` of a run-time
    defence, ...) was called before ``fit``. The message says what to call.

    Also an :class:`InputError` (what bastion raised for this before) and an
    ``AttributeError``, like scikit-learn's ``NotFittedError``.
    """


class ModelError(BastionError, RuntimeError):
    """The model behind an estimator failed, or gave outputs that cannot be trusted.

    Raised by an estimator's kernels when the wrapped model raises while computing a batch (the
    original exception is chained as ``__cause__``), or returns something unusable: NaN or
    infinite scores or gradients, a shape other than ``(N, nb_classes)`` (usually a wrong
    ``nb_classes`` or ``input_shape``), or labels outside the classes. The message names the
    estimator, what was computed and the batch. Attacks never silently continue on such
    outputs.
    """
