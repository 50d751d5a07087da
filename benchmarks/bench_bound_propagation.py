"""Bound propagation: bastion's IBP against IBM ART 1.20.1's ``PyTorchIBPClassifier``, and
bastion's CROWN / alpha-CROWN against its own IBP, on the same trained models.

Run with the comparison venv (it has both libraries)::

    OMP_NUM_THREADS=1 benchmarks/.venv-compare/bin/python benchmarks/bench_bound_propagation.py \\
        --repeats 5 --json benchmarks/results/bound_propagation.json

* data: scikit-learn's 8x8 digits scaled to [0, 1] (``images / 16``), shape (N, 1, 8, 8);
  the first 1,200 train the models, the other 597 are verified;
* models (trained by ``bastion.zoo.train_classifier``, 20 epochs, Adam 1e-3, seed 0; plain
  training, not certified training, so IBP is loose and CROWN has room to help):
  an MLP ``64-64-64-10`` with ReLU, and a CNN ``conv 1->8 (3x3, pad 1), ReLU,
  conv 8->16 (3x3, stride 2, pad 1), flatten, 256->64, ReLU, 64->10``. ART converts a
  model's children in call order (no flatten module) and infers the flatten only where a
  dense layer follows a convolution directly, so the CNN has no ReLU between its second
  convolution and its first dense layer, and the MLP gets flat inputs (N, 64) on ART's side
  (bastion's estimator takes (N, 1, 8, 8) and flattens in the model);
* budgets: Linf eps in {0.01, 0.02, 0.05}, the box intersected with [0, 1] on both sides
  (ART: ``predict_intervals(x, bounds=eps, limits=[0, 1])``, then ``certify(preds, y)``:
  the lower bound of the true logit above every other upper bound; bastion:
  ``verify(clf, x, y, eps=eps, method=...)``, a positive lower bound of ``z_y - z_j`` for all
  ``j``, which IBP computes as the same ``l_y - u_j``);
* certified count: of the 597 test digits (a misclassified digit is never certified);
* two bastion timings: ``IntervalBounds.bounds`` followed by ART's certification rule (the
  same work as ART's side), and ``verify(method="ibp")``, which also runs the clean forward
  pass on the samples the bounds leave unverified (to tell misclassified, "falsified",
  samples apart) and checks its input;
* timing: wall clock of one call over the 597 digits repeated ``--tile`` times (11,940 by
  default: 597 digits alone take a few milliseconds, below the machine's noise), one torch
  thread, one batch for IBP on both sides (ART's ``batch_size``), 128 for CROWN over the 597.
  Every configuration gets one untimed warm-up; ``--repeats`` rounds then run each IBP
  configuration once, in an order that flips each round (interleaved); the ratio is the median
  over rounds of ``ART time / bastion time`` (> 1: bastion is faster). CROWN and alpha-CROWN
  (20 Adam steps) are timed once each per budget, and the mean of their margin lower bounds
  over the correctly classified digits is reported (alpha-CROWN raises it even where the
  verified count stays);
* complete verification (``method="complete"``, MILP with HiGHS, 30 s per digit) of the
  MLP on the first 100 test digits, against CROWN's count on the same digits: every digit
  gets an exact verdict unless it times out.
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
from torch import nn

from bastion.certification import IntervalBounds, verify
from bastion.estimators import TorchClassifier
from bastion.zoo import train_classifier

EPS = (0.01, 0.02, 0.05)


class CNN(nn.Module):
    """A small CNN whose children are called in order (what ART's converter needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(256, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.relu1(self.conv1(x)))
        return self.fc2(self.relu3(self.fc1(torch.flatten(h, 1))))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(torch.flatten(x, 1))))))


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    return x[:1200], y[:1200], x[1200:], y[1200:]


