"""Health checks: signs that an evaluation overestimates robustness.

Each check is a small function of a :class:`HealthContext` returning a
:class:`~bastion.evaluation.HealthCheck`; they run on a few dozen samples with a few
iterations, cheap next to the suite. What each one can and cannot detect is written in
``docs/evaluation.md``.

References
----------
Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry and Kurakin, "On
Evaluating Adversarial Robustness", 2019. https://arxiv.org/abs/1902.06705

Pintor, Demetrio, Sotgiu, Demontis, Carlini, Biggio and Roli, "Indicators of Attack Failure:
Debugging and Improving Optimization of Adversarial Examples", NeurIPS 2022.
https://arxiv.org/abs/2106.09947
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.evaluation._result import HealthCheck
from bastion.evaluation._suites import (
    Suite,
    attack_class,
    instantiate,
    is_minimum_norm,
    predicted,
    valid,
)
from bastion.exceptions import ModelError

__all__ = ["HEALTH_CHECKS", "HealthContext", "run_health_checks"]

#: Samples each check looks at (at most).
NB_CHECK = 32
#: Samples and queries of the black-box check's Square attack.
NB_BLACK_BOX = 16
BLACK_BOX_QUERIES = 300
#: Share of checked points whose failure makes a check fail rather than warn.
FAIL_SHARE = 0.25


@dataclass
class HealthContext:
    """What the checks see: the (defended) estimator, the evaluated data and the results."""

    estimator: Any
    x: torch.Tensor
    y: torch.Tensor
    clean_correct: torch.Tensor
    clean_accuracy: float
    norm: str
    eps: list[float]
    robust: list[np.ndarray]  # per eps, per sample
    robust_accuracy: list[float]
    suite: Suite
    seed: int
    batch_size: int
    flags: list[Any] = field(default_factory=list)  # AutoAttack's EvaluationFlag entries
    #: Per eps, per sample, the attack that broke it (``EpsResult.broken_by``), where the
    #: results come from several runs whose AutoAttack flags were not kept (the CLI's
    #: per-budget runs): the black-box check reads AutoAttack's Square breaks from it.
    broken_by: list[np.ndarray] | None = None

    @property
    def caps(self) -> set[str]:
        return set(getattr(self.estimator, "capabilities", ()))

    @property
    def white_box(self) -> bool:
        """Whether the suite attacks with gradients."""
        for a in self.suite.attacks:
            needs = getattr(attack_class(a), "_estimator_requirements", ())
            if a.name == "AutoAttack" or any("gradient" in c for c in needs):
                return True
        return False

    def flag(self, code: str) -> Any:
        return next((f for f in self.flags if f.code == code), None)

    def sample(self, which: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Indices of up to :data:`NB_CHECK` samples (of ``which``, all by default)."""
        if which is None:
            return torch.arange(min(len(self.x), NB_CHECK), device=self.x.device)
        w = torch.as_tensor(np.asarray(which), device=self.x.device)
        return w.nonzero().squeeze(1)[:NB_CHECK]


def _na(code: str, why: str) -> HealthCheck:
    return HealthCheck(code, "pass", f"not applicable: {why}", applicable=False)


def _span(ctx: HealthContext) -> float:
    """The width of the valid input range (of the data when unbounded)."""
    if ctx.estimator.clip_values is not None:
        lo, hi = ctx.estimator.clip_values
        return float(hi) - float(lo)
    return float(ctx.x.max() - ctx.x.min()) or 1.0


def _pgd(ctx: HealthContext, eps: float, max_iter: int) -> Any:
    from bastion.attacks.evasion import PGD

    return PGD(
        ctx.estimator,
        eps=eps,
        eps_step=2.5 * eps / max_iter,
        max_iter=max_iter,
        norm="inf" if ctx.norm == "inf" else 2,
        batch_size=ctx.batch_size,
        random_state=ctx.seed,
    )


