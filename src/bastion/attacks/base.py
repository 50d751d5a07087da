"""Attack base classes and the shared templates.

* :class:`Attack`: sklearn-style parameters (``__init__`` only stores them), ``get_params`` /
  ``set_params`` / ``repr`` read from the signature, declarative validation, capability checks.
* :class:`EvasionAttack`: ``generate(x, y=None, *, mask=None)``: conversion in and out, input
  and label checks, batching with a progress bar. An attack implements ``_generate_batch``.
* :class:`FixedBudgetAttack`: attacks bounded by ``eps`` in a norm. The template resolves
  per-sample budgets and guarantees the result lies in the eps-ball and inside ``clip_values``;
  an attack writes only ``_attack(x, y, mask, generator, eps)``.
* :class:`MinimumNormAttack`: attacks that search the smallest perturbation. The template keeps
  the original input for samples where no adversarial example was found; an attack writes only
  ``_attack(x, y, mask, generator)``.
The black-box templates build on these: :class:`bastion.attacks.query.QueryAttack` (query
budgets, per-sample success, the partial result of an interrupted attack) and
:class:`bastion.attacks.decision.DecisionBasedAttack` (labels-only attacks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import ArrayKind, resolve_random_state, to_tensor
from bastion._validation import (
    check_labels,
    check_x,
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._lp import canonical_norm, lp_norm, project_lp_box
from bastion.estimators.base import SupportsPredict, require_capabilities
from bastion.exceptions import InputError, ModelError

__all__ = [
    "Attack",
    "EvasionAttack",
    "FixedBudgetAttack",
    "MinimumNormAttack",
    "is_adversarial",
    "perturbation_norms",
]


def is_adversarial(scores: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The "is adversarial" test every attack uses: per sample, does the predicted class
    (argmax of ``scores``: probabilities, logits or one-hot rows, ``(N, K)``) differ from the
    true label ``y`` (untargeted), or equal the target ``y`` (``targeted=True``)?"""
    pred = scores.argmax(dim=1)
    return pred == y if targeted else pred != y


def checked_input(
    estimator: SupportsPredict, x: Any, name: str = "x"
) -> tuple[torch.Tensor, ArrayKind]:
    """The input preamble of the evasion attacks' public methods.

    ``x`` as a tensor on the estimator's device and dtype, checked (a non-empty batch of
    finite samples of the estimator's ``input_shape``, inside its ``clip_values``), and how to
    give a result back in ``x``'s type (``kind.restore(out, unchanged=xt)`` returns the
    caller's values bit for bit where the attack left them).

    Raises
    ------
    InputError
        For bad data, and for integer or boolean ``x``: adversarial examples come back in
        ``x``'s dtype, so it must be floating-point.
    """
    xt, kind = to_tensor(
        x, device=estimator.device, dtype=getattr(estimator, "dtype", torch.float32)
    )
    if not kind.floating:
        raise InputError(
            f"{name} must hold floating-point values (the adversarial examples come back in "
            f"{name}'s dtype); got dtype {kind.dtype}. Convert it first, e.g. "
            "x.astype(np.float32) / 255 for 8-bit images."
        )
    check_x(xt, input_shape=estimator.input_shape, clip_values=estimator.clip_values, name=name)
    return xt, kind


class Attack(Parametrized):
    """Base of every attack: parameters, validation and capability checks.

    Subclasses define ``__init__(self, estimator, *, param=default, ...)`` that stores each
    parameter under its own name and does nothing else, a ``_parameter_constraints`` mapping and
    the estimator capabilities they need in ``_estimator_requirements``.
    """

    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)

    #: Each attack narrows this to the ``Supports*`` protocol of the capabilities it uses.
    estimator: Any

    def _validate(self) -> None:
        """Check hyper-parameters and estimator capabilities (called at the start of work)."""
        super()._validate()
        require_capabilities(self.estimator, self._estimator_requirements, type(self).__name__)


