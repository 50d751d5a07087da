"""Resumable evaluations: each finished unit of work (a chunk of samples at one budget, or
its minimum-norm attacks) is written to ``checkpoint_dir`` as it completes, and a rerun with
the same evaluation reuses it.

Saved state is data (DESIGN.md, principle 10): every unit is a ``torch.save`` of tensors,
strings and numbers only, read back with ``weights_only=True``; the evaluation's fingerprint
is JSON. Nothing read from the folder can execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.exceptions import InputError

__all__ = ["UnitStore"]

FINGERPRINT = "evaluation.json"


def _sha256(t: torch.Tensor | np.ndarray) -> str:
    arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def fingerprint(
    *,
    suite: Any,
    norm: str,
    seed: int,
    batch_size: int,
    limit: int | None,
    x: torch.Tensor,
    labels: np.ndarray,
    clean_prediction: torch.Tensor,
) -> dict[str, Any]:
    """Everything a unit's result depends on, except its budget: the suite, the norm, the
    seeds and chunks, the samples and labels, and the model (through its clean predictions:
    a retrained model that predicts the same classes on these samples may still differ; the
    CLI also records the model file's hash)."""
    return {
        "attacks": [a.to_dict() for a in suite.attacks],
        "defences": suite.defences_dict,
        "norm": norm,
        "random_state": int(seed),
        "batch_size": int(batch_size),
        "limit": limit,
        "x_shape": list(x.shape),
        "x_dtype": str(x.dtype),
        "x_sha256": _sha256(x),
        "labels_sha256": _sha256(labels.astype(np.int64)),
        "clean_prediction_sha256": _sha256(clean_prediction.to(torch.int64)),
    }


def _unit_name(k: int, eps: float | None) -> str:
    budget = "min" if eps is None else "eps" + float(eps).hex().replace("+", "")
    return f"unit-{k}-{budget}.pt"


class UnitStore:
    """The finished units of one evaluation in ``root`` (None: nothing is kept)."""

    def __init__(self, root: str | os.PathLike[str] | None, config: dict[str, Any]) -> None:
        self.root = None if root is None else Path(root)
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / FINGERPRINT
        # A JSON round trip, so tuples and lists compare equal.
        config = json.loads(json.dumps(config))
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            if differ:
                raise InputError(
                    f"The checkpoint_dir {str(self.root)!r} holds another evaluation (it differs "
                    f"in {', '.join(differ)}): give an empty folder, or the same model, data "
                    "and settings to resume."
                )
        else:
            _atomic_write(path, (json.dumps(config, indent=1) + "\n").encode("utf-8"))

    def done(self, k: int, eps: float | None) -> bool:
        return self.root is not None and (self.root / _unit_name(k, eps)).is_file()

    def load(self, k: int, eps: float | None) -> Any:
        from bastion.attacks.evasion.auto_attack import EvaluationFlag
        from bastion.evaluation._evaluate import ChunkPart

        assert self.root is not None
        state = torch.load(self.root / _unit_name(k, eps), weights_only=True)

        def strings(key: str) -> np.ndarray | None:
            value = state.get(key)
            return None if value is None else np.asarray(value, dtype=object)

        return ChunkPart(
            seconds=dict(state["seconds"]),
            changed=state["changed"],
            x_rows=state["x_rows"],
            robust=state.get("robust"),
            broken_by=strings("broken_by"),
            flags=[EvaluationFlag(code, message) for code, message in state["flags"]],
            dist=state.get("dist"),
            label=strings("label"),
        )

    def save(self, k: int, eps: float | None, part: Any) -> None:
        if self.root is None:
            return

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().cpu()

        def strings(a: np.ndarray | None) -> list[str] | None:
            return None if a is None else [str(s) for s in a]

        state = {
            "seconds": {str(k): float(v) for k, v in part.seconds.items()},
            "changed": cpu(part.changed),
            "x_rows": cpu(part.x_rows),
            "robust": cpu(part.robust),
            "broken_by": strings(part.broken_by),
            "flags": [(str(f.code), str(f.message)) for f in part.flags],
            "dist": cpu(part.dist),
            "label": strings(part.label),
        }
        path = self.root / _unit_name(k, eps)
        tmp = path.with_name(path.name + ".part")
        torch.save(state, tmp)
        os.replace(tmp, path)  # an interruption never leaves a truncated unit


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