def _square(ctx: HealthContext, eps: float, max_queries: int) -> Any:
    from bastion.attacks.evasion import SquareAttack

    return SquareAttack(
        ctx.estimator,
        eps=eps,
        norm="inf" if ctx.norm == "inf" else 2,
        max_queries=max_queries,
        batch_size=ctx.batch_size,
        random_state=ctx.seed,
    )


def _share(k: int, n: int) -> str:
    return f"{k} of {n} ({k / max(n, 1):.0%})"


# ----------------------------------------------------------------------------- the checks


def check_eps_zero(ctx: HealthContext) -> HealthCheck:
    """Accuracy at eps 0 equals the clean accuracy: the robust accuracy at the smallest
    budget does not exceed the clean accuracy, and the suite's first fixed-budget attack run
    with ``eps=0`` on a few samples changes neither the inputs nor the predictions."""
    code = "eps-zero"
    if ctx.robust_accuracy and ctx.robust_accuracy[0] > ctx.clean_accuracy + 1e-12:
        return HealthCheck(
            code,
            "fail",
            f"the robust accuracy at eps={ctx.eps[0]:g} ({ctx.robust_accuracy[0]:.2%}) exceeds "
            f"the clean accuracy ({ctx.clean_accuracy:.2%}): the evaluation is unreliable.",
            "Check that the labels are right and that the model is deterministic.",
        )
    spec = next((a for a in ctx.suite.attacks if not is_minimum_norm(attack_class(a))), None)
    if spec is None:
        return HealthCheck(
            code,
            "pass",
            "the robust accuracy never exceeds the clean accuracy (the suite has "
            "no fixed-budget attack to run at eps 0).",
        )
    idx = ctx.sample()
    attack = instantiate(
        spec,
        ctx.estimator,
        eps=0.0,
        norm=ctx.norm,
        seed=ctx.seed,
        batch_size=ctx.batch_size,
        verbose=False,
    )
    params = attack.get_params()
    if "max_queries" in params:
        attack.set_params(max_queries=min(int(params["max_queries"]), 100))
    if "eps_step" in params:
        attack.set_params(eps_step=0.01)
    x = ctx.x[idx]
    with warnings.catch_warnings():
        # AutoAttack's own warning signs are reported by the other checks.
        warnings.simplefilter("ignore")
        x_adv = torch.as_tensor(attack.generate(x, ctx.y[idx]), device=x.device)
    moved = float((x_adv - x).abs().max())
    changed = int(
        (
            predicted(ctx.estimator, x_adv, ctx.batch_size)
            != predicted(ctx.estimator, x, ctx.batch_size)
        ).sum()
    )
    details = {"samples": len(idx), "max_change": moved, "changed_predictions": changed}
    if moved > 1e-7 or changed:
        return HealthCheck(
            code,
            "fail",
            f"{spec.name} run with eps=0 changed the inputs by up to {moved:.3g} and "
            f"{changed} prediction(s) on {len(idx)} samples: accuracy at eps 0 differs from "
            "the clean accuracy, so the evaluation is unreliable.",
            "Check the attack's budget handling and whether the model is randomised.",
            details=details,
        )
    return HealthCheck(
        code,
        "pass",
        f"at eps=0 {spec.name} changed nothing on {len(idx)} samples, and the "
        "robust accuracy never exceeds the clean accuracy.",
        details=details,
    )