class EvasionAttack(Attack):
    """Base of evasion attacks: ``generate(x, y=None, *, mask=None) -> x_adv``.

    The template converts inputs (NumPy or torch) to tensors on the estimator's device, checks
    them, resolves labels and the mask, runs the attack batch by batch (with a progress bar when
    ``verbose``) and gives ``x_adv`` back in the caller's type, device and dtype. Subclasses
    implement :meth:`_generate_batch`.
    """

    estimator: SupportsPredict
    batch_size: int
    verbose: bool
    #: The attack's core on one batch, whose signature its template defines: ``x_adv``, or
    #: ``(x_adv, success)``.
    _attack: Callable[..., Any]

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-sample quantities resolved once for all of ``x``; the template slices them per
        batch and passes them to ``_generate_batch`` as keyword arguments."""
        return {}

    def _generate_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor:
        """One batch: the templates run ``_attack`` and ``_finalize`` its result."""
        result = self._attack(x, y, mask, generator, **per_sample)
        return self._finalize(x, y, mask, result, per_sample)[0]

    def _finalize(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        result: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        per_sample: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, Any]:
        """What a template guarantees of ``_attack``'s result: ``(x_adv, success)``, success
        per sample or None where unknown."""
        return result if isinstance(result, tuple) else (result, None)

    def generate(self, x: Any, y: Any = None, *, mask: Any = None) -> Any:
        """Craft adversarial examples.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Clean inputs inside the estimator's ``clip_values``.
        y : array-like or torch.Tensor, optional
            True labels (untargeted) or target labels (``targeted=True``), as class indices
            ``(N,)`` or one-hot ``(N, nb_classes)``. When omitted for an untargeted attack, the
            estimator's predictions are used.
        mask : array-like or torch.Tensor, optional
            Which features may change (1) and which may not (0); broadcastable to ``x`` or to
            one sample.

        Returns
        -------
        x_adv : same type, device, dtype and shape as ``x``
        """
        self._validate()
        xt, kind = checked_input(self.estimator, x)
        try:
            out = self._generate_tensor(xt, y, mask)
        except ModelError as err:
            self._model_failed(err, kind)  # a template may raise a richer error instead
            raise
        return kind.restore(out, unchanged=xt)

    def _generate_tensor(self, x: torch.Tensor, y: Any, mask: Any) -> torch.Tensor:
        """The attack on checked tensors: labels, mask, per-sample quantities, then batches."""
        yt = self._resolve_labels(x, y)
        mt = self._resolve_mask(mask, x)
        gen = resolve_random_state(getattr(self, "random_state", None), self.estimator.device)
        per_sample = self._prepare(x, mt)
        n, bs = x.shape[0], self.batch_size
        out = self._output(x)
        with tqdm(
            total=n, desc=type(self).__name__, unit="sample", disable=not self.verbose
        ) as bar:
            for i in range(0, n, bs):
                sl = slice(i, i + bs)
                mb = None if mt is None else (mt[sl] if mt.shape[0] > 1 else mt)
                extras = {k: v[sl] for k, v in per_sample.items()}
                out[sl] = self._generate_batch(x[sl], yt[sl], mb, gen, **extras).detach()
                bar.update(min(bs, n - i))
        return out

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor the batches' results are written into."""
        return torch.empty_like(x)

    def _model_failed(self, err: ModelError, kind: ArrayKind) -> None:
        """Called when the model fails during :meth:`generate`; ``err`` is re-raised after."""

    def _predicted_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The estimator's labels for ``x``, predicted in batches of ``batch_size``."""
        with torch.no_grad():
            return torch.cat(
                [
                    self.estimator.predict_tensor(x[i : i + self.batch_size]).argmax(dim=1)
                    for i in range(0, x.shape[0], self.batch_size)
                ]
            )

    def _resolve_labels(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        est = self.estimator
        if y is None:
            if getattr(self, "targeted", False):
                raise InputError(
                    f"{type(self).__name__} with targeted=True needs the target labels y."
                )
            return self._predicted_labels(x)
        yt, _ = to_tensor(y, device=est.device, dtype=None)
        return check_labels(yt, n=x.shape[0], nb_classes=est.nb_classes)

    def _resolve_mask(self, mask: Any, x: torch.Tensor) -> torch.Tensor | None:
        if mask is None:
            return None
        mt, _ = to_tensor(mask, device=x.device, dtype=torch.float32)
        if mt.ndim == x.ndim - 1:
            mt = mt.unsqueeze(0)
        try:
            fits = mt.ndim == x.ndim and torch.broadcast_shapes(mt.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise InputError(
                f"mask of shape {tuple(np.shape(mask))} does not broadcast to x of shape "
                f"{tuple(x.shape)} (give one mask per sample, or one for all samples)."
            )
        if not bool(((mt == 0) | (mt == 1)).all()):
            raise InputError("mask must contain only 0 (frozen) and 1 (may change).")
        return mt


class FixedBudgetAttack(EvasionAttack):
    """Template for attacks bounded by ``eps`` in the ``norm`` ball.

    ``eps`` may be one float or one value per sample. Subclasses implement
    ``_attack(x, y, mask, generator, eps) -> x_adv`` where ``eps`` has shape ``(B, 1, ..., 1)``;
    the template then projects exactly onto the eps-ball intersected with ``clip_values``, so a
    returned perturbation never exceeds the budget.
    """

    eps: Any
    norm: Any

    def _budget(self, name: str, x: torch.Tensor) -> torch.Tensor:
        value = getattr(self, name)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        t, _ = to_tensor(value, device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            return t.expand(shape)
        if t.shape[0] != x.shape[0]:
            raise InputError(
                f"{name} has {t.shape[0]} per-sample values but x has {x.shape[0]} samples."
            )
        return t.reshape(shape)

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        # Every budget the attack takes (``eps``, and ``eps_step`` for iterative attacks) may be
        # one value or one per sample.
        names = self._param_names()
        return {name: self._budget(name, x) for name in ("eps", "eps_step") if name in names}

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **per_sample: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _finalize(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        result: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        per_sample: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Project the attack's result onto the eps-ball and the box; a reported success
        stands only where the point was feasible as it is (then it is returned bit for bit)."""
        x_att, success = result if isinstance(result, tuple) else (result, None)
        raw = x_att - x
        delta = project_lp_box(
            raw, x, per_sample["eps"], canonical_norm(self.norm), self.estimator.clip_values
        )
        if mask is not None:
            delta = delta * mask
        x_adv = x + delta
        if success is not None:
            # ``x + (x_adv - x)`` may differ from ``x_adv`` in the last bit: keep the queried point.
            exact = (delta == raw).flatten(1).all(dim=1)
            x_adv = torch.where(_view(exact, x), x_att, x_adv)
            success = success & exact
        if self.estimator.clip_values is not None:
            x_adv = x_adv.clamp(*self.estimator.clip_values)
        return x_adv, success


class MinimumNormAttack(EvasionAttack):
    """Template for attacks that look for the smallest adversarial perturbation.

    Subclasses implement ``_attack(x, y, mask, generator) -> x_adv``. The template checks each
    candidate with one prediction and returns the clean input, unchanged, for samples where the
    attack found no adversarial example (so the perturbation norm is 0 exactly when it failed).
    An attack that already knows which samples it broke (a black-box attack, whose every query
    counts) returns ``(x_adv, success)`` instead and no prediction is spent.
    """

    targeted: bool

    def _is_adversarial(self, probs_or_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return is_adversarial(probs_or_logits, y, self.targeted)

    def _finalize(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        result: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        per_sample: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the mask and the box, check success (one prediction) unless reported, and
        put the clean input back where the attack failed."""
        x_att, success = result if isinstance(result, tuple) else (result, None)
        x_adv = x_att
        if mask is not None:
            x_adv = x + (x_att - x) * mask
            if success is not None:
                # A reported point was queried as it is: keep it, bit for bit, where it
                # already respects the mask.
                frozen = ((x_att != x) & (mask == 0)).flatten(1).any(dim=1)
                x_adv = torch.where(_view(~frozen, x), x_att, x_adv)
        if self.estimator.clip_values is not None:
            x_adv = x_adv.clamp(*self.estimator.clip_values)
        if success is None:
            with torch.no_grad():
                success = self._is_adversarial(self.estimator.predict_tensor(x_adv), y)
        return torch.where(_view(success, x), x_adv, x), success


def perturbation_norms(x: Any, x_adv: Any, norm: Any = "inf") -> np.ndarray:
    """Per-sample Lp norms of ``x_adv - x`` as a NumPy array (for reports and tests)."""
    a, _ = to_tensor(x, dtype=torch.float64)
    b, _ = to_tensor(x_adv, dtype=torch.float64)
    return lp_norm((b.cpu() - a.cpu()), canonical_norm(norm)).numpy()
