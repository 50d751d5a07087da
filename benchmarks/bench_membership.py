"""Membership inference: bastion's attacks side by side with IBM ART 1.20.1's.

One problem for every attack, the one of ``tests/attacks/test_membership.py``: the digits
reduced to 12 of their 64 pixels (rows 0, 2, 4, 6 x columns 1, 4, 7), clean labels by default
(``--label-noise`` of the labels replaced by random classes first), and an MLP (scikit-learn,
128 hidden units, no regularisation, Adam at 0.01 for 300 epochs) trained on a random half of
500 of them (250 members), the other half the non-members. The attacker's own data (shadow /
reference population) is 500 other digits. For each attack the script reports the TPR at
0.1 % and 1 % FPR (the headline), the AUC, the membership advantage and the wall-clock time
(fit + infer).

Pairs compared (same threat model within a pair):

* gap / rule-based: bastion ``GapAttack`` vs ART ``MembershipInferenceBlackBoxRuleBased``;
* loss: bastion ``LossThreshold`` vs ART ``MembershipInferenceBlackBox`` on the prediction
  vectors (ART's loss input needs ``compute_loss``, which its scikit-learn MLP wrapper lacks).
  ART's attack is supervised: it trains on half of the true members and non-members, which a
  real attacker does not have, and it is scored on the other half only;
* shadow models: bastion ``ShadowModelAttack`` vs ART ``ShadowModels`` + a random-forest
  ``MembershipInferenceBlackBox`` fitted on the shadow data (ART splits the attacker's data
  into disjoint parts, one per shadow model; bastion gives each shadow model a random half);
* bastion only: LiRA (online, offline; 16 reference models) and RMIA (1 reference model).

Run with the comparison venv (``bash benchmarks/setup_compare.sh``)::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_membership.py \\
        --json benchmarks/results/membership.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from bastion.attacks.inference import (
    RMIA,
    GapAttack,
    LiRA,
    LossThreshold,
    ShadowModelAttack,
)
from bastion.estimators import SklearnClassifier
from bastion.metrics.privacy import membership_report

N = 500


def mlp(random_state: int) -> MLPClassifier:
    return MLPClassifier(
        (128,),
        alpha=1e-6,
        learning_rate_init=0.01,
        max_iter=300,
        tol=1e-9,
        n_iter_no_change=300,
        random_state=random_state,
    )


def train(x: Any, y: Any, random_state: int) -> SklearnClassifier:
    return SklearnClassifier(mlp(random_state).fit(x, y), clip_values=(0.0, 1.0))


def problem(seed: int, label_noise: float) -> dict[str, Any]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32).reshape(-1, 8, 8)[:, ::2, 1::3]  # 12 pixels
    x = np.ascontiguousarray(x.reshape(len(x), -1))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order].copy()
    member = np.zeros(N, dtype=bool)
    member[rng.permutation(N)[: N // 2]] = True  # drawn first: the tests' split
    flip = rng.random(len(x)) < label_noise
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    return {
        "x": x[:N],
        "y": y[:N],
        "member": member,
        "x_att": x[N : 2 * N],
        "y_att": y[N : 2 * N],
        "target_model": mlp(12345).fit(x[:N][member], y[:N][member]),
    }


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bastion_attacks(p: dict[str, Any]) -> dict[str, Any]:
    target = SklearnClassifier(p["target_model"], clip_values=(0.0, 1.0))
    x, y = p["x"], p["y"]
    runs = {
        "gap": lambda: GapAttack(target).infer(x, y),
        "loss": lambda: LossThreshold(target).infer(x, y),
        "shadow_per_class": lambda: (
            ShadowModelAttack(target, shadow_trainer=train, nb_shadow_models=6, random_state=0)
            .fit(p["x_att"], p["y_att"])
            .infer(x, y)
        ),
        "lira_online_16": lambda: (
            LiRA(target, reference_trainer=train, nb_reference_models=16, random_state=0)
            .fit(x, y)
            .infer(x, y)
        ),
        "lira_offline_16": lambda: (
            LiRA(
                target,
                reference_trainer=train,
                nb_reference_models=16,
                online=False,
                random_state=0,
            )
            .fit(x, y)
            .infer(x, y)
        ),
        "rmia_1": lambda: (
            RMIA(target, reference_trainer=train, random_state=0).fit(x, y).infer(x, y)
        ),
    }
    out = {}
    for name, fn in runs.items():
        scores, seconds = timed(fn)
        out[name] = {**membership_report(scores, p["member"]), "seconds": seconds}
    return out


def art_attacks(p: dict[str, Any]) -> dict[str, Any]:
    from art.attacks.inference.membership_inference import (
        MembershipInferenceBlackBox,
        MembershipInferenceBlackBoxRuleBased,
        ShadowModels,
    )
    from art.estimators.classification import SklearnClassifier as ArtSklearn

    clf = ArtSklearn(p["target_model"], clip_values=(0.0, 1.0))
    x, y, member = p["x"], p["y"], p["member"]
    y1h = np.eye(10)[y]
    out: dict[str, Any] = {}

    scores, seconds = timed(lambda: MembershipInferenceBlackBoxRuleBased(clf).infer(x, y1h))
    out["gap"] = {**membership_report(scores.ravel(), member), "seconds": seconds}

    # Supervised: half of the true members and non-members to fit, the other half to score.
    rng = np.random.default_rng(1)
    fit_half = rng.random(N) < 0.5
    mi, ni = fit_half & member, fit_half & ~member

    def loss_attack() -> np.ndarray:
        a = MembershipInferenceBlackBox(clf, attack_model_type="rf")
        a.fit(x[mi], y1h[mi], x[ni], y1h[ni])
        return a.infer(x[~fit_half], y1h[~fit_half], probabilities=True)

    scores, seconds = timed(loss_attack)
    out["blackbox_supervised_rf"] = {
        **membership_report(np.asarray(scores).reshape(-1), member[~fit_half]),
        "seconds": seconds,
        "note": "scored on the half not used to fit",
    }

    def shadow_attack() -> np.ndarray:
        # ART clones a fitted template (it reads the class count from it).
        template = ArtSklearn(mlp(0).fit(p["x_att"], p["y_att"]), clip_values=(0.0, 1.0))
        shadows = ShadowModels(template, num_shadow_models=3, random_state=0)
        (mx, my, mp), (nx, ny, np_) = shadows.generate_shadow_dataset(
            p["x_att"], np.eye(10)[p["y_att"]]
        )
        a = MembershipInferenceBlackBox(clf, attack_model_type="rf")
        a.fit(mx, my, nx, ny, mp, np_)
        return a.infer(x, y1h, probabilities=True)

    scores, seconds = timed(shadow_attack)
    out["shadow_rf"] = {
        **membership_report(np.asarray(scores).reshape(-1), member),
        "seconds": seconds,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)  # the seed of the tests
    ap.add_argument("--label-noise", type=float, nargs="+", default=[0.0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-art", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    result: dict[str, Any] = {
        "benchmark": "membership",
        "command": " ".join(sys.argv),
        "problem": (
            f"MLP(128) on half of {N} digits reduced to 12 pixels (seed {args.seed}); "
            f"attacker data: {N} other digits"
        ),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "platform": platform.platform(),
            "note": "noisy shared 2-core machine; times are indicative",
        },
        "settings": {},
    }
    for noise in args.label_noise:
        p = problem(args.seed, noise)
        entry: dict[str, Any] = {"bastion": bastion_attacks(p)}
        if not args.no_art:
            try:
                import art

                result["machine"]["art"] = art.__version__
                entry["art"] = art_attacks(p)
            except ImportError as err:
                entry["art"] = f"skipped: {err}"
        result["settings"][f"label_noise={noise}"] = entry
        for lib, res in entry.items():
            if isinstance(res, str):
                print(lib, res)
                continue
            for name, r in res.items():
                print(
                    f"noise={noise} {lib:8s} {name:20s} tpr@0.1%={r['tpr@0.001fpr']:.3f} "
                    f"tpr@1%={r['tpr@0.01fpr']:.3f} auc={r['auc']:.3f} "
                    f"time={r['seconds']:.2f}s"
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
