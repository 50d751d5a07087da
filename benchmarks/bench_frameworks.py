"""Time PGD on models of other frameworks: bastion's JAX, Keras and TensorFlow estimators
against ART 1.20.1's ``TensorFlowV2Classifier`` and ``KerasClassifier`` on the same model.

The model is the digits MLP of the conformance suite (``Flatten, Linear(64, 32), Tanh,
Linear(32, 10)``, trained in torch, float32), copied weight for weight into each framework.
Every attack is Linf PGD with eps 0.1, eps_step 0.01, 40 iterations and one random start,
on the same 256 test digits (one batch). Each configuration is run once to warm up (jit
compilation, tracing), then ``--repeats`` times; the median wall-clock seconds and the
robust accuracy left are reported.

Keras chooses its backend once per process, and ART lives in its own virtual environment, so
each part runs in a subprocess:

* ``bastion-tf`` (``KERAS_BACKEND=tensorflow``): TorchClassifier (the reference),
  TensorFlowClassifier on a ``tf.Module`` (eager) and on its ``tf.function``, and
  KerasClassifier on the TensorFlow backend, eager (the default) and ``trace=True`` (opt-in,
  a ``tf.function``);
* ``bastion-jax`` (``KERAS_BACKEND=jax``): JaxClassifier and KerasClassifier on JAX;
* ``art`` (``benchmarks/.venv-compare``, with tensorflow-cpu and keras installed there under
  the same ``torch==2.13.0`` constraint): ART's PGD through ``TensorFlowV2Classifier`` on the
  Keras model, and ART's ``KerasClassifier`` (which needs TF1-style graph mode).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_frameworks.py --repeats 3 \\
        --json benchmarks/results/frameworks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ART_PYTHON = HERE / ".venv-compare" / "bin" / "python"
EPS, EPS_STEP, MAX_ITER, N = 0.1, 0.01, 40, 256


def _timed(run: Any, repeats: int) -> tuple[float, Any]:
    run()  # warm-up: compilation, tracing
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _keras_model(weights: list[np.ndarray]) -> Any:
    import keras

    model = keras.Sequential(
        [
            keras.Input((1, 8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="tanh"),
            keras.layers.Dense(10),
        ]
    )
    model.set_weights(weights)
    return model


def _accuracy(predict: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(predict(x)).argmax(1) == y))


# ---------------------------------------------------------------------------- parts


def part_bastion(data: dict[str, np.ndarray], repeats: int, backend: str) -> dict[str, Any]:
    import torch

    from bastion.attacks.evasion import PGD
    from bastion.estimators import KerasClassifier, TorchClassifier

    x, y = data["x"], data["y"]
    weights = [data[f"w{i}"] for i in range(4)]
    kw = dict(eps=EPS, eps_step=EPS_STEP, max_iter=MAX_ITER, num_random_init=1, random_state=0)
    estimators: dict[str, Any] = {}
    if backend == "tensorflow":
        import tensorflow as tf

        from bastion.estimators import TensorFlowClassifier

        net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
        )
        with torch.no_grad():
            for p, w in zip(net.parameters(), weights, strict=True):
                p.copy_(torch.as_tensor(w.T if w.ndim == 2 else w))
        estimators["bastion TorchClassifier (reference)"] = TorchClassifier(
            net, input_shape=(1, 8, 8), nb_classes=10
        )

        class Mlp(tf.Module):
            def __init__(self) -> None:
                super().__init__()
                self.w = [tf.Variable(w) for w in weights]

            def __call__(self, x: Any) -> Any:
                h = tf.tanh(tf.reshape(x, (tf.shape(x)[0], -1)) @ self.w[0] + self.w[1])
                return h @ self.w[2] + self.w[3]

        module = Mlp()
        common = dict(input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1))
        estimators["bastion TensorFlowClassifier (tf.Module, eager)"] = TensorFlowClassifier(
            module, **common
        )
        estimators["bastion TensorFlowClassifier (tf.function)"] = TensorFlowClassifier(
            tf.function(module), dtype="float32", **common
        )
    else:
        import jax
        import jax.numpy as jnp

        from bastion.estimators import JaxClassifier

        def apply_fn(p: Any, x: Any) -> Any:
            h = jnp.tanh(x.reshape(x.shape[0], -1) @ p[0] + p[1])
            return h @ p[2] + p[3]

        params = [jnp.asarray(w) for w in weights]
        estimators["bastion JaxClassifier"] = JaxClassifier(
            apply_fn, params, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1)
        )
        del jax
    estimators[f"bastion KerasClassifier ({backend} backend)"] = KerasClassifier(
        _keras_model(weights), clip_values=(0, 1)
    )
    if backend == "tensorflow":  # the opt-in tf.function path (ART's KerasClassifier compiles)
        estimators["bastion KerasClassifier (tensorflow backend, trace=True)"] = KerasClassifier(
            _keras_model(weights), clip_values=(0, 1), trace=True
        )
    out: dict[str, Any] = {}
    for name, clf in estimators.items():
        attack = PGD(clf, **kw)
        seconds, x_adv = _timed(lambda a=attack: a.generate(x, y), repeats)
        out[name] = {
            "seconds": seconds,
            "clean_accuracy": _accuracy(clf.predict, x, y),
            "robust_accuracy": _accuracy(clf.predict, x_adv, y),
            "dtype": str(clf.dtype),
        }
    return out


def part_art(data: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    import art
    import tensorflow as tf
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = data["x"], data["y"]
    weights = [data[f"w{i}"] for i in range(4)]
    out: dict[str, Any] = {"art_version": art.__version__, "tensorflow": tf.__version__}
    pgd = dict(eps=EPS, eps_step=EPS_STEP, max_iter=MAX_ITER, num_random_init=1, batch_size=N)
    try:
        from art.estimators.classification import TensorFlowV2Classifier

        model = _keras_model(weights)
        clf = TensorFlowV2Classifier(
            model=model,
            nb_classes=10,
            input_shape=(1, 8, 8),
            loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            clip_values=(0.0, 1.0),
        )
        attack = ProjectedGradientDescent(clf, verbose=False, **pgd)
        seconds, x_adv = _timed(lambda: attack.generate(x, y=y), repeats)
        out["ART TensorFlowV2Classifier (Keras 3 model)"] = {
            "seconds": seconds,
            "clean_accuracy": _accuracy(clf.predict, x, y),
            "robust_accuracy": _accuracy(clf.predict, x_adv, y),
        }
    except Exception as err:  # record why ART cannot run it
        out["ART TensorFlowV2Classifier (Keras 3 model)"] = {
            "error": f"{type(err).__name__}: {err}"[:500],
            "trace": traceback.format_exc()[-1500:],
        }
    try:
        from art.estimators.classification import KerasClassifier

        model = _keras_model(weights)
        model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        clf = KerasClassifier(model, clip_values=(0.0, 1.0), use_logits=True)
        attack = ProjectedGradientDescent(clf, verbose=False, **pgd)
        seconds, x_adv = _timed(lambda: attack.generate(x, y=y), repeats)
        out["ART KerasClassifier"] = {
            "seconds": seconds,
            "robust_accuracy": _accuracy(clf.predict, x_adv, y),
        }
    except Exception as err:
        out["ART KerasClassifier"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    return out


# ---------------------------------------------------------------------------- driver


def _data() -> dict[str, np.ndarray]:
    from bastion.testing import torch_problem

    problem = torch_problem(N)
    net: Any = problem.estimator.model  # type: ignore[attr-defined]
    hidden, last = net[1], net[3]
    ws = [hidden.weight.T, hidden.bias, last.weight.T, last.bias]
    out = {f"w{i}": w.detach().numpy().astype(np.float32) for i, w in enumerate(ws)}
    out["x"], out["y"] = problem.x.astype(np.float32), problem.y.astype(np.int64)
    return out


def _run_part(part: str, npz: Path, repeats: int) -> dict[str, Any]:
    python = str(ART_PYTHON) if part == "art" else sys.executable
    if part == "art" and not ART_PYTHON.exists():
        return {"error": f"{ART_PYTHON} not found (benchmarks/setup_compare.sh)"}
    backend = "jax" if part == "bastion-jax" else "tensorflow"
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [python, __file__, "--part", part, "--data", str(npz), "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode != 0 or not lines:
        return {"error": done.stderr[-2000:]}
    return json.loads(lines[-1][len("RESULT") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--part", choices=["bastion-tf", "bastion-jax", "art"], default=None)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    if args.part is not None:
        data = dict(np.load(args.data))
        if args.part == "art":
            result = part_art(data, args.repeats)
        else:
            result = part_bastion(
                data, args.repeats, args.part.split("-")[1].replace("tf", "tensorflow")
            )
        print("RESULT" + json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as folder:
        npz = Path(folder) / "data.npz"
        np.savez(npz, **_data())
        results = {
            part: _run_part(part, npz, args.repeats)
            for part in ("bastion-tf", "bastion-jax", "art")
        }
    report = {
        "benchmark": "PGD Linf eps=0.1 eps_step=0.01 max_iter=40, 1 random start, 256 digits 8x8, "
        "MLP 64-32-10 (float32), one batch",
        "repeats": args.repeats,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
