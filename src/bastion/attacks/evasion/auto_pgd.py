"""Auto-PGD (Croce and Hein, 2020) in the Linf and L2 balls, and l1-APGD (Croce and Hein, 2021)
in the L1 ball intersected with the box."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, ClassVar

import torch

from bastion._validation import Constraint, Interval, Options, invalid_parameter
from bastion.attacks._lp import (
    canonical_norm,
    lp_norm,
    project_lp_box,
    project_point,
    random_in_ball,
    steepest_direction,
)
from bastion.attacks.base import (
    BATCH_SIZE,
    BUDGET,
    NORM,
    RANDOM_STATE,
    TARGETED,
    VERBOSE,
    FixedBudgetAttack,
)
from bastion.estimators.base import require_capabilities

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
    _conformance: ClassVar[dict[str, Any]] = {"params": {"max_iter": 5}}

    def __init__(
        self,
        estimator: Any,
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
        if self.targeted and source is not None:
            return est.objective_gradient_tensor(x, lambda z: _dlr_loss(z, source, y))
        return est.objective_gradient_tensor(x, lambda z: _dlr_loss(z, y, None))

    def _is_adversarial(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(dim=1)
        return pred == y if self.targeted else pred != y

    # ------------------------------------------------------------------ one run

    def _start(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        norm: str,
    ) -> torch.Tensor:
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

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        source: torch.Tensor | None,
        trace: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run. Returns the result per sample (its first adversarial iterate, else its
        point of highest loss), the success flags and the best losses. ``trace``, when given,
        receives the step sizes of the active samples before each step (for tests)."""
        norm = canonical_norm(self.norm)
        clip = self.estimator.clip_values
        n_iter = self.max_iter
        x0 = self._start(x, mask, generator, eps, norm)
        grad, loss, logits = self._objective(x0, y, source)
        out, best_loss = x0.clone(), loss.clone()
        success = self._is_adversarial(logits, y)

        d = x[0].numel()
        if norm == "1":
            period = max(1, math.floor(_L1_PERIOD * n_iter))
            checks = set(range(period, n_iter + 1, period))
            eta = eps.clone()
        else:
            checks = set(_checkpoints(n_iter))
            eta = 2 * eps.clone()
        nb = x.shape[0]
        k0 = min(d, max(1, math.ceil((1 - self.l1_sparsity) * d)))
        # Per-sample state of the samples still running; dropped together when they succeed.
        s: dict[str, torch.Tensor] = {
            "idx": torch.arange(nb, device=x.device),
            "x": x,
            "y": y,
            "eps": eps,
            "eta": eta,
            "x_cur": x0,
            "x_prev": x0,
            "grad": grad,
            "loss": loss,
            "x_best": x0,
            "grad_best": grad,
            "loss_best": loss,
            "n_up": torch.zeros(nb, device=x.device, dtype=torch.long),
            "last_best": loss,
            "last_reduced": torch.zeros(nb, device=x.device, dtype=torch.bool),
            "k": torch.full((nb,), k0, device=x.device, dtype=torch.long),
            "last_l0": torch.full((nb,), float(d), device=x.device, dtype=x.dtype),
        }
        if source is not None:
            s["source"] = source
        if mask is not None and mask.shape[0] > 1:
            s["mask"] = mask
        if bool(success.any()):
            s = {key: v[~success] for key, v in s.items()}
        last_check = 0
        for t in range(n_iter):
            if s["idx"].numel() == 0:
                break
            if trace is not None:
                trace.append(s["eta"].flatten().clone())
            m = s.get("mask", mask)
            g = s["grad"] if m is None else s["grad"] * m
            x_cur = s["x_cur"]
            if norm == "1":
                step = _sparse_l1_direction(g, x_cur, clip, s["k"])
            else:
                step = steepest_direction(g, norm)
            z = project_point(x_cur + s["eta"] * step, s["x"], s["eps"], norm, clip)
            if t == 0 or self.alpha == 1 or norm == "1":  # l1-APGD steps without momentum
                x_new = z
            else:
                a = self.alpha
                moved = x_cur + a * (z - x_cur) + (1 - a) * (x_cur - s["x_prev"])
                x_new = project_point(moved, s["x"], s["eps"], norm, clip)
            grad, loss, logits = self._objective(x_new, s["y"], s.get("source"))
            s["n_up"] = s["n_up"] + (loss > s["loss"]).long()
            s["x_prev"], s["x_cur"], s["grad"], s["loss"] = x_cur, x_new, grad, loss
            better = _col(loss > s["loss_best"], x_new)
            s["x_best"] = torch.where(better, x_new, s["x_best"])
            s["grad_best"] = torch.where(better, grad, s["grad_best"])
            s["loss_best"] = torch.maximum(loss, s["loss_best"])

            done = self._is_adversarial(logits, s["y"])
            if bool(done.any()):
                i = s["idx"][done]
                out[i], success[i], best_loss[i] = x_new[done], True, loss[done]
                s = {key: v[~done] for key, v in s.items()}
            if t + 1 in checks and s["idx"].numel() > 0:
                if norm == "1":
                    restart = self._l1_checkpoint(s, d)
                else:
                    restart = self._checkpoint(s, t + 1 - last_check)
                last_check = t + 1
                r = _col(restart, s["x_cur"])
                s["x_cur"] = torch.where(r, s["x_best"], s["x_cur"])
                s["grad"] = torch.where(r, s["grad_best"], s["grad"])
                s["loss"] = torch.where(restart, s["loss_best"], s["loss"])
        out[s["idx"]] = s["x_best"]
        best_loss[s["idx"]] = s["loss_best"]
        return out, success, best_loss

    def _checkpoint(self, s: dict[str, torch.Tensor], window: int) -> torch.Tensor:
        """APGD's two conditions; halves the step size where one holds. Returns which samples
        restart from their best point."""
        cond1 = s["n_up"].to(s["loss"].dtype) < self.rho * window
        cond2 = ~s["last_reduced"] & (s["loss_best"] <= s["last_best"])
        reduce = cond1 | cond2
        s["eta"] = torch.where(_col(reduce, s["eta"]), s["eta"] / 2, s["eta"])
        s["last_reduced"], s["last_best"] = reduce, s["loss_best"]
        s["n_up"] = torch.zeros_like(s["n_up"])
        return reduce

    def _l1_checkpoint(self, s: dict[str, torch.Tensor], d: int) -> torch.Tensor:
        """l1-APGD: the update sparsity follows the best point; the step size shrinks unless the
        best point became sparser, which resets it. Returns which samples restart."""
        l0 = lp_norm(s["x_best"] - s["x"], "0")
        sparser = l0 < _L1_SPARSER * s["last_l0"]
        s["k"] = torch.ceil(l0 / _L1_SHRINK).long().clamp(1, d)
        shrunk = torch.maximum(s["eta"] / _L1_SHRINK, _L1_MIN_STEP * s["eps"])
        s["eta"] = torch.where(_col(sparser, s["eta"]), s["eps"], shrunk)
        s["last_l0"] = l0
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
        best, success, best_loss = self._run(x, y, mask, generator, eps, source)
        for _restart in range(self.num_random_init - 1):
            todo = (~success).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            m = mask if mask is None or mask.shape[0] == 1 else mask[todo]
            src = None if source is None else source[todo]
            cand, ok, loss = self._run(x[todo], y[todo], m, generator, eps[todo], src)
            better = ok | (loss > best_loss[todo])
            keep = todo[better]
            best[keep], success[keep], best_loss[keep] = cand[better], ok[better], loss[better]
        return best


def _col(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample flags ``(B,)`` shaped to broadcast against ``like``."""
    return flags.view((-1,) + (1,) * (like.ndim - 1))


APGD = AutoProjectedGradientDescent
