"""Peak memory of adversarial training fed by a DataLoader: flat in the number of samples.

A bastion adversarial trainer trains the digits ``SmallCNN`` (``random_state=0``) for one epoch
on a synthetic ``torch.utils.data.Dataset`` of N = 10,000, 30,000 and 100,000 grey 28x28
images. The dataset is never materialised: ``__getitem__(i)`` draws image ``i`` from a
generator seeded with ``(seed, i)`` (a class template, chosen by ``i``, plus uniform noise,
clipped to [0, 1]), so the data cost no memory whatever N is; a whole-dataset float32 array
would take N * 784 * 4 bytes (31 MB, 94 MB and 314 MB). The loader: ``DataLoader(dataset,
batch_size=128, shuffle=True, generator=seeded, num_workers=0)``, given to ``fit`` as it is.

The training is the cheap configuration: ``MadryPGDTrainer(eps=0.2, eps_step=0.25,
max_iter=1, epochs=1, validation_attack=None)`` (one signed-gradient step from a random
start, i.e. FGSM with a random start), SGD with the trainer's defaults otherwise.

Each N runs in a fresh subprocess (one torch thread), so its peak resident set size
(``ru_maxrss``) is its own. Reported: the peak before ``fit`` (imports, model, loader, one
batch drawn), the peak after, their difference, and the RSS sampled every 0.1 s during ``fit``
(first quarter against last quarter of the samples: flat if equal). Flat memory means the
peak does not grow with N.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training_memory.py \\
        --json benchmarks/results/training_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SEED = 0
SIZES = (10_000, 30_000, 100_000)
BATCH = 128


def maxrss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(n: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from bastion.defenses.training import MadryPGDTrainer
    from bastion.estimators import TorchClassifier
    from bastion.zoo import SmallCNN

    torch.set_num_threads(1)
    templates = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(SEED))

    class SyntheticDigits(Dataset):
        """``n`` images made on the fly from ``(seed, index)``; nothing stored per sample."""

        def __init__(self, n: int, seed: int) -> None:
            self.n, self.seed = n, seed

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            label = i % 10
            x = (0.7 * templates[label] + 0.3 * torch.rand(1, 28, 28, generator=g)).clamp(0, 1)
            return x, label

    loader = DataLoader(
        SyntheticDigits(n, SEED),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
        num_workers=0,
    )
    next(iter(loader))  # the loader's own first-batch cost is in the baseline
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=28, random_state=SEED)
    clf = TorchClassifier(model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1))
    trainer = MadryPGDTrainer(
        clf, eps=0.2, eps_step=0.25, max_iter=1, epochs=1, batch_size=BATCH,
        validation_attack=None, random_state=SEED,
    )  # fmt: skip
    before = maxrss_mib()
    rss_before = rss_mib()

    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_mib())
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    trainer.fit(loader)
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    after = maxrss_mib()
    q = max(1, len(samples) // 4)
    hist = trainer.history_[-1]
    return {
        "n": n,
        "batches": len(loader),
        "seconds": seconds,
        "maxrss_before_fit_mib": before,
        "maxrss_after_fit_mib": after,
        "peak_growth_during_fit_mib": after - before,
        "rss_before_fit_mib": rss_before,
        "rss_samples": len(samples),
        "rss_sampled_max_mib": max(samples) if samples else None,
        "rss_first_quarter_median_mib": statistics.median(samples[:q]) if samples else None,
        "rss_last_quarter_median_mib": statistics.median(samples[-q:]) if samples else None,
        "materialised_float32_mib": n * 28 * 28 * 4 / 2**20,
        "train_loss": hist.get("loss"),
        "torch": torch.__version__,
    }


def write_json(path: str, rows: list[dict[str, Any]]) -> None:
    out = {
        "command": " ".join(["OMP_NUM_THREADS=1", sys.executable, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "device": "cpu",
            "torch_threads": 1,
            "python": platform.python_version(),
            "loadavg_end": list(os.getloadavg()),
        },
        "setting": {
            "trainer": "MadryPGDTrainer(eps=0.2, eps_step=0.25, max_iter=1, epochs=1, "
            f"batch_size={BATCH}, validation_attack=None, random_state={SEED}), other "
            "parameters at their defaults",
            "model": "bastion.zoo.SmallCNN(in_channels=1, nb_classes=10, random_state=0)",
            "data": "synthetic Dataset, 1x28x28 float32 made per index from (seed, index); "
            "DataLoader(batch_size=128, shuffle=True, seeded generator, num_workers=0)",
            "memory": "ru_maxrss of a fresh subprocess per size; RSS from /proc/self/statm "
            "sampled every 0.1 s during fit",
        },
        "results": rows,
    }
    Path(path).parent.mkdir(exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for n in args.sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(n)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"N={n} failed:\n{proc.stderr}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"N={n:>7} batches {row['batches']:>4} {row['seconds']:6.1f} s  max RSS before fit "
            f"{row['maxrss_before_fit_mib']:.1f} MiB, after {row['maxrss_after_fit_mib']:.1f} "
            f"MiB (+{row['peak_growth_during_fit_mib']:.1f}); sampled RSS first quarter "
            f"{row['rss_first_quarter_median_mib']:.1f}, last quarter "
            f"{row['rss_last_quarter_median_mib']:.1f} MiB (the array would be "
            f"{row['materialised_float32_mib']:.0f} MiB)",
            flush=True,
        )
        if args.json:  # after every size, so a cut-short run keeps what it measured
            write_json(args.json, rows)


if __name__ == "__main__":
    main()
