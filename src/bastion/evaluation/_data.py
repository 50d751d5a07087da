"""Load a user's evaluation data: NumPy files, a folder of images, a CSV table."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bastion._validation import (
    NONE,
    RANDOM_STATE,
    Boolean,
    Interval,
    validate_params,
)
from bastion.datasets import load_image_folder, load_npy, load_npz
from bastion.datasets._files import IMAGE_EXTENSIONS
from bastion.evaluation._models import _flag
from bastion.exceptions import InputError

__all__ = [
    "DATA_FORMATS",
    "Dataset",
    "check_compatibility",
    "check_labels",
    "load_data",
    "stratified_indices",
]

StrPath = str | os.PathLike[str]

#: What :func:`load_data` reads.
DATA_FORMATS: dict[str, str] = {
    "npz": "a .npz archive (numpy.savez) with arrays x and y (or named with x_key, y_key)",
    "npy": "a .npy array of samples (numpy.save), labels in a second .npy (y_path)",
    "images": "a folder with one sub-folder of images per class (.png, .jpg, .jpeg, .bmp)",
    "csv": "a CSV table of numbers, one sample per row, labels in one column",
}
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_LABEL_NAMES = ("label", "labels", "y", "target", "class")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Evaluation data as :func:`load_data` returns it; unpacks as ``x, y = dataset``.

    Attributes
    ----------
    x : numpy.ndarray
        float32 samples ``(N, *sample_shape)``; images ``(N, C, H, W)``.
    y : numpy.ndarray or None
        int64 class indices ``(N,)``, or None when the file has no labels.
    source : str
        The file or folder read.
    format : str
        A key of :data:`DATA_FORMATS`.
    class_names : tuple of str or None
        The name of each class index, when the data names them (image sub-folders, text
        labels of a CSV).
    indices : numpy.ndarray or None
        The rows of the file kept by ``limit`` (in file order), None when all were kept.
    """

    x: np.ndarray
    y: np.ndarray | None
    source: str
    format: str
    class_names: tuple[str, ...] | None = None
    indices: np.ndarray | None = None

    def __iter__(self) -> Iterator[Any]:
        yield self.x
        yield self.y

    def __len__(self) -> int:
        return int(self.x.shape[0])


# ----------------------------------------------------------------------------- checks


def check_labels(
    y: np.ndarray, nb_classes: int, *, class_names: Sequence[str] | None = None
) -> None:
    """Raise an :class:`InputError` naming the first label outside ``0 .. nb_classes - 1``.

    Parameters
    ----------
    y : numpy.ndarray
        Class indices.
    nb_classes : int
        The model's number of classes.
    class_names : sequence of str, optional
        Names of the data's classes, quoted in the message.

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.evaluation import check_labels
    >>> check_labels(np.array([0, 3, 1]), 3)
    Traceback (most recent call last):
    ...
    bastion.exceptions.InputError: Label 3 (sample 1) is outside the model's 3 classes (0 .. 2).
    """
    y = np.asarray(y)
    bad = np.flatnonzero((y < 0) | (y >= nb_classes))
    if bad.size == 0:
        return
    i = int(bad[0])
    label = int(y[i])
    named = ""
    if class_names is not None and 0 <= label < len(class_names):
        named = f" (class {class_names[label]!r})"
    more = f"; {bad.size} samples in all" if bad.size > 1 else ""
    raise InputError(
        f"Label {label}{named} (sample {i}) is outside the model's {nb_classes} classes "
        f"(0 .. {nb_classes - 1}){more}."
    )


def check_compatibility(estimator: Any, data: Dataset | Any, y: Any = None) -> None:
    """Check that ``estimator`` can be evaluated on ``data``: sample shape and labels.

    Parameters
    ----------
    estimator : Classifier
        With ``input_shape`` and ``nb_classes``.
    data : Dataset or array-like
        A :class:`Dataset`, or samples ``x`` (then ``y`` gives the labels).
    y : array-like, optional
        Labels, when ``data`` is an array.

    Raises
    ------
    InputError
        When the samples' shape is not the estimator's ``input_shape`` or a label is outside
        its classes; the message says which.
    """
    class_names = None
    if isinstance(data, Dataset):
        x, y, class_names = data.x, data.y, data.class_names
    else:
        x = data
    shape = tuple(np.shape(x)[1:])
    if shape != tuple(estimator.input_shape):
        raise InputError(
            f"The data's samples have shape {shape} but the model takes "
            f"{tuple(estimator.input_shape)}; check {_flag('input_shape')} and the data."
        )
    if y is not None:
        check_labels(np.asarray(y), int(estimator.nb_classes), class_names=class_names)


# ----------------------------------------------------------------------------- readers


def _as_samples(x: np.ndarray, source: str) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.issubdtype(
        x.dtype, np.complexfloating
    ):
        raise InputError(f"The samples in {source} are of dtype {x.dtype}; expected numbers.")
    if x.ndim < 2:
        raise InputError(
            f"The samples in {source} have shape {x.shape}; expected (N, *sample_shape)."
        )
    out = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        raise InputError(
            f"The samples in {source} hold NaN or infinite values ({int(bad.sum())} samples, "
            f"the first one is sample {int(np.flatnonzero(bad)[0])})."
        )
    return out


