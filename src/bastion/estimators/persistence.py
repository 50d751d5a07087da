"""Save and load estimators as data: nothing in a saved file can run code when it is read.

A pickle can run arbitrary code when it is loaded, so a planted or tampered file is an attack
on whoever loads it. bastion therefore stores estimators in formats that hold data only:

* :class:`~bastion.estimators.TorchClassifier`: the model's ``state_dict`` (weights and
  buffers) and the estimator's shape settings, in one ``.pt`` file written by
  :func:`torch.save` and read with ``torch.load(weights_only=True)``, PyTorch's restricted
  loader that builds tensors and built-in containers only. The architecture is never read
  from the file: the weights are loaded into a :meth:`~bastion.estimators.TorchClassifier.clone`
  of a ``template`` estimator built by the caller's own code, whose settings (loss,
  preprocessing, clip values, device, inference mode) the loaded estimator keeps.
* :class:`~bastion.estimators.SklearnClassifier`: the fitted scikit-learn model in a ``.skops``
  file (`skops.io <https://skops.readthedocs.io/en/stable/persistence.html>`_), which rebuilds
  only the types it is told to trust. A file is loaded only when every type in it is one skops
  trusts by default, or one the caller lists in ``trusted_types`` (what
  :func:`skops.io.get_untrusted_types` reports; e.g. the optimizer object of an
  ``MLPClassifier`` trained with Adam, or the trees of a random forest).

Each file also keeps a few probe inputs and the estimator's probabilities on them; loading
checks that the loaded estimator gives the same probabilities (a template of another
architecture or preprocessing, or a tampered file, is refused instead of giving wrong
scores). Other estimators have no data format: their persistence is the caller's (e.g. a cache
inside the function that trains them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion._tensor import to_tensor
from bastion.estimators.pytorch import TorchClassifier
from bastion.estimators.sklearn import SklearnClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError

__all__ = ["SUFFIXES", "load_estimator", "save_estimator"]

#: File suffix of each data format.
SUFFIXES: dict[type, str] = {TorchClassifier: ".pt", SklearnClassifier: ".skops"}
_FORMATS: dict[type, str] = {
    TorchClassifier: "bastion.TorchClassifier",
    SklearnClassifier: "bastion.SklearnClassifier",
}
_VERSION = 1
#: Loaded probabilities may differ from the saved ones by this much (another device or
#: thread count reorders floating-point sums), no more.
_PROBE_ATOL = 1e-4


def _probe(estimator: Any, probe: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    if probe is None:
        return None
    x, _ = to_tensor(probe, device=estimator.device, dtype=estimator.dtype)
    if x.ndim == len(estimator.input_shape):
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != tuple(estimator.input_shape) or x.shape[0] == 0:
        raise InputError(
            f"probe must hold samples of shape {tuple(estimator.input_shape)}; got shape "
            f"{tuple(x.shape)}."
        )
    with torch.no_grad():
        p = estimator.predict_tensor(x)
    return x.detach().cpu(), p.detach().to(torch.float64).cpu()


def _settings(estimator: Any) -> dict[str, Any]:
    clip = estimator.clip_values
    return {
        "input_shape": [int(d) for d in estimator.input_shape],
        "nb_classes": int(estimator.nb_classes),
        "clip_values": None if clip is None else [float(clip[0]), float(clip[1])],
    }


def save_estimator(estimator: Any, path: str | Path, *, probe: Any = None) -> Path:
    """Write ``estimator`` to ``path`` as data (see the module's description).

    Parameters
    ----------
    estimator : TorchClassifier or SklearnClassifier
    path : str or path-like
        The file; the format's suffix (``.pt`` or ``.skops``, :data:`SUFFIXES`) is appended
        unless ``path`` already ends with it.
    probe : array-like or torch.Tensor, optional
        A few samples (e.g. 8) whose probabilities are stored with the model and checked by
        :func:`load_estimator`.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    EstimatorError
        For an estimator without a data format.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.estimators.persistence import load_estimator, save_estimator
    >>> def build():
    ...     net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    ...     return TorchClassifier(net, input_shape=(4,), nb_classes=3)
    >>> clf, x = build(), torch.rand(5, 4)
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> file = save_estimator(clf, folder / "model", probe=x)
    >>> file.name
    'model.pt'
    >>> loaded = load_estimator(file, template=build())  # the architecture comes from code
    >>> torch.equal(loaded.predict(x), clf.predict(x))
    True
    """
    kind = type(estimator)
    if kind not in SUFFIXES:
        raise EstimatorError(
            f"{kind.__name__} has no data format to be saved in (only TorchClassifier and "
            "SklearnClassifier do: their weights or skops files); save such models yourself, "
            "e.g. in a cache of the function that trains them."
        )
    path = Path(path)
    suffix = SUFFIXES[kind]
    if path.suffix != suffix:
        path = path.with_name(path.name + suffix)
    record: dict[str, Any] = {"format": _FORMATS[kind], "version": _VERSION, **_settings(estimator)}
    probed = _probe(estimator, probe)
    if kind is TorchClassifier:
        record["state_dict"] = {
            k: v.detach().cpu() for k, v in estimator.model.state_dict().items()
        }
        record["probe_x"], record["probe_p"] = probed if probed is not None else (None, None)
        torch.save(record, path)
    else:
        import skops.io as sio

        record["model"] = estimator.model
        if probed is not None:
            record["probe_x"], record["probe_p"] = (t.numpy() for t in probed)
        sio.dump(record, path)
    return path


def load_estimator(
    path: str | Path,
    *,
    template: Any = None,
    trusted_types: Sequence[str] = (),
    device: Any = None,
) -> Any:
    """Read an estimator written by :func:`save_estimator`, as data only.

    Parameters
    ----------
    path : str or path-like
        A ``.pt`` (TorchClassifier weights) or ``.skops`` (SklearnClassifier) file.
    template : TorchClassifier, optional
        Needed for ``.pt`` files: an estimator of the saved model's architecture (its weights do
        not matter); the weights are loaded into its :meth:`clone`, which keeps its settings.
    trusted_types : sequence of str, default ()
        For ``.skops`` files: types to rebuild beyond those skops trusts by default, by their
        full names as :func:`skops.io.get_untrusted_types` gives them. Trust only types you
        expect in a file you wrote.
    device : str or torch.device, optional
        Where a loaded SklearnClassifier computes (default: the template's device, else CPU).

    Returns
    -------
    TorchClassifier or SklearnClassifier

    Raises
    ------
    InputError
        When the file is not a bastion estimator file that can be read as data (a pickle, say),
        holds types that are not trusted, does not fit the template, or gives other
        probabilities on its probe than those saved.
    EstimatorError
        When a ``.pt`` file is loaded without a TorchClassifier template.
    """
    if isinstance(trusted_types, (str, bytes)) or not all(
        isinstance(t, str) for t in trusted_types
    ):
        raise InvalidParameterError(
            "The 'trusted_types' parameter of load_estimator must be a sequence of type names "
            f"(str). Got {trusted_types!r} instead."
        )
    path = Path(path)
    if path.suffix == SUFFIXES[TorchClassifier]:
        return _load_torch(path, template)
    if path.suffix == SUFFIXES[SklearnClassifier]:
        if device is None and template is not None:
            device = template.device
        return _load_sklearn(path, list(trusted_types), device)
    raise InputError(
        f"{str(path)!r} is not a file of save_estimator (.pt or .skops); other formats, pickles "
        "included, are not loaded: unpickling can run code."
    )


def _refuse(path: Path, what: str) -> InputError:
    return InputError(f"The saved estimator {str(path)!r} {what}; it was not loaded.")


def _check_record(path: Path, record: Any, kind: type) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("format") != _FORMATS[kind]:
        raise _refuse(path, f"is not a {kind.__name__} file of save_estimator")
    if record.get("version") != _VERSION:
        raise _refuse(path, f"has format version {record.get('version')!r}, not {_VERSION}")
    shape, classes, clip = (
        record.get("input_shape"),
        record.get("nb_classes"),
        record.get("clip_values"),
    )
    ok = (
        isinstance(shape, list)
        and all(isinstance(d, int) and d > 0 for d in shape)
        and isinstance(classes, int)
        and classes >= 2
        and (
            clip is None
            or (
                isinstance(clip, list)
                and len(clip) == 2
                and all(isinstance(c, float) for c in clip)
            )
        )
    )
    if not ok:
        raise _refuse(path, "has malformed settings (input_shape, nb_classes, clip_values)")
    return record


def _check_probe(path: Path, estimator: Any, record: dict[str, Any]) -> None:
    x, p = record.get("probe_x"), record.get("probe_p")
    if x is None and p is None:
        return
    x = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    p = torch.as_tensor(p) if isinstance(p, np.ndarray) else p
    n = x.shape[0] if isinstance(x, torch.Tensor) and x.ndim > 0 else -1
    if (
        not isinstance(x, torch.Tensor)
        or not isinstance(p, torch.Tensor)
        or tuple(x.shape[1:]) != tuple(estimator.input_shape)
        or tuple(p.shape) != (n, estimator.nb_classes)
        or not x.is_floating_point()
        or not bool(torch.isfinite(x).all())
    ):
        raise _refuse(path, "has a malformed probe")
    with torch.no_grad():
        got = estimator.predict_tensor(x.to(estimator.device, estimator.dtype)).cpu()
    diff = float((got.to(torch.float64) - p.to(torch.float64)).abs().max())
    if not diff <= _PROBE_ATOL:
        raise _refuse(
            path,
            f"gives other probabilities on its probe samples once loaded than when it was saved "
            f"(largest difference {diff:.3g}): the template's architecture or settings "
            "(preprocessing, input shape) differ from the saved model's, or the file was altered",
        )


def _load_torch(path: Path, template: Any) -> TorchClassifier:
    if not isinstance(template, TorchClassifier):
        raise EstimatorError(
            f"{str(path)!r} holds the weights of a TorchClassifier; loading them needs "
            "template=a TorchClassifier of the same architecture (the architecture is never "
            f"read from a file); got {type(template).__name__}."
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read the file as data is the same refusal
        raise _refuse(
            path,
            "cannot be read as data (torch.load with weights_only=True: "
            f"{type(err).__name__}: {_first_line(err)})",
        ) from err
    record = _check_record(path, record, TorchClassifier)
    if (record["input_shape"], record["nb_classes"]) != (
        list(template.input_shape),
        template.nb_classes,
    ):
        raise _refuse(
            path,
            f"holds a model of input_shape {tuple(record['input_shape'])} and nb_classes "
            f"{record['nb_classes']}; the template has {tuple(template.input_shape)} and "
            f"{template.nb_classes}",
        )
    state = record.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _refuse(path, "has a malformed state_dict")
    estimator = template.clone()
    expected = estimator.model.state_dict()
    wrong = sorted(k for k in set(state) & set(expected) if state[k].dtype != expected[k].dtype)
    try:
        if wrong:
            raise RuntimeError(f"other dtypes for {wrong[:5]}")
        estimator.model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise _refuse(
            path,
            f"holds weights that do not fit the template's architecture ({_first_line(err)})",
        ) from err
    _check_probe(path, estimator, record)
    return estimator


def _load_sklearn(path: Path, trusted_types: list[str], device: Any) -> SklearnClassifier:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as err:  # not a skops file (a pickle, say): never unpickled
        raise _refuse(
            path,
            f"is not a skops file ({type(err).__name__}: {_first_line(err)}); other formats, "
            "pickles included, are not loaded: unpickling can run code",
        ) from err
    missing = [t for t in untrusted if t not in trusted_types]
    if missing:
        raise _refuse(
            path,
            f"holds types that skops does not trust by default: {missing}. If you wrote this "
            "file yourself and expect these types in it, list them in trusted_types",
        )
    try:
        record = sio.load(path, trusted=untrusted)
    except Exception as err:
        raise _refuse(path, f"cannot be read ({type(err).__name__}: {_first_line(err)})") from err
    record = _check_record(path, record, SklearnClassifier)
    try:
        estimator = SklearnClassifier(
            record.get("model"),
            input_shape=record["input_shape"],
            clip_values=_clip(record["clip_values"]),
            device=device,
        )
    except (InvalidParameterError, EstimatorError) as err:
        raise _refuse(path, f"holds no usable scikit-learn classifier ({err})") from err
    if estimator.nb_classes != record["nb_classes"]:
        raise _refuse(path, "holds a model of another number of classes than recorded")
    _check_probe(path, estimator, record)
    return estimator


def _clip(value: list[float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = value
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"clip_values {value} saved with the estimator are not a valid range.")
    return lo, hi


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
