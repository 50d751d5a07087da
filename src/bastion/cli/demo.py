"""``bastion demo``: how robust is a small CNN on handwritten digits?

The demo trains :class:`~bastion.zoo.SmallCNN` on the bundled digits at 28x28 (or loads it from
the model cache), measures its accuracy on the test split, then under FGSM and PGD in the Linf
ball at each budget, and writes ``results.json``, ``report.md``, ``gallery.png`` and
``robustness.png``. Text goes to stdout, progress bars to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from bastion import __version__
from bastion._cache import cache_root
from bastion.attacks import perturbation_norms
from bastion.attacks.evasion import FGSM, PGD
from bastion.cli import DEFAULT_EPS, DEFAULT_OUTPUT
from bastion.cli._report import (
    IMAGE_SIZE,
    NB_CLASSES,
    AttackResult,
    format_table,
    markdown_table,
    plot_gallery,
    plot_robustness,
    reproduce_command,
    write_report,
)
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.zoo import SmallCNN, train_classifier

__all__ = ["run_demo"]

TEST_SIZE = 0.25
# Hyper-parameters of train_classifier the demo relies on; part of the cache key.
TRAIN_BATCH_SIZE = 64
TRAIN_LR = 1e-3


class _Console:
    """Step messages on stdout, silenced by ``--quiet``; results are always shown."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def step(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stdout)

    @staticmethod
    def show(message: str = "") -> None:
        print(message, flush=True)

    @staticmethod
    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- model cache


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$BASTION_CACHE``, else ``~/.cache/bastion``."""
    return cache_root(cache_dir)


def _torch_minor() -> str:
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def model_cache_path(cache_root: Path, *, epochs: int, seed: int, model: torch.nn.Module) -> Path:
    """Where the demo's model trained with ``epochs`` and ``seed`` is cached.

    The name holds a short hash of everything that determines the trained weights: epochs,
    seed (of the split, the initialisation and the shuffling), torch's major.minor version, the
    architecture and the trainer's settings.
    """
    key = {
        "dataset": f"digits{IMAGE_SIZE}",
        "test_size": TEST_SIZE,
        "epochs": epochs,
        "seed": seed,
        "torch": _torch_minor(),
        "architecture": repr(model),
        "trainer": {"batch_size": TRAIN_BATCH_SIZE, "lr": TRAIN_LR},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root / "models" / f"digits{IMAGE_SIZE}-smallcnn-{digest}.pt"


def _load_cached(model: torch.nn.Module, path: Path, console: _Console) -> bool:
    if not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        console.warn(f"the cached model {path} is unreadable ({exc}); training a new one")
        return False
    return True


def _save_cached(model: torch.nn.Module, path: Path, console: _Console) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: an interrupted save never leaves a truncated model behind.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            torch.save(model.state_dict(), tmp_name)
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
    except OSError as exc:
        console.warn(f"could not cache the model in {path.parent} ({exc}); continuing")


def _get_model(
    x_train: NDArray[np.float32],
    y_train: NDArray[np.int64],
    *,
    epochs: int,
    seed: int,
    cache_root: Path,
    retrain: bool,
    console: _Console,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = SmallCNN(1, NB_CLASSES, input_size=IMAGE_SIZE, random_state=seed)
    path = model_cache_path(cache_root, epochs=epochs, seed=seed, model=model)
    start = time.perf_counter()
    if not retrain and _load_cached(model, path, console):
        source = "cache"
        console.step(f"Loaded the trained model from the cache: {path}")
    else:
        source = "trained"
        console.step(f"Training SmallCNN for {epochs} epoch(s) (seed {seed}) ...")
        train_classifier(
            model,
            x_train,
            y_train,
            epochs=epochs,
            batch_size=TRAIN_BATCH_SIZE,
            learning_rate=TRAIN_LR,
            random_state=seed,
            verbose=not console.quiet,
        )
        _save_cached(model, path, console)
        console.step(f"Trained in {time.perf_counter() - start:.1f} s; cached as {path}")
    info = {
        "architecture": "SmallCNN",
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "seed": seed,
        "optimizer": f"Adam (lr {TRAIN_LR}, batch size {TRAIN_BATCH_SIZE})",
        "source": source,
        "cache_file": str(path),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return model.eval(), info


# ----------------------------------------------------------------------------- evaluation


def _accuracy(clf: TorchClassifier, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    return float((clf.predict(x).argmax(axis=1) == y).mean())


def _evaluate(
    clf: TorchClassifier,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    eps_values: Sequence[float],
    eps_step: float,
    max_iter: int,
    seed: int,
    console: _Console,
) -> tuple[list[AttackResult], NDArray[np.float32]]:
    """Accuracy under FGSM and PGD at each eps; also PGD's examples at the largest eps."""
    verbose = not console.quiet
    runs: list[tuple[str, float, Any]] = []
    for eps in eps_values:
        runs.append(("FGSM", eps, FGSM(clf, eps=eps, norm="inf", verbose=verbose)))
        pgd = PGD(
            clf,
            eps=eps,
            eps_step=eps_step,
            max_iter=max_iter,
            norm="inf",
            random_state=seed,
            verbose=verbose,
        )
        runs.append(("PGD", eps, pgd))
    results: list[AttackResult] = []
    x_gallery = x
    bar = tqdm(runs, desc="bastion demo", unit="attack", disable=not verbose, leave=False)
    for name, eps, attack in bar:
        bar.set_postfix_str(f"{name} eps={eps:g}")
        start = time.perf_counter()
        x_adv = attack.generate(x, y)
        seconds = time.perf_counter() - start
        norms = perturbation_norms(x, x_adv, "inf")
        result = AttackResult(
            attack=name,
            eps=eps,
            norm="inf",
            accuracy=_accuracy(clf, x_adv, y),
            mean_perturbation=round(float(norms.mean()), 6),
            max_perturbation=round(float(norms.max()), 6),
            seconds=round(seconds, 3),
            n_samples=len(x),
        )
        results.append(result)
        console.step(f"{name:<4} eps={eps:<5g} accuracy {result.accuracy:.3f}  ({seconds:.1f} s)")
        if name == "PGD" and eps == max(eps_values):
            x_gallery = x_adv
    return results, x_gallery


