"""``evaluate``: a whole robustness evaluation of a model on data, with health checks."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._tensor import resolve_random_state
from bastion._validation import (
    BATCH_SIZE,
    NONE,
    OPTIONAL_PATH,
    RANDOM_STATE,
    VERBOSE,
    Boolean,
    Interval,
    Options,
    invalid_parameter,
    validate_params,
)
from bastion.attacks.base import checked_input
from bastion.evaluation._checkpoint import UnitStore, fingerprint
from bastion.evaluation._data import check_labels, stratified_indices
from bastion.evaluation._health import HealthContext, run_health_checks
from bastion.evaluation._result import EpsResult, EvaluationResult
from bastion.evaluation._suites import (
    Outcome,
    Suite,
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

__all__ = ["THREATS", "ChunkPart", "ChunkTask", "chunk_seed", "evaluate"]

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
    ray: str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
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
        One int seed is drawn from it (the int itself when an int is given; recorded in
        ``result.config["random_state"]``). The health checks and the attacks on the first
        chunk of ``batch_size`` samples get it; the attacks on chunk ``k > 0`` get a seed
        derived from ``(seed, k)`` (:func:`chunk_seed`).
    batch_size : int, default 256
        Samples per batch, and per chunk: the attacks run on each chunk of ``batch_size``
        consecutive samples separately, so the result depends on ``batch_size`` but not on
        where the chunks run.
    limit : int, optional
        Evaluate a stratified subsample of ``limit`` samples (seeded by ``random_state``).
    health_checks : bool, default True
    gallery_size : int, default 8
        Adversarial examples kept per budget for a gallery.
    verbose : bool, default False
        A progress bar (tqdm) over the units of work (chunk and budget), and the attacks'
        own (not on Ray workers).
    ray : None, "local", "auto" or str, default None
        Shard the attacks over Ray (``pip install 'bastion[ray]'``): ``"local"`` starts a
        Ray instance on this machine, ``"auto"`` joins the cluster running here (``ray start
        --head``), any other string is a cluster address (``"ray://head:10001"``); a Ray
        already initialised in this process is used as it is. One worker per CPU (per GPU
        for a CUDA estimator) holds one copy of the estimator and runs (chunk, budget)
        units; the result equals the one without Ray. The health checks run here, in this
        process. See ``docs/evaluation.md``.
    checkpoint_dir : str or os.PathLike, optional
        Keep each finished unit of work (a chunk at one budget, or a chunk's minimum-norm
        attacks) in this folder as it completes, and reuse the units already there: an
        evaluation interrupted (Ctrl-C, a crash, a lost Ray worker) and run again with the
        same arguments resumes where it stopped and gives the same result as an
        uninterrupted run. A folder holding another evaluation (other samples, labels,
        model predictions, suite, seed or chunks) is refused with an
        :class:`~bastion.exceptions.InputError`; more budgets than before are fine (their
        units run). Units are tensors and strings read back with ``weights_only=True``.

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
    ImportError
        ``ray`` given and Ray not installed.

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
            "checkpoint_dir": checkpoint_dir,
        },
        {
            "threat": [Options(list(THREATS))],
            "random_state": RANDOM_STATE,
            "batch_size": BATCH_SIZE,
            "limit": [NONE, Interval(int, 1, None)],
            "health_checks": [Boolean()],
            "gallery_size": [Interval(int, 0, None)],
            "verbose": VERBOSE,
            "checkpoint_dir": OPTIONAL_PATH,
        },
    )
    eps_list = _check_eps(eps)
    if ray is not None:
        if not isinstance(ray, str) or not ray.strip():
            raise invalid_parameter(
                "ray", "evaluate", "None, 'local', 'auto' or the address of a Ray cluster", ray
            )
        from bastion.evaluation._ray import import_ray

        import_ray()  # fail before any work when Ray is missing
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
    store = UnitStore(
        checkpoint_dir,
        fingerprint(
            suite=spec,
            norm=norm,
            seed=seed,
            batch_size=batch_size,
            limit=limit,
            x=xt,
            labels=labels,
            clean_prediction=clean_pred,
        ),
    )

    min_specs = [a for a in spec.attacks if is_minimum_norm(attack_class(a))]
    fixed_specs = [a for a in spec.attacks if not is_minimum_norm(attack_class(a))]
    chunks = [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    # The work: per chunk, the minimum-norm attacks (eps None) and the fixed-budget ones at
    # each budget; each unit depends on its chunk and seed only, so it can run anywhere.
    units: list[tuple[int, float | None]] = [(k, None) for k in range(len(chunks)) if min_specs]
    units += [(k, e) for e in eps_list for k in range(len(chunks)) if fixed_specs]
    task = ChunkTask(spec, norm, batch_size, verbose)
    bar = tqdm(total=len(units), desc=f"bastion evaluate ({spec.name})", disable=not verbose)
    bar.update(sum(store.done(k, e) for k, e in units))
    if ray is None:
        # One unit at a time, when its results are merged (one budget in memory at a time).
        def part(k: int, e: float | None) -> ChunkPart:
            if store.done(k, e):
                return store.load(k, e)
            sl = chunks[k]
            done = task.run(est, xt[sl], yt[sl], correct[sl], e, chunk_seed(seed, k))
            store.save(k, e, done)
            bar.update()
            return done

    else:
        from bastion.evaluation._ray import run_on_ray

        todo = [u for u in units if not store.done(*u)]
        parts = run_on_ray(
            ray, est, task, xt, yt, correct, chunks, todo, seed, bar, on_done=store.save
        )

        def part(k: int, e: float | None) -> ChunkPart:
            return parts.pop((k, e)) if (k, e) in parts else store.load(k, e)

    # Minimum-norm attacks: once, on the correctly classified samples.
    min_dist: torch.Tensor | None = None
    x_min = xt.clone()
    min_label = np.full(n, "", dtype=object)
    min_seconds: dict[str, float] = {}
    if min_specs:
        min_dist = torch.full((n,), math.inf, dtype=torch.float64, device=xt.device)
        for k, sl in enumerate(chunks):
            part(k, None).merge_min(min_dist, x_min, min_label, min_seconds, sl)

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
        for k, sl in enumerate(chunks):
            if fixed_specs:
                part(k, e).merge_fixed(out, sl)
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


def chunk_seed(seed: int, k: int) -> int:
    """The seed of the attacks on chunk ``k``: ``seed`` itself for the first chunk (an
    evaluation of one batch is seeded as a direct attack would be), else a 31-bit seed
    drawn from ``(seed, k)``, whichever process runs the chunk."""
    if k == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, k]).generate_state(1)[0]) >> 1


@dataclass
class ChunkPart:
    """What one unit of work found on its chunk: rows are chunk-local, tensors travel on
    the CPU (:meth:`cpu`) and are merged on the evaluation's device."""

    seconds: dict[str, float]
    changed: torch.Tensor  # rows whose adversarial example differs from x
    x_rows: torch.Tensor  # those adversarial examples
    robust: torch.Tensor | None = None  # fixed-budget: still robust after every attack
    broken_by: np.ndarray | None = None
    flags: list[Any] = field(default_factory=list)
    dist: torch.Tensor | None = None  # minimum-norm: minimal distance (inf: none found)
    label: np.ndarray | None = None  # and the attack that found it

    def cpu(self) -> ChunkPart:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.cpu()

        self.changed, self.x_rows = self.changed.cpu(), self.x_rows.cpu()
        self.robust, self.dist = move(self.robust), move(self.dist)
        return self

    def merge_fixed(self, out: Outcome, sl: slice) -> None:
        assert self.robust is not None and self.broken_by is not None  # a fixed-budget part
        dev = out.robust.device
        out.robust[sl] = self.robust.to(dev)
        out.broken_by[sl] = self.broken_by
        out.x_adv[sl][self.changed.to(dev)] = self.x_rows.to(dev)
        for label, s in self.seconds.items():
            out.seconds[label] = out.seconds.get(label, 0.0) + s
        # A warning sign is kept once, from the first chunk that raised it.
        known = {f.code for f in out.flags}
        out.flags.extend(f for f in self.flags if f.code not in known)

    def merge_min(
        self,
        min_dist: torch.Tensor,
        x_min: torch.Tensor,
        min_label: np.ndarray,
        seconds: dict[str, float],
        sl: slice,
    ) -> None:
        assert self.dist is not None and self.label is not None  # a minimum-norm part
        dev = min_dist.device
        min_dist[sl] = self.dist.to(dev)
        x_min[sl][self.changed.to(dev)] = self.x_rows.to(dev)
        min_label[sl] = self.label
        for label, s in self.seconds.items():
            seconds[label] = seconds.get(label, 0.0) + s


