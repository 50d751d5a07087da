"""Loaders for data a user already has on disk: NumPy files and folders of images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from bastion._validation import NONE, Boolean, Interval, validate_params
from bastion.exceptions import InputError

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "load_npy", "load_npz"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

StrPath = str | os.PathLike[str]


def _existing_file(path: StrPath, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"The {what} file {str(p)!r} does not exist.")
    return p


def _check_same_length(x: np.ndarray, y: np.ndarray | None) -> None:
    if x.ndim == 0:
        raise InputError(f"x must be an array of samples; got a scalar of dtype {x.dtype}.")
    if y is not None and (y.ndim == 0 or len(y) != len(x)):
        n_y = "a scalar" if y.ndim == 0 else f"{len(y)} labels"
        raise InputError(f"y holds {n_y} but x has {len(x)} samples.")


def load_npz(
    path: StrPath, *, x_key: str = "x", y_key: str | None = "y"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load samples (and labels) from a ``.npz`` archive written by :func:`numpy.savez`.

    Arrays are returned as stored (no dtype conversion or scaling). Pickled object arrays are
    refused, since unpickling can run arbitrary code.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    x_key : str, default="x"
        Name of the array holding the samples.
    y_key : str or None, default="y"
        Name of the array holding the labels. A missing labels array gives ``y=None``;
        ``None`` skips the labels.

    Returns
    -------
    x : numpy.ndarray
        The samples, first axis indexing them.
    y : numpy.ndarray or None
        The labels, or ``None`` if the archive has no array named ``y_key``.

    Raises
    ------
    InputError
        If the file does not exist or is not an ``.npz`` archive, if it has no array named
        ``x_key`` (the message lists the names it has), or if ``x`` and ``y`` differ in length.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from bastion.datasets import load_npz
    >>> path = os.path.join(tempfile.mkdtemp(), "data.npz")
    >>> np.savez(path, x=np.zeros((3, 2), np.float32), y=np.array([0, 1, 1]))
    >>> x, y = load_npz(path)
    >>> x.shape, y.tolist()
    ((3, 2), [0, 1, 1])
    """
    p = _existing_file(path, ".npz")
    try:
        archive = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"Could not read {str(p)!r} as a .npz archive: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(
            f"{str(p)!r} holds a single array, not a .npz archive; use load_npy for .npy files."
        )
    with archive:
        keys = list(archive.files)
        if x_key not in keys:
            raise InputError(
                f"The archive {str(p)!r} has no array named {x_key!r}. Available keys: {keys}. "
                "Pass x_key= (and y_key=) to choose the arrays."
            )
        x = archive[x_key]
        y = archive[y_key] if y_key is not None and y_key in keys else None
    _check_same_length(x, y)
    return x, y


def _load_single_npy(path: StrPath, what: str) -> np.ndarray:
    p = _existing_file(path, what)
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"Could not read {str(p)!r} as a .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise InputError(
            f"{str(p)!r} is a .npz archive, not a single array; use load_npz for .npz files."
        )
    return arr


def load_npy(
    x_path: StrPath, y_path: StrPath | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load samples (and labels) from ``.npy`` files written by :func:`numpy.save`.

    Arrays are returned as stored; pickled object arrays are refused.

    Parameters
    ----------
    x_path : str or os.PathLike
        The ``.npy`` file holding the samples.
    y_path : str or os.PathLike, optional
        The ``.npy`` file holding the labels.

    Returns
    -------
    x : numpy.ndarray
        The samples.
    y : numpy.ndarray or None
        The labels, or ``None`` when ``y_path`` is not given.

    Raises
    ------
    InputError
        If a file does not exist or is not a ``.npy`` array, or if ``x`` and ``y`` differ in
        length.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from bastion.datasets import load_npy
    >>> folder = tempfile.mkdtemp()
    >>> np.save(os.path.join(folder, "x.npy"), np.ones((4, 3), np.float32))
    >>> x, y = load_npy(os.path.join(folder, "x.npy"))
    >>> x.shape, y is None
    ((4, 3), True)
    """
    x = _load_single_npy(x_path, "samples (.npy)")
    y = None if y_path is None else _load_single_npy(y_path, "labels (.npy)")
    _check_same_length(x, y)
    return x, y


def _read_image(path: Path, mode: str, size: int | None) -> NDArray[np.float32]:
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"Could not read the image {str(path)!r}: {exc}") from exc
    return arr[None, :, :] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))


def load_image_folder(
    root: StrPath, *, size: int | None = None, grayscale: bool = False
) -> tuple[NDArray[np.float32], NDArray[np.int64], list[str]]:
    """Load a folder of images laid out one sub-folder per class.

    The layout is the one of torchvision's ``ImageFolder``::

        root/cat/001.png
        root/cat/002.jpg
        root/dog/001.png

    Classes are the sub-folders sorted by name (label ``i`` is ``class_names[i]``); images within
    a class are taken in file-name order. Files with the extensions ``.png``, ``.jpg``,
    ``.jpeg`` and ``.bmp`` (any case) are read; other files and hidden folders are ignored.

    Parameters
    ----------
    root : str or os.PathLike
        The folder holding one sub-folder per class.
    size : int, optional
        Resize every image (bilinearly) to ``size x size``. When ``None``, all images must
        already have the same size.
    grayscale : bool, default=False
        Convert images to one grey-scale channel; otherwise to three RGB channels.

    Returns
    -------
    x : numpy.ndarray
        float32 array of shape ``(N, C, H, W)`` with values in ``[0, 1]``, ``C`` being 1 or 3.
    y : numpy.ndarray
        int64 class indices of shape ``(N,)``.
    class_names : list of str
        The class folder names, in label order.

    Raises
    ------
    InvalidParameterError
        If ``size`` is not ``None`` or a positive int, or ``grayscale`` is not a bool.
    InputError
        If ``root`` is not a folder, has no class folders, a class folder has no images, an
        image cannot be read, or images differ in size while ``size`` is ``None``.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from bastion.datasets import load_image_folder
    >>> root = tempfile.mkdtemp()
    >>> for name in ("cat", "dog"):
    ...     os.makedirs(os.path.join(root, name))
    ...     Image.new("RGB", (5, 4)).save(os.path.join(root, name, "0.png"))
    >>> x, y, class_names = load_image_folder(root)
    >>> x.shape, y.tolist(), class_names
    ((2, 3, 4, 5), [0, 1], ['cat', 'dog'])
    """
    validate_params(
        "load_image_folder",
        {"size": size, "grayscale": grayscale},
        {
            "size": [NONE, Interval(int, 1, None)],
            "grayscale": [Boolean()],
        },
    )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise InputError(f"The image folder {str(folder)!r} does not exist or is not a folder.")
    class_dirs = sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )
    if not class_dirs:
        raise InputError(
            f"The image folder {str(folder)!r} has no class sub-folders; expected the layout "
            "root/<class>/<image>.png."
        )
    mode = "L" if grayscale else "RGB"
    side = None if size is None else int(size)
    images: list[NDArray[np.float32]] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise InputError(
                f"The class folder {str(class_dir)!r} holds no image files "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)})."
            )
        for f in files:
            img = _read_image(f, mode, side)
            if images and img.shape != images[0].shape:
                raise InputError(
                    f"The images differ in size: {str(f)!r} is {img.shape[2]}x{img.shape[1]} "
                    f"(width x height) but the first image is "
                    f"{images[0].shape[2]}x{images[0].shape[1]}. Pass size= to resize them."
                )
            images.append(img)
            labels.append(label)
    x = np.stack(images).astype(np.float32, copy=False)
    return x, np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs]
