"""The bad-input table: its rows, their expected outcomes, and the bad data and bad models the
family tables share.

A row (:class:`BadInputCase`) says which public class (or metric function) is called, what is
bad about the call, how it is called and what must happen (:class:`Outcome`): one bastion
exception with a fragment of its message, a warning, or "works" with a stated property of the
result. Nothing else passes: a raw error from torch, NumPy or scikit-learn, a result where an
error was due (silent garbage), or a call that returns its input without a word (a silent
no-op) fails the row.
"""

from __future__ import annotations

import functools
import re
import unittest
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.estimators import BlackBoxClassifier, TorchClassifier
from bastion.exceptions import InputError

__all__ = ["BadInputCase", "Outcome", "raises", "warns", "works"]

#: The kinds of bad input a row may test.
KINDS = ("data", "labels", "model", "use", "edge")


@dataclass(frozen=True)
class Outcome:
    """What a row must give: an ``error`` (its type, and a regular expression ``match`` its
    message must contain, case-insensitive), a ``warning`` (category and ``match``), and/or a
    ``check`` of the result that states a property (``says``)."""

    error: type[BaseException] | None = None
    match: str = ""
    warning: type[Warning] | None = None
    check: Callable[[Any], None] | None = None
    says: str = ""

    def __str__(self) -> str:
        if self.error is not None:
            return f"raises {self.error.__name__} /{self.match}/"
        said = f"works: {self.says}" if self.says else "works"
        if self.warning is not None:
            return f"warns {self.warning.__name__} /{self.match}/, then {said}"
        return said


def raises(error: type[BaseException], match: str = "") -> Outcome:
    """The call must raise ``error`` with a message matching ``match``."""
    return Outcome(error=error, match=match)


def warns(
    category: type[Warning],
    match: str,
    says: str = "",
    check: Callable[[Any], None] | None = None,
) -> Outcome:
    """The call must warn (``category``, a message matching ``match``) and return a result
    that passes ``check``."""
    return Outcome(warning=category, match=match, check=check, says=says)


def works(says: str, check: Callable[[Any], None] | None = None) -> Outcome:
    """The call must return, and the result have the property ``says`` (``check`` asserts
    it)."""
    return Outcome(check=check, says=says)


@dataclass(frozen=True)
class BadInputCase:
    """One row of the bad-input table.

    Attributes
    ----------
    owner : type or callable
        The public class (or metric function) under test.
    kind : str
        ``"data"``, ``"labels"``, ``"model"``, ``"use"`` or ``"edge"`` (edge cases that must
        work).
    what : str
        What is bad (or unusual) about the call.
    how : str
        How it is called, e.g. ``"generate(x, y)"``.
    call : callable
        Makes the call (builds its problem lazily) and returns the result.
    expect : Outcome
        What must happen.
    """

    owner: Any
    kind: str
    what: str
    how: str
    call: Callable[[], Any]
    expect: Outcome

    @property
    def id(self) -> str:
        """A readable pytest id: ``Owner-what``."""
        return f"{self.owner.__name__}-{self.what}"

    def run(self) -> None:
        """Make the call and check the outcome.

        Raises
        ------
        AssertionError
            Naming the row, what was expected and what happened instead.
        """
        expect = self.expect
        where = f"{self.id} [{self.how}]"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = self.call()
            except unittest.SkipTest:  # an example whose optional framework is missing
                raise
            except Exception as err:
                if expect.error is None or not isinstance(err, expect.error):
                    raise AssertionError(
                        f"{where}: expected {expect}, got {type(err).__name__}: {err}"
                    ) from err
                if not re.search(expect.match, str(err), re.I | re.S):
                    raise AssertionError(
                        f"{where}: the {type(err).__name__} does not say /{expect.match}/: {err}"
                    ) from err
                return
        if expect.error is not None:
            raise AssertionError(
                f"{where}: expected {expect}, but the call returned {_summary(result)}"
            )
        if expect.warning is not None:
            said = [str(w.message) for w in caught if issubclass(w.category, expect.warning)]
            if not any(re.search(expect.match, m, re.I | re.S) for m in said):
                raise AssertionError(
                    f"{where}: expected a {expect.warning.__name__} /{expect.match}/; got "
                    f"{[f'{w.category.__name__}: {w.message}' for w in caught]}"
                )
        if expect.check is not None:
            try:
                expect.check(result)
            except Exception as err:
                raise AssertionError(f"{where}: {expect}: {err}") from err


def _summary(result: Any) -> str:
    if isinstance(result, (np.ndarray, torch.Tensor)):
        return f"a {type(result).__name__} of shape {tuple(result.shape)}"
    return f"a {type(result).__name__}"


# --------------------------------------------------------------------------- bad data

#: ``(what, change, outcome)``: ``change`` turns good data into bad data.
Change = tuple[str, Callable[..., Any], Outcome]


