"""The configuration launcher of the adversarial trainers, and data parallelism under torchrun.

The 2-process test launches ``torchrun --standalone --nproc_per_node 2`` (gloo on the CPU) on a
tiny MLP and checks that the trained weights equal those of one process with the same global
batch, on uneven shards (see ``N`` and ``BATCH``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.datasets import load_digits
from bastion.defenses.training.run import load_config, main, train_from_config
from bastion.exceptions import InputError, InvalidParameterError
from bastion.zoo import MLP

# 150 samples in global batches of 49: shards of 25 and 24, and a last batch of 3 (2 and 1):
# uneven shards, where only the loss scaling by world_size / global batch keeps DDP's average
# of the ranks' gradients equal to the global batch's mean.
N, BATCH = 150, 49


def _config(tmp_path: Path, output: str, trainer: str = "MadryPGDTrainer") -> dict:
    (x, y), _ = load_digits(size=8, random_state=0)
    np.savez(tmp_path / "train.npz", x=x[:N], y=y[:N])
    np.savez(tmp_path / "val.npz", x=x[N : N + 40], y=y[N : N + 40])
    params = {
        "eps": 0.1,
        "eps_step": 0.05,
        "max_iter": 3,
        "epochs": 2,
        "batch_size": BATCH,
        "learning_rate": 0.05,
        "schedule": None,
        "validation_attack": "pgd-2",
    }
    if trainer != "MadryPGDTrainer":
        params = {k: v for k, v in params.items() if k in {"eps", "epochs", "batch_size"}}
    return {
        "model": {
            "class": "bastion.zoo:MLP",
            "kwargs": {"in_features": 64, "nb_classes": 10, "hidden": [16], "random_state": 0},
        },
        "estimator": {"input_shape": [1, 8, 8], "nb_classes": 10, "clip_values": [0.0, 1.0]},
        "data": {"train": "train.npz", "validation": "val.npz"},
        "trainer": {"name": trainer, "params": params},
        "device": "cpu",
        "output": output,
    }


def _write(tmp_path: Path, config: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_two_processes_equal_one(tmp_path):
    one = _write(tmp_path, _config(tmp_path, "one/model.pt"), "one.json")
    two = _write(tmp_path, _config(tmp_path, "two/model.pt"), "two.json")
    assert main([str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "bastion.defenses.training.run", str(two)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "one/model.pt", weights_only=True)
    b = torch.load(tmp_path / "two/model.pt", weights_only=True)
    init = MLP(64, 10, hidden=(16,), random_state=0).state_dict()
    assert a.keys() == b.keys() == init.keys()
    for k in a:
        assert not torch.equal(a[k], init[k]), f"{k} did not train"
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    h1 = json.loads((tmp_path / "one/model.history.json").read_text())
    h2 = json.loads((tmp_path / "two/model.history.json").read_text())
    assert len(h1["history"]) == len(h2["history"]) == 2
    for r1, r2 in zip(h1["history"], h2["history"], strict=True):
        # Metrics are summed over the ranks: the same accuracies as one process.
        assert r1["train_robust_accuracy"] == pytest.approx(r2["train_robust_accuracy"], abs=1e-9)
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
        assert r1["val_robust_accuracy"] == pytest.approx(r2["val_robust_accuracy"], abs=1e-9)


def test_yaml_configuration_and_weights(tmp_path):
    import yaml  # PyYAML is a dependency

    config = _config(tmp_path, "out/model.pt", trainer="FastFGSMTrainer")
    init = MLP(64, 10, hidden=(16,), random_state=3)
    torch.save(init.state_dict(), tmp_path / "init.pt")
    config["model"]["weights"] = "init.pt"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    assert loaded["trainer"]["name"] == "FastFGSMTrainer"
    trainer = train_from_config(loaded)
    assert type(trainer).__name__ == "FastFGSMTrainer"
    assert (tmp_path / "out/model.pt").is_file()
    history = json.loads((tmp_path / "out/model.history.json").read_text())
    assert len(history["history"]) == 2


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda c: c.pop("data"), InputError, "data"),
        (lambda c: c["model"].update({"class": "bastion.zoo.MLP"}), InputError, "module:Class"),
        (lambda c: c["model"].update({"class": "bastion.zoo:Nope"}), InputError, "Nope"),
        (lambda c: c["trainer"].update({"name": "Madry"}), InputError, "trainer.name"),
        (lambda c: c["data"].update({"train": "missing.npz"}), InputError, "not found"),
        (lambda c: c["data"].update({"x_key": "images"}), InputError, "images"),
        (lambda c: c.update({"device": "tpu"}), InvalidParameterError, "device"),
        (lambda c: c["trainer"]["params"].update({"eps": -1.0}), InvalidParameterError, "eps"),
    ],
)
def test_bad_configurations(tmp_path, edit, error, match):
    config = _config(tmp_path, "out/model.pt")
    edit(config)
    with pytest.raises(error, match=match):
        train_from_config(load_config(_write(tmp_path, config)))


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        load_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="mapping"):
        load_config(bad)
