"""The template of decision-based (labels-only) minimum-norm attacks.

:class:`DecisionBasedAttack` owns what HopSkipJump, the Boundary attack, GeoDA and Sign-OPT
share: decisions charged to their sample, starting points (given, or searched among the
attack's proposals, with a warning for the samples that found none), bisection to the
decision boundary (:func:`bastion.attacks._search.bisect`), and the knowledge of which samples
were broken, so that no query is spent to check the result. An attack writes only
``_attack(x, y, mask, generator, index=..., [x_init=...]) -> (x_adv, found)``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bastion._tensor import to_tensor
from bastion._validation import check_x
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import lp_norm
from bastion.attacks._search import bisect, first_adversarial
from bastion.attacks.base import MinimumNormAttack, is_adversarial
from bastion.attacks.query import QueryAttack
from bastion.exceptions import InputError

__all__ = ["DecisionBasedAttack"]


@dataclass
class _NoStart:
    """Samples of one ``generate`` call left without a starting point, for its warning."""

    tried: int = 0  # every proposal tried, none adversarial
    broke: int = 0  # out of queries first
    how: str = ""  # what was tried
    hint: str = ""  # what else the user can do


class DecisionBasedAttack(QueryAttack, MinimumNormAttack, abc.ABC):
    """Template of decision-based (labels-only) minimum-norm attacks.

    * every query is a decision, *is this point adversarial?* (:meth:`_decide`), charged to
      its sample;
    * starting points (:meth:`_starting_points`): ``generate(..., x_init=...)`` (one query
      each), else the first adversarial one of the attack's proposals (uniform noise for
      HopSkipJump and the Boundary attack, low-frequency noise for GeoDA). Samples that find
      none are returned unchanged, and ``generate`` warns how many, and why (every proposal
      kept the sample's label, or the budget ran out first);
    * bisection to the boundary on the segment (or the Linf boxes) between the clean input and
      an adversarial point (:meth:`_bisect`), or along a ray (:meth:`_bisect_ray`); the
      adversarial end is kept, so every returned point was found adversarial by a query and
      the attack reports its successes itself;
    * the budget and partial-result rules of :class:`~bastion.attacks.query.QueryAttack`.

    Subclasses implement ``_attack(x, y, mask, generator, **per_sample) -> (x_adv, found)``;
    ``per_sample`` holds ``index`` (the samples' global indices, for the query counter) and,
    when the caller gave starting points, ``x_init``.
    """

    _needs_scores = False
    targeted: bool
    #: Uniform-noise draws per sample for :meth:`_start_on_boundary` (a parameter of the
    #: attacks that use it).
    init_size: int
    _x_init: Any = None
    _no_start: _NoStart

    def generate(self, x: Any, y: Any = None, *, mask: Any = None, x_init: Any = None) -> Any:
        """Craft adversarial examples.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Clean inputs inside the estimator's ``clip_values``.
        y : array-like or torch.Tensor, optional
            True labels (untargeted) or target labels (``targeted=True``), as class indices
            ``(N,)`` or one-hot ``(N, nb_classes)``. When omitted for an untargeted attack, the
            estimator's predictions are used (one query per sample).
        mask : array-like or torch.Tensor, optional
            Which features may change (1) and which may not (0); broadcastable to ``x`` or to
            one sample.
        x_init : array-like or torch.Tensor, shape (N, *input_shape), optional
            Starting points, e.g. images of the target classes for a targeted attack. Each is
            checked with one query; a sample whose starting point is not adversarial (and every
            sample when ``x_init`` is omitted) searches the attack's own proposals instead.
            Features frozen by ``mask`` are taken from ``x``.

        Returns
        -------
        x_adv : same type, device, dtype and shape as ``x``
            The clean input, unchanged, for samples where no adversarial point was found
            (``success_`` is False for them).
        """
        self._x_init = x_init
        self._no_start = _NoStart()
        try:
            return super().generate(x, y, mask=mask)
        finally:
            self._x_init = None

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        extras = super()._prepare(x, mask)
        if self._x_init is not None:
            start, _ = to_tensor(self._x_init, device=x.device, dtype=x.dtype)
            if start.shape != x.shape:
                raise InputError(
                    f"x_init of shape {tuple(start.shape)} must have the shape of x, "
                    f"{tuple(x.shape)}."
                )
            est = self.estimator
            check_x(start, input_shape=est.input_shape, clip_values=est.clip_values, name="x_init")
            extras["x_init"] = start
        return extras

    @abc.abstractmethod
    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_adv, found)``: every ``x_adv[i]`` with ``found[i]`` was found adversarial by
        a query."""

    # ------------------------------------------------------------------ decisions and points

    def _decide(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Is each row adversarial? One query, charged to sample ``index[i]``, per row."""
        return is_adversarial(self._counter.predict(x, index), y, self.targeted)

    def _box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample bounds ``(B, 1, ..., 1)``: ``clip_values``, else each sample's range."""
        clip = self.estimator.clip_values
        if clip is not None:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            return x.new_full(shape, float(clip[0])), x.new_full(shape, float(clip[1]))
        flat = x.reshape(x.shape[0], -1)
        return _view(flat.amin(1), x), _view(flat.amax(1), x)

    def _point(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x + t v`` per sample, inside ``clip_values``."""
        p = x + _view(t, x) * v
        clip = self.estimator.clip_values
        return p.clamp(*clip) if clip is not None else p

    # ------------------------------------------------------------------ starting points

    def _starting_points(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        index: torch.Tensor,
        x_init: torch.Tensor | None,
        propose: Callable[[int, torch.Tensor], torch.Tensor],
        tries: int,
        how: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial starting points ``(x_adv, found)``: ``x_init`` where it is adversarial,
        else the first adversarial one of ``tries`` proposals ``propose(k, rows)`` (points for
        the samples ``rows``, the ``k``-th try). ``how`` describes the proposals for the
        warning about samples that find none."""
        x_adv = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if x_init is not None:
            start = x_init if mask is None else x + (x_init - x) * mask
            r = self._counter.has_budget(index).nonzero().squeeze(1)
            found[r] = self._decide(start[r], y[r], index[r])
            x_adv = torch.where(_view(found, x), start, x_adv)
        first_adversarial(
            propose,
            lambda pts, r: self._decide(pts, y[r], index[r]),
            tries,
            x_adv,
            found,
            may_query=lambda: self._counter.has_budget(index),
        )
        broke = ~found & ~self._counter.has_budget(index)
        self._note_no_start(~found & ~broke, broke, how)
        return x_adv, found

    def _start_on_boundary(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        per_sample: dict[str, torch.Tensor],
        *,
        linf: bool,
        theta: float,
    ) -> tuple[torch.Tensor, ...]:
        """The start of HopSkipJump and the Boundary attack: ``x_init``, or the first
        adversarial one of ``init_size`` uniform-noise draws in the box :meth:`_box` (the
        frozen features of ``mask`` taken from ``x``), moved towards ``x`` by :meth:`_bisect`.

        Returns ``(x_adv, found, lo, hi, spent)``: the box, and the queries each sample had
        spent before the bisection (to tell the user what one step would need).
        """
        index = per_sample["index"]
        lo, hi = self._box(x)

        def noise(k: int, r: torch.Tensor) -> torch.Tensor:
            xr = x[r]
            u = torch.rand(xr.shape, generator=generator, device=x.device, dtype=x.dtype)
            draw = lo[r] + (hi[r] - lo[r]) * u
            m = _rows(mask, r)
            return draw if m is None else xr + (draw - xr) * m

        size = int(self.init_size)
        how = f"init_size={size} uniform-noise draws"
        x_init = per_sample.get("x_init")
        x_adv, found = self._starting_points(x, y, mask, index, x_init, noise, size, how)
        spent = self._counter.used[index].clone()
        r = found.nonzero().squeeze(1)
        x_adv[r] = self._bisect(x[r], x_adv[r], y[r], index[r], linf=linf, theta=theta)
        return x_adv, found, lo, hi, spent

    def _note_no_start(
        self, tried: torch.Tensor, broke: torch.Tensor, how: str, hint: str = ""
    ) -> None:
        """Note samples without a starting point: ``tried`` every proposal (``how``), or
        ``broke``, out of queries first; ``hint``: what else the user can do."""
        self._call.noted += int(tried.sum()) + int(broke.sum())
        seen = self._no_start
        seen.tried += int(tried.sum())
        seen.broke += int(broke.sum())
        seen.how, seen.hint = how, hint

    def _warnings(self) -> list[str]:
        found = super()._warnings()
        seen = self._no_start
        tried, broke, how, hint = seen.tried, seen.broke, seen.how, seen.hint
        if tried + broke == 0:
            return found
        why = []
        if tried:
            verdict = "put none in the target class" if self.targeted else "kept every label"
            why.append(f"{tried} tried {how} and the model {verdict}")
        if broke:
            why.append(f"{broke} ran out of queries first (max_queries={self.max_queries})")
        others = "the target classes" if self.targeted else "other classes"
        return [
            *found,
            f"{type(self).__name__} found no adversarial starting point for {tried + broke} of "
            f"{self._call.n} samples, which are returned unchanged (success_ is False): "
            f"{'; '.join(why)}. Pass starting points, generate(x, y, x_init=...), for example "
            f"images the model puts in {others}{hint}.",
        ]

    # ------------------------------------------------------------------ bisection

    def _bisect(
        self,
        x: torch.Tensor,
        x_far: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor,
        *,
        linf: bool,
        theta: float,
    ) -> torch.Tensor:
        """Bisection from the adversarial ``x_far`` towards ``x``; returns the adversarial end.

        L2: on the segment ``x + a (x_far - x)``, ``a`` in [0, 1], to precision ``theta`` in
        ``a``. Linf: on the boxes ``clip(x_far, x - a, x + a)``, ``a`` in [0, ||x_far - x||],
        to precision ``min(theta * ||x_far - x||, theta)``. A sample stops early when out of
        budget (its last adversarial point is kept).
        """
        n = x.shape[0]
        if linf:
            high = lp_norm(x_far - x, "inf")
            tol = torch.clamp(high * theta, max=theta)
        else:
            high = x.new_ones(n)
            tol = x.new_full((n,), theta)

        def project(a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            xr, fr = x[r], x_far[r]
            a = _view(a, xr)
            if linf:
                return torch.minimum(torch.maximum(fr, xr - a), xr + a)
            return xr + a * (fr - xr)

        a = bisect(
            lambda t, r: self._decide(project(t, r), y[r], index[r]),
            x.new_zeros(n),
            high,
            tol,
            may_query=lambda: self._counter.has_budget(index),
        )
        return project(a, torch.arange(n, device=x.device))

    def _bisect_ray(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        v: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        index: torch.Tensor,
        tol: torch.Tensor | float,
        *,
        relative: bool = False,
        scale: torch.Tensor | None = None,
        where: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bisection of ``t`` on the rays ``x + t v`` (see :meth:`_point`) between ``low`` (not
        adversarial) and ``high`` (adversarial), for the samples ``where`` (all by default),
        each while it has budget; returns the adversarial ends. ``tol``, ``relative`` and
        ``scale`` as in :func:`bastion.attacks._search.bisect`."""

        def may_query() -> torch.Tensor:
            ok = self._counter.has_budget(index)
            return ok if where is None else where & ok

        return bisect(
            lambda t, r: self._decide(self._point(x[r], v[r], t), y[r], index[r]),
            low,
            high,
            tol,
            may_query=may_query,
            relative=relative,
            scale=scale,
        )
