"""CW-L2 at small budgets: bastion's CarliniWagnerL2 against IBM ART's CarliniL2Method.

Both attack the same trained SmallCNN (digits, 28x28, bounds [0, 1]; the model of
``bench_evasion.py`` and of ``bastion demo``) on the same N correctly classified test images,
untargeted, with the same few binary-search steps and iterations: ``learning_rate=0.01``,
``initial_const=0.01`` (``--initial-const``), ``confidence=0``, the whole input as one batch,
bastion with its default early abort (ART has none). The grid is ``binary_search_steps`` in
{1, 2, 3, 5, 10} (10 is ART's default) and ``max_iter`` in {10, 20, 50}.

Three attacks run on every setting: ``bastion`` (the working tree), ``bastion-before`` (the
``carlini_wagner.py`` of ``--baseline``, a git revision, loaded from git: the implementation
before the change measured here) and ``art``. For each the script reports the success rate (the
model's prediction differs from the label, over the N images), the mean and median L2 norm of
the successful perturbations, the images sent through the model's forward pass (a forward
pre-hook on its first layer; a measure of work that does not depend on the machine's load) and
the wall-clock and CPU seconds (``time.process_time``: one thread, so the work done, less
sensitive than the wall clock to other jobs on a shared machine). The two bastion versions run
``--repeats`` times, interleaved, their order alternating, and each row has their paired time
ratios (the median over repeats of bastion's time over bastion-before's); ART, 50 to 100 times
slower here, runs ``--art-repeats`` times (default 1).

It needs the comparison venv (``bash benchmarks/setup_compare.sh``)::

    benchmarks/.venv-compare/bin/python benchmarks/bench_cw_small_budget.py --n 64 \\
        --json benchmarks/results/cw_small_budget.json

and bastion's default budget (9 runs of 100 steps from ``initial_const=1e-3``), without ART::

    benchmarks/.venv-compare/bin/python benchmarks/bench_cw_small_budget.py --n 64 --bss 9 \\
        --iters 100 --initial-const 1e-3 --art-repeats 0 \\
        --json benchmarks/results/cw_default_budget.json

One thread per process (``--threads``); the trained model is cached under
``benchmarks/.cache`` (shared with the other benchmarks).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.attacks.evasion.carlini_wagner import CarliniWagnerL2
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_evasion import SEED, loadavg, machine_info, trained_model  # noqa: E402

BASELINE = "d2572e6"  # the last commit before the CW-L2 change measured here
CW_PATH = "src/bastion/attacks/evasion/carlini_wagner.py"
LR = 0.01

Tensor = torch.Tensor


class ForwardCounter:
    """Images through the model's forward pass (a pre-hook on its first layer, which ART's
    PyTorchClassifier also calls: it runs the model's children one by one)."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.images += int(args[0].shape[0])


def load_baseline(rev: str) -> types.ModuleType:
    """``carlini_wagner.py`` as it was at git revision ``rev``, as a module."""
    root = HERE.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:{CW_PATH}"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    spec = importlib.util.spec_from_loader(f"cw_{rev}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:{CW_PATH}", "exec"), module.__dict__)
    return module


def runners(
    model: nn.Module, clf: TorchClassifier, baseline: types.ModuleType | None, n: int, c0: float
) -> dict[str, Callable[[Tensor, Tensor, int, int], Tensor]]:
    def bastion(cls: Any) -> Callable[[Tensor, Tensor, int, int], Tensor]:
        def run(x: Tensor, y: Tensor, bss: int, iters: int) -> Tensor:
            return cls(
                clf,
                confidence=0.0,
                learning_rate=LR,
                binary_search_steps=bss,
                max_iter=iters,
                initial_const=c0,
                batch_size=n,
            ).generate(x, y)

        return run

    out = {"bastion": bastion(CarliniWagnerL2)}
    if baseline is not None:
        out["bastion-before"] = bastion(baseline.CarliniWagnerL2)
    try:
        from art.attacks.evasion import CarliniL2Method
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:
        print(f"ART not installed ({exc}): skipped", file=sys.stderr)
        return out
    art_clf = PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )

    def art(x: Tensor, y: Tensor, bss: int, iters: int) -> Tensor:
        attack = CarliniL2Method(
            art_clf,
            confidence=0.0,
            learning_rate=LR,
            binary_search_steps=bss,
            max_iter=iters,
            initial_const=c0,
            batch_size=n,
            verbose=False,
        )
        return torch.from_numpy(attack.generate(x.numpy(), y.numpy())).float()

    out["art"] = art
    return out