def check_monotonic(ctx: HealthContext) -> HealthCheck:
    """Robust accuracy falls (never rises) as eps grows; per sample, a point broken at a
    budget is broken at every larger one."""
    code = "monotonic"
    if len(ctx.eps) < 2:
        return _na(code, "a single eps was evaluated.")
    acc = ctx.robust_accuracy
    rises = [
        (ctx.eps[i], ctx.eps[i + 1]) for i in range(len(acc) - 1) if acc[i + 1] > acc[i] + 1e-12
    ]
    robust = np.stack(ctx.robust)  # (E, N)
    # robust at a larger eps but broken at a smaller one
    inconsistent = int((robust & ~np.logical_and.accumulate(robust, axis=0)).any(0).sum())
    n = robust.shape[1]
    details = {"rises": rises, "inconsistent_samples": inconsistent}
    if rises:
        a, b = rises[0]
        return HealthCheck(
            code,
            "fail",
            f"the robust accuracy rises from eps={a:g} to eps={b:g}: a stronger adversary "
            "cannot do worse, so the attacks are failing and the evaluation is unreliable.",
            "Run more iterations or restarts, check the step size scales with eps, and look "
            "for gradient masking.",
            details=details,
        )
    if inconsistent > max(1, 0.02 * n):
        return HealthCheck(
            code,
            "warn",
            f"{_share(inconsistent, n)} samples were broken at a budget but not at a larger "
            "one: the attacks are not reliably finding the adversarial examples that exist.",
            "Add restarts or iterations; treat each sample as broken from its smallest "
            "breaking budget on.",
            details=details,
        )
    return HealthCheck(
        code,
        "pass",
        "the robust accuracy falls monotonically with eps "
        f"({inconsistent} per-sample inconsistencies).",
        details=details,
    )


def check_unbounded(ctx: HealthContext) -> HealthCheck:
    """An attack with a budget covering the whole input range must reach about 0% accuracy
    (PGD for white-box suites, Square for black-box ones)."""
    code = "unbounded-attack"
    idx = ctx.sample(ctx.clean_correct.cpu().numpy())
    if idx.numel() == 0:
        return _na(code, "no correctly classified sample.")
    span = _span(ctx)
    d = int(np.prod(ctx.x.shape[1:]))
    eps = span if ctx.norm == "inf" else span * math.sqrt(d)
    if "loss_gradient" in ctx.caps:
        attack, what = _pgd(ctx, eps, 20), "PGD (20 steps)"
    else:
        attack, what = _square(ctx, eps, 300), "Square (300 queries)"
    x, y = ctx.x[idx], ctx.y[idx]
    cand = torch.as_tensor(attack.generate(x, y), device=x.device)
    broken = valid(ctx.estimator, cand, x, y, eps, ctx.norm, ctx.batch_size)
    left = int((~broken).sum())
    n = len(idx)
    details = {"eps": eps, "samples": n, "still_correct": left}
    msg = (
        f"{what} with an unbounded budget (eps={eps:.3g}, the whole input range) left "
        f"{_share(left, n)} correctly classified samples correct"
    )
    if left == 0:
        return HealthCheck(code, "pass", msg + ", as it should.", details=details)
    status = "fail" if left / n > 0.1 else "warn"
    return HealthCheck(
        code,
        status,
        msg + ": an unbounded attack must reach 0% accuracy. The attacks cannot find "
        "adversarial examples even where they surely exist; the evaluation is unreliable.",
        "Look for gradient masking (use BPDA, EOT or a black-box attack) and check the "
        "model's clip_values and normalisation.",
        details=details,
    )