def poke(x: np.ndarray, value: float) -> np.ndarray:
    """A float copy of ``x`` with ``value`` at its first entry."""
    out = np.array(x, dtype=np.float64 if x.dtype.kind != "f" else x.dtype)
    out.reshape(-1)[0] = value
    return out


def _ragged(x: np.ndarray) -> list[Any]:
    return [x[0].tolist(), np.asarray(x[1]).reshape(-1)[:-1].tolist()]


def bad_samples(
    clip_values: tuple[float, float] | None, *, integers: Outcome | None = None
) -> list[Change]:
    """Bad batches of samples, as changes of a good float batch ``x`` (N >= 2): NaN, +inf,
    the wrong sample shape or ndim, an empty batch, values outside ``clip_values`` (where
    given), integer and bool dtypes (``integers``: what they must give; default an
    :class:`InputError` asking for floats), strings, a ragged list, complex values and a 0-d
    scalar."""
    integral = integers or raises(InputError, "floating")
    changes: list[Change] = [
        ("NaN in x", lambda x: poke(x, np.nan), raises(InputError, "NaN")),
        ("+inf in x", lambda x: poke(x, np.inf), raises(InputError, "infinite")),
        ("wrong sample shape", lambda x: x[..., :-1], raises(InputError, "shape|features")),
        ("wrong ndim", lambda x: x[0], raises(InputError, "shape|ndim")),
        ("empty batch", lambda x: x[:0], raises(InputError, "empty")),
        ("integer dtype", lambda x: np.rint(x).astype(np.int64), integral),
        ("bool dtype", lambda x: x > 0.5, integral),
        ("strings", lambda x: np.full(x.shape, "a"), raises(InputError, "numeric")),
        ("a ragged list", _ragged, raises(InputError, "numeric")),
        ("complex values", lambda x: x.astype(np.complex64), raises(InputError, "complex")),
        ("a 0-d scalar", lambda x: np.float32(0.5), raises(InputError, r"scalar|\(\)")),
    ]
    if clip_values is not None:
        lo, hi = clip_values
        changes.append(
            (
                "outside clip_values",
                lambda x: x + (hi - lo) + 1.0,
                raises(InputError, "clip_values|outside|bounds"),
            )
        )
    return changes


def bad_labels(nb_classes: int) -> list[Change]:
    """Bad labels, as changes of good class indices ``y`` (N >= 2): out of range, negative,
    non-integral, NaN, the wrong number, one-hot of the wrong width, a 2-D array of the wrong
    shape, strings and booleans."""

    def at0(y: np.ndarray, value: float) -> np.ndarray:
        out = np.array(y, dtype=np.float64 if np.isnan(value) else y.dtype)
        out[0] = value
        return out

    return [
        ("label out of range", lambda y: at0(y, nb_classes), raises(InputError, "outside")),
        ("negative label", lambda y: at0(y, -1), raises(InputError, "outside|negative")),
        ("non-integral labels", lambda y: y + 0.5, raises(InputError, "integer")),
        ("NaN label", lambda y: at0(y, np.nan), raises(InputError, "integer|NaN")),
        ("wrong number of labels", lambda y: y[:-1], raises(InputError, "labels|samples")),
        (
            "one-hot of the wrong width",
            lambda y: np.eye(nb_classes + 1, dtype=np.float32)[y],
            raises(InputError, r"one-hot|shape|\(N,\)"),
        ),
        ("labels of shape (N, 1)", lambda y: y[:, None], raises(InputError, r"shape|\(N,\)")),
        ("string labels", lambda y: np.array(["cat"] * len(y)), raises(InputError, "numeric")),
        ("bool labels", lambda y: y % 2 == 0, raises(InputError, "integer|bool")),
    ]


# --------------------------------------------------------------------------- bad models


