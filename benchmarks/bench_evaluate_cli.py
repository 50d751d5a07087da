"""``bastion evaluate --suite standard`` against torchattacks' AutoAttack, whole command to whole
command.

Issue 18's benchmark: ``bastion evaluate --suite standard`` on the digits CNN against the same
AutoAttack run through torchattacks 3.5.1 on the same samples; bastion's robust accuracy must be
no higher, and its wall time, including the report, no longer.

Set-up (``prepare``):

- model: ``bastion.zoo.SmallCNN(in_channels=1, nb_classes=10, random_state=0)`` trained with
  ``train_classifier(epochs=5, random_state=0)`` on ``load_digits(size=28, random_state=0)``
  (the cached weights of ``bench_pgd.py`` / ``bench_evasion.py``, ``benchmarks/.cache``),
  saved as TorchScript (``torch.jit.trace``) so that both sides load the very same file;
- data: the first ``--n`` test images and labels, saved as ``.npz`` (keys ``x``, ``y``).

Per run, each in a fresh subprocess with ``OMP_NUM_THREADS=1`` (wall time from before the
process starts to after it exits: imports, loading, attacks and, for bastion, health checks,
``results.json``, ``gallery.npz`` and ``index.html``):

- **bastion**: ``.venv/bin/bastion evaluate --model model.pt --data data.npz --eps E --suite
  standard --out DIR --quiet`` (defaults otherwise: seed 0, batch size 256, the health checks).
  Robust accuracy from ``results.json``; attack-only time from its ``seconds.attacks``; the
  time without the report is the modification time of ``results.json`` minus the start (the
  report -- ``gallery.npz``, ``index.html`` and the summary -- comes after it).
- **torchattacks**: this script with ``--ta-worker`` in the comparison venv: load the same
  TorchScript file and ``.npz``, ``torchattacks.AutoAttack(model, norm='Linf', eps=E,
  version='standard', n_classes=10, seed=0)`` with APGD-CE, APGD-T and FAB-T set to the
  standard 100 steps (torchattacks leaves them at 10; Square already runs 5000 queries), the
  whole batch at once. Robust accuracy: the model's accuracy on the adversarial images.

Runs are interleaved A B B A (``--repeats`` pairs); medians and their ratio are reported.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluate_cli.py --n 100 --eps 0.1 \
        --repeats 2 --json benchmarks/results/evaluate_cli_vs_torchattacks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
WORK = CACHE / "evaluate_cli"
SEED = 0
BASTION_BIN = ROOT / ".venv" / "bin" / "bastion"
COMPARE_PY = HERE / ".venv-compare" / "bin" / "python"
STANDARD_STEPS = 100


# ---------------------------------------------------------------------------- torchattacks side


def ta_worker(args: argparse.Namespace) -> None:
    """Run torchattacks' AutoAttack on the saved model and data; print one JSON line."""
    import numpy as np
    import torch
    import torchattacks

    model = torch.jit.load(args.model, map_location="cpu").eval()
    with np.load(args.data) as arrays:
        x = torch.from_numpy(arrays["x"])
        y = torch.from_numpy(arrays["y"])
    attack = torchattacks.AutoAttack(
        model, norm="Linf", eps=args.eps, version="standard", n_classes=10, seed=SEED
    )
    steps = {}
    for sub in attack._autoattack.attacks:  # APGD, APGDT, FAB, Square
        if hasattr(sub, "steps"):
            sub.steps = STANDARD_STEPS
            steps[type(sub).__name__] = sub.steps
        if hasattr(sub, "n_queries"):
            steps[type(sub).__name__] = sub.n_queries
    t0 = time.perf_counter()
    adv = attack(x, y)
    attack_s = time.perf_counter() - t0
    with torch.no_grad():
        pred = model(adv).argmax(1)
        clean = model(x).argmax(1)
    linf = (adv - x).abs().flatten(1).amax(1).max().item()
    print(
        json.dumps(
            {
                "robust_accuracy": (pred == y).float().mean().item(),
                "clean_accuracy": (clean == y).float().mean().item(),
                "attack_seconds": attack_s,
                "max_linf": linf,
                "steps": steps,
                "torchattacks": torchattacks.__version__,
            }
        )
    )


# ---------------------------------------------------------------------------- set-up


def prepare(n: int) -> tuple[Path, Path, dict[str, Any]]:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from bastion.datasets import load_digits
    from bench_evasion import trained_model  # the cached digits-28 SmallCNN

    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=SEED)
    model = trained_model(torch.from_numpy(x_tr), torch.from_numpy(y_tr)).eval()
    WORK.mkdir(parents=True, exist_ok=True)
    model_path = WORK / "smallcnn_digits28.pt"
    data_path = WORK / f"digits28_test_first{n}.npz"
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.from_numpy(x_te[:2]))
    traced.save(str(model_path))
    np.savez(data_path, x=x_te[:n], y=y_te[:n])
    with torch.no_grad():
        clean = (model(torch.from_numpy(x_te[:n])).argmax(1).numpy() == y_te[:n]).mean()
    return model_path, data_path, {"clean_accuracy": float(clean), "n": n}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.setdefault("PYTHONPATH", str(ROOT / "src"))
    return env


