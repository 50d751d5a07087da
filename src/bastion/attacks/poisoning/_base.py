"""The ``poison`` template every poisoning attack is written on, and the pieces the attacks and
triggers share: the checks of a batch of samples, the layer and target-image parameters of the
feature-space attacks, and the choice of poisoned samples."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from bastion._params import Parametrized
from bastion._tensor import ArrayKind, resolve_random_state, to_tensor
from bastion._validation import (
    Constraint,
    Satisfies,
    check_labels,
    check_x,
    invalid_parameter,
)
from bastion.estimators.base import SupportsActivations, SupportsPredict, require_capabilities
from bastion.exceptions import InputError

__all__ = ["PoisoningAttack"]


def _is_clip_values(value: Any) -> bool:
    lo, hi = (float(v) for v in value)
    return math.isfinite(lo) and math.isfinite(hi) and lo < hi


_CLIP: list[Constraint] = [
    Satisfies(_is_clip_values, "a pair (low, high) of finite floats with low < high")
]


def _is_array(value: Any) -> bool:
    if isinstance(value, (str, bytes, numbers.Number)) or value is None:
        return False
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return arr.ndim >= 1 and arr.size > 0 and bool(np.all(np.isfinite(arr.astype(np.float64))))


#: How each sample must look, by the number of its dimensions (``_sample_ndim``).
_SAMPLE_SHAPES = {3: "channel-first images of shape (N, C, H, W)", 1: "samples of shape (N, d)"}


def _to_tensor(value: Any, name: str, owner: str) -> tuple[torch.Tensor, ArrayKind]:
    """``to_tensor`` keeping the dtype; data NumPy cannot read as numbers is an InputError."""
    try:
        return to_tensor(value, dtype=None)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{owner}: {name} must be a numeric array ({err}).") from None


def _check_samples(
    x: torch.Tensor,
    owner: str,
    *,
    sample_ndim: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    clip_values: tuple[float, float] | None = None,
) -> None:
    """A non-empty batch of finite floats, of ``sample_ndim`` dimensions per sample and of
    ``input_shape`` where given, inside ``clip_values`` where given; else an InputError that
    names ``owner``."""
    if sample_ndim is not None and x.ndim != sample_ndim + 1:
        raise InputError(f"{owner} works on {_SAMPLE_SHAPES[sample_ndim]}; got {tuple(x.shape)}.")
    try:
        check_x(x, input_shape=input_shape, clip_values=clip_values)
    except InputError as err:
        raise InputError(f"{owner}: {err}") from None


def _pick(labels: torch.Tensor, cls: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` indices of class ``cls`` drawn uniformly without replacement (sorted, CPU)."""
    members = torch.nonzero(labels == cls).flatten()
    idx = members[torch.randperm(members.numel(), generator=gen)[:count]]
    return torch.sort(idx).values


def _share(labels: torch.Tensor, cls: int, fraction: float) -> int:
    """``round(fraction * n_cls)``, halves rounded up: the number of class ``cls`` poisoned."""
    return math.floor(fraction * int((labels == cls).sum()) + 0.5)


def _resolve_layer(estimator: SupportsActivations, layer: str | int, owner: str) -> str:
    """The name of the feature ``layer`` (a name of ``estimator.layer_names`` or an index)."""
    names = list(estimator.layer_names)
    if isinstance(layer, int):
        if not -len(names) <= layer < len(names):
            raise invalid_parameter(
                "layer", owner, f"an index in [-{len(names)}, {len(names) - 1}]", layer
            )
        return names[layer]
    if layer not in names:
        raise invalid_parameter("layer", owner, f"one of {names}", layer)
    return layer


def _target_images(
    value: Any, estimator: SupportsPredict, owner: str, *, single: bool
) -> torch.Tensor:
    """The ``target`` image(s) of a targeted poison, ``(T, *input_shape)`` on the estimator's
    device and dtype (``T == 1`` when ``single``), inside its ``clip_values``."""
    t, _ = to_tensor(value, device=estimator.device, dtype=estimator.dtype)
    shape = tuple(estimator.input_shape)
    if tuple(t.shape) == shape:
        t = t.unsqueeze(0)
    if tuple(t.shape[1:]) != shape or (single and t.shape[0] != 1):
        allowed = f"one image of shape {shape} or {(1, *shape)}"
        if not single:
            allowed = f"images of shape {shape} or (T, *{shape})"
        raise invalid_parameter("target", owner, allowed, f"an array of shape {tuple(t.shape)}")
    clip = estimator.clip_values
    if clip is not None and (float(t.min()) < clip[0] - 1e-6 or float(t.max()) > clip[1] + 1e-6):
        raise invalid_parameter(
            "target", owner, f"inside the estimator's clip_values {tuple(clip)}", "values outside"
        )
    return t


