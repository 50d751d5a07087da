"""CIFAR-10, read from the python tarball (downloaded once, then cached)."""

from __future__ import annotations

import codecs
import importlib
import io
import os
import pickle
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bastion._validation import VERBOSE, Boolean, validate_params
from bastion.datasets._digits import Split
from bastion.datasets._download import fetch, resolve_cache_dir
from bastion.exceptions import BastionError

__all__ = ["CIFAR10_CLASSES", "CIFAR10_URL", "load_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_ARCHIVE = "cifar-10-python.tar.gz"
# MD5 of the published archive (the checksum torchvision also verifies).
_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"


def _numpy_core(submodule: str) -> ModuleType:
    # numpy >= 2 moved numpy.core to numpy._core; pickles name either.
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # pragma: no cover - numpy < 1.26
        return importlib.import_module(f"numpy.core.{submodule}")


def _safe_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays, and nothing else.

    A pickle can run arbitrary code when it is loaded; the CIFAR batches need only NumPy's
    array constructors, so every other global is refused.
    """

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name} from a data file"
            ) from None


def _read_batch(
    path: Path, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str
) -> Any:
    member = members.get(name)
    f = None if member is None else tar.extractfile(member)
    if f is None:
        raise BastionError(
            f"The CIFAR-10 archive {path} has no batch file {name!r}. "
            "Delete it to download it again."
        )
    with f:
        try:
            batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise BastionError(f"Could not read the CIFAR-10 batch {name!r}: {exc}") from exc
    # The published batches were pickled by Python 2: keys load as str with latin1 (NumPy's
    # advice for Python 2 arrays), but as bytes if re-pickled by Python 3.
    data = labels = None
    if isinstance(batch, dict):
        data = batch.get("data", batch.get(b"data"))
        labels = batch.get("labels", batch.get(b"labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise BastionError(f"The CIFAR-10 batch {name!r} lacks its data or labels entry.")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise BastionError(
            f"The CIFAR-10 batch {name!r} holds data of shape {data.shape} and {len(labels)} "
            "labels; expected (N, 3072) and N labels."
        )
    return data, labels


def _split(
    path: Path, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    batches = [_read_batch(path, tar, members, name) for name in names]
    data = np.concatenate([np.asarray(d, dtype=np.uint8) for d, _ in batches])
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    y = np.concatenate([np.asarray(labels, dtype=np.int64) for _, labels in batches])
    return x, y


def load_cifar10(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    url: str = CIFAR10_URL,
    verbose: bool = True,
) -> Split:
    """Load CIFAR-10 (50,000 training and 10,000 test colour images, 32x32, 10 classes).

    The python archive ``cifar-10-python.tar.gz`` is downloaded once into ``<cache>/cifar10``
    and read from there afterwards (the batches are read straight from the archive, nothing is
    extracted). The pickled batches are loaded by an unpickler that accepts NumPy arrays only,
    so a tampered archive cannot run code. An archive downloaded from the default ``url`` is
    checked against its published MD5 checksum. Class names are in ``CIFAR10_CLASSES``.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        The cache folder. Defaults to the ``BASTION_CACHE`` environment variable, else
        ``~/.cache/bastion``.
    download : bool, default=True
        Download the archive if it is missing. When False, a missing archive raises an error
        saying where to put it.
    url : str, default=CIFAR10_URL
        Where the archive is downloaded from (any URL ``urllib`` opens, ``file://`` included).
    verbose : bool, default=True
        Show a progress bar while downloading (nothing is shown when the archive is cached).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        Images as float32 arrays of shape ``(N, 3, 32, 32)`` with values in ``[0, 1]``, labels
        as int64 arrays of shape ``(N,)``.

    Raises
    ------
    BastionError
        If the archive is missing and ``download`` is False, the download fails or is corrupt,
        or the archive does not hold valid CIFAR-10 batches.

    Examples
    --------
    >>> from bastion.datasets import load_cifar10
    >>> (x_train, y_train), (x_test, y_test) = load_cifar10()  # doctest: +SKIP
    >>> x_train.shape, x_test.shape  # doctest: +SKIP
    ((50000, 3, 32, 32), (10000, 3, 32, 32))
    """
    validate_params(
        "load_cifar10",
        {"download": download, "verbose": verbose},
        {"download": [Boolean()], "verbose": VERBOSE},
    )
    path: Path = fetch(
        url,
        resolve_cache_dir(cache_dir, "cifar10") / _ARCHIVE,
        download=download,
        md5=_ARCHIVE_MD5 if url == CIFAR10_URL else None,
        verbose=verbose,
    )
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            train = _split(path, tar, members, _TRAIN_BATCHES)
            test = _split(path, tar, members, (_TEST_BATCH,))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BastionError(
            f"Could not read {path} as a gzipped tar archive ({exc}). "
            "Delete it to download it again."
        ) from exc
    return train, test
