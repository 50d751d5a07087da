"""Time bastion's PGD against the floor: the shortest honest hand-written torch PGD loop.

Both attack the same trained SmallCNN (digits, 28x28) on the same inputs (the digits-28 test
split, as tensors) with the same hyper-parameters: Linf, eps 0.3, eps_step 0.01, 40 iterations,
one random start drawn uniformly in the eps-ball, at one or more batch sizes. The two are
warmed up, then run alternately (the order flips at every repeat), and the script reports the
median and the minimum wall-clock seconds of each, the ratio ours/floor, and the robust
accuracy each attack leaves (both should be near 0 and close to each other).

Usage::

    python benchmarks/bench_pgd.py --repeats 5 --json benchmarks/results/pgd_cpu.json

The trained model is cached under ``benchmarks/.cache`` (git-ignored); delete it to retrain.
``torch.set_num_threads`` is left at torch's default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.zoo import SmallCNN, train_classifier

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

EPS = 0.3
EPS_STEP = 0.01
MAX_ITER = 40
SEED = 0
TRAIN_EPOCHS = 5


# ---------------------------------------------------------------------------- set-up


def trained_model(x_train: torch.Tensor, y_train: torch.Tensor) -> nn.Module:
    """SmallCNN trained (seeded, on the CPU) on the digits-28 training split; cached."""
    path = CACHE / f"smallcnn_digits28_seed{SEED}_epochs{TRAIN_EPOCHS}.pt"
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=28, random_state=SEED)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        train_classifier(model, x_train, y_train, epochs=TRAIN_EPOCHS, random_state=SEED)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model_name(),
        "torch_num_threads": torch.get_num_threads(),
        "device": str(device),
        "loadavg_start": loadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------- the two attacks


def floor_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    eps_step: float,
    max_iter: int,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """Minimal Linf PGD with one uniform random start, batch by batch.

    The start is drawn the way bastion draws it (``(2 * rand - 1) * eps`` from a seeded
    generator on the inputs' device, one draw per batch), so both attacks start from the same
    points and their results are comparable sample by sample.
    """
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with torch.no_grad():
            noise = torch.rand(xb.shape, generator=gen, device=xb.device, dtype=xb.dtype)
            x_adv = (xb + (2 * noise - 1) * eps).clamp(0.0, 1.0)
        for _ in range(max_iter):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), yb, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                delta = (x_adv + eps_step * grad.sign() - xb).clamp(-eps, eps)
                x_adv = (xb + delta).clamp(0.0, 1.0)
        out[i : i + batch_size] = x_adv
    return out


def ours_pgd(
    clf: TorchClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    eps_step: float,
    max_iter: int,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    attack = PGD(
        clf,
        eps=eps,
        eps_step=eps_step,
        max_iter=max_iter,
        norm="inf",
        num_random_init=1,
        batch_size=batch_size,
        random_state=seed,
    )
    return attack.generate(x, y)


# ---------------------------------------------------------------------------- timing


def minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, int, torch.Tensor]:
    """Wall-clock seconds, minor page faults (a large source of noise on CPU: glibc hands
    big freed buffers back to the OS and faults them in again) and the result of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    faults = minor_faults()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, minor_faults() - faults, out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).float().mean())


def bench_one(
    model: nn.Module,
    clf: TorchClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, object]:
    kw = {
        "eps": EPS,
        "eps_step": EPS_STEP,
        "max_iter": MAX_ITER,
        "batch_size": batch_size,
        "seed": SEED,
    }
    runners: dict[str, Callable[[], torch.Tensor]] = {
        "ours": lambda: ours_pgd(clf, x, y, **kw),  # type: ignore[arg-type]
        "floor": lambda: floor_pgd(model, x, y, **kw),  # type: ignore[arg-type]
    }
    for _ in range(warmup):
        for name in ("ours", "floor"):
            runners[name]()
    times: dict[str, list[float]] = {"ours": [], "floor": []}
    faults: dict[str, list[int]] = {"ours": [], "floor": []}
    results: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        order = ("ours", "floor") if r % 2 == 0 else ("floor", "ours")
        for name in order:
            seconds, n_faults, results[name] = timed(runners[name], device)
            times[name].append(seconds)
            faults[name].append(n_faults)

    row: dict[str, object] = {"batch_size": batch_size, "n_samples": int(x.shape[0])}
    for name in ("ours", "floor"):
        adv = results[name]
        linf = float((adv - x).abs().amax())
        row[name] = {
            "seconds": times[name],
            "median_s": statistics.median(times[name]),
            "min_s": min(times[name]),
            "minor_page_faults": faults[name],
            "robust_accuracy": accuracy(model, adv, y),
            "max_linf": linf,
            "in_bounds": bool(adv.min() >= 0.0 and adv.max() <= 1.0),
        }
    ours, floor = row["ours"], row["floor"]
    assert isinstance(ours, dict) and isinstance(floor, dict)
    row["ratio_median"] = ours["median_s"] / floor["median_s"]
    row["ratio_min"] = ours["min_s"] / floor["min_s"]
    # Each repeat runs the two back to back, so the per-repeat ratio cancels slow drifts in
    # machine load; its median is the most robust figure on a shared machine.
    paired = [a / b for a, b in zip(times["ours"], times["floor"], strict=True)]
    row["ratio_paired"] = paired
    row["ratio_paired_median"] = statistics.median(paired)
    with torch.no_grad():
        pred_ours = model(results["ours"]).argmax(dim=1)
        pred_floor = model(results["floor"]).argmax(dim=1)
    row["prediction_agreement"] = float((pred_ours == pred_floor).float().mean())
    return row


