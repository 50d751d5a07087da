"""``evaluate``: a whole robustness evaluation of a model on data, with health checks."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._tensor import resolve_random_state
from bastion._validation import (
    BATCH_SIZE,
    NONE,
    RANDOM_STATE,
    VERBOSE,
    Boolean,
    Interval,
    Options,
    invalid_parameter,
    validate_params,
)
from bastion.attacks.base import checked_input
from bastion.evaluation._data import check_labels, stratified_indices
from bastion.evaluation._health import HealthContext, run_health_checks
from bastion.evaluation._result import EpsResult, EvaluationResult
from bastion.evaluation._suites import (
    Outcome,
    attack_class,
    build_defended,
    check_capabilities,
    instantiate,
    is_minimum_norm,
    label_attacks,
    minimal_distances,
    perturbation,
    predicted,
    resolve_suite,
    run_fixed,
)
from bastion.exceptions import InputError

__all__ = ["THREATS", "evaluate"]

#: ``threat`` names and the norm each one means.
THREATS = {"linf": "inf", "l2": "2"}


def _check_eps(eps: Any) -> list[float]:
    values = [eps] if isinstance(eps, (Real, np.floating, np.integer)) else eps
    ok = isinstance(values, (Sequence, np.ndarray)) and not isinstance(values, (str, bytes))
    if ok:
        values = list(values)
        ok = bool(values) and all(
            isinstance(v, (Real, np.floating, np.integer))
            and not isinstance(v, bool)
            and math.isfinite(float(v))
            and float(v) > 0
            for v in values
        )
    if not ok:
        raise invalid_parameter(
            "eps", "evaluate", "a positive finite number or a non-empty list of them", eps
        )
    return sorted({float(v) for v in values})


def _seed(random_state: Any) -> int:
    """One int seed for every attack (drawn from ``random_state`` unless it is an int)."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    gen = resolve_random_state(random_state, "cpu")
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def _labels(y: Any, n: int, nb_classes: int) -> np.ndarray:
    if y is None:
        raise InputError("evaluate needs the true labels y: robustness is measured against them.")
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim == 2 and y.shape[1] == nb_classes and y.shape[0] == n:
        y = y.argmax(1)
    if y.ndim != 1 or len(y) != n:
        raise InputError(
            f"y must hold one label per sample ({n}), as class indices (N,) or one-hot "
            f"(N, {nb_classes}); got shape {y.shape}."
        )
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise InputError(f"y must hold integer class indices; got dtype {y.dtype}.")
    y = y.astype(np.int64)
    check_labels(y, nb_classes)
    return y


