"""Attacks on tree models: bastion's DecisionTreeAttack and exact MILP attack (Kantchelian et
al. 2016) against IBM ART 1.20.1's DecisionTreeAttack and HopSkipJump, on the same models.

Run (from the repository root; ART lives in the comparison venv, which has bastion too)::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_tree_attacks.py \\
        --json benchmarks/results/tree_attacks.json

Models (scikit-learn, ``random_state=0``, features scaled to [0, 1], ``clip_values=(0, 1)``):

* ``digits-tree``: a fully grown ``DecisionTreeClassifier`` on 8x8 digits (flat, 64 features;
  trained on the first 1,200 digits, attacked on the next ``--n``);
* ``digits-forest``: ``RandomForestClassifier(n_estimators=10, max_depth=6)``, same data;
* ``cancer-forest``: ``RandomForestClassifier(n_estimators=10, max_depth=5)`` on
  breast_cancer (30 features, min-max scaled; trained on the first 400 samples).

Attacks (untargeted, labels: the model's predictions, so every sample starts correctly
"classified"):

* bastion ``DecisionTreeAttack(offset=0.001)`` and ART ``DecisionTreeAttack(offset=0.001)``
  (single tree only);
* bastion ``TreeEnsembleMILPAttack(norm="inf")``: the exact minimal Linf perturbation;
* bastion ``HopSkipJump(norm="inf", max_queries=--hsj-queries)`` and ART ``HopSkipJump(
  norm=inf, max_iter=--art-hsj-iter, max_eval=100, init_eval=10)`` (ART has no query budget).

Reported per attack and model: success rate, median Linf and L0 (features changed) over the
successful samples, and wall-clock seconds for the whole batch (one thread).
DecisionTreeAttack's seconds are medians of ``--repeats`` runs of bastion's and ART's attack
in turn (fresh estimator each time, after a warm-up), with the median of the per-pair
ratios; the other attacks run once.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def _models() -> dict[str, tuple[Any, np.ndarray]]:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    xd, yd = load_digits(return_X_y=True)
    xd = (xd / 16.0).astype(np.float32)
    xc, yc = load_breast_cancer(return_X_y=True)
    xc = ((xc - xc.min(0)) / (xc.max(0) - xc.min(0))).astype(np.float32)
    tree = DecisionTreeClassifier(random_state=0).fit(xd[:1200], yd[:1200])
    forest = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0)
    cancer = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0)
    return {
        "digits-tree": (tree, xd[1200:]),
        "digits-forest": (forest.fit(xd[:1200], yd[:1200]), xd[1200:]),
        "cancer-forest": (cancer.fit(xc[:400], yc[:400]), xc[400:]),
    }


def _summary(model: Any, x: np.ndarray, x_adv: np.ndarray, seconds: float) -> dict[str, Any]:
    clean = model.predict(x)
    ok = model.predict(x_adv.astype(np.float32)) != clean
    diff = np.abs(x_adv.astype(np.float64) - x.astype(np.float64))
    linf = diff.max(axis=1)[ok]
    l0 = (diff > 0).sum(axis=1)[ok]
    return {
        "success": float(ok.mean()),
        "median_linf": float(np.median(linf)) if ok.any() else None,
        "median_l0": float(np.median(l0)) if ok.any() else None,
        "seconds": round(seconds, 3),
    }


def _timed(fn: Any, *args: Any) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn(*args)
    return np.asarray(out), time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from bastion.attacks.evasion import DecisionTreeAttack, HopSkipJump, TreeEnsembleMILPAttack
    from bastion.estimators import SklearnClassifier

    results: dict[str, Any] = {}
    for name, (model, pool) in _models().items():
        x = pool[: args.n]
        clf = SklearnClassifier(model, clip_values=(0, 1))
        labels = clf.predict(x).argmax(1)
        row: dict[str, Any] = {}
        if name.endswith("tree"):
            x_adv, s = _timed(DecisionTreeAttack(clf, offset=0.001).generate, x, labels)
            row["bastion DecisionTreeAttack"] = _summary(model, x, x_adv, s)
            if not args.no_art and args.repeats > 0:
                row["DecisionTreeAttack interleaved"] = _interleaved(model, x, args.repeats)
                # The single timings above are one noisy run each: report the medians.
                row["bastion DecisionTreeAttack"]["seconds"] = row[
                    "DecisionTreeAttack interleaved"
                ]["bastion_median_seconds"]
        milp = TreeEnsembleMILPAttack(clf, norm="inf", time_limit=args.time_limit)
        x_adv, s = _timed(milp.generate, x, labels)
        row["bastion TreeEnsembleMILPAttack (Linf)"] = {
            **_summary(model, x, x_adv, s),
            "proven_optimal": float(milp.optimal_.mean()),
        }
        hsj = HopSkipJump(clf, norm="inf", max_queries=args.hsj_queries, random_state=0)
        x_adv, s = _timed(hsj.generate, x, labels)
        row[f"bastion HopSkipJump (Linf, {args.hsj_queries} queries)"] = _summary(
            model, x, x_adv, s
        )
        if not args.no_art:
            row.update(_art(name, model, x, args))
            if "DecisionTreeAttack interleaved" in row:
                row["ART DecisionTreeAttack"]["seconds"] = row["DecisionTreeAttack interleaved"][
                    "art_median_seconds"
                ]
        results[name] = row
        print(name, json.dumps(row, indent=1))
    return results


def _interleaved(model: Any, x: np.ndarray, repeats: int) -> dict[str, Any]:
    """bastion's and ART's DecisionTreeAttack timed in turn, ``repeats`` times each (a fresh
    estimator and attack each time, as a user would run them once), after one warm-up each.
    The ratio (bastion / ART) per pair is robust to the load of a shared machine."""
    from art.attacks.evasion import DecisionTreeAttack as ArtAttack
    from art.estimators.classification.scikitlearn import SklearnClassifier as ArtClassifier

    from bastion.attacks.evasion import DecisionTreeAttack
    from bastion.estimators import SklearnClassifier

    def ours() -> Any:
        clf = SklearnClassifier(model, clip_values=(0, 1))
        return DecisionTreeAttack(clf, offset=0.001).generate(x, clf.predict(x).argmax(1))

    def theirs() -> Any:
        clf = ArtClassifier(model=model, clip_values=(0.0, 1.0))
        return ArtAttack(clf, offset=0.001, verbose=False).generate(x)

    ours(), theirs()
    b, a = [], []
    for _ in range(repeats):
        b.append(_timed(ours)[1])
        a.append(_timed(theirs)[1])
    ratios = np.asarray(b) / np.asarray(a)
    return {
        "repeats": repeats,
        "bastion_median_seconds": round(float(np.median(b)), 4),
        "art_median_seconds": round(float(np.median(a)), 4),
        "median_ratio_bastion_over_art": round(float(np.median(ratios)), 3),
        "ratio_range": [round(float(ratios.min()), 3), round(float(ratios.max()), 3)],
    }


def _art(name: str, model: Any, x: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    from art.attacks.evasion import DecisionTreeAttack, HopSkipJump
    from art.estimators.classification.scikitlearn import SklearnClassifier

    out: dict[str, Any] = {}
    clf = SklearnClassifier(model=model, clip_values=(0.0, 1.0))
    if name.endswith("tree"):
        attack = DecisionTreeAttack(clf, offset=0.001, verbose=False)
        x_adv, s = _timed(attack.generate, x)
        out["ART DecisionTreeAttack"] = _summary(model, x, x_adv, s)
    hsj = HopSkipJump(
        clf,
        norm=np.inf,
        max_iter=args.art_hsj_iter,
        max_eval=100,
        init_eval=10,
        verbose=False,
    )
    x_adv, s = _timed(hsj.generate, x)
    out[f"ART HopSkipJump (Linf, max_iter={args.art_hsj_iter})"] = _summary(model, x, x_adv, s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="samples attacked per model")
    parser.add_argument("--hsj-queries", type=int, default=1000)
    parser.add_argument("--art-hsj-iter", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--no-art", action="store_true", help="bastion only")
    parser.add_argument(
        "--repeats",
        type=int,
        default=21,
        help="interleaved bastion/ART DecisionTreeAttack runs (median seconds and ratio)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = run(args)
    if args.json is not None:
        import sklearn
        import torch

        meta = {
            "command": "OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python "
            "benchmarks/bench_tree_attacks.py --json benchmarks/results/tree_attacks.json",
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
        }
        try:
            import art

            meta["art"] = art.__version__
        except ImportError:
            pass
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
