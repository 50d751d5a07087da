"""Copycat CNN and Knockoff Nets: bastion against IBM ART 1.20.1, same victim, same budget.

The victim is the SmallCNN of the tests (digits 28x28, 5 epochs, seed 0, about 96% test
accuracy). Each library steals it with ``--budget`` queries drawn from the 1,347 training
digits (the attacker's natural data), training a fresh SmallCNN thief (same seed for every
library) for ``--epochs`` epochs with Adam (lr 1e-3, batch 64). Reported per (attack, library):
wall-clock time of ``extract`` (median of ``--repeats``), victim queries, fidelity (agreement
with the victim on the 450 test digits) and the thief's test accuracy. Both libraries get the
models as a user has them (NCHW weights: bastion's ``TorchClassifier`` with its faithful
defaults, ``memory_format="preserve"``); ``--same-layout`` gives ART channels-last models (what
bastion's opt-in ``memory_format="auto"`` would do).

Run with the comparison venv (``bash benchmarks/setup_compare.sh``)::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_extraction.py \\
        --json benchmarks/results/extraction.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from bastion.attacks.extraction import CopycatCNN, KnockoffNets
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.metrics.extraction import fidelity, thief_accuracy
from bastion.zoo import SmallCNN, train_classifier


def fresh(seed: int = 1) -> torch.nn.Module:
    return SmallCNN(in_channels=1, nb_classes=10, random_state=seed)


def run_bastion(attack: str, victim: Any, x_pool: np.ndarray, budget: int, epochs: int) -> Any:
    thief = TorchClassifier(fresh(), input_shape=(1, 28, 28), nb_classes=10)
    cls = CopycatCNN if attack == "copycat" else KnockoffNets
    extra = {} if attack == "copycat" else {"sampling": "random"}
    a = cls(victim, thief=thief, nb_queries=budget, epochs=epochs, random_state=0, **extra)
    a.extract(x_pool)
    return thief, a.queries_


def run_art(
    attack: str,
    victim_net: torch.nn.Module,
    x_pool: np.ndarray,
    budget: int,
    epochs: int,
    same_layout: bool = False,
) -> tuple[Any, int]:
    from art.attacks.extraction import CopycatCNN as ArtCopycat
    from art.attacks.extraction import KnockoffNets as ArtKnockoff
    from art.estimators.classification import PyTorchClassifier

    def wrap(net: torch.nn.Module) -> Any:
        return PyTorchClassifier(
            net,
            loss=torch.nn.CrossEntropyLoss(),
            optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
            input_shape=(1, 28, 28),
            nb_classes=10,
            clip_values=(0.0, 1.0),
        )

    victim = wrap(victim_net)
    net = fresh()
    thief = wrap(net.to(memory_format=torch.channels_last) if same_layout else net)
    np.random.seed(0)  # noqa: NPY002  (ART draws its queries from the global RNG)
    if attack == "copycat":
        a = ArtCopycat(
            victim, batch_size_fit=64, batch_size_query=256, nb_epochs=epochs, nb_stolen=budget
        )
    else:
        a = ArtKnockoff(
            victim,
            batch_size_fit=64,
            batch_size_query=256,
            nb_epochs=epochs,
            nb_stolen=budget,
            sampling_strategy="random",
            use_probability=True,
        )
    stolen = a.extract(x_pool, thieved_classifier=thief)
    return stolen, budget


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=int, default=500)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--same-layout",
        action="store_true",
        help="give ART channels-last models (bastion's opt-in memory_format='auto' layout)",
    )
    args = p.parse_args()
    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=0)
    net = train_classifier(fresh(0), x_tr, y_tr, epochs=5, random_state=0)
    user_net = copy.deepcopy(net)  # ART gets the victim as the user has it (NCHW weights)
    victim = TorchClassifier(net, input_shape=(1, 28, 28), nb_classes=10)
    if args.same_layout:
        user_net = net
    rows = []
    for attack in ("copycat", "knockoff"):
        for lib in ("bastion", "art"):
            times, fids, accs = [], [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                if lib == "bastion":
                    thief, queries = run_bastion(attack, victim, x_tr, args.budget, args.epochs)
                else:
                    thief, queries = run_art(
                        attack, user_net, x_tr, args.budget, args.epochs, args.same_layout
                    )
                times.append(time.perf_counter() - t0)
                pred = np.asarray(thief.predict(x_te)).argmax(1)
                fids.append(float(np.mean(pred == np.asarray(victim.predict(x_te)).argmax(1))))
                accs.append(float(np.mean(pred == y_te)))
            row = {
                "attack": attack,
                "library": lib,
                "queries": queries,
                "seconds": statistics.median(times),
                "fidelity": statistics.median(fids),
                "thief_accuracy": statistics.median(accs),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    try:
        art_version = importlib.metadata.version("adversarial-robustness-toolbox")
    except importlib.metadata.PackageNotFoundError:
        art_version = None
    out = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "art": art_version,
        },
        "setting": {
            "budget": args.budget,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "same_layout": args.same_layout,
            "victim_test_accuracy": thief_accuracy(victim, x_te, y_te),
            "note": "machine shared with other jobs while measured; re-time when quiet",
        },
        "results": rows,
    }
    _ = fidelity  # same definition as bastion.metrics.extraction.fidelity, computed inline
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