# ----------------------------------------------------------------------------- tables


def _results_payload(
    split: dict[str, int],
    model_info: dict[str, Any],
    results: Sequence[Any],
    *,
    eps_values: list[float],
    eps_step: float,
    max_iter: int,
    n_samples: int | None,
    seed: int,
    device: str,
    command: str,
) -> dict[str, Any]:
    """The content of results.json: data, model, configuration and one row per eps."""
    return {
        "bastion_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "name": "digits",
            "source": "sklearn.datasets.load_digits, upsampled bilinearly",
            "image_shape": [1, IMAGE_SIZE, IMAGE_SIZE],
            **split,
            "test_size": TEST_SIZE,
            "split_seed": seed,
        },
        "model": model_info,
        "config": {
            "eps": eps_values,
            "norm": "inf",
            "eps_step": eps_step,
            "max_iter": max_iter,
            "num_random_init": 1,
            "n_samples": n_samples,
            "seed": seed,
            "device": device,
            "torch_version": torch.__version__,
            "command": command,
        },
        "results": [asdict(r) for r in results],
    }


def _write_outputs(
    out_dir: Path,
    clf: TorchClassifier,
    payload: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    x_gallery: np.ndarray,
    results: Sequence[Any],
    command: str,
) -> None:
    """Write results.json, the gallery and robustness figures and report.md into ``out_dir``."""
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    clean_accuracy = payload["model"]["clean_accuracy"]
    eps_values = payload["config"]["eps"]
    max_iter = payload["config"]["max_iter"]
    pred_adv = clf.predict(x_gallery).argmax(axis=1)
    plot_gallery(
        out_dir / "gallery.png",
        x,
        x_gallery,
        y,
        pred,
        pred_adv,
        eps=max(eps_values),
        max_iter=max_iter,
    )
    plot_robustness(out_dir / "robustness.png", clean_accuracy, results, len(x))
    write_report(out_dir / "report.md", payload, markdown_table(clean_accuracy, results), command)


