"""Auto-PGD (Croce and Hein, 2020) in the Linf and L2 balls, and l1-APGD (Croce and Hein, 2021)
in the L1 ball intersected with the box."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any, ClassVar, cast

import torch

from bastion._validation import (
    BATCH_SIZE,
    BUDGET,
    NORM,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    Constraint,
    Interval,
    Options,
    invalid_parameter,
)
from bastion.attacks._batch import per_sample as _view
from bastion.attacks._batch import rows as _rows
from bastion.attacks._lp import (
    canonical_norm,
    lp_norm,
    project_lp_box,
    project_point,
    random_in_ball,
    steepest_direction,
)
from bastion.attacks._restarts import Best, Outcome, best_of_restarts
from bastion.attacks.base import FixedBudgetAttack, is_adversarial
from bastion.estimators.base import (
    SupportsClassGradient,
    SupportsLossGradient,
    require_capabilities,
)

__all__ = ["APGD", "AutoProjectedGradientDescent"]

# Checkpoint recurrence of the paper: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} -
# 0.03, 0.06). Exact fractions, so that ceil(p_j * N) is not thrown off by rounding (0.41 * 100).
_P1, _P_SHRINK, _P_MIN = Fraction(22, 100), Fraction(3, 100), Fraction(6, 100)
# l1-APGD: a checkpoint every 4% of the iterations; the step size shrinks by 1.5 at each (never
# below 1/10 of its initial value eps) unless the best point became sparser by more than 5%,
# which resets it; the update sparsity follows the best point's, divided by 1.5.
_L1_PERIOD, _L1_SHRINK, _L1_MIN_STEP, _L1_SPARSER = 0.04, 1.5, 0.1, 0.95


def _checkpoints(n_iter: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * n_iter)`` (``0 < w_j <= n_iter``, increasing) at which
    APGD decides whether to halve the step size."""
    out: list[int] = []
    p_prev, p = Fraction(0), _P1
    while p <= 1:
        w = math.ceil(p * n_iter)
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - _P_SHRINK, _P_MIN)
    return out