def _init(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                bound = 1.0 / (m.weight[0].numel() ** 0.5)
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.uniform_(-bound, bound, generator=g)
    return model


def _art(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    from art.estimators.certification.interval import PyTorchIBPClassifier

    return PyTorchIBPClassifier(
        model=copy.deepcopy(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def _art_certified(art: Any, x: np.ndarray, y: np.ndarray, eps: float) -> tuple[int, float]:
    start = time.perf_counter()
    preds = art.predict_intervals(x, bounds=eps, limits=[0.0, 1.0], batch_size=len(x))
    cert = art.certify(preds, y)
    return int(np.sum(cert)), time.perf_counter() - start


def _ours_bounds(ib: Any, x: np.ndarray, y: np.ndarray, eps: float) -> tuple[int, float]:
    """``IntervalBounds.bounds`` and ART's certification rule: the same work as ART's side."""
    start = time.perf_counter()
    lo, up = ib.bounds(x, eps=eps)
    rows = np.arange(len(y))
    rivals = up.copy()
    rivals[rows, y] = -np.inf
    cert = lo[rows, y] > rivals.max(1)
    return int(np.sum(cert)), time.perf_counter() - start


def _ours(clf: Any, x: np.ndarray, y: np.ndarray, eps: float, method: str) -> tuple[int, float]:
    n, t, _ = _ours_full(clf, x, y, eps, method)
    return n, t


def _ours_full(
    clf: Any, x: np.ndarray, y: np.ndarray, eps: float, method: str, **kw: Any
) -> tuple[int, float, Any]:
    start = time.perf_counter()
    bs = len(x) if method == "ibp" else 128
    res = verify(clf, x, y, eps=eps, method=method, batch_size=bs, **kw)
    return int(np.sum(res.verified)), time.perf_counter() - start, res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--tile",
        type=int,
        default=20,
        help="time IBP on the test digits repeated this many times (597 digits take a few "
        "milliseconds: too little to time against the machine's noise)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = _data()
    out: dict[str, Any] = {
        "command": " ".join(["benchmarks/bench_bound_propagation.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "samples": len(x_te),
        "models": {},
    }
    for name, model in (("mlp", _init(MLP(), 0)), ("cnn", _init(CNN(), 1))):
        art_shape = (64,) if name == "mlp" else (1, 8, 8)
        x_art = x_te.reshape(len(x_te), *art_shape)
        train_classifier(model, x_tr, y_tr, epochs=20, random_state=0)
        model.eval()
        clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0))
        acc = float(np.mean(np.asarray(clf.predict(x_te)).argmax(1) == y_te))
        art = _art(model, art_shape)
        rows = []
        x_big, y_big = np.tile(x_te, (args.tile, 1, 1, 1)), np.tile(y_te, args.tile)
        x_art_big = x_big.reshape(len(x_big), *art_shape)
        for eps in EPS:
            _art_certified(art, x_art_big, y_big, eps)  # warm-up
            _ours(clf, x_big, y_big, eps, "ibp")
            ib = IntervalBounds(clf, batch_size=len(x_big))
            _ours_bounds(ib, x_big, y_big, eps)
            t_art, t_ours, t_bounds = [], [], []
            for r in range(args.repeats):
                order = ("art", "ours", "bounds") if r % 2 == 0 else ("bounds", "ours", "art")
                for who in order:
                    if who == "art":
                        t_art.append(_art_certified(art, x_art_big, y_big, eps)[1])
                    elif who == "bounds":
                        t_bounds.append(_ours_bounds(ib, x_big, y_big, eps)[1])
                    else:
                        t_ours.append(_ours(clf, x_big, y_big, eps, "ibp")[1])
            n_art, _ = _art_certified(art, x_art, y_te, eps)
            n_ours, _ = _ours(clf, x_te, y_te, eps, "ibp")
            _, _, r_ibp = _ours_full(clf, x_te, y_te, eps, "ibp")
            n_crown, t_crown, r_crown = _ours_full(clf, x_te, y_te, eps, "crown")
            n_alpha, t_alpha, r_alpha = _ours_full(clf, x_te, y_te, eps, "alpha-crown")
            correct = r_ibp.status != "falsified"
            row = {
                "eps": eps,
                "art_ibp_certified": n_art,
                "bastion_ibp_certified": n_ours,
                "bastion_crown_certified": n_crown,
                "bastion_alpha_crown_certified": n_alpha,
                "art_ibp_seconds_median": statistics.median(t_art),
                "bastion_ibp_seconds_median": statistics.median(t_ours),
                "ibp_ratio_art_over_bastion": statistics.median(
                    a / b for a, b in zip(t_art, t_ours, strict=True)
                ),
                "bastion_ibp_bounds_seconds_median": statistics.median(t_bounds),
                "ibp_bounds_ratio_art_over_bastion": statistics.median(
                    a / b for a, b in zip(t_art, t_bounds, strict=True)
                ),
                "bastion_crown_seconds": t_crown,
                "bastion_alpha_crown_seconds": t_alpha,
                # Mean lower bound of the margin over the correctly classified digits.
                "bastion_ibp_mean_margin_lower": float(np.mean(r_ibp.margin_lower[correct])),
                "bastion_crown_mean_margin_lower": float(np.mean(r_crown.margin_lower[correct])),
                "bastion_alpha_crown_mean_margin_lower": float(
                    np.mean(r_alpha.margin_lower[correct])
                ),
            }
            if name == "mlp":
                # Complete verification (MILP, HiGHS) of the first 100 test digits.
                n_c, t_c, r_c = _ours_full(
                    clf, x_te[:100], y_te[:100], eps, "complete", time_limit=30.0
                )
                n_cr, _, _ = _ours_full(clf, x_te[:100], y_te[:100], eps, "crown")
                row["complete_first_100"] = {
                    "crown_verified": n_cr,
                    "verified": n_c,
                    "falsified": int(np.sum(r_c.status == "falsified")),
                    "unknown": int(np.sum(r_c.status == "unknown")),
                    "seconds": t_c,
                }
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        out["models"][name] = {"clean_accuracy": acc, "results": rows}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