@dataclass(frozen=True)
class ChunkTask:
    """The suite's attacks on one chunk of samples: the unit of work that :func:`evaluate`
    runs in turn, or spreads over Ray workers. Its result depends on the chunk and its
    seed only."""

    suite: Suite
    norm: str
    batch_size: int
    verbose: bool = False

    def run(
        self,
        est: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        correct: torch.Tensor,
        eps: float | None,
        seed: int,
    ) -> ChunkPart:
        """The minimum-norm attacks (``eps`` None) or the fixed-budget ones at ``eps``, each
        on the samples still robust, every candidate checked."""
        common: dict[str, Any] = {
            "norm": self.norm,
            "seed": seed,
            "batch_size": self.batch_size,
            "verbose": self.verbose,
        }
        want_minimum_norm = eps is None
        specs = [
            a for a in self.suite.attacks if is_minimum_norm(attack_class(a)) == want_minimum_norm
        ]
        if eps is not None:
            out = Outcome(
                robust=correct.clone(),
                broken_by=np.where(correct.cpu().numpy(), "", "clean").astype(object),
                x_adv=x.clone(),
                seconds={},
            )
            for a in specs:
                attack = instantiate(a, est, eps=eps, **common)
                run_fixed(est, attack, a.label, x, y, eps, self.norm, self.batch_size, out)
            changed = (correct & ~out.robust).nonzero().squeeze(1)
            return ChunkPart(
                seconds=out.seconds,
                changed=changed,
                x_rows=out.x_adv[changed],
                robust=out.robust,
                broken_by=out.broken_by,
                flags=out.flags,
            )
        min_dist = torch.full((len(x),), math.inf, dtype=torch.float64, device=x.device)
        min_dist[~correct] = 0.0
        x_min = x.clone()
        label = np.full(len(x), "", dtype=object)
        seconds: dict[str, float] = {}
        for a in specs:
            t0 = time.perf_counter()
            attack = instantiate(a, est, eps=None, **common)
            dist, cand = minimal_distances(est, attack, x, y, correct, self.norm, self.batch_size)
            better = dist < min_dist
            min_dist = torch.where(better, dist, min_dist)
            x_min[better] = cand[better]
            label[better.cpu().numpy()] = a.label
            seconds[a.label] = time.perf_counter() - t0
        changed = torch.as_tensor(np.flatnonzero(label != ""), device=x.device)
        return ChunkPart(
            seconds=seconds, changed=changed, x_rows=x_min[changed], dist=min_dist, label=label
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