def _dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Difference-of-logits-ratio loss (higher is better for the attacker).

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted (``y`` the source
    class, ``target`` the target): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``pi``
    the classes sorted by decreasing logit. Invariant to shifting and scaling the logits.
    """
    top = logits.topk(3 if target is None else 4, dim=1).values
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    if target is None:
        is_y = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
        others = logits.masked_fill(is_y, torch.finfo(logits.dtype).min)
        return -(z_y - others.amax(dim=1)) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = logits.gather(1, target.view(-1, 1)).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def _sparse_l1_direction(
    grad: torch.Tensor, x: torch.Tensor, clip: tuple[float, float] | None, k: torch.Tensor
) -> torch.Tensor:
    """The l1-APGD update direction: the signs of the ``k`` (one count per sample) largest
    gradient coordinates that can still move inside the box, scaled to unit L1 norm."""
    g = grad
    if clip is not None:
        lo, hi = clip
        g = g.masked_fill(((x <= lo) & (g < 0)) | ((x >= hi) & (g > 0)), 0.0)
    flat = g.reshape(g.shape[0], -1)
    mag = flat.abs()
    thresh = mag.topk(int(k.max()), dim=1).values.gather(1, (k - 1).view(-1, 1))
    chosen = (mag >= thresh) & (mag > 0)
    e = chosen.to(g.dtype) * flat.sign()
    e = e / chosen.sum(dim=1, keepdim=True).clamp_min(1).to(g.dtype)
    return e.reshape(grad.shape)


class AutoProjectedGradientDescent(FixedBudgetAttack):
    """Auto-PGD (APGD): PGD with momentum and a step size that adapts itself, per sample, to
    the progress of the optimisation, so that it needs no step size to be tuned.

    The step size starts at ``2 * eps`` and every step is
    ``z = P(x_k + eta * d(grad))``,
    ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))``,
    where ``P`` is the exact projection onto the eps-ball intersected with ``clip_values`` and
    ``d`` is ``sign`` (inf) or the normalised gradient (2). At the checkpoints
    ``w_j = ceil(p_j * max_iter)`` (``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) the step size of a sample is halved,
    and the sample restarts from its best point so far, when fewer than a fraction ``rho`` of
    the steps since the last checkpoint increased the loss, or when neither the step size nor
    the best loss changed since then.

    For ``norm=1`` the attack is l1-APGD (Croce and Hein, 2021): each step changes only the
    ``k`` coordinates with the largest gradient among those the box lets move (their signs,
    scaled to L1 length ``eta``); ``k`` starts at ``(1 - l1_sparsity) * d`` and, every 4% of
    the iterations, follows the sparsity of the best point (``||x_best - x||_0 / 1.5``). The
    step size starts at ``eps`` and shrinks by 1.5 at those checkpoints (down to ``eps / 10``),
    unless the best point became sparser, which resets it to ``eps`` and restarts from there.
    As in l1-APGD, the L1 steps use no momentum (``x_{k+1} = z``), and the random start is the
    projection of a Gaussian sample onto the L1 ball and the box (a sparse point).

    Each sample keeps the point of highest loss, and a sample is done, and dropped from the
    batch, as soon as an iterate is adversarial (the logits of the gradient's forward pass say
    so: no extra queries). With ``num_random_init > 1`` the attack restarts from new random
    points, only on the samples not yet adversarial.

    Losses: ``"ce"``, the estimator's loss (cross-entropy by default), or ``"dlr"``, the
    difference of logits ratio ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, invariant to the
    scale of the logits; targeted, ``-(z_s - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` with ``s``
    the class the model predicts on the clean input. DLR needs at least 3 classes (4 targeted).

    Threat model: white-box (needs loss gradients; ``"dlr"`` needs differentiable logits).
    Norms: inf, 2, 1.

    Parameters
    ----------
    estimator : estimator with ``loss_gradient`` (and ``logits`` for ``loss="dlr"``)
    eps : float or array-like of float, default 0.3
        Budget, one value or one per sample.
    norm : {"inf", 2, 1}, default "inf"
    max_iter : int, default 100
        Steps per run (each costs one forward and one backward pass).
    loss : {"ce", "dlr"}, default "ce"
    targeted : bool, default False
    num_random_init : int, default 1
        Number of runs from random points in the ball; 0 runs once from ``x``.
    rho : float in [0, 1], default 0.75
        Fraction of successful steps below which the step size is halved at a checkpoint.
    alpha : float in (0, 1], default 0.75
        Weight of the gradient step against the momentum (1: no momentum). Not used for
        ``norm=1``.
    l1_sparsity : float in [0, 1), default 0.8
        For ``norm=1``: the first steps change the coordinates above this quantile of gradient
        magnitudes (the top 20%); later steps adapt it.
    batch_size : int, default 128
    random_state : None, int or torch.Generator
        Seeds the random starts.
    verbose : bool, default False

    References
    ----------
    Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690

    Croce and Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image
    classifiers", ICML 2021. https://arxiv.org/abs/2103.01208

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.auto_pgd import APGD
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x = torch.rand(5, 4)
    >>> x_adv = APGD(clf, eps=0.1, max_iter=10, loss="dlr", random_state=0).generate(x)
    >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
    True
    """

    estimator: SupportsLossGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "norm": [NORM],
        "max_iter": [Interval(int, 0, None)],
        "loss": [Options(["ce", "dlr"])],
        "targeted": TARGETED,
        "num_random_init": [Interval(int, 0, None)],
        "rho": [Interval(float, 0, 1)],
        "alpha": [Interval(float, 0, 1, closed="right")],
        "l1_sparsity": [Interval(float, 0, 1, closed="left")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "loss_gradient")

    def __init__(
        self,
        estimator: SupportsLossGradient,
        *,
        eps: Any = 0.3,
        norm: Any = "inf",
        max_iter: int = 100,
        loss: str = "ce",
        targeted: bool = False,
        num_random_init: int = 1,
        rho: float = 0.75,
        alpha: float = 0.75,
        l1_sparsity: float = 0.8,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.norm = norm
        self.max_iter = max_iter
        self.loss = loss
        self.targeted = targeted
        self.num_random_init = num_random_init
        self.rho = rho
        self.alpha = alpha
        self.l1_sparsity = l1_sparsity
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _validate(self) -> None:
        super()._validate()
        if self.loss != "dlr":
            return
        name = type(self).__name__
        require_capabilities(self.estimator, ["class_gradient"], f"{name} with loss='dlr'")
        needed = 4 if self.targeted else 3
        if self.estimator.nb_classes < needed:
            raise invalid_parameter(
                "loss",
                name,
                f"'ce' for an estimator with {self.estimator.nb_classes} classes (the DLR loss "
                f"needs at least {needed} classes{' when targeted' if self.targeted else ''})",
                self.loss,
            )

    # ------------------------------------------------------------------ objective

    def _objective(
        self, x: torch.Tensor, y: torch.Tensor, source: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient, per-sample loss (to maximise) and logits, from one forward pass."""
        est = self.estimator
        if self.loss == "ce":
            grad, loss, logits = est.loss_gradient_tensor(x, y, return_outputs=True)
            if self.targeted:
                return -grad, -loss, logits
            return grad, loss, logits
        # loss="dlr": _validate required the class_gradient capability.
        est_dlr = cast(SupportsClassGradient, est)
        if self.targeted and source is not None:
            return est_dlr.objective_gradient_tensor(x, lambda z: _dlr_loss(z, source, y))
        return est_dlr.objective_gradient_tensor(x, lambda z: _dlr_loss(z, y, None))

    # ------------------------------------------------------------------ one run

    def _start(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        norm: str,
    ) -> torch.Tensor:
        """The first iterate: ``x`` itself (``num_random_init=0``), a uniform point of the ball
        (Linf, L2), or a Gaussian sample projected onto the L1 ball and the box (sparse)."""
        clip = self.estimator.clip_values
        if self.num_random_init == 0:
            return x.clone()
        if norm == "1":
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            if mask is not None:
                noise = noise * mask
            return x + project_lp_box(noise, x, eps, norm, clip)
        delta = random_in_ball(x.shape, eps, norm, generator, device=x.device, dtype=x.dtype)
        if mask is not None:
            delta = delta * mask
        return project_point(x + delta, x, eps, norm, clip)

    def _initial_state(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        eps: torch.Tensor,
        source: torch.Tensor | None,
        x0: torch.Tensor,
        grad: torch.Tensor,
        loss: torch.Tensor,
        norm: str,
    ) -> _State:
        """The state at the start ``x0``: step size ``eps`` (L1) or ``2 eps``, no progress yet,
        ``k`` the first steps' number of coordinates (L1)."""
        nb, d = x.shape[0], x[0].numel()
        k0 = min(d, max(1, math.ceil((1 - self.l1_sparsity) * d)))
        return _State(
            idx=torch.arange(nb, device=x.device),
            x=x,
            y=y,
            eps=eps,
            eta=eps.clone() if norm == "1" else 2 * eps.clone(),
            x_cur=x0,
            x_prev=x0,
            grad=grad,
            loss=loss,
            x_best=x0,
            grad_best=grad,
            loss_best=loss,
            n_up=torch.zeros(nb, device=x.device, dtype=torch.long),
            last_best=loss,
            last_reduced=torch.zeros(nb, device=x.device, dtype=torch.bool),
            k=torch.full((nb,), k0, device=x.device, dtype=torch.long),
            last_l0=torch.full((nb,), float(d), device=x.device, dtype=x.dtype),
            source=source,
            mask=mask,
        )

    def _checks(self, norm: str) -> set[int]:
        """The iterations after which the step size is reconsidered."""
        if norm == "1":
            period = max(1, math.floor(_L1_PERIOD * self.max_iter))
            return set(range(period, self.max_iter + 1, period))
        return set(_checkpoints(self.max_iter))

    def _step(self, s: _State, t: int, norm: str) -> torch.Tensor:
        """The next iterate: a projected steepest-ascent step of size ``eta``, then (Linf, L2,
        after the first step) the momentum combination with the previous iterate."""
        clip = self.estimator.clip_values
        g = s.grad if s.mask is None else s.grad * s.mask
        if norm == "1":
            step = _sparse_l1_direction(g, s.x_cur, clip, s.k)
        else:
            step = steepest_direction(g, norm)
        z = project_point(s.x_cur + s.eta * step, s.x, s.eps, norm, clip)
        if t == 0 or self.alpha == 1 or norm == "1":  # l1-APGD steps without momentum
            return z
        a = self.alpha
        moved = s.x_cur + a * (z - s.x_cur) + (1 - a) * (s.x_cur - s.x_prev)
        return project_point(moved, s.x, s.eps, norm, clip)

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        source: torch.Tensor | None,
        trace: list[torch.Tensor] | None = None,
    ) -> Outcome:
        """One APGD run: per sample, its first adversarial iterate, else its point of highest
        loss, with the success flags and the negated best losses (lower is better). ``trace``,
        when given, receives the step sizes of the running samples before each step (tests)."""
        norm = canonical_norm(self.norm)
        x0 = self._start(x, mask, generator, eps, norm)
        grad, loss, logits = self._objective(x0, y, source)
        out, best_loss = x0.clone(), loss.clone()
        success = is_adversarial(logits, y, self.targeted)
        s = self._initial_state(x, y, mask, eps, source, x0, grad, loss, norm)
        if bool(success.any()):
            s = s.keep(~success)
        checks, last_check, d = self._checks(norm), 0, x[0].numel()
        for t in range(self.max_iter):
            if s.idx.numel() == 0:
                break
            if trace is not None:
                trace.append(s.eta.flatten().clone())
            x_new = self._step(s, t, norm)
            grad, loss, logits = self._objective(x_new, s.y, s.source)
            s.advance(x_new, grad, loss)
            # A sample is done, and leaves, at its first adversarial iterate.
            done = is_adversarial(logits, s.y, self.targeted)
            if bool(done.any()):
                i = s.idx[done]
                out[i], success[i], best_loss[i] = x_new[done], True, loss[done]
                s = s.keep(~done)
            if t + 1 in checks and s.idx.numel() > 0:
                if norm == "1":
                    restart = self._l1_checkpoint(s, d)
                else:
                    restart = self._checkpoint(s, t + 1 - last_check)
                last_check = t + 1
                s.restart_from_best(restart)
        out[s.idx] = s.x_best
        best_loss[s.idx] = s.loss_best
        return Outcome(out, success, -best_loss)

    def _checkpoint(self, s: _State, window: int) -> torch.Tensor:
        """APGD's two conditions; halves the step size where one holds. Returns which samples
        restart from their best point."""
        cond1 = s.n_up.to(s.loss.dtype) < self.rho * window
        cond2 = ~s.last_reduced & (s.loss_best <= s.last_best)
        reduce = cond1 | cond2
        s.eta = torch.where(_view(reduce, s.eta), s.eta / 2, s.eta)
        s.last_reduced, s.last_best = reduce, s.loss_best
        s.n_up = torch.zeros_like(s.n_up)
        return reduce

    def _l1_checkpoint(self, s: _State, d: int) -> torch.Tensor:
        """l1-APGD: the update sparsity follows the best point; the step size shrinks unless the
        best point became sparser, which resets it. Returns which samples restart."""
        l0 = lp_norm(s.x_best - s.x, "0")
        sparser = l0 < _L1_SPARSER * s.last_l0
        s.k = torch.ceil(l0 / _L1_SHRINK).long().clamp(1, d)
        shrunk = torch.maximum(s.eta / _L1_SHRINK, _L1_MIN_STEP * s.eps)
        s.eta = torch.where(_view(sparser, s.eta), s.eps, shrunk)
        s.last_l0 = l0
        return sparser

    # ------------------------------------------------------------------ restarts

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        source = None
        if self.targeted and self.loss == "dlr":
            # The targeted DLR loss moves away from the class predicted on the clean input.
            with torch.no_grad():
                source = self.estimator.predict_tensor(x).argmax(dim=1)

        def run(r: int, idx: torch.Tensor | None, best: Best) -> Outcome:
            return self._run(
                _rows(x, idx),
                _rows(y, idx),
                _rows(mask, idx),
                generator,
                _rows(eps, idx),
                _rows(source, idx),
            )

        return best_of_restarts(run, x, max(1, self.num_random_init)).x


@dataclass
class _State:
    """The per-sample state of one APGD run, one row per sample still running; the rows of
    samples that succeed leave together (:meth:`keep`)."""

    idx: torch.Tensor  # each row's position in the batch
    x: torch.Tensor  # clean inputs
    y: torch.Tensor
    eps: torch.Tensor  # budgets, (n, 1, ..., 1)
    eta: torch.Tensor  # step sizes, (n, 1, ..., 1)
    x_cur: torch.Tensor  # the iterate, with its gradient and loss
    x_prev: torch.Tensor
    grad: torch.Tensor
    loss: torch.Tensor
    x_best: torch.Tensor  # the point of highest loss so far, with its gradient and loss
    grad_best: torch.Tensor
    loss_best: torch.Tensor
    n_up: torch.Tensor  # steps that raised the loss since the last checkpoint
    last_best: torch.Tensor  # loss_best at the last checkpoint
    last_reduced: torch.Tensor  # whether the step size was halved at the last checkpoint
    k: torch.Tensor  # L1: coordinates changed per step
    last_l0: torch.Tensor  # L1: sparsity of the best point at the last checkpoint
    source: torch.Tensor | None  # targeted DLR: the class predicted on the clean input
    mask: torch.Tensor | None  # one row per sample, or one row shared by all

    def keep(self, which: torch.Tensor) -> _State:
        """The rows where the bool vector ``which`` holds (a shared mask row stays)."""
        kept: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            shared = f.name == "mask" and v is not None and v.shape[0] == 1
            kept[f.name] = v if v is None or shared else v[which]
        return _State(**kept)

    def advance(self, x_new: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor) -> None:
        """Move to ``x_new``, counting a rise of the loss and keeping the best point."""
        self.n_up = self.n_up + (loss > self.loss).long()
        self.x_prev, self.x_cur, self.grad, self.loss = self.x_cur, x_new, grad, loss
        better = _view(loss > self.loss_best, x_new)
        self.x_best = torch.where(better, x_new, self.x_best)
        self.grad_best = torch.where(better, grad, self.grad_best)
        self.loss_best = torch.maximum(loss, self.loss_best)

    def restart_from_best(self, restart: torch.Tensor) -> None:
        """Samples where ``restart`` holds go back to their best point."""
        r = _view(restart, self.x_cur)
        self.x_cur = torch.where(r, self.x_best, self.x_cur)
        self.grad = torch.where(r, self.grad_best, self.grad)
        self.loss = torch.where(restart, self.loss_best, self.loss)


APGD = AutoProjectedGradientDescent