class PoisoningAttack(Parametrized):
    """Template of data-poisoning attacks: ``poison(x, y) -> (x_p, y_p, poison_mask)``.

    ``__init__`` only stores the parameters. :meth:`poison` owns everything an attack shares:
    it validates the parameters (and the trigger and the estimator's capabilities), converts
    NumPy or torch input, checks the samples (non-empty, finite, of the right shape, inside the
    valid range) and the labels (class indices or one-hot rows of the right length, in the
    classes), checks that the class-valued parameters name a class, draws the generator, and
    gives the result back in the caller's types. An attack writes only :meth:`_poison`.

    Subclasses declare:

    ``_estimator_requirements``
        Capabilities the estimator must have (none for an attack without a model).
    ``_sample_ndim``
        Dimensions of one sample when the attack needs them (3: images ``(C, H, W)``; 1:
        feature vectors), else ``None``.
    ``_class_parameters``
        Parameters that name a class (a target, a source): each must lie in ``[0, K - 1]``.

    and may override :meth:`_bounds` (where the shape and the valid range come from),
    :meth:`_nb_classes` (how many classes the labels have) and :meth:`_encode_labels` /
    :meth:`_decode_labels` (for labels that are not class indices).

    Attributes
    ----------
    poison_indices_ : numpy.ndarray of int
        Indices of the poisoned samples after :meth:`poison`.
    nb_classes_ : int
        Number of classes of the last :meth:`poison`.
    """

    _estimator_requirements: ClassVar[tuple[str, ...]] = ()
    _sample_ndim: ClassVar[int | None] = 3
    _class_parameters: ClassVar[tuple[str, ...]] = ()

    # The model the attack works on, where it has one: each attack narrows it to the protocol
    # of what it uses (SVMPoisoning takes a scikit-learn SVC).
    estimator: Any
    nb_classes_: int
    poison_indices_: np.ndarray

    # ------------------------------------------------------------------ hooks

    def _validate_params(self) -> None:
        """Check the parameters, and the trigger's where there is one."""
        super()._validate()
        trigger = getattr(self, "trigger", None)
        if isinstance(trigger, Parametrized):
            trigger._validate()

    def _validate(self) -> None:
        """Check the parameters and the estimator's capabilities (at the start of work)."""
        self._validate_params()
        if self._estimator_requirements:
            require_capabilities(self.estimator, self._estimator_requirements, type(self).__name__)

    def _bounds(self) -> tuple[tuple[int, ...] | None, tuple[float, float] | None]:
        """``(input_shape, clip_values)`` the samples must match: the estimator's."""
        est = self.estimator
        return tuple(est.input_shape), est.clip_values

    def _nb_classes(self, y: torch.Tensor) -> int:
        """Number of classes of the labels ``y``: the estimator's."""
        return int(self.estimator.nb_classes)

    def _encode_labels(self, y: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
        """Class indices ``(n,)`` int64 on the CPU from indices or one-hot rows, and the number
        of classes; an InputError for anything else."""
        owner = type(self).__name__
        k = self._nb_classes(y)
        try:
            return check_labels(y.cpu(), n=n, nb_classes=k), k
        except InputError as err:
            raise InputError(f"{owner}: {err}") from None

    def _decode_labels(self, codes: torch.Tensor) -> torch.Tensor:
        """The label values of class indices written by the attack (the indices themselves)."""
        return codes

    def _why_nothing(self) -> str:
        """Why the last :meth:`poison` poisoned no sample (for the warning it gives)."""
        return "no sample qualified"

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The attack's core: which samples it poisons, and what they become.

        Parameters
        ----------
        x : torch.Tensor
            The checked samples, on the caller's device and in the caller's float dtype; never
            modified in place.
        y : torch.Tensor
            Their class indices ``(N,)``, int64 on the CPU.
        generator : torch.Generator
            A CPU generator from ``random_state`` (fresh entropy where there is none).

        Returns
        -------
        index : torch.Tensor
            Distinct indices ``(P,)`` (int64, CPU) of the poisoned samples.
        x_poison : torch.Tensor
            What those samples become, ``(P, *x.shape[1:])`` (any device and float dtype).
        y_poison : torch.Tensor or None
            Their new class indices ``(P,)``, or None when the labels do not change.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ template

    def poison(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
        """Poison a training set.

        Parameters
        ----------
        x : array-like or torch.Tensor
            Training samples.
        y : array-like or torch.Tensor
            Their labels: class indices ``(N,)`` or one-hot rows ``(N, nb_classes)``.

        Returns
        -------
        x_p : same type, device and dtype as ``x``
            The training set with the chosen samples poisoned (aligned with ``x``).
        y_p : same type, dtype and format as ``y``
            The labels, changed only where samples were relabelled.
        poison_mask : bool array (NumPy for NumPy ``x``, a tensor on x's device otherwise)
            True where a sample was poisoned (a warning says why when none was).

        Raises
        ------
        InvalidParameterError
            A parameter is out of range, e.g. a class-valued parameter (a target) outside the
            classes of ``y``.
        EstimatorError
            The estimator lacks a capability the attack needs.
        InputError
            ``x`` is empty, holds NaN or infinite values, has the wrong shape or leaves the
            valid range (the estimator's or the trigger's ``clip_values``); ``y`` does not match
            ``x`` or holds labels outside the classes.
        """
        self._validate()
        owner = type(self).__name__
        xt, xkind = _to_tensor(x, "x", owner)
        input_shape, clip_values = self._bounds()
        _check_samples(
            xt,
            owner,
            sample_ndim=self._sample_ndim,
            input_shape=input_shape,
            clip_values=clip_values,
        )
        yt, ykind = _to_tensor(y, "y", owner)
        if yt.is_floating_point() and not bool(torch.isfinite(yt).all()):
            raise InputError(f"{owner}: y contains NaN or infinite values.")
        labels, k = self._encode_labels(yt, int(xt.shape[0]))
        for name in self._class_parameters:
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not 0 <= int(value) < k:
                raise invalid_parameter(name, owner, f"a class in [0, {k - 1}]", value)
        self.nb_classes_ = k
        generator = resolve_random_state(getattr(self, "random_state", None), "cpu")
        index, x_poison, y_poison = self._poison(xt, labels, generator)
        # The poisons replace their samples; nothing else changes, by construction.
        x_p = xt.clone()
        if index.numel():
            x_p[index.to(xt.device)] = x_poison.to(device=xt.device, dtype=xt.dtype)
        mask = torch.zeros(xt.shape[0], dtype=torch.bool)
        mask[index] = True
        self.poison_indices_ = torch.nonzero(mask).flatten().numpy()
        if not bool(mask.any()):
            warnings.warn(f"{owner}: no sample was poisoned ({self._why_nothing()}).", stacklevel=2)
        mask_out = mask.to(xkind.device) if xkind.is_tensor else mask.numpy()
        return xkind.restore(x_p), self._restore_labels(y, yt, ykind, index, y_poison), mask_out

    def _restore_labels(
        self,
        y: Any,
        yt: torch.Tensor,
        kind: ArrayKind,
        index: torch.Tensor,
        codes: torch.Tensor | None,
    ) -> Any:
        """``y`` with the samples at ``index`` relabelled to ``codes``, in its own type, dtype
        and format; a copy of ``y`` when the labels do not change."""
        if codes is None:
            return y.clone() if isinstance(y, torch.Tensor) else np.array(y, copy=True)
        out = yt.clone()
        rows = index.to(out.device)
        new = self._decode_labels(codes).to(out.device)
        if out.ndim == 2:  # one-hot rows stay one-hot
            out[rows] = F.one_hot(new.to(torch.int64), out.shape[1]).to(out.dtype)
        else:
            out[rows] = new.to(out.dtype)
        return kind.restore(out, keep_dtype=True)
