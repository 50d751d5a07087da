"""Derandomized smoothing (Levine and Feizi 2020) on the bundled digits: certified accuracy.

Command (writes ``benchmarks/results/derandomized_digits.json``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/derandomized_digits.py

For every setting in ``SETTINGS``, a seeded ``SmallCNN`` with 2 input channels (the paper's
encoding: x and 1 - x, both 0 where ablated) is trained with ``DerandomizedSmoothing.fit``
(Adam at 2e-3, batches of 64, a fresh uniformly random ablation per image and epoch) on
``load_digits(size, random_state=0)`` (1347 training images), then certified on all 450 test
images at patch sizes 2, 3, 4 (and 5 at 28x28). Reported: the smoothed (clean) accuracy, the
certified accuracy (correct and certified) per patch size, and the training and certification
seconds on this machine (a shared 2-core CPU, one thread). Threshold theta = 0.3 throughout.

On 8x8 images the certificate is short of room: a 3x3 patch already touches ``3 + s - 1`` of
the 8 column bands, and certification needs the top class to lead by ``2 Delta`` votes, so
patch sizes 3 and 4 are certifiable only with 1-column bands (if at all); the 28x28 upsampled
digits give the numbers comparable to the paper's MNIST column results.

Measured (``benchmarks/results/derandomized_digits.json``; 450 test images; a shared 2-core
CPU under load from other jobs, one thread; certified accuracy at patch size m, Delta in
brackets):

=====  ======  ==  ======  =====  ==========  ==========  ==========  ==========  =======
side   kind    s   epochs  clean  m=2         m=3         m=4         m=5         cert s
=====  ======  ==  ======  =====  ==========  ==========  ==========  ==========  =======
8      column  1   30      0.884  0.182 (2)   0.004 (3)   0.000 (4)   -           0.3
8      column  2   30      0.951  0.151 (3)   0.000 (4)   0.000 (5)   -           0.4
8      column  3   30      0.964  0.040 (4)   0.000 (5)   0.000 (6)   -           0.5
8      block   3   30      0.882  0.073 (16)  0.000 (25)  0.000 (36)  -           1.9
8      block   4   30      0.938  0.131 (25)  0.000 (36)  0.000 (49)  -           1.0
28     column  2   15      0.851  0.656 (3)   0.562 (4)   0.489 (5)   0.369 (6)   7.2
28     column  4   15      0.927  0.671 (5)   0.609 (6)   0.529 (7)   0.444 (8)   9.5
28     block   10  15      0.920  0.629 (121) 0.549 (144) 0.440 (169) 0.333 (196) 472.6
=====  ======  ==  ======  =====  ==========  ==========  ==========  ==========  =======

Block ablation evaluates ``H * W`` = 784 ablations per 28x28 image (352,800 base-classifier
calls for the test set), hence its certification time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.certification import DerandomizedSmoothing
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.zoo import SmallCNN

#: (image side, ablation, ablation_size, epochs)
SETTINGS: list[tuple[int, str, int, int]] = [
    (8, "column", 1, 30),
    (8, "column", 2, 30),
    (8, "column", 3, 30),
    (8, "block", 3, 30),
    (8, "block", 4, 30),
    (28, "column", 2, 15),
    (28, "column", 4, 15),
    (28, "block", 10, 15),
]
THRESHOLD = 0.3


def run(side: int, ablation: str, size: int, epochs: int) -> dict[str, Any]:
    (x_tr, y_tr), (x_te, y_te) = load_digits(size=side, random_state=0)
    clf = TorchClassifier(
        SmallCNN(2, input_size=side, random_state=0),
        input_shape=(2, side, side),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    ds = DerandomizedSmoothing(
        clf, ablation=ablation, ablation_size=size, threshold=THRESHOLD, batch_size=2048
    )
    t0 = time.perf_counter()
    ds.fit(x_tr, y_tr, epochs=epochs, batch_size=64, learning_rate=2e-3, random_state=0)
    t1 = time.perf_counter()
    votes = torch.as_tensor(ds.votes(x_te))
    t2 = time.perf_counter()
    out: dict[str, Any] = {
        "image_side": side,
        "ablation": ablation,
        "ablation_size": size,
        "threshold": THRESHOLD,
        "epochs": epochs,
        "nb_positions": ds.nb_positions,
        "train_seconds": round(t1 - t0, 1),
        "certify_seconds": round(t2 - t1, 1),
        "n_test": len(y_te),
    }
    pred, _ = ds.certify_votes(votes, 0)
    out["clean_accuracy"] = round(float(np.mean(pred.numpy() == y_te)), 4)
    certified: dict[str, Any] = {}
    for m in (2, 3, 4) + ((5,) if side >= 28 else ()):
        delta = ds.nb_affected(m)
        pred, cert = ds.certify_votes(votes, delta)
        ok = (pred.numpy() == y_te) & cert.numpy()
        certified[str(m)] = {"delta": delta, "certified_accuracy": round(float(ok.mean()), 4)}
    out["certified"] = certified
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).parent
    parser.add_argument("--json", default=str(here / "results" / "derandomized_digits.json"))
    parser.add_argument("--only", type=int, default=None, help="run only SETTINGS[i]")
    args = parser.parse_args(argv)
    settings = SETTINGS if args.only is None else [SETTINGS[args.only]]
    results = []
    for setting in settings:
        row = run(*setting)
        print(json.dumps(row), flush=True)
        results.append(row)
    Path(args.json).write_text(
        json.dumps({"torch": torch.__version__, "results": results}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
