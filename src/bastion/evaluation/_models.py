"""Load a user's model file as a bastion estimator, reading data only unless told otherwise.

What a file is comes from its contents (zip members, magic bytes), the suffix only breaking
ties; see :func:`detect_format` and ``docs/evaluation.md``.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.estimators import SklearnClassifier, TorchClassifier
from bastion.estimators.base import Classifier
from bastion.exceptions import (
    BastionError,
    EstimatorError,
    InputError,
    InvalidParameterError,
    ModelError,
)

__all__ = ["FLAGS", "MODEL_FORMATS", "detect_format", "format_error", "load_model"]

StrPath = str | os.PathLike[str]

#: What :func:`detect_format` answers, with what each format is.
MODEL_FORMATS: dict[str, str] = {
    "torchscript": "a TorchScript archive (torch.jit.save)",
    "torch_export": "a torch.export archive (torch.export.save, .pt2)",
    "torch_save": "a torch.save file: a state dict (weights) or a pickled object",
    "onnx": "an ONNX graph (.onnx)",
    "skops": "a scikit-learn model saved with skops (.skops)",
    "pickle": "a pickle or joblib file (.pkl, .pickle, .joblib)",
}

#: The command-line flag of each :func:`load_model` / :func:`load_data` parameter, named in
#: error messages so that a user of either knows what to pass.
FLAGS: dict[str, str] = {
    "arch": "--arch",
    "arch_kwargs": "--arch-kwargs",
    "input_shape": "--input-shape",
    "nb_classes": "--nb-classes",
    "clip_values": "--clip-values",
    "mean": "--mean",
    "std": "--std",
    "trust_pickle": "--trust-pickle",
    "onnx_gradients": "--onnx-gradients",
    "trusted_types": "--trusted-types",
    "x_key": "--x-key",
    "y_key": "--y-key",
    "label_column": "--label-column",
    "limit": "--limit",
}

_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".sav", ".dill")
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
# Members of a torch.export archive whose reading runs native code or unpickles objects.
_EXPORT_UNSAFE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")


def _flag(param: str) -> str:
    return f"{param} ({FLAGS[param]})" if param in FLAGS else param


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(err: BaseException) -> str:
    text = _ANSI.sub("", str(err)).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _weights_only_reason(err: BaseException) -> str:
    """What torch's weights-only loader refused (the object it would have to build)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", _ANSI.sub("", str(err)))
    return f"it would build {found.group(1)}" if found else _first_line(err)


