"""Training and validation data of the adversarial trainers: arrays, or any iterable of
``(x, y)`` batches (a DataLoader), checked batch by batch and never materialised."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from bastion._tensor import to_tensor
from bastion._validation import check_labels, check_x
from bastion.exceptions import InputError

__all__ = ["TrainingData"]


class TrainingData:
    """Training or validation data: arrays (shuffled per epoch from a seed) or an iterable of
    ``(x, y)`` batches, re-iterated each epoch and never materialised."""

    def __init__(self, trainer: Any, x: Any, y: Any, what: str) -> None:
        est = trainer.estimator
        self.trainer, self.what = trainer, what
        self.shape, self.nb_classes = tuple(est.input_shape), int(est.nb_classes)
        self.clip, self.dtype, self.device = est.clip_values, est.dtype, est.device
        self.loader: Iterable[Any] | None = None
        if y is None:
            if isinstance(x, (torch.Tensor, str, bytes)) or not isinstance(x, Iterable):
                raise InputError(
                    f"{what}: give arrays x and y, or an iterable of (x, y) batches (a "
                    f"DataLoader); got {type(x).__name__} without labels."
                )
            self.loader = x
            return
        self.x, _ = to_tensor(x, dtype=self.dtype)
        check_x(self.x, input_shape=self.shape, clip_values=self.clip, name=f"{what} x")
        yt, _ = to_tensor(y, dtype=None)
        self.y = check_labels(yt, n=self.x.shape[0], nb_classes=self.nb_classes, name=f"{what} y")

    def __len__(self) -> int:
        if self.loader is None:
            return math.ceil(self.x.shape[0] / self.trainer.batch_size)
        return len(self.loader)  # type: ignore[arg-type]

    @property
    def sized(self) -> bool:
        return self.loader is None or hasattr(self.loader, "__len__")

    def batches(self, order: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of an epoch (arrays in ``order``, or as they come)."""
        if self.loader is None:
            bs, n = self.trainer.batch_size, self.x.shape[0]
            for start in range(0, n, bs):
                idx = order[start : start + bs] if order is not None else slice(start, start + bs)
                yield self.x[idx].to(self.device), self.y[idx].to(self.device)
            return
        for b, item in enumerate(self.loader):
            yield self._check(item, b)

    def _check(self, item: Any, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            got = f"a {type(item).__name__}" + (
                f" of {len(item)} items" if isinstance(item, (tuple, list)) else ""
            )
            raise InputError(
                f"{self.what}: the loader must yield (x, y) pairs; batch {b} is {got}."
            )
        xb, _ = to_tensor(item[0], device=self.device, dtype=self.dtype)
        check_x(
            xb, input_shape=self.shape, clip_values=self.clip, name=f"{self.what} x (batch {b})"
        )
        yb, _ = to_tensor(item[1], device=self.device, dtype=None)
        yb = check_labels(yb, n=xb.shape[0], nb_classes=self.nb_classes, name=f"y (batch {b})")
        return xb, yb
