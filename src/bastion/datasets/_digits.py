"""The 8x8 handwritten digits bundled with scikit-learn, optionally upsampled to 28x28."""

from __future__ import annotations

import numpy as np
import sklearn.datasets
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from bastion._tensor import RandomStateLike
from bastion._validation import RANDOM_STATE, Interval, Options, validate_params

__all__ = ["Split", "load_digits"]

Split = tuple[
    tuple[NDArray[np.float32], NDArray[np.int64]],
    tuple[NDArray[np.float32], NDArray[np.int64]],
]


def _split_seed(random_state: RandomStateLike) -> int:
    """An int seed for scikit-learn, drawn without touching NumPy's global RNG."""
    if isinstance(random_state, torch.Generator):
        return int(
            torch.randint(0, 2**31 - 1, (1,), generator=random_state, device=random_state.device)
        )
    if random_state is None:
        # scikit-learn's None would draw from NumPy's global RNG; OS entropy does not.
        return int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
    return int(random_state)


def load_digits(
    size: int = 28,
    *,
    test_size: float = 0.25,
    random_state: RandomStateLike = 0,
) -> Split:
    """Load scikit-learn's bundled handwritten digits as image batches.

    The 1,797 grey-scale digits (8x8 pixels, values 0 to 16) need no download, which makes them
    the data set of choice for examples and tests. Pixel values are scaled to ``[0, 1]``; with
    ``size=28`` the images are upsampled bilinearly to the MNIST resolution.

    Parameters
    ----------
    size : {8, 28}, default=28
        Side length of the returned images.
    test_size : float, default=0.25
        Fraction of the samples put in the test split, in ``(0, 1)``.
    random_state : None, int or torch.Generator, default=0
        Seed of the stratified train/test split. ``None`` gives a different split at every call.

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        Images as float32 arrays of shape ``(N, 1, size, size)`` with values in ``[0, 1]`` and
        labels as int64 arrays of shape ``(N,)`` with values in ``0..9``. Both splits hold every
        class in the same proportion (stratified split).

    Raises
    ------
    InvalidParameterError
        If ``size`` is not 8 or 28, ``test_size`` is not in ``(0, 1)`` or ``random_state`` is
        not ``None``, a non-negative int or a ``torch.Generator``.

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> (x_train, y_train), (x_test, y_test) = load_digits(size=8)
    >>> x_train.shape, x_train.dtype, y_train.dtype
    ((1347, 1, 8, 8), dtype('float32'), dtype('int64'))
    >>> x_test.shape
    (450, 1, 8, 8)
    """
    validate_params(
        "load_digits",
        {"size": size, "test_size": test_size, "random_state": random_state},
        {
            "size": [Options((8, 28))],
            "test_size": [Interval(float, 0, 1, closed="neither")],
            "random_state": RANDOM_STATE,
        },
    )
    digits = sklearn.datasets.load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    if size != 8:
        upsampled = F.interpolate(
            torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
        )
        x = upsampled.clamp_(0.0, 1.0).numpy()
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x,
        y,
        test_size=float(test_size),
        random_state=_split_seed(random_state),
        stratify=y,
    )
    return (
        (np.ascontiguousarray(x_train), y_train),
        (np.ascontiguousarray(x_test), y_test),
    )
