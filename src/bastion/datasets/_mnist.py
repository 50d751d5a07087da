"""MNIST, read from the four standard IDX files (downloaded once, then cached)."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bastion._validation import VERBOSE, Boolean, validate_params
from bastion.datasets._digits import Split
from bastion.datasets._download import fetch, resolve_cache_dir
from bastion.exceptions import BastionError

__all__ = ["MNIST_URL", "load_mnist"]

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# (file name, MD5 of the published file): the checksums torchvision also verifies.
_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
# IDX magic numbers: two zero bytes, the type code (0x08 = unsigned byte), the number of dims.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


def _read_idx(path: Path, magic: int) -> NDArray[np.uint8]:
    """Parse a gzipped IDX file of unsigned bytes."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise BastionError(
            f"Could not read {path} as a gzipped IDX file ({exc}). Delete it to download it again."
        ) from exc
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        shown = "none (file too short)" if found is None else f"{found:#010x}"
        raise BastionError(
            f"{path} is not the expected IDX file: magic number {shown}, expected {magic:#010x}. "
            "Delete it to download it again."
        )
    ndim = magic & 0xFF
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise BastionError(f"{path} is truncated (no room for its {ndim} dimensions).")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) - offset != math.prod(dims):
        raise BastionError(
            f"{path} declares shape {dims} ({math.prod(dims)} bytes) but holds "
            f"{len(data) - offset} bytes of data. Delete it to download it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _split(folder: Path, images_file: str, labels_file: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(folder / images_file, _IMAGES_MAGIC)
    labels = _read_idx(folder / labels_file, _LABELS_MAGIC)
    if len(images) != len(labels):
        raise BastionError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} "
            "labels."
        )
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return np.ascontiguousarray(x), labels.astype(np.int64)


def load_mnist(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    base_url: str = MNIST_URL,
    verbose: bool = True,
) -> Split:
    """Load MNIST (60,000 training and 10,000 test images of handwritten digits, 28x28).

    The four gzipped IDX files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) are downloaded once into
    ``<cache>/mnist`` and read from there afterwards. Files downloaded from the default
    ``base_url`` are checked against their published MD5 checksums.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        The cache folder. Defaults to the ``BASTION_CACHE`` environment variable, else
        ``~/.cache/bastion``.
    download : bool, default=True
        Download missing files. When False, missing files raise an error saying where to put
        them.
    base_url : str, default=MNIST_URL
        Where the four files are downloaded from (any URL ``urllib`` opens, ``file://``
        included).
    verbose : bool, default=True
        Show a progress bar while downloading (nothing is shown when the files are cached).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        Images as float32 arrays of shape ``(N, 1, 28, 28)`` with values in ``[0, 1]``, labels
        as int64 arrays of shape ``(N,)``.

    Raises
    ------
    BastionError
        If a file is missing and ``download`` is False, a download fails or is corrupt, or a
        cached file is not a valid IDX file.

    Examples
    --------
    >>> from bastion.datasets import load_mnist
    >>> (x_train, y_train), (x_test, y_test) = load_mnist()  # doctest: +SKIP
    >>> x_train.shape, x_test.shape  # doctest: +SKIP
    ((60000, 1, 28, 28), (10000, 1, 28, 28))
    """
    validate_params(
        "load_mnist",
        {"download": download, "verbose": verbose},
        {"download": [Boolean()], "verbose": VERBOSE},
    )
    folder = resolve_cache_dir(cache_dir, "mnist")
    verify = base_url == MNIST_URL
    for name, md5 in _FILES.values():
        fetch(
            base_url.rstrip("/") + "/" + name,
            folder / name,
            download=download,
            md5=md5 if verify else None,
            verbose=verbose,
        )
    train = _split(folder, _FILES["train_images"][0], _FILES["train_labels"][0])
    test = _split(folder, _FILES["test_images"][0], _FILES["test_labels"][0])
    return train, test