def check_black_box(ctx: HealthContext) -> HealthCheck:
    """The black-box Square attack breaks samples every white-box attack missed (gradient
    masking). Reuses AutoAttack's own check where the suite ran its Square stage."""
    code = "black-box-stronger"
    if not ctx.white_box:
        return _na(code, "the suite is black-box.")
    flag = ctx.flag("black-box-stronger")
    if flag is not None:
        return HealthCheck(
            code,
            "fail",
            f"{flag.message} The evaluation is unreliable.",
            "Use BPDA/EOT for the defence's non-differentiable or random parts, or report "
            "the black-box numbers.",
        )
    autoattack = any(
        a.name == "AutoAttack" and a.params.get("version") == "standard" for a in ctx.suite.attacks
    )
    if autoattack and ctx.broken_by is not None:
        # AutoAttack's Square runs last, on the samples its white-box stages left robust:
        # every sample it breaks is one the white-box attacks missed (AutoAttack's own flag).
        by_eps = [int(sum(str(b).endswith("/square") for b in per)) for per in ctx.broken_by]
        worst = int(np.argmax(by_eps)) if by_eps else 0
        if by_eps and by_eps[worst] > 0:
            return HealthCheck(
                code,
                "fail",
                f"AutoAttack's black-box Square stage broke {by_eps[worst]} sample(s) that "
                f"every white-box attack before it missed at eps={ctx.eps[worst]:g}: gradient "
                "masking, so the evaluation is unreliable.",
                "Use BPDA/EOT for the defence's non-differentiable or random parts, or report "
                "the black-box numbers.",
                details={"eps": ctx.eps[worst], "broken_by_square": by_eps[worst]},
            )
    if autoattack:
        return HealthCheck(
            code,
            "pass",
            "AutoAttack's Square stage broke no point that its white-box attacks missed.",
        )
    k = max((i for i, r in enumerate(ctx.robust) if r.any()), default=None)
    if k is None:
        return HealthCheck(code, "pass", "the white-box attacks left no robust sample.")
    idx = ctx.sample(ctx.robust[k])[:NB_BLACK_BOX]
    x, y = ctx.x[idx], ctx.y[idx]
    eps = ctx.eps[k]
    cand = torch.as_tensor(_square(ctx, eps, BLACK_BOX_QUERIES).generate(x, y), device=x.device)
    broken = int(valid(ctx.estimator, cand, x, y, eps, ctx.norm, ctx.batch_size).sum())
    n = len(idx)
    details = {"eps": eps, "samples": n, "broken": broken}
    if broken == 0:
        return HealthCheck(
            code,
            "pass",
            f"Square ({BLACK_BOX_QUERIES} queries) broke none of {n} samples the white-box "
            f"attacks left robust at eps={eps:g}.",
            details=details,
        )
    status = "fail" if broken / n > 0.05 else "warn"
    return HealthCheck(
        code,
        status,
        f"the black-box Square attack ({BLACK_BOX_QUERIES} queries) broke "
        f"{_share(broken, n)} samples that every white-box attack left robust at "
        f"eps={eps:g}: gradient-based attacks are failing (gradient masking), so the "
        "evaluation is unreliable.",
        "Attack through BPDA/EOT, add a black-box attack to the suite, or use suite "
        "'standard' (AutoAttack includes Square).",
        details=details,
    )