def format_error(exc: BaseException) -> str:
    """One line that tells a user what went wrong, for a command line's error output.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    str
        bastion's own errors by their message; others prefixed with their type. Line breaks
        become spaces.

    Examples
    --------
    >>> from bastion.exceptions import InputError
    >>> from bastion.evaluation import format_error
    >>> format_error(InputError("The model file 'net.pt' does not exist."))
    "The model file 'net.pt' does not exist."
    >>> format_error(KeyError("x"))
    "KeyError: 'x'"
    """
    text = " ".join(str(exc).split())
    if isinstance(exc, BastionError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- formats


def _existing(path: StrPath, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"The {what} {str(p)!r} does not exist.")
    return p


def _zip_members(path: Path) -> list[str] | None:
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _strip_root(names: Sequence[str]) -> set[str]:
    """Member names without the archive's top folder (torch writes ``<name>/...``)."""
    return {n.split("/", 1)[1] if "/" in n else n for n in names}


def detect_format(path: StrPath) -> str:
    """What kind of model file ``path`` is, from its contents.

    Zip archives are told apart by their members (TorchScript: ``code/`` and
    ``constants.pkl``; torch.export: ``archive_format`` and ``models/*.json``; skops:
    ``schema.json``; torch.save: ``data.pkl``), other files by their first bytes and suffix.
    Nothing is unpickled.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        A key of :data:`MODEL_FORMATS`.

    Raises
    ------
    InputError
        For a missing file, a folder, or a file of no known model format.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from bastion.evaluation import detect_format
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "weights.pt"
    >>> torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    >>> detect_format(path)
    'torch_save'
    """
    p = _existing(path, "model file")
    if p.is_dir():
        raise InputError(f"The model path {str(p)!r} is a folder; expected a model file.")
    suffix = p.suffix.lower()
    names = _zip_members(p)
    if names is not None:
        inner = _strip_root(names)
        if "schema.json" in names:
            return "skops"
        if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
            return "torchscript"
        if "archive_format" in inner or any(
            n.startswith("models/") and n.endswith(".json") for n in inner
        ):
            return "torch_export"
        if "data.pkl" in inner:
            return "torch_save"
        raise InputError(
            f"{str(p)!r} is a zip archive of no known model format (not TorchScript, "
            "torch.export, torch.save or skops)."
        )
    with p.open("rb") as f:
        head = f.read(2)
    if suffix == ".onnx":
        return "onnx"
    if head[:1] == b"\x80":  # a pickle (protocol 2 or later), as legacy torch.save writes
        return "torch_save" if suffix in _TORCH_SUFFIXES else "pickle"
    if suffix in _PICKLE_SUFFIXES:
        return "pickle"
    if head[:1] == b"\x08":  # an ONNX protobuf starts with its ir_version field
        return "onnx"
    raise InputError(
        f"{str(p)!r} is of no known model format; bastion reads TorchScript and torch.export "
        "archives, state dicts (.pt, .pth, with --arch), ONNX (.onnx) and skops (.skops) files."
    )


# ----------------------------------------------------------------------------- refusals


def _refuse_pickle(path: Path, why: str) -> InputError:
    return InputError(
        f"Refusing to load {str(path)!r}: {why}; unpickling runs whatever code the file names, "
        "so a tampered file would run code on this machine. Save a torch model as TorchScript "
        "(torch.jit.save), torch.export (torch.export.save), ONNX, or its state_dict loaded "
        "with --arch module:Class; a scikit-learn model with skops (skops.io.dump); or pass "
        f"{_flag('trust_pickle')} if you trust this file and whoever wrote it."
    )


def _check_export_archive(path: Path, names: list[str]) -> None:
    """Refuse a torch.export archive whose loading would unpickle objects or load native code.

    ``torch.export.load`` unpickles (``weights_only=False``) weights and constants stored as
    pickles, custom and opaque objects, and sample inputs that fail the weights-only loader;
    it can also hold compiled (AOTInductor) libraries. A plain exported program holds none of
    these: raw tensor bytes and JSON.
    """
    root = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    with zipfile.ZipFile(path) as archive:
        for name in names:
            inner = name[len(root) :] if name.startswith(root) else name
            if inner.startswith(_EXPORT_UNSAFE_DIRS) or inner.endswith((".so", ".dll", ".dylib")):
                raise _refuse_pickle(
                    path, f"the torch.export archive holds compiled code ({inner})"
                )
            if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(
                "config.json"
            ):
                try:
                    config = json.loads(archive.read(name)).get("config", {})
                except (ValueError, AttributeError) as err:
                    raise InputError(f"{str(path)!r} has a malformed {inner}.") from err
                for fqn, meta in config.items():
                    pickled = meta.get("use_pickle", False)
                    opaque = inner.startswith("data/constants/") and not str(
                        meta.get("path_name", "")
                    ).startswith("tensor_")
                    if pickled or opaque:
                        raise _refuse_pickle(
                            path, f"the torch.export archive stores {fqn!r} as a pickled object"
                        )
            elif inner.endswith((".pt", ".pkl")):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as err:  # anything beyond tensors and containers
                    raise _refuse_pickle(
                        path,
                        f"the torch.export archive holds {inner}, which needs arbitrary objects "
                        f"to load ({_weights_only_reason(err)})",
                    ) from err


# ----------------------------------------------------------------------------- torch modules


class _ExportedModule(nn.Module):
    """An exported program as a module: batches of any size through a graph exported for a
    fixed batch size (chunks of that size, the last one padded by repeating its last sample),
    and a train/eval switch that leaves the graph alone (an exported graph keeps the mode it
    was exported in; ``torch.export`` refuses ``.train()`` and ``.eval()`` on it)."""

    def __init__(self, program: nn.Module, batch: int | None) -> None:
        super().__init__()
        self.program = program
        self.batch = batch
        for m in program.modules():
            m.training = False
        self.training = False

    def train(self, mode: bool = True) -> _ExportedModule:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.batch
        if size is None or x.shape[0] == size:
            return self.program(x)
        outs = []
        for i in range(0, x.shape[0], size):
            chunk = x[i : i + size]
            m = chunk.shape[0]
            if m < size:
                chunk = torch.cat([chunk, chunk[-1:].expand(size - m, *chunk.shape[1:])])
            outs.append(self.program(chunk)[:m])
        return torch.cat(outs)


def _load_export(path: Path, names: list[str]) -> tuple[nn.Module, tuple[int, ...] | None]:
    _check_export_archive(path, names)
    try:
        program = torch.export.load(path)
    except Exception as err:
        raise InputError(
            f"{str(path)!r} cannot be read as a torch.export archive ({_first_line(err)})."
        ) from err
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise InputError(
            f"The exported program in {str(path)!r} takes {len(user_inputs)} inputs; bastion "
            "evaluates models of one input (a batch of samples)."
        )
    shape: tuple[int, ...] | None = None
    batch: int | None = None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            dims = list(getattr(val, "shape", []))
            if dims and isinstance(dims[0], int):
                batch = int(dims[0])
            if len(dims) > 1 and all(isinstance(d, int) for d in dims[1:]):
                shape = tuple(int(d) for d in dims[1:])
    return _ExportedModule(program.module(), batch), shape


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch's advice to move to torch.export is for the file's author, not this user
            warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise InputError(
            f"{str(path)!r} cannot be read as a TorchScript archive ({_first_line(err)})."
        ) from err
    return module.eval()


def _build_arch(arch: str, arch_kwargs: Mapping[str, Any] | None) -> nn.Module:
    module_name, sep, qualname = arch.partition(":")
    if not sep or not module_name or not qualname:
        raise InputError(
            f"{_flag('arch')} must be 'module:Class' (e.g. 'bastion.zoo:SmallCNN'); got {arch!r}."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(
            f"Cannot import the module {module_name!r} of {_flag('arch')} {arch!r}: "
            f"{_first_line(err)}."
        ) from err
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise InputError(f"The module {module_name!r} has no {qualname!r} ({_flag('arch')}).")
        obj = getattr(obj, part)
    # A fresh architecture draws initial weights from torch's global RNG, which bastion
    # never changes: the weights are replaced by the file's at once anyway.
    try:
        with torch.random.fork_rng(devices=[]):
            net = obj(**dict(arch_kwargs or {}))
    except TypeError as err:
        raise InputError(
            f"Cannot build {arch!r} with {_flag('arch_kwargs')} {dict(arch_kwargs or {})}: "
            f"{_first_line(err)}."
        ) from err
    if not isinstance(net, nn.Module):
        raise InputError(f"{_flag('arch')} {arch!r} built a {type(net).__name__}, not a module.")
    return net


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    def is_state(d: Any) -> bool:
        return (
            isinstance(d, Mapping)
            and len(d) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())
        )

    if is_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if is_state(obj.get(key)):
                return dict(obj[key])
    return None


def _load_weights(net: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
        return
    except RuntimeError as err:
        stripped = {k.removeprefix("module."): v for k, v in state.items()}
        if stripped != state:  # saved from DataParallel / DistributedDataParallel
            try:
                net.load_state_dict(stripped, strict=True)
                return
            except RuntimeError:
                pass
        raise InputError(
            f"The weights in {str(path)!r} do not fit {arch!r} ({_first_line(err)}); check "
            f"{_flag('arch')} and {_flag('arch_kwargs')}."
        ) from err


def _load_torch_save(
    path: Path,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    trust_pickle: bool,
) -> tuple[Any, dict[str, Any]]:
    """The module (or scikit-learn model) in a torch.save file, and settings it records."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # anything that is not tensors and containers
        if not trust_pickle:
            raise _refuse_pickle(
                path,
                "it holds Python objects beyond tensors, e.g. a whole pickled module "
                f"(torch.load with weights_only=True refused it: {_weights_only_reason(err)})",
            ) from err
        # Only with trust_pickle=True (refused above otherwise): the user vouches for the file.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    settings: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == "bastion.TorchClassifier":
        # written by bastion.estimators.persistence.save_estimator
        settings = {k: obj.get(k) for k in ("input_shape", "nb_classes", "clip_values")}
        obj = obj.get("state_dict")
    if isinstance(obj, nn.Module) or _is_sklearn(obj) or isinstance(obj, Classifier):
        return obj, settings
    state = _state_dict_of(obj)
    if state is None:
        raise InputError(
            f"{str(path)!r} holds a {type(obj).__name__}, neither a state dict (parameter names "
            "to tensors) nor a model."
        )
    if arch is None:
        raise InputError(
            f"{str(path)!r} holds weights (a state dict) but not the architecture: pass "
            f"{_flag('arch')}='module:Class' (and {_flag('arch_kwargs')} for its constructor)."
        )
    net = _build_arch(arch, arch_kwargs)
    _load_weights(net, state, path, arch)
    return net.eval(), settings


def _load_pickle(path: Path, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise _refuse_pickle(path, "it is a pickle (or joblib) file")
    if path.suffix.lower() == ".joblib":
        import joblib

        return joblib.load(path)  # the caller trusts this file (trust_pickle=True)
    with path.open("rb") as f:
        return pickle.load(f)  # the caller trusts this file (trust_pickle=True)


def _is_sklearn(obj: Any) -> bool:
    return hasattr(obj, "predict_proba") and hasattr(obj, "classes_") and hasattr(obj, "fit")


# ----------------------------------------------------------------------------- inference


def _as_batch(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise InputError(f"x must be a batch of samples (N, *sample_shape); got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise InputError(f"x must hold numbers; got dtype {arr.dtype}.")
    return arr


def _input_shape(
    given: Sequence[int] | None,
    x: np.ndarray | None,
    recorded: Sequence[int] | None,
    source: str,
) -> tuple[int, ...]:
    if given is not None:
        shape = tuple(int(d) for d in given)
        if x is not None and tuple(x.shape[1:]) != shape:
            raise InputError(
                f"The data's samples have shape {tuple(x.shape[1:])} but {_flag('input_shape')} "
                f"is {shape}; reshape the data or fix the flag."
            )
        return shape
    if x is not None:
        return tuple(int(d) for d in x.shape[1:])
    if recorded is not None:
        return tuple(int(d) for d in recorded)
    raise InputError(
        f"Cannot tell the input shape of the model in {source}: pass {_flag('input_shape')} "
        "(e.g. 1,28,28) or data to infer it from."
    )


def _clip_values(given: Any, x: np.ndarray | None, source: str, *, sklearn: bool = False) -> Any:
    """The valid input range: given, ``"none"`` for unbounded, else inferred from the data
    (tabular data, samples of one dimension, may be unbounded; a scikit-learn model without
    data is)."""
    if isinstance(given, str):
        if given.lower() == "none":
            return None
        raise InputError(
            f"{_flag('clip_values')} must be a pair (low, high) or 'none'; got {given!r}."
        )
    if given is not None:
        return tuple(given)
    if x is None:
        if sklearn:
            return None
        raise InputError(
            f"Cannot tell the valid input range of the model in {source} without data: pass "
            f"{_flag('clip_values')} (e.g. 0,1 or 0,255; 'none' for unbounded)."
        )
    finite = x[np.isfinite(x)] if np.issubdtype(x.dtype, np.floating) else x
    if finite.size == 0:
        raise InputError("x holds no finite values.")
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        return (0.0, 1.0)
    if lo >= 0.0 and hi <= 255.0 and bool(np.all(finite == np.round(finite))):
        return (0.0, 255.0)
    if x.ndim == 2:
        return None  # features of tabular data are unbounded unless the user says
    raise InputError(
        f"Cannot infer the valid input range from data in [{lo:g}, {hi:g}] (neither [0, 1] nor "
        f"integers in [0, 255]): pass {_flag('clip_values')} (e.g. {math.floor(lo)},"
        f"{math.ceil(hi)}; 'none' for unbounded)."
    )


def _with_flags(err: InvalidParameterError) -> InputError:
    """An estimator's parameter error, told in terms of the flags that set the parameter."""
    text = _first_line(err)
    if "'preprocessing'" in text:
        text += f" Check {_flag('mean')} and {_flag('std')} (one value, or one per channel)."
    elif "'clip_values'" in text:
        text += f" Check {_flag('clip_values')}."
    return InputError(text)


def _preprocessing(mean: Any, std: Any) -> tuple[Any, Any] | None:
    if mean is None and std is None:
        return None
    return (0.0 if mean is None else mean, 1.0 if std is None else std)


def _shape_error(
    source: str, shape: tuple[int, ...], origin: str, err: BaseException, expected: Any = None
) -> InputError:
    hint = f" It expects samples of shape {expected}." if expected is not None else ""
    return InputError(
        f"The model in {source} does not accept samples of shape {shape} ({origin}): "
        f"{_first_line(err)}.{hint} Check {_flag('input_shape')} and the data."
    )


def _probe_width(estimator: Any, probe: np.ndarray, source: str, origin: str, expected: Any) -> int:
    """The number of scores the model gives for one sample (a forward pass)."""
    shape = tuple(probe.shape[1:])
    try:
        with torch.no_grad():
            out = estimator.torch_module()(
                torch.as_tensor(probe, device=estimator.device, dtype=estimator.dtype)
            )
    except Exception as err:  # whatever the model raises on a shape it cannot take
        raise _shape_error(source, shape, origin, err, expected) from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != probe.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"The model in {source} returned {got} for a batch of {probe.shape[0]} sample(s) "
            f"of shape {shape}; expected scores (N, nb_classes)."
        )
    if out.shape[1] < 2:
        raise InputError(
            f"The model in {source} returns {out.shape[1]} score(s) per sample; bastion "
            "evaluates classifiers with one score (logit) per class, at least 2."
        )
    return int(out.shape[1])


def _probe_sample(
    x: np.ndarray | None, shape: tuple[int, ...], clip: Any
) -> tuple[np.ndarray, str]:
    if x is not None:
        return np.asarray(x[:1], dtype=np.float32), "the data's"
    low = 0.0 if clip is None else float(clip[0])
    return np.full((1, *shape), low, dtype=np.float32), f"given by {_flag('input_shape')}"


def _torch_estimator(
    module: nn.Module,
    source: str,
    *,
    input_shape: Sequence[int] | None,
    recorded: Mapping[str, Any],
    nb_classes: int | None,
    clip_values: Any,
    preprocessing: tuple[Any, Any] | None,
    x: np.ndarray | None,
    device: Any,
    expected: Any = None,
) -> TorchClassifier:
    shape = _input_shape(input_shape, x, recorded.get("input_shape"), source)
    if expected is not None and shape != expected:
        raise InputError(
            f"The model in {source} takes samples of shape {expected}; the data's samples "
            f"have shape {shape}. Check {_flag('input_shape')} and the data."
        )
    if clip_values is None and x is None and "clip_values" in recorded:
        clip_values = recorded["clip_values"] or "none"  # a save_estimator record
    clip = _clip_values(clip_values, x, source)

    def build(k: int) -> TorchClassifier:
        try:
            return TorchClassifier(
                module,
                input_shape=shape,
                nb_classes=k,
                clip_values=clip,
                preprocessing=preprocessing,
                device=device,
            )
        except InvalidParameterError as err:
            raise _with_flags(err) from err

    probe, origin = _probe_sample(x, shape, clip)
    width = _probe_width(build(2), probe, source, origin, expected)
    if nb_classes is not None and int(nb_classes) != width:
        raise InputError(
            f"The model in {source} gives {width} scores per sample but {_flag('nb_classes')} "
            f"is {nb_classes}."
        )
    return build(width)


# ----------------------------------------------------------------------------- other frameworks


def _onnx_estimator(
    path: Path,
    *,
    input_shape: Sequence[int] | None,
    nb_classes: int | None,
    clip_values: Any,
    preprocessing: tuple[Any, Any] | None,
    x: np.ndarray | None,
    device: Any,
    gradients: bool = False,
) -> Classifier:
    from bastion.estimators.onnx import OnnxClassifier

    source = repr(str(path))
    given = (
        None if input_shape is None and x is None else _input_shape(input_shape, x, None, source)
    )
    clip = _clip_values(clip_values, x, source)
    try:
        est = OnnxClassifier(
            path,
            input_shape=given,
            nb_classes=nb_classes,
            clip_values=clip,
            preprocessing=preprocessing,
            device=device,
            gradients=gradients,
            # the torch twin is also checked on (up to 64 of) the samples to evaluate
            check_inputs=x[:64] if gradients and x is not None else None,
        )
    except (InputError, EstimatorError):
        raise
    except InvalidParameterError as err:
        raise _with_flags(err) from err
    except Exception as err:  # the probe for the class count failed on the given shape
        raise _shape_error(source, tuple(given or ()), "given", err) from err
    shape, expected = est.input_shape, est.graph_input_shape
    if len(expected) != len(shape) or any(
        e is not None and e != s for e, s in zip(expected, shape, strict=True)
    ):
        raise InputError(
            f"The ONNX model {source} takes samples of shape {expected}; the data's samples "
            f"have shape {shape}. Check {_flag('input_shape')} and the data."
        )
    probe, origin = _probe_sample(x, shape, clip)
    try:
        est.predict(probe)
    except ModelError as err:
        raise _shape_error(source, shape, origin, err.__cause__ or err, expected) from err
    est.reset_counts()
    return est


def _sklearn_estimator(
    model: Any,
    source: str,
    *,
    input_shape: Sequence[int] | None,
    nb_classes: int | None,
    clip_values: Any,
    preprocessing: tuple[Any, Any] | None,
    x: np.ndarray | None,
    device: Any,
) -> SklearnClassifier:
    if preprocessing is not None:
        raise InputError(
            f"{_flag('mean')} and {_flag('std')} apply to torch and ONNX models; the "
            f"scikit-learn model in {source} scales its inputs itself (put a scaler in its "
            "Pipeline)."
        )
    n_features = getattr(model, "n_features_in_", None)
    recorded = None if n_features is None else (int(n_features),)
    shape = _input_shape(input_shape, x, recorded, source)
    if n_features is not None and math.prod(shape) != n_features:
        raise InputError(
            f"The scikit-learn model in {source} takes {n_features} features; samples of shape "
            f"{shape} have {math.prod(shape)}. Check {_flag('input_shape')} and the data."
        )
    clip = _clip_values(clip_values, x, source, sklearn=True)
    try:
        est = SklearnClassifier(model, input_shape=shape, clip_values=clip, device=device)
    except (EstimatorError, ValueError) as err:
        raise InputError(
            f"The scikit-learn model in {source} cannot be used ({_first_line(err)})."
        ) from err
    if nb_classes is not None and int(nb_classes) != est.nb_classes:
        raise InputError(
            f"The scikit-learn model in {source} has {est.nb_classes} classes but "
            f"{_flag('nb_classes')} is {nb_classes}."
        )
    if x is not None:
        try:
            est.predict(np.asarray(x[:1], dtype=np.float32))
        except (ModelError, InputError) as err:
            raise _shape_error(source, shape, "the data's", err.__cause__ or err) from err
        est.reset_counts()
    return est


def _load_skops(path: Path, trusted_types: Sequence[str]) -> Any:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as err:  # not a skops file: never unpickled
        raise InputError(
            f"{str(path)!r} cannot be read as a skops file ({_first_line(err)})."
        ) from err
    missing = [t for t in untrusted if t not in trusted_types]
    if missing:
        raise InputError(
            f"Refusing to load {str(path)!r}: it holds types that skops does not trust by "
            f"default: {missing}. If you expect them in this file, list them in "
            f"{_flag('trusted_types')}."
        )
    try:
        obj = sio.load(path, trusted=list(untrusted))
    except Exception as err:
        raise InputError(f"{str(path)!r} cannot be read ({_first_line(err)}).") from err
    if isinstance(obj, Mapping) and obj.get("format") == "bastion.SklearnClassifier":
        return obj.get("model")  # written by bastion.estimators.persistence.save_estimator
    return obj


# ----------------------------------------------------------------------------- entry point


def load_model(
    path: StrPath,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    nb_classes: int | None = None,
    clip_values: tuple[float, float] | str | None = None,
    mean: Any = None,
    std: Any = None,
    x: Any = None,
    trust_pickle: bool = False,
    trusted_types: Sequence[str] = (),
    device: str | torch.device = "cpu",
    onnx_gradients: bool = False,
) -> Classifier:
    """Load a model file as a bastion estimator, without running code hidden in the file.

    =====================  ==========================================  =====================
    format                 read with                                   estimator
    =====================  ==========================================  =====================
    TorchScript            ``torch.jit.load``                          TorchClassifier
    torch.export (.pt2)    ``torch.export.load`` after a scan that     TorchClassifier
                           refuses pickled or compiled members
    state dict (.pt/.pth)  ``torch.load(weights_only=True)`` into      TorchClassifier
                           ``arch`` (``"module:Class"``)
    ONNX (.onnx)           ONNX Runtime (``pip install onnxruntime``)  OnnxClassifier
                                                                       (predict-only unless
                                                                       ``onnx_gradients``)
    skops (.skops)         ``skops.io.load``, trusted types only       SklearnClassifier
    =====================  ==========================================  =====================

    A file that needs arbitrary Python objects to load (a whole pickled torch module, a
    ``.pkl`` or ``.joblib`` file) is refused with an :class:`InputError` that explains why and
    names the safe formats, unless ``trust_pickle=True``.

    Settings not given are inferred: ``input_shape`` from ``x`` (else the file: a
    torch.export or ONNX graph, a scikit-learn model's feature count); ``nb_classes`` from the
    width of the model's output on one sample (a probe forward pass, which also checks that
    the model accepts the data's shape); ``clip_values`` from ``x``'s range: ``(0, 1)`` for
    data inside it, ``(0, 255)`` for integers up to 255, unbounded for tabular data.
    Whatever cannot be inferred is asked for by an error naming the parameter and its flag.

    Parameters
    ----------
    path : str or os.PathLike
        The model file; its format is found by :func:`detect_format`.
    arch : str, optional
        ``"module:Class"`` of the architecture a state dict's weights are loaded into (the
        module is imported: it is the caller's code, never the file's).
    arch_kwargs : mapping, optional
        Keyword arguments of ``arch``'s constructor.
    input_shape : sequence of int, optional
        Shape of one sample, e.g. ``(1, 28, 28)``.
    nb_classes : int, optional
        Number of classes; checked against the model's output when given.
    clip_values : (float, float), "none" or None
        Valid input range; ``"none"`` for unbounded; None infers it (see above).
    mean, std : float or sequence of float, optional
        Normalisation ``(x - mean) / std`` (per channel) that the model expects; the estimator
        applies it, so attacks and data stay in input space. Torch and ONNX models only.
    x : array-like or torch.Tensor, optional
        Samples ``(N, *input_shape)`` the model will be evaluated on (e.g.
        :func:`load_data`'s ``x``), to infer settings from.
    trust_pickle : bool, default False
        Load pickles too. Only for files you trust: unpickling can run any code.
    onnx_gradients : bool, default False
        For an ONNX file: ``OnnxClassifier(gradients=True)``, gradients from a torch twin of
        the graph checked against ONNX Runtime (also on the data), so white-box suites run.
    trusted_types : sequence of str, default ()
        Types to rebuild from a skops file beyond those skops trusts by default (as
        :func:`skops.io.get_untrusted_types` names them).
    device : str or torch.device, default "cpu"
        Where the estimator computes.

    Returns
    -------
    Classifier
        A :class:`~bastion.estimators.TorchClassifier`,
        :class:`~bastion.estimators.OnnxClassifier` or
        :class:`~bastion.estimators.SklearnClassifier`.

    Raises
    ------
    InputError
        A missing file, an unknown format, a refused pickle, a setting that cannot be
        inferred, a model that does not accept the data's shape, or settings that contradict
        the model; one line each.
    EstimatorError
        An ONNX file without ONNX Runtime installed.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from bastion.evaluation import load_model
    >>> from bastion.zoo import SmallCNN
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "net.pt"
    >>> torch.save(SmallCNN(input_size=8, random_state=0).state_dict(), path)
    >>> clf = load_model(path, arch="bastion.zoo:SmallCNN", arch_kwargs={"input_size": 8},
    ...                  x=torch.rand(4, 1, 8, 8))
    >>> clf.input_shape, clf.nb_classes, clf.clip_values
    ((1, 8, 8), 10, (0.0, 1.0))
    """
    p = _existing(path, "model file")
    fmt = detect_format(p)
    xs = _as_batch(x)
    preprocessing = _preprocessing(mean, std)
    source = repr(str(p))
    common: dict[str, Any] = {
        "input_shape": input_shape,
        "nb_classes": nb_classes,
        "clip_values": clip_values,
        "preprocessing": preprocessing,
        "x": xs,
        "device": device,
    }
    if fmt == "onnx":
        return _onnx_estimator(p, **common, gradients=onnx_gradients)
    expected: tuple[int, ...] | None = None
    recorded: dict[str, Any] = {}
    if fmt == "torchscript":
        obj: Any = _load_torchscript(p)
    elif fmt == "torch_export":
        obj, expected = _load_export(p, _zip_members(p) or [])
        recorded = {"input_shape": expected}
    elif fmt == "torch_save":
        obj, recorded = _load_torch_save(p, arch, arch_kwargs, trust_pickle)
    elif fmt == "skops":
        obj = _load_skops(p, trusted_types)
    else:
        obj = _load_pickle(p, trust_pickle)
    if isinstance(obj, Classifier):
        return obj  # a pickled bastion estimator (trusted): its settings are its own
    if isinstance(obj, nn.Module):
        return _torch_estimator(obj, source, recorded=recorded, expected=expected, **common)
    if _is_sklearn(obj):
        return _sklearn_estimator(obj, source, **common)
    raise InputError(
        f"{source} holds a {type(obj).__name__}, which is no model bastion can evaluate (a "
        "torch module or a fitted scikit-learn classifier)."
    )
