"""bastion's ActivationClustering against ART 1.20.1's ActivationDefence: F1 and time.

The setting of the issue's "Done when": 28x28 digits (``load_digits(size=28,
random_state=0)``), BadNets 4x4 white patch in the bottom-right corner on 10% of the 1s,
relabelled 7 (14 of 1,347 training images), ``SmallCNN`` trained 5 epochs (seed 0). Both
detectors see the same poisoned model and the same data, and are scored over the **whole**
training set. ART gets the model as the user has it (an untouched copy, NCHW weights); bastion's
``TorchClassifier`` stores the convolution weights channels-last on the CPU (its
``memory_format="auto"``) and runs forward-only passes through a frozen graph with oneDNN
pre-packed convolutions (its ``inference="auto"``), which make its forward passes faster.
``--same-layout`` gives ART the channels-last model too, to separate that from the rest.

ART's ``ActivationDefence`` reads the last layer in ``layer_names`` (the logits, ``fc2``); it
has no layer parameter, so it is run twice: as shipped ("logits") and with its activation
reader pointed at the penultimate layer ``relu3`` that bastion reads ("relu3").

Each configuration gets one untimed warm-up and ``--repeats`` timed runs (a fresh detector
each time, activations included); the median and minimum seconds are reported, and F1 of
every run (ART's k-means is seeded from NumPy's global RNG, so its F1 varies by run).

Run with ``benchmarks/.venv-compare/bin/python benchmarks/bench_activation_clustering.py``;
it writes ``benchmarks/results/activation_clustering.json``.
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

import numpy as np
import torch

from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
from bastion.datasets import load_digits
from bastion.defenses.poisoning.activation_clustering import ActivationClustering
from bastion.estimators import TorchClassifier
from bastion.metrics import attack_success_rate, clean_accuracy, detection_scores
from bastion.zoo import SmallCNN, train_classifier

HERE = Path(__file__).resolve().parent
TARGET, SOURCE, FRACTION = 7, 1, 0.1


def poisoned_model(size: int) -> dict[str, Any]:
    (x, y), (x_te, y_te) = load_digits(size=size, random_state=0)
    patch, epochs = (4, 5) if size == 28 else (2, 20)
    attack = BackdoorAttack(
        PatchTrigger(size=patch), target=TARGET, source=[SOURCE], fraction=FRACTION, random_state=0
    )
    x_p, y_p, mask = attack.poison(x, y)
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=size, random_state=0)
    cache = HERE / ".cache" / f"ac_digits{size}_badnets10.pt"
    if cache.exists():
        model.load_state_dict(torch.load(cache))
        model.eval()
    else:
        train_classifier(model, x_p, y_p, epochs=epochs, random_state=0)
        cache.parent.mkdir(exist_ok=True)
        torch.save(model.state_dict(), cache)
    user_model = copy.deepcopy(model)  # as the user has it, for ART
    clf = TorchClassifier(model, input_shape=(1, size, size), nb_classes=10, clip_values=(0, 1))
    src = y_te == SOURCE
    return {
        "model": user_model,
        "clf": clf,
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


def measure(run: Any, mask: np.ndarray, repeats: int) -> dict[str, Any]:
    run(0)  # warm-up
    times, f1s, last = [], [], None
    for i in range(repeats):
        t = time.perf_counter()
        flagged = run(i)
        times.append(time.perf_counter() - t)
        last = detection_scores(flagged, mask)
        f1s.append(last["f1"])
    assert last is not None
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "f1_runs": f1s,
        "f1": statistics.median(f1s),
        "precision": last["precision"],
        "recall": last["recall"],
        "n_flagged": last["true_positives"] + last["false_positives"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=28, choices=(8, 28))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--same-layout",
        action="store_true",
        help="give ART bastion's channels-last model instead of the user's NCHW one",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "activation_clustering.json"))
    args = parser.parse_args()

    data = poisoned_model(args.size)
    clf, model, x, y, mask = data["clf"], data["model"], data["x"], data["y"], data["mask"]
    if args.same_layout:
        model = clf.model
    print(
        f"digits {args.size}x{args.size}: {len(x)} training images, {int(mask.sum())} poisoned; "
        f"clean accuracy {data['clean_accuracy']:.3f}, "
        f"attack success {data['attack_success_rate']:.3f}"
    )

    clf.get_activations(x, "relu3", batch_size=128)
    forward = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        clf.get_activations(x, "relu3", batch_size=128)
        forward.append(time.perf_counter() - t)
    forward_s = statistics.median(forward)  # the forward pass bastion's detector makes
    nchw = TorchClassifier(
        model,
        input_shape=clf.input_shape,
        nb_classes=10,
        memory_format="preserve",
        inference="eager",
    )
    nchw.get_activations(x, "relu3", batch_size=128)
    forward = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        nchw.get_activations(x, "relu3", batch_size=128)
        forward.append(time.perf_counter() - t)
    art_forward_s = statistics.median(forward)  # the same pass with the model ART is given

    configs: list[tuple[str, Any]] = [
        ("bastion default (whiten, silhouette)", bastion_runner(clf, x, y)),
        (
            "bastion fastica, silhouette",
            bastion_runner(clf, x, y, reduce="fastica", analysis="silhouette"),
        ),
        ("bastion pca, smaller", bastion_runner(clf, x, y, reduce="pca", analysis="smaller")),
        (
            "bastion pca, relative-size",
            bastion_runner(clf, x, y, reduce="pca", analysis="relative-size"),
        ),
        (
            "bastion fastica, smaller",
            bastion_runner(clf, x, y, reduce="fastica", analysis="smaller"),
        ),
    ]
    for layer in ("logits", "relu3"):
        for reduce, analysis in [
            ("PCA", "smaller"),
            ("FastICA", "smaller"),
            ("PCA", "relative-size"),
            ("FastICA", "relative-size"),
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

    results: dict[str, Any] = {}
    for name, run in configs:
        try:
            r = measure(run, mask, args.repeats)
        except Exception as err:  # ART 1.20.1's relative-size analysis crashes on numpy 2
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{name:<44} failed: {type(err).__name__}: {str(err)[:80]}")
            continue
        results[name] = r
        print(
            f"{name:<44} f1 {r['f1']:.3f} (p {r['precision']:.3f} r {r['recall']:.3f}, "
            f"{r['n_flagged']} flagged)  {r['median_s']:.3f} s (min {r['min_s']:.3f})"
        )

    ours = results["bastion default (whiten, silhouette)"]
    art = {k: v for k, v in results.items() if k.startswith("ART") and "error" not in v}
    best_art = max(art, key=lambda k: art[k]["f1"])
    fastest_art = min(art, key=lambda k: art[k]["median_s"])
    summary = {
        "bastion_default_f1": ours["f1"],
        "best_art": best_art,
        "best_art_f1": art[best_art]["f1"],
        "speedup_vs_best_art": art[best_art]["median_s"] / ours["median_s"],
        "speedup_vs_art_fastica_smaller": art["ART logits, FastICA, smaller"]["median_s"]
        / ours["median_s"],
        "speedup_vs_art_pca_smaller": art["ART logits, PCA, smaller"]["median_s"]
        / ours["median_s"],
        "fastest_art": fastest_art,
        "speedup_vs_fastest_art": art[fastest_art]["median_s"] / ours["median_s"],
        "forward_pass_s": forward_s,
        "forward_pass_s_art_layout": art_forward_s,
        # time minus the forward pass (ART's: the same pass with the NCHW model, eager), a
        # difference of two close numbers, so only a rough estimate
        "analysis_s_estimate": ours["median_s"] - forward_s,
        "analysis_s_estimate_art_pca_smaller": art["ART logits, PCA, smaller"]["median_s"]
        - art_forward_s,
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
            "sklearn": sklearn.__version__,
            "art": art_version,
            "note": "shared, noisy machine; re-time on a quiet one",
        },
        "setting": {
            "size": args.size,
            "n_train": len(x),
            "n_poison": int(mask.sum()),
            "source": SOURCE,
            "target": TARGET,
            "fraction": FRACTION,
            "clean_accuracy": data["clean_accuracy"],
            "attack_success_rate": data["attack_success_rate"],
            "repeats": args.repeats,
            "same_layout": args.same_layout,
        },
        "results": results,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
