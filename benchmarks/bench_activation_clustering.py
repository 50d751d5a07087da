"""bastion's ActivationClustering against ART 1.20.1's ActivationDefence: F1 and time.

Two settings, BadNets on 10% of one class of scikit-learn's digits, relabelled 7:

* ``--size 28`` (the issue's "Done when"): the digits upscaled to 28x28
  (``load_digits(size=28, random_state=0)``), a white 4x4 patch in the bottom-right corner
  on 10% of the 1s (14 of 1,347 training images), ``SmallCNN`` trained 5 epochs (seed 0);
* ``--size 8``: the digits at their native 8x8 size, a 2x2 patch on 10% of the 2s (13 of
  1,347), ``SmallCNN(input_size=8)`` trained 20 epochs (seed 0). A small model: here the
  forward pass is cheap and the analysis (reduction, k-means, silhouettes) decides the time.

Both detectors see the same poisoned model and the same data, and are scored over the
**whole** training set. ART gets the model as the user has it (an untouched copy, NCHW
weights). bastion runs with ``TorchClassifier``'s defaults (``inference="eager"``,
``memory_format="preserve"``: the user's module as it is) and, as a second configuration,
with the opt-in fast path (``inference="auto", memory_format="auto"``: channels-last weights
and a frozen oneDNN graph, on its own copy of the model). ``--same-layout`` gives ART that
channels-last copy too.

ART's ``ActivationDefence`` reads the last layer in ``layer_names`` (the logits, ``fc2``; with
10 outputs and ``nb_dims=10`` it then skips the reduction); it has no layer parameter, so it
is run twice: as shipped ("logits") and with its activation reader pointed at the
penultimate layer ``relu3`` that bastion reads ("relu3"). Its defaults are ``PCA`` and
``smaller``; every (reduction, analysis) pair is run, and the fastest working one is
reported as ART's fastest configuration.

Timing: one torch thread (``torch.set_num_threads(1)``, and set ``OMP_NUM_THREADS=1`` for
NumPy and scikit-learn). Every configuration gets one untimed warm-up; then ``--repeats``
rounds run every configuration once each, in an order that rotates from round to round
(interleaved, so load on a shared machine falls on all alike). A fresh detector each time,
activations included. Reported: the median wall-clock and CPU seconds (``process_time``, less
sensitive to other processes on a shared machine), and F1 of every run (ART's k-means is
seeded from NumPy's global RNG, so its F1 varies by run). Ratios are ART's median over
bastion's.

Run with ``OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python
benchmarks/bench_activation_clustering.py --size 8``; it writes
``benchmarks/results/activation_clustering_8.json`` (``--size 28``:
``activation_clustering.json``).
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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
from bastion.datasets import load_digits
from bastion.defenses.poisoning import ActivationClustering
from bastion.estimators import TorchClassifier
from bastion.metrics import attack_success_rate, clean_accuracy, detection_scores
from bastion.zoo import SmallCNN, train_classifier

HERE = Path(__file__).resolve().parent
TARGET, FRACTION = 7, 0.1
#: The source class of each setting (on 8x8 digits, the 1s' trigger does not form a
#: cluster of its own: see docs/poisoning.md).
SOURCE = {28: 1, 8: 2}
FAST = {"inference": "auto", "memory_format": "auto"}


def poisoned_model(size: int, source: int) -> dict[str, Any]:
    (x, y), (x_te, y_te) = load_digits(size=size, random_state=0)
    patch, epochs = (4, 5) if size == 28 else (2, 20)
    attack = BackdoorAttack(
        PatchTrigger(size=patch), target=TARGET, source=[source], fraction=FRACTION, random_state=0
    )
    x_p, y_p, mask = attack.poison(x, y)
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=size, random_state=0)
    cache = HERE / ".cache" / f"ac_digits{size}_badnets10_source{source}.pt"
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        model.eval()
    else:
        train_classifier(model, x_p, y_p, epochs=epochs, random_state=0)
        cache.parent.mkdir(exist_ok=True)
        torch.save(model.state_dict(), cache)
    shape = (1, size, size)
    user_model = copy.deepcopy(model)  # as the user has it, for ART
    clf = TorchClassifier(model, input_shape=shape, nb_classes=10, clip_values=(0, 1))
    fast = TorchClassifier(
        copy.deepcopy(model), input_shape=shape, nb_classes=10, clip_values=(0, 1), **FAST
    )
    src = y_te == source
    return {
        "model": user_model,
        "clf": clf,
        "fast": fast,
        "x": x_p,
        "y": y_p,
        "mask": mask,
        "clean_accuracy": clean_accuracy(clf, x_te, y_te),
        "attack_success_rate": attack_success_rate(
            clf, attack.apply_trigger(x_te[src]), TARGET, y_te[src]
        ),
    }


def bastion_runner(clf: Any, x: np.ndarray, y: np.ndarray, **params: Any) -> Any:
    def run(seed: int) -> np.ndarray:
        return ActivationClustering(clf, random_state=seed, **params).detect(x, y).is_poison

    return run


def art_runner(model: Any, x: np.ndarray, y: np.ndarray, layer: str, **params: Any) -> Any:
    from art.defences.detector.poison import ActivationDefence
    from art.estimators.classification import PyTorchClassifier

    size = x.shape[-1]
    art_clf = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, size, size),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    y_onehot = np.eye(10, dtype=np.float32)[y]

    class Defence(ActivationDefence):
        def _get_activations(self, x_train: np.ndarray | None = None) -> np.ndarray:
            if layer == "logits":
                return super()._get_activations(x_train)
            acts = self.classifier.get_activations(self.x_train, layer=layer, batch_size=128)
            return np.reshape(acts, (acts.shape[0], -1))

    def run(seed: int) -> np.ndarray:
        defence = Defence(art_clf, x, y_onehot)
        _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, **params)
        return np.asarray(is_clean) == 0

    return run


def measure(configs: list[tuple[str, Any]], mask: np.ndarray, repeats: int) -> dict[str, Any]:
    """Interleaved rounds: every configuration once per round, the order rotating."""
    runs: dict[str, dict[str, list[Any]]] = {}
    working = []
    for name, run in configs:
        try:
            run(0)  # warm-up
        except Exception as err:  # ART 1.20.1's relative-size analysis crashes on numpy 2
            runs[name] = {"error": [f"{type(err).__name__}: {err}"]}
            print(f"{name:<46} failed: {type(err).__name__}: {str(err)[:80]}")
            continue
        runs[name] = {"wall": [], "cpu": [], "f1": [], "scores": []}
        working.append((name, run))
    for i in range(repeats):
        shift = i % len(working)
        for name, run in working[shift:] + working[:shift]:
            if "error" in runs[name]:
                continue
            t, c = time.perf_counter(), time.process_time()
            try:
                flagged = run(i)
            except Exception as err:  # ART's silhouette analysis fails on some runs
                runs[name] = {"error": [f"run {i}: {type(err).__name__}: {err}"]}
                print(f"{name:<46} failed: {type(err).__name__}: {str(err)[:80]}")
                continue
            runs[name]["cpu"].append(time.process_time() - c)
            runs[name]["wall"].append(time.perf_counter() - t)
            s = detection_scores(flagged, mask)
            runs[name]["f1"].append(s["f1"])
            runs[name]["scores"].append(s)
    results: dict[str, Any] = {}
    for name, r in runs.items():
        if "error" in r:
            results[name] = {"error": r["error"][0]}
            continue
        f1 = statistics.median_low(r["f1"])
        last = r["scores"][r["f1"].index(f1)]  # a run of median F1, for its counts
        results[name] = {
            "median_s": statistics.median(r["wall"]),
            "median_cpu_s": statistics.median(r["cpu"]),
            "min_cpu_s": min(r["cpu"]),
            "times_s": r["wall"],
            "cpu_s": r["cpu"],
            "f1_runs": r["f1"],
            "f1": f1,
            "precision": last["precision"],
            "recall": last["recall"],
            "n_flagged": last["true_positives"] + last["false_positives"],
        }
    return results


def forward_seconds(clf: Any, x: np.ndarray, repeats: int) -> float:
    """Median CPU seconds of the forward pass bastion's detector makes (relu3, batch 128)."""
    clf.get_activations(x, "relu3", batch_size=128)
    times = []
    for _ in range(repeats):
        c = time.process_time()
        clf.get_activations(x, "relu3", batch_size=128)
        times.append(time.process_time() - c)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=28, choices=(8, 28))
    parser.add_argument("--source", type=int, default=None, help="default: 1 (28x28), 2 (8x8)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--same-layout",
        action="store_true",
        help="give ART the channels-last copy of the fast-path estimator instead of the "
        "user's NCHW model",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # FastICA (bastion's reduce="fastica", ART's FastICA) often stops at its iteration cap
    warnings.filterwarnings("ignore", message="FastICA did not converge")
    source = SOURCE[args.size] if args.source is None else args.source
    suffix = "" if args.size == 28 else f"_{args.size}"
    out_path = Path(args.out or HERE / "results" / f"activation_clustering{suffix}.json")

    data = poisoned_model(args.size, source)
    clf, fast, model = data["clf"], data["fast"], data["model"]
    x, y, mask = data["x"], data["y"], data["mask"]
    if args.same_layout:
        model = fast.model
    print(
        f"digits {args.size}x{args.size}, {source} -> {TARGET}: {len(x)} training images, "
        f"{int(mask.sum())} poisoned; clean accuracy {data['clean_accuracy']:.3f}, "
        f"attack success {data['attack_success_rate']:.3f}"
    )

    configs: list[tuple[str, Any]] = [
        ("bastion default (whiten, silhouette)", bastion_runner(clf, x, y)),
        ("bastion default, fast path (auto)", bastion_runner(fast, x, y)),
        (
            "bastion fastica, silhouette",
            bastion_runner(clf, x, y, reduce="fastica", analysis="silhouette"),
        ),
        ("bastion pca, smaller", bastion_runner(clf, x, y, reduce="pca", analysis="smaller")),
        (
            "bastion pca, relative-size",
            bastion_runner(clf, x, y, reduce="pca", analysis="relative-size"),
        ),
    ]
    for layer in ("logits", "relu3"):
        for reduce, analysis in [
            ("PCA", "smaller"),
            ("FastICA", "smaller"),
            ("PCA", "relative-size"),
            ("PCA", "distance"),
            ("PCA", "silhouette-scores"),
            ("FastICA", "silhouette-scores"),
        ]:
            configs.append(
                (
                    f"ART {layer}, {reduce}, {analysis}",
                    art_runner(model, x, y, layer, reduce=reduce, cluster_analysis=analysis),
                )
            )

    results = measure(configs, mask, args.repeats)
    for name, r in results.items():
        if "error" in r:
            continue
        print(
            f"{name:<46} f1 {r['f1']:.3f} (p {r['precision']:.3f} r {r['recall']:.3f}, "
            f"{r['n_flagged']} flagged)  wall {r['median_s']:.3f} s  cpu {r['median_cpu_s']:.3f} s"
        )

    ours = results["bastion default (whiten, silhouette)"]
    ours_fast = results["bastion default, fast path (auto)"]
    art = {k: v for k, v in results.items() if k.startswith("ART") and "error" not in v}
    art_default = "ART logits, PCA, smaller"
    best_art = max(art, key=lambda k: (art[k]["f1"], -art[k]["median_cpu_s"]))
    fastest_art = min(art, key=lambda k: art[k]["median_cpu_s"])

    def ratios(name: str) -> dict[str, float]:
        return {
            "cpu": art[name]["median_cpu_s"] / ours["median_cpu_s"],
            "wall": art[name]["median_s"] / ours["median_s"],
            "cpu_fast_path": art[name]["median_cpu_s"] / ours_fast["median_cpu_s"],
            "wall_fast_path": art[name]["median_s"] / ours_fast["median_s"],
        }

    forward = forward_seconds(clf, x, args.repeats)
    forward_fast = forward_seconds(fast, x, args.repeats)
    summary = {
        "bastion_default_f1": ours["f1"],
        "bastion_default_f1_min": min(ours["f1_runs"]),
        "art_default": art_default,
        "art_default_f1": art[art_default]["f1"],
        "speedup_vs_art_default": ratios(art_default),
        "best_art": best_art,
        "best_art_f1": art[best_art]["f1"],
        "speedup_vs_best_art": ratios(best_art),
        "fastest_art": fastest_art,
        "fastest_art_f1": art[fastest_art]["f1"],
        "speedup_vs_fastest_art": ratios(fastest_art),
        "forward_pass_cpu_s": forward,
        "forward_pass_cpu_s_fast_path": forward_fast,
        # detect minus the forward pass: a difference of two close numbers, a rough estimate
        "analysis_cpu_s_estimate": ours["median_cpu_s"] - forward,
    }
    print(json.dumps(summary, indent=1))

    import sklearn

    try:
        import art as art_pkg

        art_version = art_pkg.__version__
    except ImportError:  # pragma: no cover
        art_version = None
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
            "art": art_version,
            "note": "shared, noisy machine: compare CPU-time ratios from one run",
        },
        "setting": {
            "size": args.size,
            "n_train": len(x),
            "n_poison": int(mask.sum()),
            "source": source,
            "target": TARGET,
            "fraction": FRACTION,
            "clean_accuracy": data["clean_accuracy"],
            "attack_success_rate": data["attack_success_rate"],
            "repeats": args.repeats,
            "same_layout": args.same_layout,
            "bastion_estimator": {"default": repr(clf), "fast path": repr(fast)},
        },
        "results": results,
        "summary": summary,
    }
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