def _margin(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def objective(z: torch.Tensor) -> torch.Tensor:
        true = z.gather(1, y[:, None]).squeeze(1)
        other = z.scatter(1, y[:, None], float("-inf")).amax(1)
        return true - other

    return objective


def _objective(ctx: HealthContext, x: torch.Tensor, y: torch.Tensor, grad: bool) -> Any:
    """The logit margin ``z_y - max_{j != y} z_j`` (and its gradient): it does not saturate
    like the cross-entropy on confident points. Minus the loss when the estimator has no
    class gradients."""
    if "class_gradient" in ctx.caps:
        if not grad:
            with torch.no_grad():
                return _margin(y)(ctx.estimator.logits_tensor(x)), None
        g, value, _ = ctx.estimator.objective_gradient_tensor(x, _margin(y))
        return value, g
    g, loss, _ = ctx.estimator.loss_gradient_tensor(x, y, return_outputs=True)
    return -loss, -g


def check_gradients(ctx: HealthContext) -> HealthCheck:
    """Zero, exploding or shattered gradients of the logit margin on a few samples.

    Zero: the gradient vanishes (norm under 1e-12). Exploding: not finite, or a norm over
    1e6. Shattered: a small step against the gradient, sized to lower the margin by 10% in
    the first-order model, lowers the real margin by less than a quarter, or more than four
    times, of that prediction (a finite-difference check of the gradient's direction).
    """
    code = "gradients"
    if "loss_gradient" not in ctx.caps:
        return _na(code, "the estimator has no gradients (black-box).")
    idx = ctx.sample()
    x, y = ctx.x[idx], ctx.y[idx]
    try:
        m, g = _objective(ctx, x, y, grad=True)
    except ModelError as err:
        return HealthCheck(
            code,
            "fail",
            f"the gradients are not finite ({err}): exploding gradients make "
            "every gradient-based number unreliable.",
            "Check the model for numerically unstable operations (log of 0, division).",
        )
    norms = g.reshape(len(g), -1).to(torch.float64).norm(dim=1)
    n = len(idx)
    zero = int((norms < 1e-12).sum())
    huge = int((norms > 1e6).sum())
    # Finite differences along the gradient, sized to move the margin by 10%.
    h = (0.1 * m.abs().clamp_min(1e-3) / norms.clamp_min(1e-30)).to(x.dtype)
    x2 = x - g * h.reshape(-1, *([1] * (x.ndim - 1)))
    if ctx.estimator.clip_values is not None:
        x2 = x2.clamp(*ctx.estimator.clip_values)
    m2, _ = _objective(ctx, x2, y, grad=False)
    predicted_change = (g * (x2 - x)).reshape(n, -1).sum(1).to(torch.float64)
    actual = (m2 - m).to(torch.float64)
    usable = (norms >= 1e-12) & (predicted_change.abs() > 1e-6)
    ratio = actual[usable] / predicted_change[usable]
    shattered = int(((ratio < 0.25) | (ratio > 4.0)).sum())
    n_usable = int(usable.sum())
    details = {
        "samples": n,
        "zero": zero,
        "exploding": huge,
        "shattered": shattered,
        "checked_directions": n_usable,
        "median_ratio": float(ratio.median()) if n_usable else None,
        "median_norm": float(norms.median()),
    }
    problems = []
    if zero:
        problems.append(f"zero on {_share(zero, n)} samples")
    if huge:
        problems.append(f"exploding (norm over 1e6) on {_share(huge, n)} samples")
    if shattered:
        problems.append(
            f"shattered on {_share(shattered, n_usable)} samples (a step along the gradient "
            "does not change the model's output as the gradient predicts)"
        )
    if not problems:
        return HealthCheck(
            code,
            "pass",
            f"the gradients of {n} samples are non-zero, finite and agree with finite differences.",
            details=details,
        )
    bad = max(zero, huge, shattered)
    status = "fail" if bad / n > FAIL_SHARE else "warn"
    from bastion.estimators import DefendedEstimator

    if not zero and not huge and isinstance(ctx.estimator, DefendedEstimator):
        if ctx.estimator.gradients == "bpda":
            # BPDA's surrogate gradient is not the defended model's by design: the attack
            # results, not this mismatch, say whether it worked.
            return HealthCheck(
                code,
                "warn",
                "the gradients are " + "; ".join(problems) + ". This is expected with BPDA "
                "(the gradient is a surrogate's); check that the other checks pass.",
                "Compare with a black-box attack (suite 'blackbox').",
                details=details,
            )
    return HealthCheck(
        code,
        status,
        "the gradients are " + "; ".join(problems) + ". Gradient-based attacks are misled "
        "(gradient masking, e.g. a non-differentiable or saturating defence), so the "
        "evaluation is unreliable.",
        "Attack through a differentiable approximation (BPDA: DefendedEstimator("
        "gradients='bpda')), use EOT for randomness, or use suite 'blackbox'.",
        details=details,
    )


def check_randomness(ctx: HealthContext) -> HealthCheck:
    """Two predictions of the same inputs differ (a randomised model)."""
    code = "randomness"
    idx = ctx.sample()
    x = ctx.x[idx]
    with torch.no_grad():
        a = ctx.estimator.predict_tensor(x)
        b = ctx.estimator.predict_tensor(x)
    diff = float((a - b).abs().max())
    flips = int((a.argmax(1) != b.argmax(1)).sum())
    details = {"samples": len(idx), "max_difference": diff, "changed_labels": flips}
    if diff <= 1e-6 and ctx.flag("randomized") is None:
        return HealthCheck(
            code,
            "pass",
            f"the model's outputs on {len(idx)} samples are the same twice.",
            details=details,
        )
    return HealthCheck(
        code,
        "fail",
        f"the model's outputs change between identical calls (by up to {diff:.3g}; "
        f"{flips} labels changed): a single-draw attack on a randomised model overestimates "
        "robustness, so the evaluation is unreliable.",
        "Attack the expectation over the randomness (ExpectationOverTransformation, or "
        "AutoAttack version='rand') and report the accuracy of several draws.",
        details=details,
    )


def check_convergence(ctx: HealthContext) -> HealthCheck:
    """A probe PGD (20 steps at the largest eps, no random start) with its loss traced on
    the samples it does not break: a loss that never rises means the attack makes no
    progress; a loss still rising steeply in the last quarter means too few iterations."""
    code = "attack-convergence"
    if "loss_gradient" not in ctx.caps:
        return _na(code, "the estimator has no gradients (black-box).")
    idx = ctx.sample(ctx.clean_correct.cpu().numpy())
    if idx.numel() == 0:
        return _na(code, "no correctly classified sample.")
    x0, y = ctx.x[idx], ctx.y[idx]
    eps, steps = ctx.eps[-1], 20
    lr = 2.5 * eps / steps
    x = x0.clone()
    trace = []
    for _ in range(steps):
        g, loss, _ = ctx.estimator.loss_gradient_tensor(x, y, return_outputs=True)
        trace.append(loss.detach().to(torch.float64))
        if ctx.norm == "inf":
            x = x + lr * g.sign()
            x = x0 + (x - x0).clamp(-eps, eps)
        else:
            gn = g.reshape(len(g), -1).norm(dim=1).clamp_min(1e-12)
            x = x + lr * g / gn.reshape(-1, *([1] * (x.ndim - 1)))
            d = x - x0
            dn = d.reshape(len(d), -1).norm(dim=1).clamp_min(1e-12)
            x = x0 + d * (eps / dn).clamp(max=1.0).reshape(-1, *([1] * (x.ndim - 1)))
        if ctx.estimator.clip_values is not None:
            x = x.clamp(*ctx.estimator.clip_values)
    losses = torch.stack(trace, 1)  # (n, steps)
    alive = predicted(ctx.estimator, x, ctx.batch_size) == y
    n = int(alive.sum())
    if n == 0:
        return HealthCheck(
            code,
            "pass",
            f"the probe PGD broke all {len(idx)} samples at eps={eps:g}.",
            details={"samples": len(idx), "unbroken": 0},
        )
    lt = losses[alive]
    rise = lt.amax(1) - lt[:, 0]
    stuck = int((rise < 1e-6).sum())
    q = steps - steps // 4 - 1
    late = lt[:, -1] - lt[:, q]
    rising = int(((late > 0.25 * rise.clamp_min(1e-12)) & (late > 0.05)).sum())
    details = {"samples": len(idx), "unbroken": n, "no_progress": stuck, "still_rising": rising}
    if stuck / n > FAIL_SHARE:
        return HealthCheck(
            code,
            "fail",
            f"the probe PGD's loss never rose on {_share(stuck, n)} samples it could not break "
            f"at eps={eps:g}: the attack makes no progress (zero or useless gradients), so "
            "the evaluation is unreliable.",
            "Look for gradient masking: attack through BPDA/EOT or use a black-box attack.",
            details=details,
        )
    if rising / n > 0.5:
        return HealthCheck(
            code,
            "warn",
            f"the probe PGD's loss was still rising steeply in its last iterations on "
            f"{_share(rising, n)} unbroken samples: the attacks may need more iterations.",
            "Raise max_iter (or use AutoAttack's APGD, which adapts its step size).",
            details=details,
        )
    return HealthCheck(
        code,
        "pass",
        f"the probe PGD's loss rose and levelled off on the {n} samples it did not break.",
        details=details,
    )


#: Distillation of the transfer check's surrogate: queries per evaluated sample, optimiser
#: steps, batch, hidden width, and the largest input (features) it sees (bigger images are
#: average-pooled down to it).
SURROGATE_COPIES = 8
SURROGATE_STEPS = 300
SURROGATE_BATCH = 128
SURROGATE_WIDTH = 256
SURROGATE_FEATURES = 3 * 32 * 32


def _distilled_surrogate(ctx: HealthContext, eps: float) -> Any:
    """A small MLP trained to match the estimator's probabilities on the evaluated samples
    and on random points of their ``2 eps`` neighbourhood (Papernot et al. 2017's
    substitute, without its Jacobian augmentation): smooth by construction, so its gradients
    show where a masked model's do not."""
    from torch import nn

    from bastion.estimators import TorchClassifier

    est = ctx.estimator
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
    x = ctx.x[ctx.sample(None)] if len(ctx.x) > 4 * NB_CHECK else ctx.x
    shape = tuple(x.shape[1:])
    reps = x.repeat(SURROGATE_COPIES, *([1] * len(shape)))
    noise = (torch.rand(reps.shape, generator=gen) * 2 - 1).to(reps)
    if ctx.norm != "inf":  # the same radius in L2: scale each direction to a random length
        flat = noise.flatten(1)
        noise = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(noise)
        noise = noise * torch.rand((len(reps),) + (1,) * len(shape), generator=gen).to(reps)
    pts = torch.cat([x, reps + 2 * eps * noise])
    if est.clip_values is not None:
        pts = pts.clamp(float(est.clip_values[0]), float(est.clip_values[1]))
    with torch.no_grad():
        target = torch.cat(
            [
                est.predict_tensor(pts[i : i + ctx.batch_size])
                for i in range(0, len(pts), ctx.batch_size)
            ]
        ).to(torch.float32)
    layers: list[nn.Module] = []
    features = int(np.prod(shape))
    if len(shape) == 3 and features > SURROGATE_FEATURES:
        side = max(1, int((SURROGATE_FEATURES / shape[0]) ** 0.5))
        layers.append(nn.AdaptiveAvgPool2d(side))
        features = shape[0] * side * side
    hidden = nn.Linear(features, SURROGATE_WIDTH)
    out = nn.Linear(SURROGATE_WIDTH, int(est.nb_classes))
    with torch.no_grad():  # seeded initialisation, no global RNG
        for layer in (hidden, out):
            bound = layer.in_features**-0.5
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.uniform_(-bound, bound, generator=gen)
    net = nn.Sequential(*layers, nn.Flatten(), hidden, nn.ReLU(), out)
    pts_cpu = pts.detach().cpu().to(torch.float32)
    target = target.cpu()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(SURROGATE_STEPS):
        idx = torch.randint(0, len(pts_cpu), (min(SURROGATE_BATCH, len(pts_cpu)),), generator=gen)
        logp = torch.log_softmax(net(pts_cpu[idx]), dim=1)
        loss = -(target[idx] * logp).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return TorchClassifier(
        net.to(ctx.x.device),
        input_shape=shape,
        nb_classes=int(est.nb_classes),
        clip_values=est.clip_values,
        device=ctx.x.device,
    )


def check_transfer(ctx: HealthContext) -> HealthCheck:
    """Adversarial examples crafted on a surrogate break samples the direct attack missed.

    The surrogate is the same defence attacked through BPDA for a
    :class:`~bastion.estimators.DefendedEstimator` with ``gradients="exact"``, and otherwise
    a small MLP distilled from the estimator's predictions on the evaluated samples and
    their neighbourhood (a transfer attack, Papernot et al. 2017): both have useful gradients
    where a masked model has none. Applies to white-box suites (a black-box suite uses no
    gradients to mask).
    """
    from bastion.estimators import DefendedEstimator

    code = "transfer"
    est = ctx.estimator
    if not ctx.white_box:
        return _na(code, "the suite attacks without gradients (nothing to mask).")
    k = max((i for i, r in enumerate(ctx.robust) if r.any()), default=None)
    if k is None:
        return HealthCheck(code, "pass", "the direct attacks left no robust sample.")
    idx = ctx.sample(ctx.robust[k])
    x, y, eps = ctx.x[idx], ctx.y[idx], ctx.eps[k]
    if isinstance(est, DefendedEstimator) and est.gradients == "exact":
        surrogate = DefendedEstimator(
            est.estimator,
            preprocessors=est.preprocessors,
            postprocessors=est.postprocessors,
            gradients="bpda",
        )
        what, fix = (
            "through BPDA (the defence's surrogate gradients)",
            "Evaluate with DefendedEstimator(..., gradients='bpda') (the adaptive attacker).",
        )
    else:
        surrogate = _distilled_surrogate(ctx, eps)
        what, fix = (
            "on a surrogate distilled from the model's predictions",
            "Look for gradient masking (non-differentiable or saturating layers, "
            "randomness): attack through BPDA/EOT, or add transfer and black-box attacks "
            "to the suite.",
        )
    probe = dataclasses.replace(ctx, estimator=surrogate)
    cand = torch.as_tensor(_pgd(probe, eps, 20).generate(x, y), device=x.device)
    broken = int(valid(est, cand, x, y, eps, ctx.norm, ctx.batch_size).sum())
    n = len(idx)
    details = {"eps": eps, "samples": n, "broken": broken}
    if broken == 0:
        return HealthCheck(
            code,
            "pass",
            f"PGD {what} broke none of {n} robust samples at eps={eps:g}.",
            details=details,
        )
    return HealthCheck(
        code,
        "fail" if broken / n > 0.05 else "warn",
        f"adversarial examples crafted {what} broke {_share(broken, n)} samples the direct "
        f"attacks left robust at eps={eps:g}: the direct evaluation is misled by the model's "
        "gradients and is unreliable.",
        fix,
        details=details,
    )


def check_autoattack_flags(ctx: HealthContext) -> HealthCheck:
    """AutoAttack's other warning signs (probability outputs, too few classes)."""
    code = "autoattack-flags"
    covered = {"black-box-stronger", "randomized", "zero-gradients"}
    rest = [f for f in ctx.flags if f.code not in covered]
    if not any(a.name == "AutoAttack" for a in ctx.suite.attacks):
        return _na(code, "the suite does not run AutoAttack.")
    if not rest:
        return HealthCheck(code, "pass", "AutoAttack raised no other warning sign.")
    return HealthCheck(
        code,
        "warn",
        "AutoAttack: " + " ".join(f"[{f.code}] {f.message}" for f in rest),
        "See each message.",
        details={"codes": [f.code for f in rest]},
    )


#: Every check, in the order they run.
HEALTH_CHECKS: dict[str, Callable[[HealthContext], HealthCheck]] = {
    "eps-zero": check_eps_zero,
    "monotonic": check_monotonic,
    "unbounded-attack": check_unbounded,
    "black-box-stronger": check_black_box,
    "gradients": check_gradients,
    "randomness": check_randomness,
    "attack-convergence": check_convergence,
    "transfer": check_transfer,
    "autoattack-flags": check_autoattack_flags,
}


def run_health_checks(ctx: HealthContext) -> list[HealthCheck]:
    """Every check of :data:`HEALTH_CHECKS`, timed."""
    out = []
    for check in HEALTH_CHECKS.values():
        start = time.perf_counter()
        result = check(ctx)
        seconds = time.perf_counter() - start
        out.append(HealthCheck(**{**result.__dict__, "seconds": seconds}))
    return out