def _versions() -> dict[str, str]:
    import bastion

    return {
        "bastion": bastion.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def evaluate(
    estimator: Any,
    x: Any,
    y: Any,
    *,
    threat: str = "linf",
    eps: Any = (8 / 255,),
    suite: Any = "standard",
    random_state: Any = 0,
    batch_size: int = 256,
    limit: int | None = None,
    health_checks: bool = True,
    gallery_size: int = 8,
    verbose: bool = False,
) -> EvaluationResult:
    """Evaluate the robustness of ``estimator`` on ``(x, y)`` with a suite of attacks.

    At each budget, the suite's fixed-budget attacks run in order, each on the samples that
    every earlier one failed to break; its minimum-norm attacks run once and break a sample
    at every budget above the distance they found. A sample is robust at ``eps`` when no
    attack of the suite breaks it (the per-sample worst case). Every adversarial example is
    checked before it counts: misclassified, within ``eps`` (up to 1e-6) and inside the
    estimator's ``clip_values``. Health checks (Carlini et al. 2019; Pintor et al. 2022) then
    look for signs that the evaluation overestimates robustness.

    Suites (the exact settings are listed in ``docs/evaluation.md``):

    * ``"quick"``: FGSM, then PGD (20 steps of ``2.5 eps / 20``, one random start).
    * ``"standard"``: AutoAttack ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square 5000
      queries; 100 iterations).
    * ``"thorough"``: AutoAttack standard, plus FMN and FAB (minimum-norm, 100 iterations
      each): each sample's minimal adversarial distance and the robust accuracy against eps
      as a curve (``result.curve``), combined with the fixed-budget results.
    * ``"blackbox"``: Square (5000 queries per sample) and the decision-based minimum-norm
      HopSkipJump (5000 queries per sample), for predict-only models.
    * a mapping or a YAML file: ``{"name": ..., "attacks": [name or {name, params, label}],
      "defences": [name or {name, params}], "gradients": "bpda" | "exact"}``, attacks named
      by their class in :mod:`bastion.attacks.evasion`, defences in
      :mod:`bastion.defenses.preprocessing` (the estimator is wrapped in a
      :class:`~bastion.estimators.DefendedEstimator` with ``gradients``, default ``"bpda"``).
      ``eps`` and ``norm`` are set by ``evaluate``; an ``eps_step`` not given is
      ``2.5 eps / max_iter``.

    Parameters
    ----------
    estimator : Classifier
        A bastion estimator. The white-box suites need gradients; a predict-only estimator
        (ONNX, :class:`~bastion.estimators.BlackBoxClassifier`) takes ``suite="blackbox"``.
    x : array-like or torch.Tensor, shape (N, *input_shape)
        Floating-point samples inside ``clip_values``.
    y : array-like or torch.Tensor
        True labels, class indices ``(N,)`` or one-hot.
    threat : {"linf", "l2"}, default "linf"
    eps : float or sequence of float, default (8/255,)
        Budgets, positive; evaluated in ascending order.
    suite : {"quick", "standard", "thorough", "blackbox"}, path or mapping, default "standard"
    random_state : None, int or torch.Generator, default 0
        Every attack and check gets one int seed drawn from it (the int itself when an int
        is given; recorded in ``result.config["random_state"]``).
    batch_size : int, default 256
    limit : int, optional
        Evaluate a stratified subsample of ``limit`` samples (seeded by ``random_state``).
    health_checks : bool, default True
    gallery_size : int, default 8
        Adversarial examples kept per budget for a gallery.
    verbose : bool, default False
        Progress bars (tqdm) over budgets and attacks, and the attacks' own.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    InvalidParameterError
        A bad ``threat``, ``eps``, ``suite`` (unknown name, attack or defence) or parameter.
    EstimatorError
        A white-box suite on an estimator without gradients (use ``suite="blackbox"``).
    InputError
        Bad samples or labels (shape, values outside ``clip_values``, labels out of range).

    References
    ----------
    Carlini et al., "On Evaluating Adversarial Robustness", 2019.
    https://arxiv.org/abs/1902.06705

    Pintor et al., "Indicators of Attack Failure: Debugging and Improving Optimization of
    Adversarial Examples", NeurIPS 2022. https://arxiv.org/abs/2106.09947

    Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.evaluation import evaluate
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    >>> clf = TorchClassifier(net, input_shape=(8,), nb_classes=3, clip_values=(0, 1))
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.rand(20, 8, generator=g), torch.randint(0, 3, (20,), generator=g)
    >>> result = evaluate(clf, x, y, eps=[0.05, 0.1], suite="quick", health_checks=False)
    >>> result.robust_accuracy[0.1] <= result.robust_accuracy[0.05] <= result.clean_accuracy
    True
    """
    validate_params(
        "evaluate",
        {
            "threat": threat,
            "random_state": random_state,
            "batch_size": batch_size,
            "limit": limit,
            "health_checks": health_checks,
            "gallery_size": gallery_size,
            "verbose": verbose,
        },
        {
            "threat": [Options(list(THREATS))],
            "random_state": RANDOM_STATE,
            "batch_size": BATCH_SIZE,
            "limit": [NONE, Interval(int, 1, None)],
            "health_checks": [Boolean()],
            "gallery_size": [Interval(int, 0, None)],
            "verbose": VERBOSE,
        },
    )
    eps_list = _check_eps(eps)
    norm = THREATS[threat]
    spec = resolve_suite(suite)
    label_attacks(spec)
    est = build_defended(estimator, spec)
    check_capabilities(est, spec, suite)

    start_all = time.perf_counter()
    xt, _ = checked_input(est, x)
    labels = _labels(y, int(xt.shape[0]), int(est.nb_classes))
    seed = _seed(random_state)
    indices = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        indices = stratified_indices(labels, len(labels), limit, random_state=seed)
        xt, labels = xt[torch.as_tensor(indices, device=xt.device)], labels[indices]
    yt = torch.as_tensor(labels, device=xt.device)

    clean_pred = predicted(est, xt, batch_size)
    correct = clean_pred == yt
    n = len(labels)

    common: dict[str, Any] = {
        "norm": norm,
        "seed": seed,
        "batch_size": batch_size,
        "verbose": verbose,
    }
    min_specs = [a for a in spec.attacks if is_minimum_norm(attack_class(a))]
    fixed_specs = [a for a in spec.attacks if not is_minimum_norm(attack_class(a))]
    bar = tqdm(
        total=len(min_specs) + len(fixed_specs) * len(eps_list),
        desc=f"bastion evaluate ({spec.name})",
        disable=not verbose,
    )
    # Minimum-norm attacks: once, on the correctly classified samples.
    min_dist: torch.Tensor | None = None
    x_min = xt.clone()
    min_label = np.full(n, "", dtype=object)
    min_seconds: dict[str, float] = {}
    for a in min_specs:
        t0 = time.perf_counter()
        attack = instantiate(a, est, eps=None, **common)
        dist, cand = minimal_distances(est, attack, xt, yt, correct, norm, batch_size)
        if min_dist is None:
            min_dist = torch.where(correct, torch.full_like(dist, math.inf), 0.0)
        better = dist < min_dist
        min_dist = torch.where(better, dist, min_dist)
        x_min[better] = cand[better]
        min_label[better.cpu().numpy()] = a.label
        min_seconds[a.label] = time.perf_counter() - t0
        bar.update()

    results: list[EpsResult] = []
    robust_masks: list[np.ndarray] = []
    flags: list[Any] = []
    rng = np.random.default_rng(seed)
    gallery_all: set[int] = set()
    for e in eps_list:
        out = Outcome(
            robust=correct.clone(),
            broken_by=np.where(correct.cpu().numpy(), "", "clean").astype(object),
            x_adv=xt.clone(),
            seconds={},
        )
        for a in fixed_specs:
            attack = instantiate(a, est, eps=e, **common)
            run_fixed(est, attack, a.label, xt, yt, e, norm, batch_size, out)
            bar.update()
        flags.extend(out.flags)
        if min_dist is not None:
            hit = out.robust & (min_dist <= e + 1e-6)
            out.x_adv[hit] = x_min[hit]
            out.robust &= ~hit
            h = hit.cpu().numpy()
            out.broken_by[h] = min_label[h]
            for label, s in min_seconds.items():
                out.seconds[label] = s
        results.append(_eps_result(est, e, xt, yt, labels, clean_pred, out, batch_size))
        robust_masks.append(out.robust.cpu().numpy())
        broken = np.flatnonzero(~robust_masks[-1] & correct.cpu().numpy())
        pick = np.sort(rng.choice(broken, min(gallery_size, len(broken)), replace=False))
        results[-1].gallery = pick.astype(np.int64)
        where = torch.as_tensor(pick, device=xt.device)
        results[-1].gallery_x_adv = out.x_adv[where].cpu().numpy()
        gallery_all.update(int(i) for i in pick)
    bar.close()
    attack_seconds = time.perf_counter() - start_all

    clean_acc = float(correct.to(torch.float64).mean())
    health = []
    t0 = time.perf_counter()
    if health_checks:
        ctx = HealthContext(
            estimator=est,
            x=xt,
            y=yt,
            clean_correct=correct,
            clean_accuracy=clean_acc,
            norm=norm,
            eps=eps_list,
            robust=robust_masks,
            robust_accuracy=[r.robust_accuracy for r in results],
            suite=spec,
            seed=seed,
            batch_size=batch_size,
            flags=flags,
        )
        health = run_health_checks(ctx)
    health_seconds = time.perf_counter() - t0

    gallery_idx = np.asarray(sorted(gallery_all), dtype=np.int64)
    md = None if min_dist is None else min_dist.cpu().numpy().astype(np.float64)
    return EvaluationResult(
        suite=spec.name,
        threat=threat,
        norm=norm,
        eps=eps_list,
        nb_classes=int(est.nb_classes),
        indices=indices.astype(np.int64),
        labels=labels,
        clean_prediction=clean_pred.cpu().numpy().astype(np.int64),
        clean_correct=correct.cpu().numpy(),
        clean_accuracy=clean_acc,
        results=results,
        health=health,
        min_distance=md,
        curve=None if md is None else _curve(md, eps_list, robust_masks),
        attacks=[a.to_dict() for a in spec.attacks],
        defences=spec.defences_dict,
        config={
            "random_state": seed,
            "batch_size": batch_size,
            "limit": limit,
            "gallery_size": gallery_size,
            "health_checks": health_checks,
            "estimator": type(est).__name__,
            "input_shape": list(est.input_shape),
            "clip_values": None if est.clip_values is None else list(est.clip_values),
        },
        versions=_versions(),
        seconds={
            "attacks": attack_seconds,
            "health": health_seconds,
            "total": time.perf_counter() - start_all,
        },
        gallery_indices=gallery_idx,
        gallery_x=xt[torch.as_tensor(gallery_idx, device=xt.device)].cpu().numpy(),
    )


def _eps_result(
    est: Any,
    eps: float,
    x: torch.Tensor,
    y: torch.Tensor,
    labels: np.ndarray,
    clean_pred: torch.Tensor,
    out: Outcome,
    batch_size: int,
) -> EpsResult:
    n = len(labels)
    attacked = (out.x_adv != x).reshape(n, -1).any(1)
    adv_pred = clean_pred.clone()
    idx = attacked.nonzero().squeeze(1)
    if idx.numel():
        adv_pred[idx] = predicted(est, out.x_adv[idx], batch_size)
    broken = ~out.robust & (torch.as_tensor(out.broken_by != "clean", device=x.device))
    l2 = np.full(n, np.nan)
    linf = np.full(n, np.nan)
    b = broken.cpu().numpy()
    if b.any():
        l2[b] = perturbation(out.x_adv[broken], x[broken], "2").cpu().numpy()
        linf[b] = perturbation(out.x_adv[broken], x[broken], "inf").cpu().numpy()
    robust = out.robust.cpu().numpy()
    per_class = {int(c): float(robust[labels == c].mean()) for c in np.unique(labels)}
    return EpsResult(
        eps=eps,
        robust_accuracy=float(robust.mean()),
        robust=robust,
        broken_by=out.broken_by.astype(str),
        adv_prediction=adv_pred.cpu().numpy().astype(np.int64),
        l2=l2,
        linf=linf,
        per_class=per_class,
        seconds=dict(out.seconds),
        gallery=np.zeros(0, dtype=np.int64),
    )


def _curve(
    min_dist: np.ndarray, eps: list[float], robust: list[np.ndarray], points: int = 50
) -> dict[str, list[float]]:
    """Robust accuracy against the budget: a sample is robust at ``e`` while its minimal
    distance exceeds ``e`` and no fixed-budget attack broke it at an evaluated budget
    ``<= e`` (broken at a budget, it is broken at every larger one)."""
    top = 2.0 * max(eps)
    grid = np.union1d(np.linspace(0.0, top, points), np.asarray(eps))
    acc = []
    for e in grid:
        ok = min_dist > e
        for ek, rk in zip(eps, robust, strict=True):
            if ek <= e:
                ok = ok & rk
        acc.append(float(ok.mean()))
    return {"eps": [float(e) for e in grid], "robust_accuracy": acc}