def run_bastion(model: Path, data: Path, eps: float, out: Path) -> dict[str, Any]:
    cmd = [
        str(BASTION_BIN), "evaluate", "--model", str(model), "--data", str(data),
        "--eps", repr(eps), "--suite", "standard", "--out", str(out), "--quiet",
    ]  # fmt: skip
    start_wall = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bastion evaluate failed ({proc.returncode}): {proc.stderr}")
    res = json.loads((out / "results.json").read_text())
    before_report = (out / "results.json").stat().st_mtime - start_wall
    return {
        "wall_seconds": wall,
        "wall_seconds_without_report": before_report,
        "report_seconds": wall - before_report,
        "attack_seconds": res["seconds"]["attacks"],
        "health_seconds": res["seconds"]["health"],
        "in_process_total_seconds": res["seconds"]["total"],
        "robust_accuracy": res["results"][0]["robust_accuracy"],
        "clean_accuracy": res["clean_accuracy"],
        "reliable": res["reliable"],
        "health": {
            h["code"]: {"status": h["status"], "seconds": h["seconds"]} for h in res["health"]
        },
        "command": " ".join(cmd),
    }


def run_torchattacks(model: Path, data: Path, eps: float) -> dict[str, Any]:
    cmd = [
        str(COMPARE_PY), str(Path(__file__).resolve()), "--ta-worker",
        "--model", str(model), "--data", str(data), "--eps", repr(eps),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"torchattacks worker failed ({proc.returncode}): {proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = wall
    return out


def summarise(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    return {f"median_{k}": statistics.median(r[k] for r in runs) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="first N test images (100)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1], help="Linf budgets")
    parser.add_argument("--repeats", type=int, default=2, help="A B B A pairs (2: A B B A)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--ta-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ta_worker:
        args.eps = args.eps[0]
        ta_worker(args)
        return

    model, data, info = prepare(args.n)
    print(f"{args.n} images, clean accuracy {info['clean_accuracy']:.3f}", flush=True)
    rows = []
    for eps in args.eps:
        runs: dict[str, list[dict[str, Any]]] = {"bastion": [], "torchattacks": []}
        order = []
        for i in range(args.repeats):
            order += ["bastion", "torchattacks"] if i % 2 == 0 else ["torchattacks", "bastion"]
        for k, lib in enumerate(order):
            if lib == "bastion":
                r = run_bastion(model, data, eps, WORK / f"out_eps{eps}_{k}")
            else:
                r = run_torchattacks(model, data, eps)
            runs[lib].append(r)
            print(
                f"eps {eps} run {k + 1}/{len(order)} {lib}: wall {r['wall_seconds']:.1f} s, "
                f"attack {r['attack_seconds']:.1f} s, robust {r['robust_accuracy']:.3f} "
                f"({time.strftime('%H:%M:%S')})",
                flush=True,
            )
        b = summarise(runs["bastion"], [
            "wall_seconds", "wall_seconds_without_report", "report_seconds", "attack_seconds",
            "health_seconds",
        ])  # fmt: skip
        t = summarise(runs["torchattacks"], ["wall_seconds", "attack_seconds"])
        row = {
            "eps": eps,
            "order": order,
            "bastion": {"runs": runs["bastion"], **b},
            "torchattacks": {"runs": runs["torchattacks"], **t},
            "ratio_wall_bastion_over_torchattacks": b["median_wall_seconds"]
            / t["median_wall_seconds"],
            "ratio_wall_without_report": b["median_wall_seconds_without_report"]
            / t["median_wall_seconds"],
            "ratio_attack_only": b["median_attack_seconds"] / t["median_attack_seconds"],
        }
        rb = runs["bastion"][0]["robust_accuracy"]
        rt = runs["torchattacks"][0]["robust_accuracy"]
        row["robust_accuracy_no_higher"] = rb <= rt
        row["wall_time_no_longer"] = row["ratio_wall_bastion_over_torchattacks"] <= 1.0
        rows.append(row)
        print(
            f"eps {eps}: robust bastion {rb:.3f} / torchattacks {rt:.3f}; wall median "
            f"{b['median_wall_seconds']:.1f} s (without report "
            f"{b['median_wall_seconds_without_report']:.1f}) / {t['median_wall_seconds']:.1f} s "
            f"= {row['ratio_wall_bastion_over_torchattacks']:.2f}; attack only "
            f"{b['median_attack_seconds']:.1f} / {t['median_attack_seconds']:.1f} s",
            flush=True,
        )
    if args.json:
        payload = {
            "benchmark": "bastion evaluate --suite standard vs torchattacks AutoAttack",
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": {
                "n_samples": args.n,
                "norm": "inf",
                "eps": args.eps,
                "model": "SmallCNN(in_channels=1, nb_classes=10, random_state=0), "
                "train_classifier(epochs=5, random_state=0), digits 28x28, TorchScript",
                "data": f"first {args.n} images of load_digits(size=28, random_state=0) test",
                "threads": "OMP_NUM_THREADS=1 for both",
                "bastion": "bastion evaluate --suite standard (AutoAttack standard: APGD-CE, "
                "APGD-T, FAB-T 100 iterations, Square 5000 queries; health checks; JSON + "
                "gallery + HTML report), seed 0, batch size 256",
                "torchattacks": "AutoAttack(norm='Linf', eps, version='standard', n_classes=10, "
                "seed=0) with APGD, APGD-T and FAB steps set to 100 (default 10); Square "
                "n_queries 5000",
                "wall_time": "subprocess start to exit (imports, model and data loading included)",
            },
            "clean_accuracy": info["clean_accuracy"],
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "results": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
