"""Binary adversarial-input detectors (Metzen et al. 2017): bastion against IBM ART 1.20.1.

The model is the SmallCNN of the other benchmarks (digits 28x28, 5 epochs, seed 0; cached in
``benchmarks/.cache``, the same file as bench_evasion.py and bench_pgd.py). The adversarial
examples are made once, with bastion's PGD (L-inf, ``--eps`` 0.1, ``eps_step`` 0.01, 40
steps, one random start, seed 0), on the 1,347 training digits (detector training) and the 450
test digits (held out); both libraries get the same examples. bastion's detectors take them
through their ``attack`` parameter: an object whose ``generate(x, y)`` returns the
precomputed examples, so no attack runs inside ``fit`` (and none is timed).

Detector networks, the same for both libraries: ``bastion.zoo.MLP`` with one hidden layer of
64 units (ReLU) and 2 outputs, Adam (lr 1e-3), batch 64, 20 epochs, on the clean (class 0)
and adversarial (class 1) training examples.

* Input detectors: the MLP on the flattened 784 pixels. bastion ``BinaryInputDetector``;
  ART ``BinaryInputDetector(PyTorchClassifier(MLP))``.
* Activation detectors: the MLP on the 128 activations of ``relu3`` (bastion's default
  ``layer=-2``). bastion's ``BinaryActivationDetector`` standardises the features (mean and
  standard deviation of its training features) in front of the MLP; ART's
  ``BinaryActivationDetector`` feeds the detector network the raw activations. ART is run
  with the plain MLP (as its documentation builds it) and, as a second row, with the same
  standardisation layer in front of the MLP (``ART + standardised``).

Score: bastion's ``score`` (the detector's log-odds ``z_1 - z_0``); ART's ``detect`` returns
the detector's outputs (``report["predictions"]``, here logits), scored as ``z_1 - z_0`` too.
ROC AUC on the 450 held-out clean test digits against their 450 adversarial examples.

Timing: one torch thread; every configuration once untimed (warm-up), then ``--repeats``
rounds in a rotating order; round ``i`` seeds every detector with ``i`` (bastion's
``random_state``, the MLP's initialisation and NumPy's global RNG that ART shuffles with), so
the AUC is a median over ``--repeats`` initialisations. Reported: median wall-clock and CPU
seconds of ``fit`` (feature extraction and training) and of scoring the 900 held-out inputs,
and the AUC of every run.

Run with the comparison venv::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_binary_detectors.py \\
        --json benchmarks/results/binary_detectors.json
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
from sklearn.metrics import roc_auc_score

from bastion.attacks.evasion import PGD
from bastion.datasets import load_digits
from bastion.defenses.detection import BinaryActivationDetector, BinaryInputDetector
from bastion.defenses.detection.binary import _Standardize
from bastion.estimators import TorchClassifier
from bastion.zoo import MLP, SmallCNN, train_classifier

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SEED = 0
HIDDEN = (64,)
EPOCHS = 20
BATCH = 64
LR = 1e-3
LAYER = "relu3"


def trained_model(x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    path = CACHE / f"smallcnn_digits28_seed{SEED}_epochs5.pt"
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=28, random_state=SEED)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        train_classifier(model, x, y, epochs=5, random_state=SEED)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


class Precomputed:
    """An "attack" whose ``generate`` returns adversarial examples made beforehand."""

    def __init__(self, x: np.ndarray, x_adv: np.ndarray) -> None:
        self.x, self.x_adv = x, x_adv

    def generate(self, x: Any, y: Any = None) -> np.ndarray:
        xn = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if xn.shape != self.x.shape or not np.array_equal(xn, self.x):
            raise ValueError("Precomputed: fit on other inputs than the precomputed ones")
        return self.x_adv


def art_mlp(d_in: int, input_shape: tuple[int, ...], seed: int, scaler: Any = None) -> Any:
    from art.estimators.classification import PyTorchClassifier

    net: torch.nn.Module = MLP(d_in, 2, hidden=HIDDEN, random_state=seed)
    if scaler is not None:
        net = torch.nn.Sequential(scaler, net)
    return PyTorchClassifier(
        net,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(net.parameters(), lr=LR),
        input_shape=input_shape,
        nb_classes=2,
        clip_values=(0.0, 1.0) if len(input_shape) > 1 else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=SEED)
    x_tr, x_te = np.asarray(x_tr, np.float32), np.asarray(x_te, np.float32)
    y_tr, y_te = np.asarray(y_tr), np.asarray(y_te)
    model = trained_model(x_tr, y_tr)
    clf = TorchClassifier(model, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1))
    pgd = PGD(clf, eps=args.eps, eps_step=0.01, max_iter=40, random_state=SEED)
    cache = CACHE / f"binary_detectors_pgd_eps{args.eps}.npz"
    if cache.exists():  # PGD is deterministic (seeded): made once, then read back
        with np.load(cache) as f:
            adv_tr, adv_te, pgd_s = f["adv_tr"], f["adv_te"], float(f["seconds"])
    else:
        t = time.perf_counter()
        adv_tr = np.asarray(pgd.generate(x_tr, y_tr), np.float32)
        adv_te = np.asarray(pgd.generate(x_te, y_te), np.float32)
        pgd_s = time.perf_counter() - t
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(cache, adv_tr=adv_tr, adv_te=adv_te, seconds=pgd_s)
    acc_clean = float((clf.predict(x_te).argmax(1) == y_te).mean())
    acc_adv = float((clf.predict(adv_te).argmax(1) == y_te).mean())
    print(
        f"PGD eps {args.eps}: {pgd_s:.1f} s; test accuracy clean {acc_clean:.3f} adv {acc_adv:.3f}"
    )

    x_fit = np.concatenate([x_tr, adv_tr])
    y_fit = np.concatenate([np.zeros(len(x_tr), int), np.ones(len(adv_tr), int)])
    y_fit_onehot = np.eye(2, dtype=np.float32)[y_fit]
    x_eval = np.concatenate([x_te, adv_te])
    labels = np.concatenate([np.zeros(len(x_te), int), np.ones(len(adv_te), int)])
    attack = Precomputed(x_tr, adv_tr)

    from art.defences.detector.evasion import BinaryActivationDetector as ArtActivation
    from art.defences.detector.evasion import BinaryInputDetector as ArtInput
    from art.estimators.classification import PyTorchClassifier

    art_clf = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    d_act = int(np.asarray(clf.get_activations(x_tr[:2], LAYER)).reshape(2, -1).shape[1])

    # each config: (fit() -> fitted, score(fitted) -> scores on x_eval)
    Config = tuple[Callable[[int], Any], Callable[[Any], np.ndarray]]

    def bastion_input() -> Config:
        def fit(seed: int) -> Any:
            det = BinaryInputDetector(
                clf, attack=attack, hidden=HIDDEN, epochs=EPOCHS, learning_rate=LR,
                batch_size=BATCH, random_state=seed,
            )  # fmt: skip
            return det.fit(x_tr, y_tr)

        return fit, lambda det: np.asarray(det.score(x_eval))

    def bastion_activation() -> Config:
        def fit(seed: int) -> Any:
            det = BinaryActivationDetector(
                clf, layer=LAYER, attack=attack, hidden=HIDDEN, epochs=EPOCHS,
                learning_rate=LR, batch_size=BATCH, random_state=seed,
            )  # fmt: skip
            return det.fit(x_tr, y_tr)

        return fit, lambda det: np.asarray(det.score(x_eval))

    def art_score(det: Any) -> np.ndarray:
        report, _ = det.detect(x_eval, batch_size=BATCH)
        z = report["predictions"]
        return z[:, 1] - z[:, 0]

    def art_input() -> Config:
        def fit(seed: int) -> Any:
            np.random.seed(seed)  # noqa: NPY002  (ART shuffles with NumPy's global RNG)
            det = ArtInput(art_mlp(784, (1, 28, 28), seed))
            det.fit(x_fit, y_fit_onehot, batch_size=BATCH, nb_epochs=EPOCHS)
            return det

        return fit, art_score

    def art_activation(standardise: bool) -> Config:
        def fit(seed: int) -> Any:
            np.random.seed(seed)  # noqa: NPY002
            scaler = None
            if standardise:  # the user computes the statistics (part of the fit time)
                a = art_clf.get_activations(x_fit, LAYER, batch_size=BATCH).reshape(len(x_fit), -1)
                mean, std = torch.from_numpy(a.mean(0)), torch.from_numpy(a.std(0, ddof=1))
                scaler = _Standardize(mean, torch.where(std > 0, std, torch.ones_like(std)))
            det = ArtActivation(art_clf, art_mlp(d_act, (d_act,), seed, scaler), LAYER)
            det.fit(x_fit, y_fit_onehot, batch_size=BATCH, nb_epochs=EPOCHS)
            return det

        return fit, art_score

    configs: dict[str, Config] = {
        "bastion BinaryInputDetector": bastion_input(),
        "ART BinaryInputDetector": art_input(),
        "bastion BinaryActivationDetector": bastion_activation(),
        "ART BinaryActivationDetector": art_activation(False),
        "ART BinaryActivationDetector + standardised": art_activation(True),
    }
    runs: dict[str, dict[str, list[float]]] = {
        k: {"fit_s": [], "fit_cpu_s": [], "score_s": [], "score_cpu_s": [], "auc": []}
        for k in configs
    }
    names = list(configs)
    for i in range(args.repeats + 1):  # round 0: warm-up, not recorded
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            fit, score = configs[name]
            t, c = time.perf_counter(), time.process_time()
            det = fit(i)  # round i: detector seed i, the same for every library
            fit_s, fit_c = time.perf_counter() - t, time.process_time() - c
            t, c = time.perf_counter(), time.process_time()
            s = score(det)
            score_s, score_c = time.perf_counter() - t, time.process_time() - c
            auc = float(roc_auc_score(labels, s))
            print(f"round {i} {name:<44} fit {fit_s:6.2f} s score {score_s:6.3f} s AUC {auc:.4f}")
            if i == 0:
                continue
            r = runs[name]
            r["fit_s"].append(fit_s)
            r["fit_cpu_s"].append(fit_c)
            r["score_s"].append(score_s)
            r["score_cpu_s"].append(score_c)
            r["auc"].append(auc)

    results: dict[str, Any] = {}
    for name, r in runs.items():
        results[name] = {
            "median_fit_s": statistics.median(r["fit_s"]),
            "median_fit_cpu_s": statistics.median(r["fit_cpu_s"]),
            "median_score_s": statistics.median(r["score_s"]),
            "median_score_cpu_s": statistics.median(r["score_cpu_s"]),
            "median_auc": statistics.median(r["auc"]),
            **r,
        }
    print()
    for name, r in results.items():
        print(
            f"{name:<44} AUC {r['median_auc']:.4f} (min {min(r['auc']):.4f})  fit "
            f"{r['median_fit_s']:.2f} s (cpu {r['median_fit_cpu_s']:.2f})  score 900 "
            f"{r['median_score_s']:.3f} s (cpu {r['median_score_cpu_s']:.3f})"
        )

    import art as art_pkg
    import sklearn

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
            "sklearn": sklearn.__version__,
            "art": art_pkg.__version__,
            "note": "shared, noisy machine: compare ratios from one run",
        },
        "setting": {
            "model": "SmallCNN digits 28x28, 5 epochs, seed 0",
            "attack": {
                "name": "bastion PGD L-inf",
                "eps": args.eps,
                "eps_step": 0.01,
                "max_iter": 40,
                "num_random_init": 1,
                "random_state": SEED,
                "seconds": pgd_s,
            },
            "test_accuracy_clean": acc_clean,
            "test_accuracy_adversarial": acc_adv,
            "n_fit": [len(x_tr), len(adv_tr)],
            "n_eval": [len(x_te), len(adv_te)],
            "detector_network": {
                "mlp_hidden": HIDDEN,
                "epochs": EPOCHS,
                "batch_size": BATCH,
                "optimizer": f"Adam lr {LR}",
                "activation_layer": LAYER,
                "activation_features": d_act,
            },
            "repeats": args.repeats,
        },
        "results": results,
    }
    if args.json:
        Path(args.json).parent.mkdir(exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
