"""Training checkpoints: written atomically, read as data only.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, saved with
:func:`torch.save` and read back with ``torch.load(weights_only=True)``: a planted file cannot
run code when it is read (DESIGN principle 10). It carries a fingerprint of the model's
parameter names and shapes and of the trainer's configuration, so a checkpoint of another model
or another recipe is refused instead of being half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from bastion.exceptions import InputError

__all__ = [
    "FORMAT",
    "fingerprint",
    "load_checkpoint",
    "restore_run",
    "run_state",
    "save_checkpoint",
]

#: The format tag every checkpoint carries.
FORMAT = "bastion.adversarial-training/1"


def fingerprint(module: torch.nn.Module, config: dict[str, Any]) -> str:
    """A hash of the module's state names and shapes and of the trainer's configuration."""
    shapes = [[name, list(t.shape)] for name, t in module.state_dict().items()]
    blob = json.dumps({"state": shapes, "config": config}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same folder, then
    :func:`os.replace`): an interruption leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path, expected: str, owner: str) -> dict[str, Any]:
    """Read a checkpoint (data only) and check that it belongs to this model and trainer.

    Raises
    ------
    InputError
        The file is not a bastion checkpoint (or would need code to load: a pickle of
        arbitrary objects is refused, never executed), or it was written for another model or
        configuration (``expected`` is the fingerprint it must carry).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        raise InputError(
            f"{owner}: {path} is not a checkpoint that can be read as data only "
            f"(torch.load(weights_only=True) refused it: {type(err).__name__}). bastion never "
            "unpickles arbitrary objects; delete the file or point checkpoint_dir elsewhere."
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{owner}: {path} is not a bastion adversarial-training checkpoint.")
    if state.get("fingerprint") != expected:
        raise InputError(
            f"{owner}: the checkpoint {path} was written for another model or another trainer "
            "configuration (its fingerprint of parameter names, shapes and hyper-parameters "
            "differs); resume only with the same model and settings, or use a new "
            "checkpoint_dir."
        )
    return state


def run_state(run: Any, epoch: int) -> dict[str, Any]:
    """What ``last.pt`` holds at the end of ``epoch``: everything a resumed run needs (the
    learning rate is a function of the position, the random draws of seeds: neither has
    state)."""
    return {
        "fingerprint": run.config_hash,
        "seed": run.base_seed,
        "epoch": epoch,
        "model": run.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else {},
        "history": run.history,
        "best_epoch": run.best_epoch,
        "best_score": run.best_score,
        "best_model": run.best_state or {},
        "recipe": run.extra,
    }


def restore_run(run: Any, state: dict[str, Any]) -> None:
    """Put a checkpoint's state (from :func:`run_state`) back into a fresh run."""
    run.module.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    run.base_seed = int(state["seed"])
    run.start_epoch = int(state["epoch"]) + 1
    run.history = list(state["history"])
    run.best_epoch = int(state["best_epoch"])
    run.best_score = float(state["best_score"])
    run.best_state = state["best_model"] or None
    run.extra = dict(state["recipe"])
