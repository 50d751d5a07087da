"""Backdoor (trojan) poisoning: BadNets-style triggers planted in a fraction of the training set.

* Triggers (:class:`PixelTrigger`, :class:`PatchTrigger`, :class:`BlendTrigger`,
  :class:`SinusoidalTrigger`) stamp a pattern on a batch of channel-first images
  ``(N, C, H, W)`` in one batched torch operation and clip the result to ``clip_values``.
* :class:`BackdoorAttack` picks samples of the source classes, stamps the trigger on them and
  relabels them to the target class (all-to-one) or to the next class (all-to-all).
* :class:`PoisoningAttack` is the small template both rely on: sklearn-style parameters
  (``__init__`` only stores them), ``get_params`` / ``set_params`` / ``repr`` read from the
  signature, declarative validation at the start of work.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    NONE,
    Constraint,
    Interval,
    Options,
    RandomState,
    Satisfies,
    check_labels,
    invalid_parameter,
)
from bastion.attacks.poisoning._base import (
    PoisoningAttack,
    _image_batch,
)
from bastion.attacks.poisoning.triggers import (
    Trigger,
)
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


class BackdoorAttack(PoisoningAttack):
    """BadNets backdoor poisoning: stamp a trigger on some training images and relabel them.

    The model trained on the poisoned set learns to output the target class whenever the
    trigger is present, while behaving normally on clean inputs. The poisoned copies *replace*
    the chosen samples, so ``x_p``, ``y_p`` and ``poison_mask`` stay aligned with the input.

    Threat model: the adversary controls part of the training data (data poisoning, dirty
    label); no access to the model is needed.

    Parameters
    ----------
    trigger : Trigger
        :class:`PatchTrigger`, :class:`PixelTrigger`, :class:`BlendTrigger` or
        :class:`SinusoidalTrigger`.
    target : int or "all-to-all"
        All-to-one: the class every triggered input should be classified as. ``"all-to-all"``
        (Gu et al.): a triggered sample of class ``l`` is relabelled ``(l + 1) % nb_classes``.
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
        "trigger": [Satisfies(lambda t: isinstance(t, Trigger), "a Trigger instance")],
        "target": [Interval(int, 0, None), Options(["all-to-all"])],
        "source": [NONE, Satisfies(_is_class_list, "a non-empty sequence of distinct ints >= 0")],
        "fraction": [Interval(float, 0, 1, closed="right")],
        "nb_classes": [NONE, Interval(int, 2, None)],
        "random_state": [RandomState()],
    }

    #: How the conformance suite builds it (see ``bastion.testing``): on the problem's trigger.
    _conformance: ClassVar[dict[str, Any]] = {
        "factory": lambda cls, p, **kw: cls(p.trigger, **kw),
        "params": {"target": 0, "fraction": 0.2},
        "note": "dirty-label: needs no model; poisons a fifth of every class but the target",
        "stamps_trigger": True,
    }

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

    def _validate(self) -> None:
        super()._validate()
        self.trigger._validate()

    def _classes(self, labels: torch.Tensor) -> int:
        if self.nb_classes is not None:
            return int(self.nb_classes)
        k = int(labels.max()) + 1 if labels.numel() else 2
        if isinstance(self.target, numbers.Integral):
            k = max(k, int(self.target) + 1)
        return max(k, 2)

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
        self._validate()
        yt, kind = to_tensor(y, dtype=None)
        if yt.ndim != 1:
            raise InputError(f"y must be class indices of shape (N,); got {tuple(yt.shape)}.")
        if self.target == "all-to-all":
            k = self.nb_classes or getattr(self, "nb_classes_", None) or self._classes(yt)
            out = (yt.to(torch.int64) + 1) % int(k)
        else:
            out = torch.full_like(yt, int(self.target), dtype=torch.int64)
        return kind.restore(out.to(yt.dtype) if not yt.is_floating_point() else out)

    def apply_trigger(self, x: Any) -> Any:
        """Stamp the trigger on every sample of ``x`` (e.g. test data, to measure the attack
        success rate). Same type out as in."""
        self._validate()
        return self.trigger.apply(x, random_state=self.random_state)

    def poison(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
        """Poison a training set.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Training images.
        y : array-like or torch.Tensor
            Class indices ``(N,)`` or one-hot ``(N, nb_classes)``.

        Returns
        -------
        x_p : same type as ``x``
            The training images with the chosen samples triggered (aligned with ``x``).
        y_p : same type and format as ``y``
            The labels with the chosen samples relabelled.
        poison_mask : bool array (NumPy for NumPy ``x``, a tensor on x's device otherwise)
            True where a sample was poisoned.

        Raises
        ------
        InvalidParameterError
            A parameter is out of range (``source`` containing the target, a class beyond
            ``nb_classes`` ...).
        InputError
            ``x`` is not a batch of finite images or ``y`` does not match it.
        """
        self._validate()
        name = type(self).__name__
        xt, xkind = to_tensor(x, dtype=None)
        _image_batch(xt, name)
        yt, _ = to_tensor(y, dtype=None)
        onehot = yt.ndim == 2
        y_in_dtype = yt.dtype
        labels_raw = yt.argmax(dim=1) if onehot else yt
        if labels_raw.ndim != 1:
            raise InputError(
                f"y must be class indices (N,) or one-hot (N, K); got {tuple(yt.shape)}."
            )
        if labels_raw.is_floating_point() and not bool((labels_raw == labels_raw.round()).all()):
            raise InputError("y must hold integer class indices.")
        k = yt.shape[1] if onehot else self._classes(labels_raw.to(torch.int64).cpu())
        if isinstance(self.target, numbers.Integral) and int(self.target) >= k:
            raise invalid_parameter("target", name, f"a class in [0, {k - 1}]", self.target)
        labels = check_labels(labels_raw.cpu(), n=xt.shape[0], nb_classes=k)
        sources = self._sources(k)

        gen = resolve_random_state(self.random_state, "cpu")
        chosen = []
        for c in sources:
            members = torch.nonzero(labels == c).flatten()
            count = math.floor(self.fraction * members.numel() + 0.5)
            if count:
                chosen.append(members[torch.randperm(members.numel(), generator=gen)[:count]])
        idx = torch.sort(torch.cat(chosen)).values if chosen else torch.empty(0, dtype=torch.long)
        if idx.numel() == 0:
            warnings.warn(
                f"{name}: no sample was poisoned (fraction={self.fraction} of source classes "
                f"{sources} rounds to zero samples).",
                stacklevel=2,
            )

        new_labels = labels.clone()
        if self.target == "all-to-all":
            new_labels[idx] = (labels[idx] + 1) % k
        else:
            new_labels[idx] = int(self.target)
        x_p = xt.clone()
        if idx.numel():
            dev_idx = idx.to(xt.device)
            x_p[dev_idx] = self.trigger._apply_tensor(xt[dev_idx], gen)
        mask = torch.zeros(xt.shape[0], dtype=torch.bool)
        mask[idx] = True
        self.poison_indices_ = idx.numpy()
        self.nb_classes_ = k

        y_out = F.one_hot(new_labels, k).to(y_in_dtype) if onehot else new_labels.to(y_in_dtype)
        if isinstance(y, torch.Tensor):
            y_p: Any = y_out.to(y.device)
        else:
            y_p = y_out.numpy().astype(np.asarray(y).dtype, copy=False)
        mask_out = mask.to(xkind.device) if xkind.is_tensor else mask.numpy()
        return xkind.restore(x_p), y_p, mask_out
