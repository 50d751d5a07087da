"""Peak memory and time of JSMA on an ImageNet-sized input: bastion against IBM ART.

The model is a small convolutional network with **random weights** (seeded) on 3x224x224
inputs with 1000 classes:

    Conv2d(3, 16, 3, stride 2) - ReLU - Conv2d(16, 32, 3, stride 2) - ReLU
    - AdaptiveAvgPool2d(8) - Flatten - Linear(2048, 1000)

JSMA's cost is in the input dimension D = 150,528 and the 1000 classes: the paper's algorithm
builds the (K, D) Jacobian and searches D^2 pairs; bastion takes one gradient of the target
probability per step and picks the pair in linear time. Both attacks get 4 random images in
[0, 1], targeted at the class the model ranks second on each clean image, ``theta=1.0`` (each
chosen feature is increased by 1, i.e. set to the top of the box) and ``gamma=0.002``, so at most
``floor(gamma * D / 2) = 150`` steps (300 features) per image: a bounded run.

Each case runs in a fresh subprocess, so that the peak resident set size (``ru_maxrss``; the
peak of the whole process, which ``tracemalloc`` cannot see for torch's allocations) belongs to
that case alone. The reported figure is the peak during the attack minus the peak before it
(after imports, the model, the inputs and one warm-up forward pass). With CUDA,
``torch.cuda.max_memory_allocated`` is reported too. A case that runs past ``--timeout`` is
killed and reported as such. The case ``gradient`` is the floor: one gradient of one class
probability for the 4 images, which any JSMA step needs.

torchattacks' JSMA is not run: it loops over images and builds the full Jacobian with one
backward pass per class (1000 per step per image), and it hard-codes 10 classes for its default
targets. Foolbox 3 has no JSMA.

Usage (ART needs the comparison venv, ``bash benchmarks/setup_compare.sh``)::

    benchmarks/.venv-compare/bin/python benchmarks/bench_jsma_memory.py \\
        --json benchmarks/results/jsma_memory.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 0
INPUT_SHAPE = (3, 224, 224)
NB_CLASSES = 1000
CASES = ("gradient", "bastion", "art")


def build_model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(8),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, NB_CLASSES),
    ).eval()


def maxrss_mib() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ---------------------------------------------------------------------------- child


def child(case: str, n: int, theta: float, gamma: float, device: str, threads: int) -> None:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = build_model().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.rand((n, *INPUT_SHAPE), generator=gen).to(dev)
    with torch.no_grad():
        logits = model(x)
    target = logits.topk(2, dim=1).indices[:, 1]  # runner-up class of each clean image

    # Everything the attack needs that is not the attack itself is built before the baseline.
    if case == "gradient":

        def run() -> torch.Tensor:
            xg = x.clone().requires_grad_(True)
            prob = torch.softmax(model(xg), dim=1).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(prob, xg)
            return x + 0 * grad

    elif case == "bastion":
        from bastion.attacks.evasion.saliency_map import SaliencyMapMethod
        from bastion.estimators import TorchClassifier

        clf = TorchClassifier(
            model,
            input_shape=INPUT_SHAPE,
            nb_classes=NB_CLASSES,
            clip_values=(0.0, 1.0),
            device=dev,
        )
        attack = SaliencyMapMethod(clf, theta=theta, gamma=gamma, targeted=True, batch_size=n)

        def run() -> torch.Tensor:
            return attack.generate(x, target)

    elif case == "art":
        from art.attacks.evasion import SaliencyMapMethod as ArtJSMA
        from art.estimators.classification import PyTorchClassifier

        art_clf = PyTorchClassifier(
            nn.Sequential(model, nn.Softmax(dim=1)).eval(),  # JSMA works on probabilities
            loss=nn.CrossEntropyLoss(),
            input_shape=INPUT_SHAPE,
            nb_classes=NB_CLASSES,
            clip_values=(0.0, 1.0),
            device_type="gpu" if dev.type == "cuda" else "cpu",
        )
        art_attack = ArtJSMA(art_clf, theta=theta, gamma=gamma, batch_size=n, verbose=False)
        x_np, t_np = x.cpu().numpy(), target.cpu().numpy()

        def run() -> torch.Tensor:
            return torch.from_numpy(art_attack.generate(x_np, t_np)).to(dev)

    else:
        raise SystemExit(f"unknown case {case!r}")

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_base = torch.cuda.memory_allocated(dev)
    before = maxrss_mib()
    start = time.perf_counter()
    x_adv = run()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    after = maxrss_mib()
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    changed = ((x_adv - x).abs() > 1e-6).reshape(n, -1).sum(1)
    out: dict[str, Any] = {
        "case": case,
        "seconds": seconds,
        "maxrss_before_mib": before,
        "maxrss_after_mib": after,
        "maxrss_delta_mib": after - before,
        "success": [bool(v) for v in (pred == target).cpu()] if case != "gradient" else None,
        "l0": [int(v) for v in changed.cpu()] if case != "gradient" else None,
    }
    if dev.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["cuda_delta_mib"] = (torch.cuda.max_memory_allocated(dev) - cuda_base) / 2**20
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------- parent


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        case,
        "--n",
        str(args.n),
        "--theta",
        str(args.theta),
        "--gamma",
        str(args.gamma),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {
            "case": case,
            "status": f"killed after the --timeout of {args.timeout:.0f} s",
            "wall_s": time.perf_counter() - start,
        }
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res: dict[str, Any] = json.loads(line[len("RESULT ") :])
            res["status"] = "ok"
            res["wall_s"] = time.perf_counter() - start
            return res
    return {
        "case": case,
        "status": f"failed (exit code {proc.returncode}; a negative code is a signal, e.g. -9 "
        "for the kernel's OOM killer)",
        "stderr_tail": proc.stderr[-2000:],
        "wall_s": time.perf_counter() - start,
    }


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="images (default 4)")
    parser.add_argument("--theta", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.002, help="default 0.002: 150 steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case (600)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.n, args.theta, args.gamma, args.device, args.threads)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")

    d = int(np.prod(INPUT_SHAPE))
    max_steps = int(args.gamma * d / 2)
    print(
        f"JSMA, {args.n} random images {INPUT_SHAPE}, {NB_CLASSES} classes, random-weight "
        f"conv net; theta={args.theta} gamma={args.gamma} (at most {max_steps} steps, "
        f"{2 * max_steps} features); device {args.device}, torch threads {args.threads}"
    )
    rows = []
    for case in args.cases:
        res = run_case(case, args)
        rows.append(res)
        if res["status"] == "ok":
            extra = ""
            if res.get("success") is not None:
                extra = f", success {sum(res['success'])}/{args.n}, L0 {res['l0']}"
            if "cuda_delta_mib" in res:
                extra += f", CUDA peak +{res['cuda_delta_mib']:.0f} MiB"
            print(
                f"  {case:8s}: {res['seconds']:7.2f} s, peak RSS +{res['maxrss_delta_mib']:7.1f}"
                f" MiB (peak {res['maxrss_after_mib']:.0f} MiB){extra}"
            )
        else:
            print(f"  {case:8s}: {res['status']}")
    if args.json is not None:
        payload = {
            "benchmark": "jsma_memory",
            "model": "random-weight conv net: Conv2d(3,16,3,s2)-ReLU-Conv2d(16,32,3,s2)-ReLU-"
            "AdaptiveAvgPool2d(8)-Flatten-Linear(2048,1000), seed 0",
            "params": {
                "n_images": args.n,
                "input_shape": list(INPUT_SHAPE),
                "nb_classes": NB_CLASSES,
                "theta": args.theta,
                "gamma": args.gamma,
                "max_steps": max_steps,
                "targets": "runner-up class of each clean image",
                "timeout_s": args.timeout,
            },
            "machine": {
                "python": platform.python_version(),
                "cpu_model": cpu_model_name(),
                "nproc": os.cpu_count(),
                "torch_threads": args.threads,
                "device": args.device,
                "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                "versions": {
                    "torch": torch.__version__,
                    "bastion": version("bastion"),
                    "adversarial-robustness-toolbox": version("adversarial-robustness-toolbox"),
                },
            },
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "results": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