def run_demo(
    *,
    output: str | os.PathLike[str] = DEFAULT_OUTPUT,
    epochs: int = 5,
    eps: Sequence[float] = DEFAULT_EPS,
    max_iter: int = 40,
    eps_step: float = 0.01,
    n_samples: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    retrain: bool = False,
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the demo and write its outputs into ``output``; returns the content of results.json.

    The arguments are those of ``bastion demo`` (see ``docs/cli.md``); they are expected to be
    valid (the command line checks them).
    """
    wall_start = time.perf_counter()
    console = _Console(quiet)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    eps_values = sorted({float(e) for e in eps})
    cache_root = default_cache_dir(cache_dir)
    if eps_step * max_iter < max(eps_values):
        console.warn(
            f"eps_step * max_iter = {eps_step * max_iter:g} is below the largest eps "
            f"({max(eps_values):g}): PGD's steps cannot cross the whole ball; consider a larger "
            "--max-iter or --eps-step."
        )

    console.step(f"bastion {__version__} demo: SmallCNN on digits {IMAGE_SIZE}x{IMAGE_SIZE}")
    (x_train, y_train), (x_test, y_test) = load_digits(
        size=IMAGE_SIZE, test_size=TEST_SIZE, random_state=seed
    )
    n_eval = len(x_test) if n_samples is None else min(n_samples, len(x_test))
    if n_samples is not None and n_samples > len(x_test):
        console.warn(f"--n-samples {n_samples} exceeds the test split; using all {n_eval}")
    x, y = x_test[:n_eval], y_test[:n_eval]
    console.step(f"Data: {len(x_train)} training, {len(x_test)} test images; evaluating {n_eval}")
    split = {"n_train": len(x_train), "n_test": len(x_test), "n_evaluated": n_eval}

    model, model_info = _get_model(
        x_train,
        y_train,
        epochs=epochs,
        seed=seed,
        cache_root=cache_root,
        retrain=retrain,
        console=console,
    )
    clf = TorchClassifier(
        model,
        input_shape=(1, IMAGE_SIZE, IMAGE_SIZE),
        nb_classes=NB_CLASSES,
        clip_values=(0.0, 1.0),
    )
    pred = clf.predict(x).argmax(axis=1)
    clean_accuracy = float((pred == y).mean())
    model_info["clean_accuracy"] = clean_accuracy
    console.step(f"Clean accuracy: {clean_accuracy:.3f}")

    results, x_gallery = _evaluate(
        clf,
        x,
        y,
        eps_values=eps_values,
        eps_step=eps_step,
        max_iter=max_iter,
        seed=seed,
        console=console,
    )

    command = reproduce_command(
        output=out_dir,
        epochs=epochs,
        eps=eps_values,
        max_iter=max_iter,
        eps_step=eps_step,
        n_samples=n_samples,
        seed=seed,
    )
    payload = _results_payload(
        split,
        model_info,
        results,
        eps_values=eps_values,
        eps_step=eps_step,
        max_iter=max_iter,
        n_samples=n_samples,
        seed=seed,
        device=str(clf.device),
        command=command,
    )
    _write_outputs(out_dir, clf, payload, x, y, pred, x_gallery, results, command)

    verb = "loaded from cache" if model_info["source"] == "cache" else "trained"
    console.show()
    console.show(
        f"SmallCNN ({verb}) on {n_eval} digits test images, Linf attacks "
        f"(PGD: {max_iter} steps of {eps_step:g}):"
    )
    console.show(format_table(clean_accuracy, results))
    console.show()
    console.show(f"Wrote results.json, report.md, gallery.png, robustness.png to {out_dir}")
    console.show(f"Total time: {time.perf_counter() - wall_start:.1f} s")
    return payload
