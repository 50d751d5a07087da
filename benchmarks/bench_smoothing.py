"""Randomized smoothing: bastion's ``RandomizedSmoothing`` against IBM ART 1.20.1's
``PyTorchRandomizedSmoothing``, on the same model with the same settings.

Run with the comparison venv (it has both libraries)::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_smoothing.py \\
        --samples-cnn 50 --samples-mlp 100 --repeats 3 --json benchmarks/results/smoothing.json

* models: ``bastion.zoo.SmallCNN(in_channels=1, nb_classes=10, input_size=8, random_state=0)``
  (the forward pass dominates) and ``MLP(64, 10, hidden=(128, 128))`` (cheap: the overhead
  of noise and conversions shows), each trained by bastion's ``GaussianNoiseTrainer`` (sigma
  0.25, 20 epochs, Adam 3e-3) on
  ``load_digits(size=8, random_state=0)``; ART wraps a ``copy.deepcopy`` of the same trained
  module (``PyTorchClassifier`` semantics, ``clip_values=(0, 1)``, CPU);
* CERTIFY on the first ``--samples-cnn`` / ``--samples-mlp`` test digits with sigma 0.25,
  ``n0`` 100, ``n`` 10,000, ``alpha`` 0.001, batch 1,000 on both sides (ART:
  ``sample_size=n0``, ``scale=sigma``, ``alpha=alpha`` in the constructor,
  ``certify(x, n=n, batch_size=1000)``);
* PREDICT with ``n`` 1,000 on both sides (ART: ``sample_size=1000``; its ``predict`` returns a
  one-hot row, all zeros when abstaining);
* timing: wall-clock of one ``certify`` call over all samples, one torch thread; repeats
  interleaved (the order flips each repeat); the ratio is the median over repeats of
  ``ART time / bastion time`` (> 1: bastion is faster);
* statistics: both use the one-sided Clopper-Pearson bound at level ``1 - alpha`` (ART through
  statsmodels' ``proportion_confint(alpha=2 alpha, method="beta")``, bastion through SciPy's
  beta quantile) and the two-sided binomial test for PREDICT (both SciPy's ``binomtest``). The
  noise differs (ART: NumPy's global RNG in float64, cast to float32; bastion: torch
  generators per sample), so per-sample results differ by Monte Carlo error only; the
  ``same_counts`` check feeds bastion's own class counts to ART's bound and radius formula
  and compares the radii (equal up to float rounding).

ART's defaults (``sample_size=32``, ``scale=0.1``, ``alpha=0.001``, ``batch_size=32``) are not
used: the settings are set equal on both sides.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

from bastion.certification import GaussianNoiseTrainer, RandomizedSmoothing
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.metrics import certified_accuracy
from bastion.zoo import MLP, SmallCNN

SIGMA, N0, N, ALPHA, BATCH, N_PREDICT = 0.25, 100, 10_000, 0.001, 1000, 1000
RADII = (0.0, 0.25, 0.5, 0.75)


def _model(kind: str = "cnn") -> tuple[TorchClassifier, np.ndarray, np.ndarray]:
    (x, y), (xt, yt) = load_digits(size=8, random_state=0)
    module: torch.nn.Module
    if kind == "cnn":
        module = SmallCNN(in_channels=1, nb_classes=10, input_size=8, random_state=0)
    else:
        module = MLP(64, 10, hidden=(128, 128), random_state=0)
    clf = TorchClassifier(
        module,
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    GaussianNoiseTrainer(
        clf,
        sigma=SIGMA,
        epochs=20,
        batch_size=64,
        optimizer="adam",
        learning_rate=3e-3,
        schedule=None,
        random_state=0,
    ).fit(x, y)
    return clf, xt, yt


def _art(module: torch.nn.Module, sample_size: int) -> Any:
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    return PyTorchRandomizedSmoothing(
        model=copy.deepcopy(module).eval(),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        sample_size=sample_size,
        scale=SIGMA,
        alpha=ALPHA,
    )


def _summary(pred: np.ndarray, radius: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "certified": int((pred >= 0).sum()),
        "certified_correct": int(((pred >= 0) & (pred == y)).sum()),
        "certified_accuracy": {
            str(r): certified_accuracy(pred, radius, y, radius=r) for r in RADII
        },
        "mean_radius_correct": float(np.where(pred == y, radius, 0.0).mean()),
    }


def _compare(kind: str, samples: int, repeats: int) -> dict[str, Any]:
    from scipy.stats import norm
    from statsmodels.stats.proportion import proportion_confint

    clf, xt, yt = _model(kind)
    module = clf.torch_module()
    x, y = xt[:samples], yt[:samples]
    art_cert = _art(module, N0)

    times: dict[str, list[float]] = {"bastion": [], "art": []}
    results: dict[str, Any] = {}
    for rep in range(repeats):
        order = ("bastion", "art") if rep % 2 == 0 else ("art", "bastion")
        for side in order:
            start = time.perf_counter()
            if side == "bastion":
                rs = RandomizedSmoothing(clf, sigma=SIGMA, random_state=rep)
                pred, radius = rs.certify(x, n0=N0, n=N, alpha=ALPHA, batch_size=BATCH)
            else:
                np.random.seed(rep)  # noqa: NPY002 (ART draws its noise from NumPy's global RNG)
                pred, radius = art_cert.certify(x, n=N, batch_size=BATCH)
            times[side].append(time.perf_counter() - start)
            if rep == 0:
                results[side] = _summary(np.asarray(pred), np.asarray(radius), y)
            print(f"{kind} repeat {rep} {side}: {times[side][-1]:.2f} s", file=sys.stderr)
    ratios = [a / b for a, b in zip(times["art"], times["bastion"], strict=True)]

    # PREDICT agreement (n = 1000 on both sides).
    rs = RandomizedSmoothing(clf, sigma=SIGMA, random_state=0)
    ours = rs.predict(x, n=N_PREDICT, alpha=ALPHA, batch_size=BATCH)
    np.random.seed(0)  # noqa: NPY002 (ART's noise: NumPy's global RNG)
    onehot = _art(module, N_PREDICT).predict(x, batch_size=BATCH)
    theirs = np.where(onehot.sum(1) > 0, onehot.argmax(1), -1)

    # The same counts through both statistics: bastion's class counts, ART's bound and radius.
    rs = RandomizedSmoothing(clf, sigma=SIGMA, random_state=0)
    t = torch.as_tensor(x)
    bar = rs._bar(0, "")
    c_a = rs._counts(t, N0, "selection", 0, BATCH, bar).argmax(1)
    n_a = rs._counts(t, N, "estimation", 0, BATCH, bar).gather(1, c_a[:, None])[:, 0].numpy()
    _, radius0 = rs.certify(x, n0=N0, n=N, alpha=ALPHA, batch_size=BATCH)
    art_radius = []
    for k in n_a.tolist():
        p = proportion_confint(k, N, alpha=2 * ALPHA, method="beta")[0]
        art_radius.append(0.0 if p < 0.5 else SIGMA * norm.ppf(p))
    diff = float(np.max(np.abs(np.asarray(art_radius) - radius0)))
    return {
        "model": {
            "cnn": "SmallCNN(1, 10, input_size=8)",
            "mlp": "MLP(64, 10, hidden=(128, 128))",
        }[kind]
        + " trained by GaussianNoiseTrainer(sigma=0.25, 20 epochs, Adam 3e-3, batch 64) on "
        "load_digits(size=8)",
        "samples": samples,
        "seconds": times,
        "samples_per_second": {k: [samples / s for s in v] for k, v in times.items()},
        "speedup_art_time_over_bastion_time_median": statistics.median(ratios),
        "speedup_per_repeat": ratios,
        "certify_first_repeat": results,
        "predict_agreement": float((ours == theirs).mean()),
        "predict_abstain": {"bastion": int((ours < 0).sum()), "art": int((theirs < 0).sum())},
        "same_counts_max_radius_difference": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-cnn", type=int, default=50)
    parser.add_argument("--samples-mlp", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import art as art_pkg

    out = {
        "benchmark": "randomized smoothing CERTIFY and PREDICT, bastion vs ART 1.20.1",
        "command": "OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python "
        f"benchmarks/bench_smoothing.py --samples-cnn {args.samples_cnn} --samples-mlp "
        f"{args.samples_mlp} --repeats {args.repeats} --json benchmarks/results/smoothing.json",
        "settings": {
            "sigma": SIGMA,
            "n0": N0,
            "n": N,
            "alpha": ALPHA,
            "batch_size": BATCH,
            "predict_n": N_PREDICT,
            "art_defaults_not_used": {
                "sample_size (n0)": 32,
                "scale (sigma)": 0.1,
                "alpha": 0.001,
                "batch_size": 32,
            },
        },
        "device": "cpu, 1 torch thread (a 2-core machine shared with other jobs: timings noisy)",
        "models": {
            "cnn": _compare("cnn", args.samples_cnn, args.repeats),
            "mlp": _compare("mlp", args.samples_mlp, args.repeats),
        },
        "statistics_notes": (
            "Both: one-sided Clopper-Pearson lower bound at level 1-alpha (ART: statsmodels "
            "proportion_confint(alpha=2*alpha, method='beta'); bastion: scipy beta.ppf), radius "
            "sigma*Phi^-1(p_lower), abstain when p_lower < 0.5; PREDICT: two-sided binomtest of "
            "the top two counts at 1/2, abstain when p > alpha. Noise: ART uses NumPy's global "
            "RNG (float64 cast to float32) per sample, bastion seeded torch streams per sample; "
            "neither clips the noisy copies. Per-sample results therefore differ by Monte Carlo "
            "error; same_counts_max_radius_difference feeds bastion's counts to ART's formula. "
            "ART's certify needs statsmodels (not among ART's declared dependencies)."
        ),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "art": art_pkg.__version__,
            "numpy": np.__version__,
        },
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
