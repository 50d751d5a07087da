"""bastion's input preprocessors against IBM ART 1.20.1's: throughput (images per second).

Two data sets, the same random data for both libraries (seed 0, uniform in [0, 1], float32
NumPy, channels first): 1,000 grey images 1x28x28 ("grey28") and 100 RGB images 3x224x224
("rgb224"). Pairs and matching parameters (clip values (0, 1) everywhere):

======================  =====================  ==========================================
bastion                 ART                    parameters
======================  =====================  ==========================================
FeatureSqueezing        FeatureSqueezing       bit_depth=4
SpatialSmoothing        SpatialSmoothing       window 3 (ART ``window_size=3``,
                                               ``channels_first=True``)
JpegCompression         JpegCompression        quality=50, ``channels_first=True``
ThermometerEncoding     ThermometerEncoding    10 levels (ART ``num_space=10``,
                                               ``channels_first=True``)
TotalVarianceMin.       TotalVarMin            prob=0.3, norm=2, lamb=0.5, max_iter=10
                                               (ART: SciPy L-BFGS-B)
GaussianNoise           GaussianAugmentation   sigma=0.1 (ART ``augmentation=False``)
RandomResizePad         (none in ART)          max_size=None (ratio 331/299)
======================  =====================  ==========================================

ART's classes are those of ``art.defences.preprocessor``.

ART is NumPy in, NumPy out, so bastion is timed through its public NumPy call
``preprocessor(x)`` ("bastion"), and, as a second row, through its tensor kernel
``apply_tensor`` on a tensor made beforehand ("bastion tensor"). One thread
(``torch.set_num_threads(1)``; set ``OMP_NUM_THREADS=1`` for NumPy and SciPy). Every
configuration gets an untimed warm-up call; then ``--repeats`` rounds call every configuration
of a data set once, in an order that rotates from round to round. Reported: the median images
per second (wall clock; CPU seconds are recorded too) and the ratio bastion / ART.

Where one ART call would take minutes (its ThermometerEncoding calls a Python function per
pixel through ``np.apply_along_axis``; its TotalVarMin runs SciPy image by image and channel by
channel) ART is timed on the first ``--art-subset-grey`` (100) grey or ``--art-subset-rgb``
(2) RGB images, and its rate in images per second is reported as such (its cost is linear in
the number of images); the JSON says which rows were subsetted.

Agreement: on the images both libraries processed, the max absolute difference between
bastion's and ART's outputs (deterministic preprocessors; the randomised ones draw different
noise and are not compared). Both JPEG implementations run Pillow's codec, but ART truncates
``x * 255`` to ``uint8`` where bastion rounds; so JPEG is also compared on 8 images quantised
to ``(k + 0.25) / 255``, where both make the same ``uint8`` image.

Run with the comparison venv::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_preprocessing.py \\
        --json benchmarks/results/preprocessing.json
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
from typing import Any

import numpy as np
import torch

from bastion.defenses import preprocessing as bp

HERE = Path(__file__).resolve().parent
CLIP = (0.0, 1.0)


def data_sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "grey28": rng.random((1000, 1, 28, 28), dtype=np.float32),
        "rgb224": rng.random((100, 3, 224, 224), dtype=np.float32),
    }


def pairs() -> list[tuple[str, Any, Callable[[], Any] | None, str]]:
    """(name, bastion preprocessor, ART factory or None, parameters)."""
    from art.defences import preprocessor as ap

    return [
        (
            "FeatureSqueezing",
            bp.FeatureSqueezing(bit_depth=4, clip_values=CLIP),
            lambda: ap.FeatureSqueezing(clip_values=CLIP, bit_depth=4),
            "bit_depth=4",
        ),
        (
            "SpatialSmoothing",
            bp.SpatialSmoothing(window=3, clip_values=CLIP),
            lambda: ap.SpatialSmoothing(window_size=3, channels_first=True, clip_values=CLIP),
            "window 3",
        ),
        (
            "JpegCompression",
            bp.JpegCompression(quality=50, clip_values=CLIP),
            lambda: ap.JpegCompression(clip_values=CLIP, quality=50, channels_first=True),
            "quality=50",
        ),
        (
            "ThermometerEncoding",
            bp.ThermometerEncoding(levels=10, clip_values=CLIP),
            lambda: ap.ThermometerEncoding(clip_values=CLIP, num_space=10, channels_first=True),
            "10 levels",
        ),
        (
            "TotalVarianceMinimization",
            bp.TotalVarianceMinimization(
                prob=0.3, norm=2, lamb=0.5, max_iter=10, clip_values=CLIP, random_state=0
            ),
            lambda: ap.TotalVarMin(prob=0.3, norm=2, lamb=0.5, max_iter=10, clip_values=CLIP),
            "prob=0.3, norm=2, lamb=0.5, max_iter=10",
        ),
        (
            "GaussianNoise",
            bp.GaussianNoise(sigma=0.1, clip_values=CLIP, random_state=0),
            lambda: ap.GaussianAugmentation(sigma=0.1, augmentation=False, clip_values=CLIP),
            "sigma=0.1",
        ),
        (
            "RandomResizePad",
            bp.RandomResizePad(clip_values=CLIP, random_state=0),
            None,
            "max_size=None (331/299 of the height)",
        ),
    ]


#: ART configurations timed on a subset of the images (minutes per call otherwise).
ART_SUBSETTED = ("ThermometerEncoding", "TotalVarianceMinimization")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--art-subset-grey", type=int, default=100)
    parser.add_argument("--art-subset-rgb", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="preprocessor names to run")
    parser.add_argument("--sets", nargs="*", default=["grey28", "rgb224"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    sets = data_sets()
    results: dict[str, Any] = {}
    for set_name in args.sets:
        x = sets[set_name]
        xt = torch.from_numpy(x.copy())
        configs: list[tuple[str, str, int, Callable[[], Any]]] = []
        pair_art = {name: f for name, _, f, _ in pairs()}
        pair_ours = {name: p for name, p, _, _ in pairs()}
        for name, ours, art_factory, _ in pairs():
            if args.only and name not in args.only:
                continue
            configs.append((name, "bastion", len(x), lambda p=ours, xn=x: p(xn)))
            configs.append(
                (name, "bastion tensor", len(x), lambda p=ours, xx=xt: p.apply_tensor(xx))
            )
            if art_factory is not None:
                subset = args.art_subset_grey if set_name == "grey28" else args.art_subset_rgb
                n = subset if name in ART_SUBSETTED else len(x)
                art_pp = art_factory()
                x_art = x[:n].copy()
                configs.append((name, "ART", n, lambda a=art_pp, xa=x_art: a(xa)[0]))
        # warm-up, and the outputs for the agreement check
        outputs: dict[tuple[str, str], Any] = {}
        for name, lib, _n, run in configs:
            t = time.perf_counter()
            out = run()
            print(f"{set_name} {name:<26} {lib:<15} warm-up {time.perf_counter() - t:8.3f} s")
            outputs[(name, lib)] = out.numpy() if isinstance(out, torch.Tensor) else out
        wall: dict[tuple[str, str], list[float]] = {(c[0], c[1]): [] for c in configs}
        cpu: dict[tuple[str, str], list[float]] = {(c[0], c[1]): [] for c in configs}
        for i in range(args.repeats):
            shift = i % len(configs)
            for name, lib, _n, run in configs[shift:] + configs[:shift]:
                t, c = time.perf_counter(), time.process_time()
                run()
                cpu[(name, lib)].append(time.process_time() - c)
                wall[(name, lib)].append(time.perf_counter() - t)
        rows: dict[str, Any] = {}
        for name, lib, n, _ in configs:
            w, c = wall[(name, lib)], cpu[(name, lib)]
            rows.setdefault(name, {})[lib] = {
                "images": n,
                "median_s": statistics.median(w),
                "median_cpu_s": statistics.median(c),
                "images_per_s": n / statistics.median(w),
                "images_per_cpu_s": n / statistics.median(c),
                "times_s": w,
                "cpu_s": c,
            }
        for name, row in rows.items():
            if "ART" not in row:
                row["ratio_vs_art"] = None
                row["max_abs_diff"] = None
                continue
            art_rate = row["ART"]["images_per_s"]
            row["ratio_vs_art"] = row["bastion"]["images_per_s"] / art_rate
            row["ratio_tensor_vs_art"] = row["bastion tensor"]["images_per_s"] / art_rate
            row["ratio_cpu_vs_art"] = (
                row["bastion"]["images_per_cpu_s"] / row["ART"]["images_per_cpu_s"]
            )
            a = outputs[(name, "ART")]
            b = outputs[(name, "bastion")][: a.shape[0]]
            if name in ("TotalVarianceMinimization", "GaussianNoise"):
                row["max_abs_diff"] = None  # random: different draws
            elif a.shape != b.shape:
                row["max_abs_diff"] = f"shapes differ: {a.shape} vs {b.shape}"
            else:
                d = np.abs(a.astype(np.float64) - b.astype(np.float64))
                row["max_abs_diff"] = float(d.max())
                row["mean_abs_diff"] = float(d.mean())
                row["share_differing"] = float((d > 0).mean())
                # ART's FeatureSqueezing computes and returns float64: differences of float32
                # rounding (< 1e-6) are not differences of the output level
                row["n_differing_over_1e-6"] = int((d > 1e-6).sum())
                row["n_values"] = int(d.size)
            if name == "JpegCompression":
                # ART truncates x * 255 to uint8, bastion rounds: on data at (k + 0.25) / 255
                # both give k, so the codec's outputs can be compared exactly
                xq = (np.floor(x[:8] * 255) + 0.25).astype(np.float32) / np.float32(255)
                aq = pair_art[name]()(xq)[0]
                bq = pair_ours[name](xq)
                row["max_abs_diff_same_uint8"] = float(np.abs(aq - bq).max())
        results[set_name] = rows
        print(f"\n{set_name}: images/s (median of {args.repeats}), ratio bastion / ART")
        for name, row in rows.items():
            line = f"  {name:<26}" + "".join(
                f" {lib} {r['images_per_s']:10.1f}"
                for lib, r in row.items()
                if isinstance(r, dict) and "images_per_s" in r
            )
            if row.get("ratio_vs_art") is not None:
                line += (
                    f"  ratio {row['ratio_vs_art']:.2f} (tensor {row['ratio_tensor_vs_art']:.2f})"
                    f"  max|diff| {row['max_abs_diff']}"
                )
            print(line)
        print()

    import art as art_pkg
    import PIL
    import scipy

    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "loadavg": list(os.getloadavg()),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pillow": PIL.__version__,
            "art": art_pkg.__version__,
            "note": "shared, noisy machine: compare ratios from one run",
        },
        "setting": {
            "data": {
                "grey28": "1000 x 1x28x28, uniform [0, 1], float32, seed 0",
                "rgb224": "100 x 3x224x224, uniform [0, 1], float32, seed 0",
            },
            "parameters": {name: params for name, _, _, params in pairs()},
            "clip_values": CLIP,
            "repeats": args.repeats,
            "art_subset": {
                "preprocessors": list(ART_SUBSETTED),
                "grey28": args.art_subset_grey,
                "rgb224": args.art_subset_rgb,
            },
        },
        "results": results,
    }
    if args.json:
        Path(args.json).parent.mkdir(exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
