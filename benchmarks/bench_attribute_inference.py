"""Attribute inference side by side with IBM ART 1.20.1.

Both libraries attack the same models on the same seeded tabular data: a hidden categorical
feature ``h`` (3 values, priors 0.5 / 0.3 / 0.2) independent of four Gaussian features but
shifting the binary label (see ``make_data``). The target models are trained on the first
``--n`` rows; the attacker holds ``--n`` other complete rows, and the attacks infer ``h`` of the
training rows. Reported per (attack, library): the accuracy of the inferred ``h`` and the
wall-clock time (median of ``--repeats``, fit + infer).

* black-box: target LogisticRegression, attack model a random forest. ART feeds the attack
  model the predicted label; bastion is run with ``prediction="label"`` (the same information)
  and with ``prediction="probabilities"`` (the class scores).
* baseline: the same attack model without the model's output.
* white-box decision tree (Fredrikson et al.) and its lifestyle variant (Mehnaz et al.) on a
  DecisionTreeClassifier, with the true priors.

Run with the comparison venv (``bash benchmarks/setup_compare.sh``)::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_attribute_inference.py \\
        --json benchmarks/results/attribute_inference.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from bastion.attacks.inference.attribute import (
    AttributeInferenceBaseline,
    AttributeInferenceBlackBox,
    AttributeInferenceWhiteBoxDecisionTree,
    AttributeInferenceWhiteBoxLifestyleDecisionTree,
)
from bastion.estimators import SklearnClassifier

PRIORS = [0.5, 0.3, 0.2]
VALUES = [0.0, 1.0, 2.0]


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h = rng.choice(3, size=n, p=PRIORS)
    z = rng.normal(size=(n, 4))
    logit = z[:, 0] + 0.5 * z[:, 1] + np.array([-2.0, 0.0, 2.0])[h]
    y = (logit + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return np.c_[h, z].astype(np.float32), y


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return out, statistics.median(times)


def machine() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            p: version(p)
            for p in ("torch", "numpy", "scikit-learn", "adversarial-robustness-toolbox")
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500, help="training rows (and attacker rows)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    x, y = make_data(2 * args.n, args.seed)
    x_tr, y_tr, x_att = x[: args.n], y[: args.n], x[args.n :]
    hidden = x_tr[:, 0]
    known = x_tr[:, 1:]
    logreg = LogisticRegression().fit(x_tr, y_tr)
    tree = DecisionTreeClassifier(random_state=0).fit(x_tr, y_tr)
    bastion_lr = SklearnClassifier(logreg)
    probs = bastion_lr.predict(x_tr)
    labels = probs.argmax(1)
    tree_labels = tree.predict(x_tr)

    rows: list[dict[str, Any]] = []

    def record(attack: str, library: str, fn: Callable[[], np.ndarray], note: str = "") -> None:
        guess, seconds = timed(fn, args.repeats)
        acc = float((np.asarray(guess).reshape(-1) == hidden).mean())
        rows.append(
            {
                "attack": attack,
                "library": library,
                "accuracy": round(acc, 4),
                "seconds": round(seconds, 4),
                "note": note,
            }
        )
        print(f"{attack:<28} {library:<8} acc={acc:.3f}  {seconds * 1000:8.1f} ms  {note}")

    record(
        "black-box (labels)",
        "bastion",
        lambda: (
            AttributeInferenceBlackBox(
                bastion_lr, attack_feature=0, attack_model="rf", prediction="label", random_state=0
            )
            .fit(x_att)
            .infer(known, pred=labels)
        ),
    )
    record(
        "black-box (scores)",
        "bastion",
        lambda: (
            AttributeInferenceBlackBox(
                bastion_lr, attack_feature=0, attack_model="rf", random_state=0
            )
            .fit(x_att)
            .infer(known, pred=probs)
        ),
    )
    record(
        "baseline",
        "bastion",
        lambda: (
            AttributeInferenceBaseline(attack_feature=0, attack_model="rf", random_state=0)
            .fit(x_att)
            .infer(known)
        ),
    )
    record(
        "white-box tree",
        "bastion",
        lambda: AttributeInferenceWhiteBoxDecisionTree(tree, attack_feature=0).infer(
            known, tree_labels, values=VALUES, priors=PRIORS
        ),
    )
    record(
        "white-box lifestyle tree",
        "bastion",
        lambda: AttributeInferenceWhiteBoxLifestyleDecisionTree(tree, attack_feature=0).infer(
            known, values=VALUES, priors=PRIORS
        ),
    )

    try:
        from art.attacks.inference.attribute_inference import (
            AttributeInferenceBaseline as ArtBaseline,
        )
        from art.attacks.inference.attribute_inference import (
            AttributeInferenceBlackBox as ArtBlackBox,
        )
        from art.attacks.inference.attribute_inference import (
            AttributeInferenceWhiteBoxDecisionTree as ArtWhiteBox,
        )
        from art.attacks.inference.attribute_inference import (
            AttributeInferenceWhiteBoxLifestyleDecisionTree as ArtLifestyle,
        )
        from art.estimators.classification.scikitlearn import (
            ScikitlearnDecisionTreeClassifier,
            ScikitlearnLogisticRegression,
        )
    except ImportError as exc:
        print(f"ART not available ({exc}); bastion only")
    else:
        art_lr = ScikitlearnLogisticRegression(logreg)
        art_tree = ScikitlearnDecisionTreeClassifier(tree)
        # ART's black-box attack model sees the predicted label as one numeric column.
        art_pred = labels.reshape(-1, 1).astype(np.float32)

        def art_black_box() -> np.ndarray:
            attack = ArtBlackBox(art_lr, attack_feature=0, attack_model_type="rf")
            attack.fit(x_att)
            return attack.infer(known, pred=art_pred, values=VALUES)

        def art_baseline() -> np.ndarray:
            attack = ArtBaseline(attack_feature=0, attack_model_type="rf")
            attack.fit(x_att)
            return attack.infer(known, values=VALUES)

        record("black-box (labels)", "ART", art_black_box, "attack model unseeded")
        record("baseline", "ART", art_baseline, "attack model unseeded")
        record(
            "white-box tree",
            "ART",
            lambda: ArtWhiteBox(art_tree, attack_feature=0).infer(
                known, tree_labels, values=VALUES, priors=PRIORS
            ),
        )
        record(
            "white-box lifestyle tree",
            "ART",
            lambda: ArtLifestyle(art_tree, attack_feature=0).infer(
                known, values=VALUES, priors=PRIORS
            ),
        )

    payload = {
        "benchmark": "attribute_inference",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "chance_majority": float(max(np.bincount(hidden.astype(int)) / len(hidden))),
        "machine": machine(),
        "results": rows,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
