"""Sign-OPT (Cheng et al.): hard-label attack by sign-estimated descent on the boundary distance."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from bastion._tensor import to_tensor
from bastion._validation import (
    BATCH_SIZE,
    MAX_QUERIES,
    NONE,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
    Satisfies,
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._batch import rows as _rows
from bastion.attacks.decision import DecisionBasedAttack
from bastion.estimators.base import SupportsPredict
from bastion.exceptions import InputError

__all__ = ["SignOPT"]

#: Relative precision of the boundary distance of the initial directions.
_INIT_TOL = 1e-3
#: Finest relative precision of a boundary distance: below it, float32 models give labels that
#: depend on the batch a point is evaluated in, and a returned point could flip back.
_MIN_TOL = 1e-5
#: Trials of the step-size search (growing, then shrinking), as in the authors' code.
_LINE_TRIALS = 15


def _unit(t: torch.Tensor) -> torch.Tensor:
    """Each row (sample) scaled to unit L2 norm."""
    return t / _view(t.flatten(1).norm(dim=1).clamp_min(1e-30), t)


def _is_images(value: Any) -> bool:
    return np.ndim(value) >= 2 and np.shape(value)[0] > 0


class SignOPT(DecisionBasedAttack):
    """Sign-OPT: a query-efficient hard-label attack.

    Following OPT (Cheng et al., 2019), the attack searches a direction ``theta`` (unit L2
    norm) that minimises ``g(theta)``, the distance from ``x`` to the decision boundary along
    ``theta``, found by a binary search with labels only; the result is ``x + g(theta) theta``.
    Sign-OPT estimates the gradient of ``g`` from signs only:
    ``grad ~ mean_k sign(g(theta + beta u_k) - g(theta)) u_k`` over ``K`` random unit Gaussian
    directions ``u_k``, each sign costing one query (is ``x + g(theta) (theta + beta u_k) /
    ||theta + beta u_k||`` adversarial?). The step ``theta - alpha grad`` (renormalised) uses
    the authors' step-size search: ``alpha`` doubles while ``g`` decreases, and if the first
    step does not decrease it, ``alpha`` is divided by 4 until it does (up to 15 trials each);
    when ``alpha`` falls below ``1e-4`` it is reset to 1 and ``beta`` divided by 10, and a
    sample stops when ``beta < 1e-8``. ``alpha`` and ``beta`` are kept per sample.

    The initial direction is the best of ``nb_init_directions`` candidates: random Gaussian
    directions (untargeted), or ``x_init - x`` for a pool of starting images ``x_init`` given
    by the user (the paper starts targeted attacks from images of the target class), tried in
    a seeded random order; a per-sample starting point ``generate(..., x_init=...)`` is tried
    first. Each candidate costs one query at its own length, and, as in the authors' code, a
    candidate is only searched further if it beats the best one so far at the best distance
    (one more query). Targeted attacks without starting images use random directions that
    land in the target class, which is rare on a trained model: pass a few images of the
    target classes. Samples without an adversarial candidate are returned unchanged, and a
    ``RuntimeWarning`` says how many and why.

    Departures from the authors' code, for a batched, budgeted attack: the boundary distance
    of a new direction is compared with the current one by one query at the current distance
    (if not adversarial there, ``g`` did not decrease, and the authors' upward search is not
    needed); below it, a bracket ``g (1 - 0.01 * 2^j)`` then bisection to relative precision
    ``max(beta / 500, 1e-5)`` (the code uses the absolute tolerance ``beta / 500``; finer than
    ``1e-5``, float32 models give labels that depend on the batch a point is evaluated in). With
    ``clip_values``, points are clipped into the box, so the returned perturbation may be
    shorter than ``g``. All samples of a batch advance together; a sample stops when it has
    no budget for a full gradient estimate and one line-search query. Decisions, bisection and
    budgets are the :class:`~bastion.attacks.decision.DecisionBasedAttack` template's.

    Threat model: decision-based black-box (labels only), untargeted or targeted. Norm: 2.

    Parameters
    ----------
    estimator : estimator with ``predict`` (labels only is enough)
    targeted : bool, default False
    max_queries : int, default 4000
        Query budget per sample (the clean-label query included when ``y`` is omitted).
    nb_init_directions : int, default 100
        Candidate initial directions per sample.
    nb_grad_queries : int, default 200
        ``K``, random directions (one query each) per sign-gradient estimate.
    alpha : float, default 0.2
        Initial step size on the unit sphere of directions.
    beta : float, default 0.001
        Initial smoothing radius of the gradient estimate.
    x_init : array-like of shape (M, *input_shape), optional
        Candidate starting images, tried in a seeded random order instead of random
        directions (needed for targeted attacks on most models).
    batch_size : int, default 128
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    queries_ : numpy.ndarray of int, shape (N,)
        Queries spent on each sample by the last :meth:`generate`.
    success_ : numpy.ndarray of bool, shape (N,)
        Which samples were broken (a query found the returned point adversarial); the others
        are returned unchanged.

    References
    ----------
    Cheng, Singh, Chen, Chen, Liu and Hsieh, "Sign-OPT: A Query-Efficient Hard-label
    Adversarial Attack", ICLR 2020. https://arxiv.org/abs/1909.10773

    Cheng, Le, Chen, Yi, Zhang and Hsieh, "Query-Efficient Hard-label Black-box Attack: An
    Optimization-based Approach", ICLR 2019. https://arxiv.org/abs/1807.04457

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.attacks.evasion.sign_opt import SignOPT
    >>> api = lambda b: (b.reshape(len(b), -1).mean(1) > 0.5).astype(int)
    >>> clf = BlackBoxClassifier(api, input_shape=(1, 4, 4), nb_classes=2, clip_values=(0, 1),
    ...                          labels_only=True)
    >>> x = np.full((2, 1, 4, 4), 0.3, dtype=np.float32)
    >>> attack = SignOPT(clf, max_queries=300, nb_grad_queries=20, random_state=0)
    >>> x_adv = attack.generate(x, np.zeros(2, dtype=int))
    >>> bool((clf.predict(x_adv).argmax(1) == 1).all()), bool(attack.queries_.max() <= 300)
    (True, True)
    """

    _renamed: ClassVar[dict[str, Any]] = {
        "num_grad_queries": "nb_grad_queries",
        "num_init_directions": "nb_init_directions",
    }
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "targeted": TARGETED,
        "max_queries": MAX_QUERIES,
        "nb_init_directions": [Interval(int, 1, None)],
        "nb_grad_queries": [Interval(int, 1, None)],
        "alpha": [Interval(float, 0, None, closed="neither")],
        "beta": [Interval(float, 0, None, closed="neither")],
        "x_init": [NONE, Satisfies(_is_images, "an array-like of starting images (M, ...)")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    # Not a parameter: Sign-OPT as described here is an L2 attack.
    norm = 2

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        targeted: bool = False,
        max_queries: int = 4000,
        nb_init_directions: int = 100,
        nb_grad_queries: int = 200,
        alpha: float = 0.2,
        beta: float = 0.001,
        x_init: Any = None,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.targeted = targeted
        self.max_queries = max_queries
        self.nb_init_directions = nb_init_directions
        self.nb_grad_queries = nb_grad_queries
        self.alpha = alpha
        self.beta = beta
        self.x_init = x_init
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ helpers

    def _shrink(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        theta: torch.Tensor,
        g_ref: torch.Tensor,
        index: torch.Tensor,
        tol: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Is ``g(theta) < g_ref``? One query at ``g_ref``; where it is adversarial, the
        distance is bracketed below (``g_ref (1 - 0.01 * 2^j)``) and bisected to relative
        precision ``tol``. Returns ``(better, g)``: ``g`` is a verified adversarial length
        (``g_ref`` where not better)."""
        better = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        a = self._counter.has_budget(index).nonzero().squeeze(1)
        better[a] = self._decide(self._point(x[a], theta[a], g_ref[a]), y[a], index[a])
        hi, lo = g_ref.clone(), torch.zeros_like(g_ref)
        bracketing = better.clone()
        for j in range(8):
            factor = max(1.0 - 0.01 * 2**j, 0.0)
            if factor == 0.0:
                break  # lo = 0 for the rest: x itself is on the clean side
            a = (bracketing & self._counter.has_budget(index)).nonzero().squeeze(1)
            if a.numel() == 0:
                break
            trial = g_ref[a] * factor
            adv = self._decide(self._point(x[a], theta[a], trial), y[a], index[a])
            hi[a] = torch.where(adv, trial, hi[a])
            lo[a] = torch.where(adv, lo[a], trial)
            bracketing[a[~adv]] = False
        hi = self._bisect_ray(x, y, theta, lo, hi, index, tol, relative=True, where=better)
        return better, hi

    def _candidates(
        self, x: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Candidate initial directions ``(B, J, *input_shape)``, not normalised."""
        b, shape = x.shape[0], tuple(x.shape[1:])
        if self.x_init is None:
            theta = torch.randn(
                (b, self.nb_init_directions, *shape),
                generator=generator,
                dtype=x.dtype,
                device=x.device,
            )
        else:
            pool, _ = to_tensor(self.x_init, device=x.device, dtype=x.dtype)
            if tuple(pool.shape[1:]) != shape:
                raise InputError(
                    f"x_init has samples of shape {tuple(pool.shape[1:])}, but the estimator "
                    f"expects {shape}."
                )
            order = torch.randperm(pool.shape[0], generator=generator, device="cpu")
            pool = pool[order[: self.nb_init_directions].to(x.device)]
            theta = pool.unsqueeze(0) - x.unsqueeze(1)
        if mask is not None:
            theta = theta * (mask if mask.shape[0] == 1 else mask.unsqueeze(1))
        return theta

    def _initial_direction(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        index: torch.Tensor,
        x_init: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best initial direction ``theta`` of each sample and its boundary distance
        ``g`` (inf where no candidate was adversarial), and the candidates the budget did not
        pay for."""
        n = x.shape[0]
        cand = self._candidates(x, mask, generator)
        if x_init is not None:
            # The caller's starting point of each sample is its first candidate.
            first = x_init - x if mask is None else (x_init - x) * mask
            cand = torch.cat([first.unsqueeze(1), cand], dim=1)
        j_max = cand.shape[1]
        length = cand.flatten(2).norm(dim=2)  # (B, J)
        # One query per candidate at its own length, all in one call (within the budget).
        can_pay = self._counter.remaining(index).clamp(0, j_max)
        allowed = torch.arange(j_max, device=x.device).unsqueeze(0) < can_pay.unsqueeze(1)
        allowed &= length > 0
        rows = allowed.nonzero()
        hit = torch.zeros_like(allowed)
        if rows.shape[0] > 0:
            pts = x[rows[:, 0]] + cand[rows[:, 0], rows[:, 1]]
            clip = self.estimator.clip_values
            if clip is not None:
                pts = pts.clamp(*clip)
            hit[rows[:, 0], rows[:, 1]] = self._decide(pts, y[rows[:, 0]], index[rows[:, 0]])
        theta = torch.zeros_like(x)
        g = torch.full((n,), torch.inf, dtype=x.dtype, device=x.device)
        tol = torch.full((n,), _INIT_TOL, dtype=x.dtype, device=x.device)
        for j in range(j_max):
            a = hit[:, j].nonzero().squeeze(1)
            if a.numel() == 0:
                continue
            unit = _unit(cand[a, j])
            ref = torch.minimum(length[a, j], g[a])
            better, g_new = self._shrink(x[a], y[a], unit, ref, index[a], tol[a])
            # The first hit of a sample is adversarial at its own length even if not shorter.
            better |= torch.isinf(g[a]) & (g_new <= length[a, j])
            better &= g_new < g[a]
            theta[a[better]] = unit[better]
            g[a[better]] = g_new[better]
        missing = torch.isinf(g)
        how = f"{j_max} initial directions (nb_init_directions)"
        hint = ", or a pool of such images as SignOPT(..., x_init=images)"
        tried, broke = missing & (can_pay == j_max), missing & (can_pay < j_max)
        self._note_no_start(tried, broke, how, hint)
        return theta, g, j_max - can_pay

    # ------------------------------------------------------------------ attack

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **per_sample: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = per_sample["index"]
        n, shape = x.shape[0], tuple(x.shape[1:])
        view = (-1,) + (1,) * len(shape)
        x_init = per_sample.get("x_init")
        theta, g, unpaid = self._initial_direction(x, y, mask, generator, index, x_init)
        found = torch.isfinite(g)
        alpha = torch.full((n,), self.alpha, dtype=x.dtype, device=x.device)
        beta = torch.full((n,), self.beta, dtype=x.dtype, device=x.device)
        done = ~found
        k = self.nb_grad_queries
        self._note_short_budget(
            found & ~self._counter.has_budget(index, k + 1),
            self._counter.used[index] + unpaid + k + 1,
            f"one iteration (a sign-gradient estimate of nb_grad_queries={k} queries and a "
            "line-search query)",
            "they keep their best initial direction",
        )
        while True:
            a = (~done & self._counter.has_budget(index, k + 1)).nonzero().squeeze(1)
            if a.numel() == 0:
                break
            m = a.numel()
            # Sign gradient: is g smaller along theta + beta u? One query per direction.
            u = torch.randn((m, k, *shape), generator=generator, dtype=x.dtype, device=x.device)
            if mask is not None:
                u = u * _rows(mask, a).unsqueeze(1)
            u = _unit(u.flatten(0, 1)).reshape(m, k, *shape)
            probe = _unit(
                (theta[a].unsqueeze(1) + beta[a].reshape(view).unsqueeze(1) * u).flatten(0, 1)
            )
            rep = torch.arange(m, device=x.device).repeat_interleave(k)
            lower = self._decide(self._point(x[a][rep], probe, g[a][rep]), y[a][rep], index[a][rep])
            sign = torch.where(lower, -1.0, 1.0).to(x.dtype).reshape(m, k)
            grad = torch.einsum("mk,mk...->m...", sign, u) / k

            theta_a, g_a, alpha_a = theta[a], g[a], alpha[a]
            tol = (beta[a] / 500).clamp_min(_MIN_TOL)
            best_theta, best_g = theta_a.clone(), g_a.clone()
            # Step-size search, growing while g decreases ...
            growing = torch.ones(m, dtype=torch.bool, device=x.device)
            for _ in range(_LINE_TRIALS):
                b = growing.nonzero().squeeze(1)
                if b.numel() == 0:
                    break
                new = _unit(theta_a[b] - alpha_a[b].reshape(view) * grad[b])
                better, g_new = self._shrink(x[a[b]], y[a[b]], new, best_g[b], index[a[b]], tol[b])
                alpha_a[b] *= 2
                best_theta[b[better]] = new[better]
                best_g[b[better]] = g_new[better]
                growing[b[~better]] = False
            # ... or shrinking until it does.
            shrinking = best_g >= g_a
            for _ in range(_LINE_TRIALS):
                b = (shrinking & self._counter.has_budget(index[a])).nonzero().squeeze(1)
                if b.numel() == 0:
                    break
                alpha_a[b] *= 0.25
                new = _unit(theta_a[b] - alpha_a[b].reshape(view) * grad[b])
                better, g_new = self._shrink(x[a[b]], y[a[b]], new, g_a[b], index[a[b]], tol[b])
                best_theta[b[better]] = new[better]
                best_g[b[better]] = g_new[better]
                shrinking[b[better]] = False
            stalled = alpha_a < 1e-4
            alpha_a[stalled] = 1.0
            beta[a[stalled]] *= 0.1
            done[a[beta[a] < 1e-8]] = True
            alpha[a], theta[a], g[a] = alpha_a, best_theta, best_g
        g = torch.where(found, g, torch.zeros_like(g))
        return self._point(x, theta, g), found