def linear(n_in: int, n_out: int, value: float = 0.01) -> nn.Linear:
    """A ``Linear`` layer of constant weights (built without drawing from torch's global
    RNG, which bastion never touches)."""
    layer = nn.Linear(n_in, n_out, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.zero_()
    return layer


class _NaNOut(nn.Module):
    """Multiplies by NaN: the output stays NaN even when the weights are re-initialised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


def _nan_net(n_in: int, nb_classes: int) -> nn.Module:
    """A small MLP whose first layer has NaN weights (every activation after it is NaN) and
    whose output is NaN, whatever its weights."""
    hidden, out = linear(n_in, 16, float("nan")), linear(16, nb_classes)
    return nn.Sequential(nn.Flatten(), hidden, nn.Tanh(), out, _NaNOut())


def nan_model(
    input_shape: tuple[int, ...], nb_classes: int, clip_values: Any = (0.0, 1.0)
) -> TorchClassifier:
    """A :class:`TorchClassifier` whose model answers NaN (every capability of a torch
    model)."""
    n_in = int(np.prod(input_shape))
    return TorchClassifier(
        _nan_net(n_in, nb_classes),
        input_shape=input_shape,
        nb_classes=nb_classes,
        clip_values=clip_values,
    )


def module_of(estimator: Any) -> Any:
    """The torch module a :class:`TorchClassifier` wraps (what a "raw module" row passes
    instead of the estimator)."""
    return estimator.model


def later(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """``fn(*args, **kwargs)``, called when the row runs (a row's arguments bound now)."""
    return lambda: fn(*args, **kwargs)


def on(part: str, change: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``problem -> change(problem.<part>)``: one part of a problem, changed."""
    return lambda problem: change(getattr(problem, part))


def rewrapped(est: Any, **changes: Any) -> TorchClassifier:
    """A new :class:`TorchClassifier` around ``est.model`` with some of its settings changed
    (a wrong ``nb_classes`` or ``input_shape``); the module itself is not touched."""
    settings: dict[str, Any] = {
        "input_shape": est.input_shape,
        "nb_classes": est.nb_classes,
        "clip_values": est.clip_values,
    }
    settings.update(changes)
    return TorchClassifier(est.model, **settings)


def black_box(
    answer: Callable[[np.ndarray], Any],
    input_shape: tuple[int, ...],
    nb_classes: int,
    *,
    labels_only: bool = False,
    clip_values: Any = (0.0, 1.0),
) -> BlackBoxClassifier:
    """A :class:`BlackBoxClassifier` around ``answer``."""
    return BlackBoxClassifier(
        answer,
        input_shape=input_shape,
        nb_classes=nb_classes,
        clip_values=clip_values,
        labels_only=labels_only,
    )


def endpoint(answer: Callable[..., Any], labels_only: bool) -> BlackBoxClassifier:
    """A black box over 8x8 digits (10 classes) whose prediction function is
    ``answer(batch, k=10)``: one of :data:`BAD_ENDPOINTS`."""
    return black_box(functools.partial(answer, k=10), (1, 8, 8), 10, labels_only=labels_only)


def _endpoint_down(x: np.ndarray) -> np.ndarray:
    raise ConnectionError("the endpoint is down")


#: ``(what, answer(batch, nb_classes), labels_only, outcome)``: prediction functions that
#: answer badly; every one must give a ModelError.
BAD_ENDPOINTS: list[tuple[str, Callable[[np.ndarray, int], Any], bool, str]] = [
    ("predict_fn raises", lambda x, k: _endpoint_down(x), False, "raised|endpoint"),
    ("predict_fn returns strings", lambda x, k: np.full((len(x), k), "p"), False, "numeric"),
    (
        "predict_fn returns the wrong number of rows",
        lambda x, k: np.full((len(x) + 1, k), 1.0 / k),
        False,
        "shape",
    ),
    ("predict_fn returns NaN", lambda x, k: np.full((len(x), k), np.nan), False, "NaN"),
    (
        "predict_fn returns labels outside the classes",
        lambda x, k: np.full(len(x), k + 3),
        True,
        "outside",
    ),
]


# --------------------------------------------------------------------------- properties


def float64(x: np.ndarray) -> np.ndarray:
    """``x`` in float64, moved by about 1e-10 so that no value is a float32 number: a result
    that went through float32 is not bit-identical to it."""
    return x.astype(np.float64) * (1 - 1e-9) + 5e-10


def as_numpy(value: Any) -> np.ndarray:
    """``value`` as a NumPy array (tensors detached and moved to the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def same_kind(like: Any, shape: tuple[int, ...] | None = None) -> Callable[[Any], None]:
    """The result is of ``like``'s type and dtype (a tensor also on its device), of
    ``like``'s shape unless ``shape`` is given."""

    def check(out: Any) -> None:
        want = tuple(like.shape) if shape is None else shape
        assert type(out) is type(like), f"{type(like).__name__} in, {type(out).__name__} out"
        assert out.dtype == like.dtype, f"{like.dtype} in, {out.dtype} out"
        assert tuple(out.shape) == want, f"shape {tuple(out.shape)}, expected {want}"
        if isinstance(like, torch.Tensor):
            assert out.device == like.device, f"device {out.device}, not {like.device}"

    return check


def like(make: Callable[[], Any]) -> Callable[[Any], None]:
    """The result is of the kind (type, dtype, shape, device) of what ``make()`` returns."""
    return lambda out: same_kind(make())(out)


def identical(like: Any) -> Callable[[Any], None]:
    """The result is ``like``, bit for bit, of its type and dtype."""

    def check(out: Any) -> None:
        same_kind(like)(out)
        a, b = as_numpy(out), as_numpy(like)
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), "not bit-identical"

    return check
