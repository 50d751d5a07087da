"""Backdoor (trojan) poisoning: BadNets-style triggers planted in a fraction of the training set.

:class:`BackdoorAttack` picks samples of the source classes, stamps the trigger (see
:mod:`~bastion.attacks.poisoning.triggers`) on them and relabels them to the target class
(all-to-one) or to the next class (all-to-all). The :class:`PoisoningAttack` template checks
and converts the data; this module writes only the choice of samples and their relabelling.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._tensor import RandomStateLike, to_tensor
from bastion._validation import (
    NONE,
    RANDOM_STATE,
    Constraint,
    Interval,
    Options,
    Satisfies,
    invalid_parameter,
)
from bastion.attacks.poisoning._base import _pick, _share
from bastion.attacks.poisoning.triggers import TRIGGER, Trigger, _TriggerAttack
from bastion.exceptions import InputError

__all__ = ["BackdoorAttack"]


def _is_class_list(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        return False
    items = list(value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value)
    return (
        len(items) > 0
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items)
        and all(int(v) >= 0 for v in items)
        and len(set(int(v) for v in items)) == len(items)
    )


class BackdoorAttack(_TriggerAttack):
    """BadNets backdoor poisoning: stamp a trigger on some training images and relabel them.

    The model trained on the poisoned set learns to output the target class whenever the
    trigger is present, while behaving normally on clean inputs. The poisoned copies *replace*
    the chosen samples, so ``x_p``, ``y_p`` and ``poison_mask`` stay aligned with the input.

    Threat model: the adversary controls part of the training data (data poisoning, dirty
    label); no access to the model is needed.

    ``poison(x, y)`` takes channel-first images ``(N, C, H, W)`` inside the trigger's
    ``clip_values`` (the trigger clips what it stamps, so images outside that range are
    rejected rather than silently changed) and labels as class indices or one-hot rows.

    Parameters
    ----------
    trigger : Trigger
        :class:`PatchTrigger`, :class:`PixelTrigger`, :class:`BlendTrigger` or
        :class:`SinusoidalTrigger`.
    target : int or "all-to-all"
        All-to-one: the class every triggered input should be classified as, one of the
        classes of ``y`` (below ``nb_classes``, or the largest label + 1 when that is None).
        ``"all-to-all"`` (Gu et al.): a triggered sample of class ``l`` is relabelled
        ``(l + 1) % nb_classes``.
    source : sequence of int or None, default=None
        Classes whose samples are poisoned; ``None`` means every class except the target
        (all-to-one) or every class (all-to-all). Must not contain the target.
    fraction : float, default=0.1
        Fraction of the samples **of each source class** that are poisoned, in ``(0, 1]``:
        ``round(fraction * n_c)`` samples of class ``c``, chosen uniformly at random.
    nb_classes : int or None, default=None
        Number of classes (for all-to-all and label checks); ``None`` infers it from ``y``.
    random_state : None, int or torch.Generator, default=None
        Chooses the poisoned samples and anything random in the trigger (a random patch
        position is drawn per sample).

    Attributes
    ----------
    poison_indices_ : numpy.ndarray of int
        Indices of the poisoned samples after :meth:`poison`.
    nb_classes_ : int
        Number of classes used by the last :meth:`poison`.

    References
    ----------
    T. Gu, B. Dolan-Gavitt, S. Garg. "BadNets: Identifying Vulnerabilities in the Machine
    Learning Model Supply Chain." arXiv:1708.06733, 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
    >>> x = np.zeros((20, 1, 8, 8), dtype=np.float32)
    >>> y = np.arange(20) % 4
    >>> attack = BackdoorAttack(PatchTrigger(size=2), target=3, source=[1], fraction=0.4,
    ...                         random_state=0)
    >>> x_p, y_p, mask = attack.poison(x, y)
    >>> int(mask.sum()), set(y[mask].tolist()), set(y_p[mask].tolist())
    (2, {1}, {3})
    >>> float(x_p[mask][:, 0, 6:, 6:].min()), float(x_p[~mask].max())
    (1.0, 0.0)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "trigger": TRIGGER,
        "target": [Interval(int, 0, None), Options(["all-to-all"])],
        "source": [NONE, Satisfies(_is_class_list, "a non-empty sequence of distinct ints >= 0")],
        "fraction": [Interval(float, 0, 1, closed="right")],
        "nb_classes": [NONE, Interval(int, 2, None)],
        "random_state": RANDOM_STATE,
    }
    _class_parameters = ("target",)

    def __init__(
        self,
        trigger: Trigger,
        *,
        target: int | str,
        source: Sequence[int] | None = None,
        fraction: float = 0.1,
        nb_classes: int | None = None,
        random_state: RandomStateLike = None,
    ) -> None:
        self.trigger = trigger
        self.target = target
        self.source = source
        self.fraction = fraction
        self.nb_classes = nb_classes
        self.random_state = random_state

    def _bounds(self) -> tuple[None, tuple[float, float]]:
        # No model: images of any size, inside the range the trigger clips to.
        return None, self.trigger.clip_values

    def _nb_classes(self, y: torch.Tensor) -> int:
        """``nb_classes``, else the width of one-hot labels, else the largest label + 1."""
        if self.nb_classes is not None:
            return int(self.nb_classes)
        if y.ndim == 2:
            return int(y.shape[1])
        if y.ndim == 1 and y.numel() and y.dtype != torch.bool:
            return max(int(y.max()) + 1, 2)
        return 2  # check_labels reports what is wrong with y

    def _sources(self, k: int) -> list[int]:
        name = type(self).__name__
        all_to_all = self.target == "all-to-all"
        if self.source is None:
            return list(range(k)) if all_to_all else [c for c in range(k) if c != self.target]
        src = [int(c) for c in np.asarray(self.source).tolist()]
        if not all_to_all and int(self.target) in src:
            raise invalid_parameter(
                "source", name, f"classes other than the target {self.target}", self.source
            )
        if max(src) >= k:
            raise invalid_parameter("source", name, f"classes in [0, {k - 1}]", self.source)
        return src

    def target_labels(self, y: Any) -> Any:
        """The label a triggered sample of true class ``y`` should receive (same type as y).

        ``target`` for all-to-one; ``(y + 1) % nb_classes`` for all-to-all.
        """
        self._validate_params()
        yt, kind = to_tensor(y, dtype=None)
        if yt.ndim != 1:
            raise InputError(f"y must be class indices of shape (N,); got {tuple(yt.shape)}.")
        if self.target == "all-to-all":
            k = self.nb_classes or getattr(self, "nb_classes_", None) or self._nb_classes(yt)
            out = (yt.to(torch.int64) + 1) % int(k)
        else:
            out = torch.full_like(yt, int(self.target), dtype=torch.int64)
        return kind.restore(out.to(yt.dtype) if not yt.is_floating_point() else out)

    def _why_nothing(self) -> str:
        sources = self._sources(self.nb_classes_)
        return f"fraction={self.fraction} of the source classes {sources} rounds to zero samples"

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.nb_classes_
        sources = self._sources(k)
        chosen = []
        for c in sources:
            count = _share(y, c, float(self.fraction))
            if count:  # no draw for an empty share: seeds keep their meaning
                chosen.append(_pick(y, c, count, generator))
        # Sorted: a random trigger draws its positions in sample order.
        idx = torch.sort(torch.cat(chosen)).values if chosen else torch.empty(0, dtype=torch.long)
        if self.target == "all-to-all":
            new_labels = (y[idx] + 1) % k
        else:
            new_labels = torch.full_like(idx, int(self.target))
        x_trig = (
            self.trigger._apply_tensor(x[idx.to(x.device)], generator) if idx.numel() else x[:0]
        )
        return idx, x_trig, new_labels
