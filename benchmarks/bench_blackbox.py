"""Black-box attacks and AutoAttack: bastion against IBM ART 1.20.1 and torchattacks 3.5.1.

Three comparisons on the SmallCNN and the correctly classified digits-28 test images of
``bench_evasion.py`` (its model cache, data selection, machine information and measuring
helpers are imported from there):

1. **HopSkipJump** (decision-based, minimum norm), bastion against ART, at equal numbers of model
   queries per sample (L2 and Linf; ``--hsj-budgets``, default 1000 and 2500): wall-clock time,
   success rate, queries actually spent per sample, and the median L2 (``norm=2``) or Linf
   (``norm="inf"``) distance. bastion's attack is batched: it gets the whole batch in one call,
   with ``max_queries`` as the per-sample budget. ART's attack loops over the samples and has no
   query budget, only ``max_iter``; its budget is mapped as follows. A calibration run of ART
   (on ``--calib-n`` correctly classified images *after* the benchmark images) records, through
   a subclass that only reads the query counter at the top of each iteration, the cumulative
   queries per sample after each iteration; ``max_iter`` is the number of iterations whose mean
   cumulative count is closest to the budget. The queries of every run are then counted with a
   forward pre-hook on the model's first layer (ART is run one image per ``generate`` call, so
   each image's queries are known) and reported. ART's count excludes the two predictions per
   sample that ``generate`` spends after the attack, in ``compute_success``, for a log message
   (they are reported as forward passes). ART's HopSkipJump is slow: ``--art-n`` runs it on the
   first images only and projects its time linearly to the full batch (the distances are then
   compared on that subset).

2. **Square** (score-based, fixed budget; Linf eps 0.1 and L2 eps 1.5, ``p_init`` 0.8, the
   value of AutoAttack, of ART and of torchattacks, 1000 queries): bastion ``SquareAttack
   (max_queries=1000)``, torchattacks ``Square(n_queries=1000)`` and ART ``SquareAttack(max_iter=
   1000)``. The paper counts a query per iteration (the loss of the new candidate); ART
   re-evaluates the current point at every iteration (two more forward passes per iteration), so
   the same 1000 iterations cost it about 3000 forward passes per sample. Reported: time,
   success rate, forward passes per sample (and bastion's own ``queries_``).

3. **AutoAttack** (standard, Linf eps 0.1) on ``--aa-n`` images: bastion ``AutoAttack(version=
   "standard", max_iter=100, max_queries=5000).evaluate`` against torchattacks ``AutoAttack(
   version="standard", norm="Linf", eps, n_classes=10, seed=0)``. torchattacks' standard
   version does not pass ``steps`` to its APGD, APGD-T and FAB, which therefore run their
   default 10 iterations (the paper and bastion use 100); bastion is also run with
   ``max_iter=10``, the same budget as torchattacks. The robust accuracy of torchattacks is the
   accuracy on its output, counting a point outside the eps-ball or the box as not broken.

Every (comparison, library) run is repeated ``--repeats`` times, interleaved and in a rotating
order (a run longer than ``--time-limit`` seconds is not repeated); each library is reseeded
before each run. Times are medians; ``bastion / other`` ratios are also given paired (median of
the per-repeat ratios). Distances and success rates are those of the last run.

It needs the comparison venv (``bash benchmarks/setup_compare.sh``)::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_blackbox.py \\
        --n 64 --art-n 32 --aa-n 64 --repeats 1 --json benchmarks/results/blackbox_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bastion.attacks.evasion import AutoAttack, HopSkipJump, SquareAttack
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bench_evasion import (
    BASTION_SETTINGS,
    FORWARDS,
    SEED,
    loadavg,
    machine_info,
    norms,
    predict,
    seed_everything,
    stats,
    trained_model,
    user_and_bastion_models,
)

Tensor = torch.Tensor
# FORWARDS: forward passes (images) through the user's model (ART, torchattacks); the hook that
# counts them is registered by bench_evasion.user_and_bastion_models, on its counter. bastion's
# model carries no hook (a hook would make its estimator run eagerly instead of through its
# frozen inference graph): its forward passes are the estimator's own counts, which every
# query and gradient goes through (COUNTED).
COUNTED: list[Any] = []


class Float32(nn.Module):
    """Casts the input to float32. ART 1.20.1's HopSkipJump interpolates with 0-d float64
    arrays, which NumPy 2 promotes to float64 inputs that the float32 model rejects; the cast is
    a no-op for float32 inputs."""

    def forward(self, x: Tensor) -> Tensor:
        return x.float()


class BudgetReached(Exception):
    """Raised by the calibration subclass of ART's HopSkipJump to end a sample's run."""


# ---------------------------------------------------------------------------- running


def judge(ctx: dict[str, Any], lib: str) -> Callable[[Tensor], Tensor]:
    """What a library's outputs are judged on: the model as it attacked it. For bastion that
    is its estimator (channels-last weights, forward passes through the frozen graph, in
    chunks of 64 like its queries); for the others the user's NCHW model. Different
    computations of the same model agree only to float rounding, which is enough to flip a
    decision-based attack's output (a point within ``theta`` of the boundary, on its
    adversarial side): HopSkipJump Linf outputs, 64/64 adversarial for the estimator that
    found them, judged one image at a time give 57-58/64 (eager or frozen alike), and 58/64
    on the eager channels-last model."""
    if lib.startswith("bastion"):
        clf = ctx["clf"]
        return lambda b: clf.logits(b, batch_size=64)
    return ctx["model"]


def timed(fn: Callable[[], Any]) -> tuple[float, Any, int]:
    """(seconds, result, forward images) of one run, reseeded, warnings and stderr muted."""
    FORWARDS.images = 0
    for est in COUNTED:
        est.reset_counts()
    seed_everything()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    own = sum(est.query_count + est.gradient_count for est in COUNTED)
    return seconds, out, FORWARDS.images + own


def interleaved(
    runners: dict[str, Callable[[], Any]], repeats: int, time_limit: float
) -> dict[str, dict[str, Any]]:
    """Run each library ``repeats`` times, interleaved in a rotating order; keep the seconds of
    every run, the forward passes and the output of the last one."""
    res: dict[str, dict[str, Any]] = {lib: {"seconds": []} for lib in runners}
    libs = list(runners)
    for r in range(repeats):
        shift = r % len(libs)
        for lib in libs[shift:] + libs[:shift]:
            entry = res[lib]
            if "error" in entry or (entry["seconds"] and entry["seconds"][-1] > time_limit):
                continue
            try:
                seconds, out, fwd = timed(runners[lib])
            except Exception as exc:  # report and go on
                entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
                continue
            entry["seconds"].append(seconds)
            entry["forward_images"] = fwd
            entry["output"] = out
    for entry in res.values():
        if entry["seconds"]:
            entry["median_s"] = statistics.median(entry["seconds"])
    return res


def paired_ratio(a: list[float], b: list[float]) -> float | None:
    """Median over repeats of a[i] / b[i]."""
    pairs = [x / y for x, y in zip(a, b, strict=False) if y > 0]
    return statistics.median(pairs) if pairs else None


def median_with_failures(d: Tensor, ok: Tensor) -> float:
    """Median distance, a failed sample counting as infinitely far."""
    return float(torch.where(ok, d, torch.full_like(d, math.inf)).median())


@torch.no_grad()
def forward_cost(
    model: Callable[[Tensor], Tensor], sizes: tuple[int, ...] = (1, 64, 256, 4096)
) -> dict[str, float]:
    """Seconds per image of one forward pass, by batch size (best of 3 runs of >= 2048
    images): the floor of any attack that spends a given number of queries."""
    out = {}
    x = torch.rand(max(sizes), 1, 28, 28)
    with torch.no_grad():
        for bs in sizes:
            model(x[:bs])  # warm-up (and, for bastion, the frozen graph of this shape)
            best = math.inf
            for _ in range(3):
                done, start = 0, time.perf_counter()
                while done < 2048:
                    model(x[:bs])
                    done += bs
                best = min(best, (time.perf_counter() - start) / done)
            out[str(bs)] = best
    return out


# ---------------------------------------------------------------------------- HopSkipJump


def art_hsj_class() -> Any:
    from art.attacks.evasion import HopSkipJump as ArtHSJ

    class CalibratingHSJ(ArtHSJ):
        """ART's HopSkipJump, unchanged, that records the forward passes at the top of each
        iteration (``_compute_delta`` is called exactly once there) and stops a sample once it
        has spent ``stop_at`` forward passes."""

        marks: list[int]
        stop_at: int = 0

        def _compute_delta(self, *args: Any, **kwargs: Any) -> Any:
            self.marks.append(FORWARDS.images)
            if self.stop_at and FORWARDS.images >= self.stop_at:
                raise BudgetReached
            return super()._compute_delta(*args, **kwargs)

    return CalibratingHSJ


def calibrate_art_hsj(
    art_clf: Any, x: Tensor, y: Tensor, norm: str, budgets: list[int]
) -> dict[str, Any]:
    """ART ``max_iter`` for each budget: the number of iterations whose mean cumulative query
    count per sample (the clean prediction, the search for a starting point and the iterations)
    is closest to the budget."""
    cls = art_hsj_class()
    per_sample: list[list[int]] = []
    top = int(max(budgets) * 1.3)
    for i in range(x.shape[0]):
        attack = cls(
            art_clf,
            norm=2 if norm == "2" else np.inf,
            max_iter=10_000,
            batch_size=64,
            verbose=False,
        )
        attack.marks, attack.stop_at = [], top
        FORWARDS.images = 0
        seed_everything()
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                attack.generate(x[i : i + 1].numpy(), y[i : i + 1].numpy())
            except BudgetReached:
                pass
        # marks[k] = queries spent before iteration k + 1 = after k iterations (k = 0: after the
        # clean prediction and the starting point).
        per_sample.append(attack.marks)
    depth = min(len(m) for m in per_sample)
    mean_after = [float(np.mean([m[k] for m in per_sample])) for k in range(depth)]
    chosen = {}
    for q in budgets:
        k = min(range(1, depth), key=lambda k: abs(mean_after[k] - q))
        chosen[str(q)] = {"max_iter": k, "calibrated_mean_queries": mean_after[k]}
    return {"mean_queries_after_iteration": mean_after, "n": x.shape[0], "chosen": chosen}


def bench_hsj(
    ctx: dict[str, Any],
    x: Tensor,
    y: Tensor,
    norm: str,
    budget: int,
    art_iter: int,
    art_n: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    n = x.shape[0]
    clf, art_clf = ctx["clf"], ctx["art_clf"]
    cls: Any = art_hsj_class() if art_clf is not None else None
    x_a, y_a = x[:art_n].contiguous(), y[:art_n].contiguous()

    def run_bastion() -> tuple[Tensor, np.ndarray]:
        attack = HopSkipJump(
            clf,
            norm=norm if norm == "inf" else 2,
            max_queries=budget,
            batch_size=n,
            random_state=SEED,
        )
        return attack.generate(x, y), attack.queries_

    def run_art() -> tuple[Tensor, np.ndarray]:
        attack = cls(
            art_clf,
            norm=2 if norm == "2" else np.inf,
            max_iter=art_iter,
            max_eval=10_000,
            init_eval=100,
            init_size=100,
            batch_size=64,
            verbose=False,
        )
        attack.marks = []
        outs, queries = [], []
        for i in range(art_n):  # ART's generate loops over the samples anyway
            before = FORWARDS.images
            outs.append(attack.generate(x_a[i : i + 1].numpy(), y_a[i : i + 1].numpy()))
            # less the two predictions of compute_success after the attack (a log message)
            queries.append(FORWARDS.images - before - 2)
        return torch.from_numpy(np.concatenate(outs)).float(), np.asarray(queries)

    runners: dict[str, Callable[[], Any]] = {"bastion": run_bastion}
    if cls is not None:
        runners["art"] = run_art
    res = interleaved(runners, args.repeats, args.time_limit)
    row: dict[str, Any] = {
        "attack": "HopSkipJump",
        "norm": norm,
        "budget": budget,
        "n_samples": n,
        "art_n": art_n,
        "mapping": {
            "bastion": f"HopSkipJump(norm={norm}, max_queries={budget}, batch_size={n}, "
            "init_num_evals=100, max_num_evals=10000, init_size=100, gamma=1.0)",
            "art": f"HopSkipJump(norm={norm}, max_iter={art_iter}, max_eval=10000, "
            "init_eval=100, init_size=100, batch_size=64), one image per generate call, "
            f"first {art_n} images",
        },
        "libraries": {},
    }
    for lib, entry in res.items():
        out: dict[str, Any] = {k: v for k, v in entry.items() if k != "output"}
        row["libraries"][lib] = out
        if "output" not in entry:
            continue
        adv, queries = entry["output"]
        xs, ys = (x, y) if lib == "bastion" else (x_a, y_a)
        ok = predict(judge(ctx, lib), adv) != ys
        d = norms(adv - xs, norm)
        m = adv.shape[0]
        out.update(
            success_rate=float(ok.float().mean()),
            n_success=int(ok.sum()),
            queries_mean=float(np.mean(queries)),
            queries_max=int(np.max(queries)),
            forward_per_image=entry["forward_images"] / m,
            median_dist=median_with_failures(d, ok),
            dist_success=stats(d[ok]),
            in_bounds=bool(adv.min() >= -1e-6 and adv.max() <= 1 + 1e-6),
        )
        if lib == "bastion" and art_n < n:
            out["median_dist_art_subset"] = median_with_failures(d[:art_n], ok[:art_n])
        if lib == "art":
            out["projected_s"] = out["median_s"] * n / art_n
        out["_d"], out["_ok"] = d, ok
    b, a = row["libraries"]["bastion"], row["libraries"].get("art", {})
    if "queries_mean" in b:
        # The floor: bastion's queries at the best per-image forward time (any batch size).
        row["floor_s"] = b["queries_mean"] * n * min(ctx["forward_cost_bastion"].values())
    if "median_s" in b and "median_s" in a:
        row["speedup"] = a["projected_s"] / b["median_s"]
        scale = n / art_n
        row["speedup_paired"] = paired_ratio([t * scale for t in a["seconds"]], b["seconds"])
        common = b["_ok"][:art_n] & a["_ok"]
        row["n_common_success"] = int(common.sum())
        row["median_dist_common"] = {
            "bastion": float(b["_d"][:art_n][common].median()) if common.any() else None,
            "art": float(a["_d"][common].median()) if common.any() else None,
        }
    if "median_dist" in a and "output" in res.get("bastion", {}):
        row["at_art_distance"] = bastion_at_distance(
            ctx, x, y, norm, budget, art_n, a["median_dist"], a["projected_s"]
        )
    for out in row["libraries"].values():
        out.pop("_d", None)
        out.pop("_ok", None)
    return row


MATCH_FRACTIONS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def bastion_at_distance(
    ctx: dict[str, Any],
    x: Tensor,
    y: Tensor,
    norm: str,
    budget: int,
    art_n: int,
    art_median: float,
    art_projected_s: float,
) -> dict[str, Any]:
    """The other reading of "faster with equal or better median distance": the smallest
    bastion budget (a fraction of ``budget`` from MATCH_FRACTIONS) whose median distance on
    ART's images (failures infinite) is at most ART's at ``budget``, and the time bastion takes
    for the whole batch at that budget (one timed run, seeded like the others), against ART's
    projected time at ``budget``."""
    tried = []
    for frac in MATCH_FRACTIONS:
        q = max(1, round(budget * frac))

        def run(q: int = q) -> Tensor:
            attack = HopSkipJump(
                ctx["clf"],
                norm=norm if norm == "inf" else 2,
                max_queries=q,
                batch_size=x.shape[0],
                random_state=SEED,
            )
            return attack.generate(x, y)

        seconds, adv, _ = timed(run)
        ok = predict(judge(ctx, "bastion"), adv) != y
        d = norms(adv - x, norm)
        med = median_with_failures(d[:art_n], ok[:art_n])
        tried.append({"budget": q, "seconds": seconds, "median_dist_art_subset": med})
        if med <= art_median:
            return {
                "budget": q,
                "seconds": seconds,
                "median_dist_art_subset": med,
                "median_dist": median_with_failures(d, ok),
                "success_rate": float(ok.float().mean()),
                "art_median_dist": art_median,
                "speedup": art_projected_s / seconds,
                "tried": tried,
            }
    return {"budget": None, "art_median_dist": art_median, "tried": tried}


# ---------------------------------------------------------------------------- Square


def bench_square(
    ctx: dict[str, Any], x: Tensor, y: Tensor, norm: str, eps: float, budget: int, args: Any
) -> dict[str, Any]:
    n = x.shape[0]
    p_init = 0.8

    def run_bastion() -> tuple[Tensor, np.ndarray | None]:
        attack = SquareAttack(
            ctx["clf"],
            eps=eps,
            norm=norm if norm == "inf" else 2,
            max_queries=budget,
            p_init=p_init,
            batch_size=n,
            random_state=SEED,
        )
        return attack.generate(x, y), attack.queries_

    runners: dict[str, Callable[[], Any]] = {"bastion": run_bastion}
    if ctx["ta"] is not None:
        ta = ctx["ta"]

        def run_ta() -> tuple[Tensor, None]:
            attack = ta.Square(
                ctx["model"],
                norm="Linf" if norm == "inf" else "L2",
                eps=eps,
                n_queries=budget,
                n_restarts=1,
                p_init=p_init,
                loss="margin",
                resc_schedule=True,
                seed=SEED,
            )
            return attack(x, y).detach().float(), None

        runners["torchattacks"] = run_ta
    if ctx["art"] is not None:
        art = ctx["art"]

        def run_art() -> tuple[Tensor, None]:
            attack = art.SquareAttack(
                ctx["art_clf"],
                norm=np.inf if norm == "inf" else 2,
                max_iter=budget,
                eps=eps,
                p_init=p_init,
                nb_restarts=1,
                batch_size=n,
                verbose=False,
            )
            return torch.from_numpy(attack.generate(x.numpy(), y.numpy())).float(), None

        runners["art"] = run_art
    res = interleaved(runners, args.repeats, args.time_limit)
    row: dict[str, Any] = {
        "attack": "Square",
        "norm": norm,
        "eps": eps,
        "budget": budget,
        "p_init": p_init,
        "n_samples": n,
        "mapping": {
            "bastion": f"SquareAttack(eps={eps}, norm={norm}, max_queries={budget}, "
            f"p_init={p_init}, batch_size={n})",
            "torchattacks": f"Square(norm={'Linf' if norm == 'inf' else 'L2'}, eps={eps}, "
            f"n_queries={budget}, p_init={p_init}, loss='margin', resc_schedule=True)",
            "art": f"SquareAttack(norm={norm}, eps={eps}, max_iter={budget}, p_init={p_init}, "
            f"batch_size={n}) (3 forward passes per iteration)",
        },
        "libraries": {},
    }
    tol = 1e-5
    for lib, entry in res.items():
        out: dict[str, Any] = {k: v for k, v in entry.items() if k != "output"}
        row["libraries"][lib] = out
        if "output" not in entry:
            continue
        adv, queries = entry["output"]
        d = norms(adv - x, norm)
        valid = (d <= eps + tol) & (adv.reshape(n, -1).amin(1) >= -1e-6)
        valid &= adv.reshape(n, -1).amax(1) <= 1 + 1e-6
        ok = (predict(judge(ctx, lib), adv) != y) & valid
        out.update(
            success_rate=float(ok.float().mean()),
            n_success=int(ok.sum()),
            n_invalid=int((~valid).sum()),
            forward_per_image=entry["forward_images"] / n,
            queries_mean=None if queries is None else float(np.mean(queries)),
            median_norm_success=float(d[ok].median()) if ok.any() else None,
        )
    b = row["libraries"]["bastion"]
    for lib, out in row["libraries"].items():
        if lib != "bastion" and "median_s" in out and "median_s" in b:
            out["speedup_vs_bastion"] = out["median_s"] / b["median_s"]
            out["speedup_paired"] = paired_ratio(out["seconds"], b["seconds"])
    return row


# ---------------------------------------------------------------------------- AutoAttack


def bench_autoattack(
    ctx: dict[str, Any], x: Tensor, y: Tensor, eps: float, args: Any
) -> dict[str, Any]:
    n = x.shape[0]

    def bastion_runner(max_iter: int) -> Callable[[], Any]:
        def run() -> Any:
            attack = AutoAttack(
                ctx["clf"],
                eps=eps,
                norm="inf",
                version="standard",
                max_iter=max_iter,
                max_queries=5000,
                batch_size=n,
                random_state=SEED,
            )
            return attack.evaluate(x, y)

        return run

    runners: dict[str, Callable[[], Any]] = {
        "bastion": bastion_runner(100),
        "bastion (max_iter=10)": bastion_runner(10),
    }
    if ctx["ta"] is not None:
        ta = ctx["ta"]

        def run_ta() -> Tensor:
            attack = ta.AutoAttack(
                ctx["model"], norm="Linf", eps=eps, version="standard", n_classes=10, seed=SEED
            )
            return attack(x, y).detach().float()

        runners["torchattacks"] = run_ta
    res = interleaved(runners, args.aa_repeats, args.time_limit)
    row: dict[str, Any] = {
        "attack": "AutoAttack",
        "norm": "inf",
        "eps": eps,
        "n_samples": n,
        "mapping": {
            "bastion": "AutoAttack(eps, norm='inf', version='standard', max_iter=100, "
            "max_queries=5000): APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square, "
            "100 iterations each",
            "bastion (max_iter=10)": "the same with max_iter=10 (torchattacks' budget)",
            "torchattacks": "AutoAttack(norm='Linf', eps, version='standard', n_classes=10, "
            "seed=0): APGD-CE, APGD-T (9 targets), FAB (multi-targeted, 9 targets), Square "
            "(5000 queries); APGD, APGD-T and FAB run their default steps=10",
        },
        "libraries": {},
    }
    for lib, entry in res.items():
        out: dict[str, Any] = {k: v for k, v in entry.items() if k != "output"}
        row["libraries"][lib] = out
        if "output" not in entry:
            continue
        result = entry["output"]
        if lib.startswith("bastion"):
            adv = result.x_adv
            out["robust_accuracy_reported"] = result.robust_accuracy
            out["accuracy_after"] = result.accuracy_after
            out["stage_seconds"] = result.seconds
            out["flags"] = [f.code for f in result.flags]
        else:
            adv = result
        d = norms(adv - x, "inf")
        valid = (d <= eps + 1e-6) & (adv.reshape(n, -1).amin(1) >= -1e-6)
        valid &= adv.reshape(n, -1).amax(1) <= 1 + 1e-6
        broken = (predict(judge(ctx, lib), adv) != y) & valid
        out.update(
            robust_accuracy=float(1 - broken.float().mean()),
            n_invalid=int((~valid).sum()),
            forward_per_image=entry["forward_images"] / n,
        )
    return row


# ---------------------------------------------------------------------------- report


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def report(
    hsj: list[dict[str, Any]], square: list[dict[str, Any]], aa: dict[str, Any] | None
) -> str:
    lines = [
        "### HopSkipJump (equal queries per sample)",
        "",
        "| norm | budget | library | images | s (batch of N) | queries/img | success "
        "| median dist | median dist, common | ART / bastion time |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in hsj:
        for lib, r in row["libraries"].items():
            if "median_s" not in r:
                lines.append(
                    f"| {row['norm']} | {row['budget']} | {lib} | | "
                    f"{r.get('error', 'not run')} | | | | | |"
                )
                continue
            images = row["n_samples"] if lib == "bastion" else row["art_n"]
            t = r["median_s"]
            ts = f"{t:.2f}"
            if lib == "art" and row["art_n"] < row["n_samples"]:
                ts = f"{t:.2f} ({r['projected_s']:.1f} projected to {row['n_samples']})"
            med = fmt(r["median_dist"], ".4f")
            if lib == "bastion" and "median_dist_art_subset" in r:
                med += f" ({fmt(r['median_dist_art_subset'], '.4f')} on ART's {row['art_n']})"
            common = row.get("median_dist_common", {}).get(lib)
            ratio = f"**{row['speedup']:.1f}x**" if lib == "art" and "speedup" in row else ""
            lines.append(
                f"| {row['norm']} | {row['budget']} | {lib} | {images} | {ts} | "
                f"{r['queries_mean']:.0f} (max {r['queries_max']}) | {r['success_rate']:.3f} | "
                f"{med} | {fmt(common, '.4f')} | {ratio} |"
            )
    lines += [
        "",
        "### Square",
        "",
        "| norm, eps | queries | library | s | fwd/img | bastion queries/img | success "
        "| median norm (successes) | other / bastion time |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in square:
        for lib, r in row["libraries"].items():
            label = f"{'Linf' if row['norm'] == 'inf' else 'L2'} {row['eps']}"
            if "median_s" not in r:
                lines.append(
                    f"| {label} | {row['budget']} | {lib} | {r.get('error', '-')} | | | | | |"
                )
                continue
            ratio = fmt(r.get("speedup_vs_bastion"), ".2f")
            lines.append(
                f"| {label} | {row['budget']} | {lib} | {r['median_s']:.2f} | "
                f"{r['forward_per_image']:.0f} | {fmt(r['queries_mean'], '.0f')} | "
                f"{r['success_rate']:.3f} | {fmt(r['median_norm_success'], '.4f')} | "
                f"{'' if lib == 'bastion' else ratio} |"
            )
    if aa is not None:
        lines += [
            "",
            f"### AutoAttack standard, Linf eps={aa['eps']}, {aa['n_samples']} images",
            "",
            "| library | s | fwd/img | robust accuracy | invalid points |",
            "|---|---:|---:|---:|---:|",
        ]
        for lib, r in aa["libraries"].items():
            if "median_s" not in r:
                lines.append(f"| {lib} | {r.get('error', '-')} | | | |")
                continue
            lines.append(
                f"| {lib} | {r['median_s']:.2f} | {r['forward_per_image']:.0f} | "
                f"{r['robust_accuracy']:.4f} | {r['n_invalid']} |"
            )
    return "\n".join(lines)


def targets(
    hsj: list[dict[str, Any]], aa: dict[str, Any] | None, speed: float, tol: float
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        result = {True: "PASS", False: "FAIL", None: "N/A"}[ok]
        out.append({"target": name, "result": result, "detail": detail})

    for row in hsj:
        label = f"HopSkipJump L{'inf' if row['norm'] == 'inf' else '2'} @ {row['budget']} queries"
        b, a = row["libraries"]["bastion"], row["libraries"].get("art", {})
        s = row.get("speedup")
        proj = "" if row["art_n"] == row["n_samples"] else f" (ART projected from {row['art_n']})"
        if s is not None and "floor_s" in row:
            proj += (
                f"; forward-pass floor of bastion's queries {row['floor_s']:.1f} s, so at most "
                f"{row['libraries']['art']['projected_s'] / row['floor_s']:.1f}x is possible"
            )
        add(
            f"{label}: >= {speed:g}x faster than ART on a batch of {row['n_samples']}",
            None if s is None else s >= speed,
            "missing"
            if s is None
            else f"ART / bastion = {s:.1f}x (paired {fmt(row.get('speedup_paired'), '.1f')}){proj}",
        )
        m = row.get("at_art_distance")
        if m is not None:
            add(
                f"{label}: >= {speed:g}x faster than ART to reach ART's median distance",
                None if m["budget"] is None else m["speedup"] >= speed,
                "bastion never matched it"
                if m["budget"] is None
                else f"bastion at {m['budget']} queries: median {m['median_dist_art_subset']:.4f} "
                f"on ART's images <= ART's {m['art_median_dist']:.4f} at {row['budget']}, "
                f"in {m['seconds']:.2f} s for the batch against ART's "
                f"{row['libraries']['art']['projected_s']:.1f} s: {m['speedup']:.1f}x",
            )
        if "median_dist" in a and "median_dist" in b:
            mine = b.get("median_dist_art_subset", b["median_dist"])
            add(
                f"{label}: median distance equal or lower than ART",
                mine <= a["median_dist"] * (1 + tol),
                f"on the {row['art_n']} images ART ran (failures count as infinite): bastion "
                f"{mine:.4f}, ART {a['median_dist']:.4f}; on the {row['n_common_success']} "
                f"both fooled: bastion {fmt(row['median_dist_common']['bastion'], '.4f')}, "
                f"ART {fmt(row['median_dist_common']['art'], '.4f')}",
            )
    if aa is not None:
        libs = aa["libraries"]
        mine = libs.get("bastion", {}).get("robust_accuracy")
        theirs = libs.get("torchattacks", {}).get("robust_accuracy")
        add(
            "AutoAttack: robust accuracy no higher than torchattacks' AutoAttack",
            None if mine is None or theirs is None else mine <= theirs,
            "missing"
            if mine is None or theirs is None
            else f"bastion {mine:.4f} (max_iter=10: "
            f"{fmt(libs.get('bastion (max_iter=10)', {}).get('robust_accuracy'), '.4f')}), "
            f"torchattacks {theirs:.4f}",
        )
    return out


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="images for HSJ and Square (64)")
    parser.add_argument(
        "--art-n", type=int, default=None, help="images for ART's HopSkipJump (default --n)"
    )
    parser.add_argument("--aa-n", type=int, default=64, help="images for AutoAttack (64)")
    parser.add_argument("--calib-n", type=int, default=4, help="images to calibrate ART's HSJ")
    parser.add_argument("--hsj-budgets", type=int, nargs="+", default=[1000, 2500])
    parser.add_argument("--hsj-norms", nargs="+", default=["2", "inf"], choices=["2", "inf"])
    parser.add_argument("--square-budget", type=int, default=1000)
    parser.add_argument("--square-linf-eps", type=float, default=0.1)
    parser.add_argument("--square-l2-eps", type=float, default=1.5)
    parser.add_argument("--aa-eps", type=float, default=0.1)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["hsj", "square", "autoattack"],
        choices=["hsj", "square", "autoattack"],
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (1)")
    parser.add_argument("--aa-repeats", type=int, default=1, help="timed AutoAttack runs (1)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument(
        "--same-layout",
        action="store_true",
        help="give ART and torchattacks bastion's channels-last model too",
    )
    parser.add_argument("--time-limit", type=float, default=300.0, help="no repeat past this")
    parser.add_argument("--speedup", type=float, default=5.0, help="HSJ speed target (5)")
    parser.add_argument("--norm-tol", type=float, default=0.0, help="HSJ distance tolerance (0)")
    parser.add_argument(
        "--bastion-settings",
        choices=sorted(BASTION_SETTINGS),
        default="fast",
        help="TorchClassifier settings for bastion: 'fast' = memory_format='auto', "
        "inference='auto' (the opt-in speed paths; default), 'default' = the faithful defaults",
    )
    parser.add_argument("--no-art", action="store_true", help="leave ART out")
    parser.add_argument("--no-torchattacks", action="store_true", help="leave torchattacks out")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    art_n = args.n if args.art_n is None else min(args.art_n, args.n)
    torch.set_num_threads(args.threads)

    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=SEED)
    model, bastion_model = user_and_bastion_models(
        trained_model(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        args.same_layout,
        hook_bastion=False,
    )
    x_all, y_all = torch.from_numpy(x_te), torch.from_numpy(y_te).long()
    correct = predict(model, x_all) == y_all
    clean_acc = float(correct.float().mean())
    x_ok, y_ok = x_all[correct], y_all[correct]
    need = max(args.n + args.calib_n, args.aa_n)
    if need > x_ok.shape[0]:
        parser.error(f"{need} images needed, {x_ok.shape[0]} correctly classified")
    x, y = x_ok[: args.n].contiguous(), y_ok[: args.n].contiguous()
    x_cal = x_ok[args.n : args.n + args.calib_n].contiguous()
    y_cal = y_ok[args.n : args.n + args.calib_n].contiguous()
    x_aa, y_aa = x_ok[: args.aa_n].contiguous(), y_ok[: args.aa_n].contiguous()

    ctx: dict[str, Any] = {
        "model": model,
        "clf": TorchClassifier(
            bastion_model,
            input_shape=(1, 28, 28),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            **BASTION_SETTINGS[args.bastion_settings],
        ),
        "art": None,
        "art_clf": None,
        "ta": None,
    }
    if not args.same_layout:
        COUNTED.append(ctx["clf"])
    missing = {}
    if not args.no_art:
        try:
            import art.attacks.evasion as art_evasion
            from art.estimators.classification import PyTorchClassifier

            ctx["art"] = art_evasion
            ctx["art_clf"] = PyTorchClassifier(
                nn.Sequential(Float32(), model).eval(),
                loss=nn.CrossEntropyLoss(),
                input_shape=(1, 28, 28),
                nb_classes=10,
                clip_values=(0.0, 1.0),
                device_type="cpu",
            )
        except ImportError as exc:
            missing["art"] = str(exc)
    if not args.no_torchattacks:
        try:
            import torchattacks

            ctx["ta"] = torchattacks
        except ImportError as exc:
            missing["torchattacks"] = str(exc)

    info = machine_info()
    print(
        f"digits-28 (clean accuracy {clean_acc:.4f}); HSJ/Square on {args.n} images "
        f"(ART HSJ on {art_n}), AutoAttack on {args.aa_n}; torch {torch.__version__}, "
        f"{info['nproc']} CPUs ({info['cpu_model']}), torch threads {torch.get_num_threads()}, "
        f"repeats {args.repeats}"
    )
    print("versions:", ", ".join(f"{k} {v}" for k, v in info["versions"].items()))  # type: ignore[attr-defined]
    for lib, why in missing.items():
        print(f"{lib} not available: {why}")

    ctx["forward_cost"] = forward_cost(model)  # the user's (NCHW) model, as ART queries it
    # bastion's forward as its attacks query it: the estimator's frozen graph on the CPU.
    ctx["forward_cost_bastion"] = forward_cost(ctx["clf"].predict_tensor)
    print(
        "forward pass, us per image by batch size: "
        + ", ".join(f"{k}: {v * 1e6:.0f}" for k, v in ctx["forward_cost"].items())
        + "; bastion's estimator (frozen graph): "
        + ", ".join(f"{k}: {v * 1e6:.0f}" for k, v in ctx["forward_cost_bastion"].items()),
        flush=True,
    )
    # Warm-up (untimed): one small call of each library's code paths.
    timed(lambda: HopSkipJump(ctx["clf"], max_queries=50, random_state=SEED).generate(x[:2], y[:2]))

    calibration: dict[str, Any] = {}
    hsj_rows: list[dict[str, Any]] = []
    if "hsj" in args.parts:
        for norm in args.hsj_norms:
            start = time.perf_counter()
            if ctx["art_clf"] is not None:
                calibration[norm] = calibrate_art_hsj(
                    ctx["art_clf"], x_cal, y_cal, norm, args.hsj_budgets
                )
                print(
                    f"ART HSJ L{norm} calibration ({time.perf_counter() - start:.1f} s): "
                    + ", ".join(
                        f"{q} -> max_iter {c['max_iter']} ({c['calibrated_mean_queries']:.0f})"
                        for q, c in calibration[norm]["chosen"].items()
                    ),
                    flush=True,
                )
            for q in args.hsj_budgets:
                start = time.perf_counter()
                art_iter = calibration[norm]["chosen"][str(q)]["max_iter"] if calibration else 0
                row = bench_hsj(ctx, x, y, norm, q, art_iter, art_n, args)
                hsj_rows.append(row)
                print(
                    f"  HSJ L{norm} @{q} ({time.perf_counter() - start:.1f} s): "
                    + ", ".join(
                        f"{lib} {r.get('median_s', float('nan')):.2f}s "
                        f"q={r.get('queries_mean', float('nan')):.0f} "
                        f"succ={r.get('success_rate', float('nan')):.2f} "
                        f"med={r.get('median_dist', float('nan')):.4f}"
                        for lib, r in row["libraries"].items()
                    ),
                    flush=True,
                )
    square_rows: list[dict[str, Any]] = []
    if "square" in args.parts:
        for norm, eps in (("inf", args.square_linf_eps), ("2", args.square_l2_eps)):
            start = time.perf_counter()
            row = bench_square(ctx, x, y, norm, eps, args.square_budget, args)
            square_rows.append(row)
            print(
                f"  Square L{norm} eps={eps} ({time.perf_counter() - start:.1f} s): "
                + ", ".join(
                    f"{lib} {r.get('median_s', float('nan')):.2f}s "
                    f"succ={r.get('success_rate', float('nan')):.3f}"
                    for lib, r in row["libraries"].items()
                ),
                flush=True,
            )
    aa_row = None
    if "autoattack" in args.parts:
        start = time.perf_counter()
        aa_row = bench_autoattack(ctx, x_aa, y_aa, args.aa_eps, args)
        print(
            f"  AutoAttack ({time.perf_counter() - start:.1f} s): "
            + ", ".join(
                f"{lib} {r.get('median_s', float('nan')):.1f}s "
                f"robust={r.get('robust_accuracy', float('nan')):.4f}"
                for lib, r in aa_row["libraries"].items()
            ),
            flush=True,
        )

    print()
    print(report(hsj_rows, square_rows, aa_row))
    print(
        "\nHSJ: s = median seconds for the images in 'images' (ART projected linearly to the "
        "batch when it ran on fewer); queries/img = model queries per image actually spent "
        "(ART: less the 2 predictions of its compute_success log line); median dist over all "
        "images, a failure counting as infinite (bastion in parentheses: on ART's images); "
        "common: over the images both fooled. Square: fwd/img = forward passes per image."
    )
    checks = targets(hsj_rows, aa_row, args.speedup, args.norm_tol)
    print()
    for c in checks:
        print(f"{c['result']:4s}  {c['target']}: {c['detail']}")
    for row in [*hsj_rows, *square_rows, *([aa_row] if aa_row else [])]:
        for lib, r in row["libraries"].items():
            if "error" in r:
                print(f"error: {row['attack']} / {lib}: {r['error']}")

    if args.json is not None:
        payload = {
            "benchmark": "blackbox",
            "data": {
                "name": "digits-28 test split, correctly classified images",
                "n_samples": args.n,
                "art_hsj_n": art_n,
                "autoattack_n": args.aa_n,
                "calibration_n": args.calib_n,
                "clean_accuracy": clean_acc,
            },
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": info,
            "command": " ".join(
                [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"]
                * ("OMP_NUM_THREADS" in os.environ)
                + [Path(sys.executable).name, *sys.argv]
            ),
            "loadavg_end": loadavg(),
            "forward_seconds_per_image": ctx["forward_cost"],
            "forward_seconds_per_image_bastion": ctx["forward_cost_bastion"],
            "art_hsj_calibration": calibration,
            "hopskipjump": hsj_rows,
            "square": square_rows,
            "autoattack": aa_row,
            "targets": checks,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