def _as_labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1 and np.all((y == 0) | (y == 1)) and np.all(y.sum(1) == 1):
        y = y.argmax(axis=1)  # one-hot rows
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(
            f"The labels in {source} have shape {y.shape}; expected ({n},) class indices."
        )
    if not np.issubdtype(y.dtype, np.number) or y.dtype == bool:
        raise InputError(
            f"The labels in {source} are of dtype {y.dtype}; expected integer class indices."
        )
    if np.issubdtype(y.dtype, np.floating) and not (
        np.all(np.isfinite(y)) and np.all(y == np.round(y))
    ):
        raise InputError(f"The labels in {source} are not whole numbers (class indices).")
    return y.astype(np.int64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(
    path: Path, label_column: str | int | None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    source = repr(str(path))
    with path.open(newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        rows = [[c.strip() for c in row] for row in csv.reader(f, dialect) if any(row)]
    if not rows:
        raise InputError(f"The CSV file {source} is empty.")
    # A header has more text cells than a data row (whose only text, if any, is its label).
    texts = [sum(not _is_number(c) for c in row) for row in rows[:2]]
    header: list[str] | None = None
    if texts[0] > (texts[1] if len(texts) > 1 else 1):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise InputError(f"The CSV file {source} has a header but no rows.")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(
                f"Row {i + 1} of {source} has {len(row)} columns; the first row has {width}."
            )
    if isinstance(label_column, str):
        if header is None or label_column not in header:
            raise InputError(
                f"{source} has no column named {label_column!r} ({_flag('label_column')}); "
                f"its columns: {header if header is not None else 'no header'}."
            )
        col = header.index(label_column)
    elif isinstance(label_column, int):
        if not -width <= label_column < width:
            raise InputError(
                f"{_flag('label_column')} {label_column} is outside the {width} columns of "
                f"{source}."
            )
        col = label_column % width
    else:
        named = [i for i, h in enumerate(header or []) if h.lower() in _LABEL_NAMES]
        col = named[0] if named else width - 1
    if width < 2:
        raise InputError(f"{source} has one column; expected features and a label column.")
    features = [[c for j, c in enumerate(row) if j != col] for row in rows]
    try:
        x = np.asarray(features, dtype=np.float64)
    except ValueError as err:
        for i, row in enumerate(features):
            for c in row:
                if not _is_number(c):
                    raise InputError(
                        f"{source}, data row {i + 1}: the feature {c!r} is not a number; "
                        f"features must be numeric (is {_flag('label_column')} right?)."
                    ) from err
        raise InputError(f"{source} holds non-numeric features.") from err
    labels = [row[col] for row in rows]
    names: tuple[str, ...] | None = None
    if all(_is_number(c) for c in labels):
        y = np.asarray([float(c) for c in labels])
    else:  # text labels: classes in sorted order
        names = tuple(sorted(set(labels)))
        index = {name: i for i, name in enumerate(names)}
        y = np.asarray([index[c] for c in labels], dtype=np.int64)
    return x, y, names


def _grayscale(folder: Path) -> bool:
    """Whether every image of the folder is grey-scale (then one channel is kept)."""
    for class_dir in folder.iterdir():
        if not class_dir.is_dir() or class_dir.name.startswith("."):
            continue
        for f in class_dir.iterdir():
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                try:
                    with Image.open(f) as img:
                        if img.mode not in _GREY_MODES:
                            return False
                except (OSError, UnidentifiedImageError) as err:
                    raise InputError(f"Could not read the image {str(f)!r}: {err}") from err
    return True


def _seed(random_state: Any) -> int | None:
    if isinstance(random_state, torch.Generator):
        return int(torch.randint(0, 2**31 - 1, (1,), generator=random_state))
    return None if random_state is None else int(random_state)


def stratified_indices(
    y: np.ndarray | None, n: int, limit: int, random_state: Any = 0
) -> np.ndarray:
    """``limit`` row indices (sorted) of ``n``, drawn per class in proportion to its size.

    Each class gets ``limit * n_c / n`` rows rounded down, the rows left over going to the
    classes with the largest remainders; rows within a class are drawn at random. Without
    labels, a plain random subset.
    """
    rng = np.random.default_rng(_seed(random_state))
    if y is None:
        return np.sort(rng.choice(n, size=limit, replace=False))
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * limit / n
    take = np.floor(quota).astype(np.int64)
    left = limit - int(take.sum())
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:left]] += 1
    picked = [
        rng.choice(np.flatnonzero(y == c), size=int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
        if k > 0
    ]
    return np.sort(np.concatenate(picked))


def load_data(
    path: StrPath,
    *,
    x_key: str = "x",
    y_key: str | None = "y",
    y_path: StrPath | None = None,
    label_column: str | int | None = None,
    size: int | None = None,
    grayscale: bool | None = None,
    limit: int | None = None,
    random_state: Any = 0,
    nb_classes: int | None = None,
) -> Dataset:
    """Load evaluation data from a file or folder.

    ==========  =========================================================================
    ``.npz``    arrays ``x`` and ``y`` (others with ``x_key``, ``y_key``); no pickles
    ``.npy``    the samples; labels from a second ``.npy`` given as ``y_path``
    folder      one sub-folder of images per class (``root/<class>/<image>.png``);
                classes in sorted name order; grey-scale images stay one channel, others
                become RGB; values scaled to ``[0, 1]``, shape ``(N, C, H, W)``
    ``.csv``    one sample per row, numeric features; the label column is
                ``label_column``, else one named label/y/target/class, else the last;
                a header row is detected; text labels become indices in sorted order
    ==========  =========================================================================

    Samples come back as float32, as stored otherwise (NumPy files are not rescaled: integer
    images in [0, 255] keep that range), labels as int64 class indices (one-hot rows are
    turned into indices).

    Parameters
    ----------
    path : str or os.PathLike
        The file or folder.
    x_key, y_key : str
        Array names in a ``.npz`` archive (``y_key=None``: no labels).
    y_path : str or os.PathLike, optional
        The labels of a ``.npy`` file of samples.
    label_column : str or int, optional
        The label column of a CSV file, by header name or index.
    size : int, optional
        Resize images to ``size x size`` (otherwise they must share one size).
    grayscale : bool, optional
        Force one (True) or three (False) channels for images; default: one channel when
        every image is grey-scale.
    limit : int, optional
        Keep at most ``limit`` samples, drawn per class in proportion to the class sizes
        (stratified), seeded by ``random_state``; the rows kept stay in file order.
    random_state : None, int or torch.Generator, default 0
        Seeds the subsampling.
    nb_classes : int, optional
        The model's number of classes: every label must be below it.

    Returns
    -------
    Dataset
        Unpacks as ``x, y``.

    Raises
    ------
    InputError
        A missing path, an unknown format, unreadable or non-numeric contents, NaN samples,
        labels that are not class indices or are outside ``nb_classes``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from bastion.evaluation import load_data
    >>> path = os.path.join(tempfile.mkdtemp(), "test.npz")
    >>> np.savez(path, images=np.zeros((6, 1, 4, 4)), labels=np.array([0, 0, 0, 0, 1, 1]))
    >>> data = load_data(path, x_key="images", y_key="labels", limit=3)
    >>> x, y = data
    >>> x.shape, x.dtype, y.tolist(), data.indices.tolist()
    ((3, 1, 4, 4), dtype('float32'), [0, 0, 1], [2, 3, 4])
    """
    validate_params(
        "load_data",
        {
            "limit": limit,
            "random_state": random_state,
            "nb_classes": nb_classes,
            "size": size,
            "grayscale": grayscale,
        },
        {
            "limit": [NONE, Interval(int, 1, None)],
            "random_state": RANDOM_STATE,
            "nb_classes": [NONE, Interval(int, 2, None)],
            "size": [NONE, Interval(int, 1, None)],
            "grayscale": [NONE, Boolean()],
        },
    )
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"The data path {str(p)!r} does not exist.")
    source = repr(str(p))
    suffix = p.suffix.lower()
    names: tuple[str, ...] | None = None
    x_raw: Any
    y_raw: Any
    if p.is_dir():
        fmt = "images"
        gray = _grayscale(p) if grayscale is None else grayscale
        x_raw, y_raw, class_names = load_image_folder(p, size=size, grayscale=gray)
        names = tuple(class_names)
    elif suffix == ".npz":
        fmt = "npz"
        x_raw, y_raw = load_npz(p, x_key=x_key, y_key=y_key)
        if y_raw is None and y_key not in (None, "y"):  # a misspelt key is no unlabelled file
            with np.load(p, allow_pickle=False) as archive:
                keys = list(archive.files)
            raise InputError(
                f"The archive {source} has no array named {y_key!r} ({_flag('y_key')}). "
                f"Available keys: {keys}."
            )
    elif suffix == ".npy":
        fmt = "npy"
        x_raw, y_raw = load_npy(p, y_path)
    elif suffix in (".csv", ".tsv", ".txt"):
        fmt = "csv"
        x_raw, y_raw, names = _read_csv(p, label_column)
    else:
        raise InputError(
            f"{source} is of no known data format; bastion reads .npz, .npy, .csv files and "
            "folders of images (one sub-folder per class)."
        )
    x = _as_samples(np.asarray(x_raw), source)
    y = None if y_raw is None else _as_labels(np.asarray(y_raw), len(x), source)
    if len(x) == 0:
        raise InputError(f"{source} holds no samples.")
    indices = None
    if limit is not None and limit < len(x):
        indices = stratified_indices(y, len(x), limit, random_state)
        x = x[indices]
        y = None if y is None else y[indices]
    if y is not None and nb_classes is not None:
        check_labels(y, nb_classes, class_names=names)
    return Dataset(x=x, y=y, source=str(p), format=fmt, class_names=names, indices=indices)