def score(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Any]:
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    l2 = (x_adv - x).flatten(1).double().norm(dim=1)[fooled]
    return {
        "success_rate": float(fooled.double().mean()),
        "l2_mean": float(l2.mean()) if l2.numel() else None,
        "l2_median": float(l2.median()) if l2.numel() else None,
        "box_ok": bool(x_adv.min() >= 0 and x_adv.max() <= 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="correctly classified test images")
    parser.add_argument("--bss", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--iters", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each bastion")
    parser.add_argument("--art-repeats", type=int, default=1, help="timed runs of ART")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of bastion-before")
    parser.add_argument("--no-baseline", action="store_true", help="skip bastion-before")
    parser.add_argument("--initial-const", type=float, default=0.01, help="(default 0.01)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=SEED)
    model = trained_model(torch.from_numpy(x_tr), torch.from_numpy(y_tr))
    for p in model.parameters():
        p.requires_grad_(False)  # the attacks need input gradients only
    counter = ForwardCounter()
    next(m for m in model.modules() if not list(m.children())).register_forward_pre_hook(counter)
    x_all, y_all = torch.from_numpy(x_te), torch.from_numpy(y_te).long()
    with torch.no_grad():
        correct = model(x_all).argmax(1) == y_all
    x, y = x_all[correct][: args.n].contiguous(), y_all[correct][: args.n].contiguous()
    clf = TorchClassifier(model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    baseline = None if args.no_baseline else load_baseline(args.baseline)
    libs = runners(model, clf, baseline, args.n, args.initial_const)
    if args.art_repeats < 1:
        libs.pop("art", None)
    info = machine_info()
    print(
        f"{args.n} correctly classified digits-28 test images (clean accuracy "
        f"{float(correct.double().mean()):.4f}); lr {LR}, initial_const {args.initial_const}, "
        "confidence 0; "
        f"torch threads {torch.get_num_threads()}; libraries {', '.join(libs)}",
        flush=True,
    )

    rows: list[dict[str, Any]] = []
    for bss in args.bss:
        for iters in args.iters:
            row: dict[str, Any] = {"binary_search_steps": bss, "max_iter": iters, "libraries": {}}
            res: dict[str, dict[str, Any]] = {
                lib: {"seconds": [], "cpu_seconds": []} for lib in libs
            }
            bastions = [lib for lib in libs if lib.startswith("bastion")]
            for r in range(max(args.repeats, args.art_repeats)):
                order = (bastions if r % 2 == 0 else bastions[::-1]) if r < args.repeats else []
                if "art" in libs and r < args.art_repeats:
                    order = [*order, "art"]
                for lib in order:
                    counter.images = 0
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        start, cpu = time.perf_counter(), time.process_time()
                        x_adv = libs[lib](x, y, bss, iters)
                        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
                    res[lib]["seconds"].append(seconds)
                    res[lib]["cpu_seconds"].append(cpu)
                    res[lib].update(score(model, x, y, x_adv), forward_images=counter.images)
            for lib, out in res.items():
                out["seconds_median"] = statistics.median(out["seconds"])
                out["cpu_seconds_median"] = statistics.median(out["cpu_seconds"])
                row["libraries"][lib] = out
            if "bastion-before" in res:
                # Paired: the median over repeats of this run's time over its partner's.
                for key in ("seconds", "cpu_seconds"):
                    pairs = zip(res["bastion"][key], res["bastion-before"][key], strict=True)
                    row[f"{key}_ratio_paired"] = statistics.median(a / b for a, b in pairs)
            rows.append(row)
            print(
                f"bss {bss:2d} x {iters:2d} iter: "
                + "; ".join(
                    f"{lib} {o['success_rate']:.3f} L2 {o['l2_mean'] or float('nan'):.3f}/"
                    f"{o['l2_median'] or float('nan'):.3f} {o['seconds_median']:.2f}s"
                    for lib, o in row["libraries"].items()
                )
                + (
                    f"; paired ratios: wall {row['seconds_ratio_paired']:.3f}, "
                    f"cpu {row['cpu_seconds_ratio_paired']:.3f}"
                    if "seconds_ratio_paired" in row
                    else ""
                ),
                flush=True,
            )
    info["loadavg_end"] = loadavg()
    if args.json is not None:
        result = {
            "benchmark": "bench_cw_small_budget.py",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "data": {
                "name": "digits-28 test split, correctly classified images",
                "n": args.n,
                "clean_accuracy": float(correct.double().mean()),
            },
            "settings": {
                "learning_rate": LR,
                "initial_const": args.initial_const,
                "confidence": 0.0,
                "batch_size": args.n,
                "bastion": "CarliniWagnerL2, abort_early=True (default)",
                "bastion-before": f"CarliniWagnerL2 of git revision {args.baseline}",
                "art": "CarliniL2Method, max_halving=5, max_doubling=5 (defaults)",
                "repeats": args.repeats,
                "art_repeats": args.art_repeats,
            },
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