# ---------------------------------------------------------------------------- CLI


def parse_batch_size(value: str) -> str | int:
    if value == "full":
        return value
    n = int(value) if value.isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'full' or a positive int, got {value!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    default_device = "cpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each (default 1)")
    parser.add_argument(
        "--device",
        default=default_device,
        choices=["cpu", "cuda"],
        help="where to run (default cpu; cuda if available)",
    )
    parser.add_argument(
        "--batch-size",
        type=parse_batch_size,
        nargs="+",
        default=["full", 128],
        help="one or more batch sizes; 'full' = the whole test split (default: full 128)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)

    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=SEED)
    model = trained_model(torch.from_numpy(x_tr), torch.from_numpy(y_tr)).to(device)
    x = torch.from_numpy(x_te).to(device)
    y = torch.from_numpy(y_te).to(device)
    clf = TorchClassifier(model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    clean = accuracy(model, x, y)

    info = machine_info(device)
    print(
        f"PGD Linf eps={EPS} eps_step={EPS_STEP} max_iter={MAX_ITER} random starts=1, "
        f"{x.shape[0]} digits-28 test samples, clean accuracy {clean:.4f}"
    )
    print(
        f"torch {info['torch']}, {info['nproc']} CPUs ({info['cpu_model']}), "
        f"torch threads {info['torch_num_threads']}, device {device}, "
        f"warm-up {args.warmup}, repeats {args.repeats}"
    )

    rows = []
    for bs_arg in args.batch_size:
        bs = x.shape[0] if bs_arg == "full" else bs_arg
        row = bench_one(model, clf, x, y, bs, args.repeats, args.warmup, device)
        row["batch_label"] = f"{bs} (full)" if bs_arg == "full" else str(bs)
        rows.append(row)

    header = (
        f"{'batch':>10} | {'ours med s':>10} {'ours min s':>10} | {'floor med s':>11} "
        f"{'floor min s':>11} | {'ratio med':>9} {'ratio min':>9} {'ratio pair':>10} | "
        f"{'rob.acc ours':>12} {'rob.acc floor':>13}"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        o, f = row["ours"], row["floor"]
        assert isinstance(o, dict) and isinstance(f, dict)
        print(
            f"{row['batch_label']:>10} | {o['median_s']:>10.3f} {o['min_s']:>10.3f} | "
            f"{f['median_s']:>11.3f} {f['min_s']:>11.3f} | {row['ratio_median']:>9.3f} "
            f"{row['ratio_min']:>9.3f} {row['ratio_paired_median']:>10.3f} | "
            f"{o['robust_accuracy']:>12.4f} "
            f"{f['robust_accuracy']:>13.4f}"
        )
    print(
        "ratio = ours / floor (median of each, min of each, median of the per-repeat ratios); "
        "rob.acc = accuracy on the adversarial examples"
    )
    print()
    for row in rows:
        o, f = row["ours"], row["floor"]
        assert isinstance(o, dict) and isinstance(f, dict)
        print(
            f"batch {row['batch_label']}: max |x_adv - x|_inf ours {o['max_linf']:.4f} "
            f"floor {f['max_linf']:.4f}; predictions agree on "
            f"{100 * float(row['prediction_agreement']):.1f}% of samples"  # type: ignore[arg-type]
        )

    if args.json is not None:
        payload = {
            "benchmark": "pgd",
            "params": {
                "norm": "inf",
                "eps": EPS,
                "eps_step": EPS_STEP,
                "max_iter": MAX_ITER,
                "num_random_init": 1,
                "seed": SEED,
                "repeats": args.repeats,
                "warmup": args.warmup,
            },
            "data": {"name": "digits-28 test split", "n_samples": int(x.shape[0])},
            "clean_accuracy": clean,
            "machine": info,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "loadavg_end": loadavg(),
            "results": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
