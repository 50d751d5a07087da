"""Adversarial training from a configuration file, on one process or many (``torchrun``).

One process::

    python -m bastion.defenses.training.run config.yaml

Data parallel, two processes on this machine (gloo on CPUs, NCCL on GPUs)::

    torchrun --standalone --nproc_per_node 2 -m bastion.defenses.training.run config.yaml

Several machines: start the same command on every node with torchrun's rendezvous flags, e.g.
``torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29400
--rdzv_id JOB -m bastion.defenses.training.run config.yaml`` (``HOST`` a machine every node
reaches; see the torchrun documentation). bastion builds no scheduler: a cluster's own launcher
(Slurm's ``srun``, Kubernetes' PyTorchJob) starts torchrun on each node.

Every rank builds the same model and estimator, reads the same data and runs the trainer; the
trainer shards each global batch over the ranks (see
:mod:`bastion.defenses.training.adversarial._distributed`), so the result equals the
one-process run with the same ``batch_size`` up to float rounding. Rank 0 writes the trained
weights (a state dict, loadable with ``torch.load(path, weights_only=True)``) and the history.

The configuration (YAML, or JSON; paths relative to the file)::

    model:
      class: bastion.zoo:SmallCNN          # "module:Class", imported (your own code runs)
      kwargs: {in_channels: 1, nb_classes: 10, random_state: 0}
      weights: init.pt                     # optional state dict to start from
    estimator:                             # TorchClassifier's arguments
      input_shape: [1, 28, 28]
      nb_classes: 10
      clip_values: [0.0, 1.0]
      preprocessing: null                  # or [mean, std]
    data:
      train: train.npz                     # arrays "x" and "y" (x_key / y_key to rename)
      validation: val.npz                  # optional
    trainer:
      name: MadryPGDTrainer                # a trainer of bastion.defenses.training
      params: {eps: 0.2, eps_step: 0.01, max_iter: 40, epochs: 20, batch_size: 128}
    device: auto                           # auto, cpu or cuda (each rank its LOCAL_RANK GPU)
    output: model.pt                       # history in model.history.json beside it
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["load_config", "main", "train_from_config"]

TRAINERS = (
    "AdversarialTrainer",
    "FastFGSMTrainer",
    "FreeAdversarialTrainer",
    "MARTTrainer",
    "MadryPGDTrainer",
    "TRADESTrainer",
)


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``, needs PyYAML) or JSON configuration file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"configuration file {str(p)!r} not found.")
    text = p.read_text()
    if p.suffix.lower() in {".yaml", ".yml"}:
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - PyYAML is a dependency
            raise InputError("YAML configurations need PyYAML: pip install pyyaml") from exc
        config = yaml.safe_load(text)
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{str(p)!r} is not valid JSON: {exc}") from exc
    if not isinstance(config, Mapping):
        raise InputError(f"{str(p)!r} must hold a mapping of settings, got {type(config)!r}.")
    return {**config, "_base": str(p.parent)}


def _section(config: Mapping[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    value = config.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"the configuration needs a mapping {key!r}, got {value!r}.")
    return dict(value)


def _path(config: Mapping[str, Any], value: Any, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{what} must be a file path, got {value!r}.")
    p = Path(value)
    return p if p.is_absolute() else Path(config.get("_base", ".")) / p


def _import_class(spec: Any) -> Any:
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise InputError(f"model.class must be 'module:Class', got {spec!r}.")
    module_name, name = spec.split(":")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import model.class {spec!r}: {exc}") from exc
    return obj


def _arrays(config: Mapping[str, Any], data: Mapping[str, Any], key: str) -> Any:
    if data.get(key) is None:
        return None
    path = _path(config, data[key], f"data.{key}")
    if not path.is_file():
        raise InputError(f"data.{key}: {str(path)!r} not found.")
    x_key, y_key = data.get("x_key", "x"), data.get("y_key", "y")
    with np.load(path, allow_pickle=False) as arrays:
        missing = [k for k in (x_key, y_key) if k not in arrays.files]
        if missing:
            raise InputError(
                f"data.{key}: {str(path)!r} has no array {missing[0]!r} (it has "
                f"{sorted(arrays.files)}); set data.x_key / data.y_key."
            )
        return arrays[x_key], arrays[y_key]


def _device(config: Mapping[str, Any]) -> torch.device:
    choice = config.get("device", "auto")
    if choice not in {"auto", "cpu", "cuda"}:
        raise InvalidParameterError(f"device must be 'auto', 'cpu' or 'cuda', got {choice!r}.")
    cuda = torch.cuda.is_available() if choice == "auto" else choice == "cuda"
    if cuda and not torch.cuda.is_available():
        raise InvalidParameterError("device 'cuda' asked for, but CUDA is not available.")
    if not cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _estimator(config: Mapping[str, Any], device: torch.device) -> tuple[Any, torch.nn.Module]:
    from bastion.estimators import TorchClassifier

    model_cfg = _section(config, "model")
    cls = _import_class(model_cfg.get("class"))
    kwargs = model_cfg.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise InputError(f"model.kwargs must be a mapping, got {kwargs!r}.")
    module = cls(**kwargs)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"model.class {model_cfg['class']!r} did not build a torch.nn.Module.")
    if model_cfg.get("weights") is not None:
        path = _path(config, model_cfg["weights"], "model.weights")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(f"model.weights {str(path)!r} do not fit the model: {exc}") from exc
    est = _section(config, "estimator")
    if "input_shape" in est:
        est["input_shape"] = tuple(est["input_shape"])
    if est.get("clip_values") is not None:
        est["clip_values"] = tuple(est["clip_values"])
    try:
        clf = TorchClassifier(module.to(device), device=device, **est)
    except TypeError as exc:
        raise InputError(f"estimator: {exc}") from exc
    return clf, module


def _trainer(config: Mapping[str, Any], clf: Any) -> Any:
    import bastion.defenses.training as training

    section = _section(config, "trainer")
    name = section.get("name")
    if name not in TRAINERS:
        raise InputError(f"trainer.name must be one of {list(TRAINERS)}, got {name!r}.")
    params = section.get("params") or {}
    if not isinstance(params, Mapping):
        raise InputError(f"trainer.params must be a mapping, got {params!r}.")
    if name == "AdversarialTrainer":
        raise InputError(
            "AdversarialTrainer takes an attack object; build it in Python (a configuration "
            "names the recipes with built-in attacks)."
        )
    return getattr(training, name)(clf, **params)


def _init_distributed(device: torch.device) -> bool:
    """Join torchrun's process group when launched by it (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def train_from_config(config: Mapping[str, Any]) -> Any:
    """Build the estimator and trainer a configuration describes, train, and (on rank 0)
    write the weights and history. Returns the trainer."""
    device = _device(config)
    started = _init_distributed(device)
    try:
        clf, module = _estimator(config, device)
        data = _section(config, "data")
        train = _arrays(config, data, "train")
        if train is None:
            raise InputError("data.train (a .npz file with arrays x and y) is required.")
        trainer = _trainer(config, clf)
        trainer.fit(*train, validation_data=_arrays(config, data, "validation"))
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0 and config.get("output") is not None:
            out = _path(config, config["output"], "output")
            out.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, out)
            history = {"best_epoch": trainer.best_epoch_, "history": _json_safe(trainer.history_)}
            out.with_suffix(".history.json").write_text(json.dumps(history, indent=2) + "\n")
        return trainer
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _json_safe(value: Any) -> Any:
    """NaN (a metric a recipe does not measure) as ``null``: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bastion.defenses.training.run CONFIG``."""
    parser = argparse.ArgumentParser(
        prog="python -m bastion.defenses.training.run",
        description="Adversarial training from a YAML/JSON configuration (torchrun-ready).",
    )
    parser.add_argument("config", help="the configuration file (YAML or JSON)")
    args = parser.parse_args(argv)
    train_from_config(load_config(args.config))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses in the tests
    raise SystemExit(main())
