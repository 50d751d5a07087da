"""The progress of an AutoAttack evaluation, and its state file (data only, never a pickle).

An evaluation given ``state_path`` writes its :class:`Progress` after each attack, so that an
interrupted run resumes after the last finished attack. The file holds tensors, strings and
numbers only, written by :func:`torch.save` and read back with ``weights_only=True`` (PyTorch's
restricted unpickler, which builds no object but tensors and built-in containers): a planted
or tampered file cannot run code. Its content is then checked against the evaluation that
reads it (the same settings, shapes, dtypes and consistent per-sample records) before anything
in it is trusted; :class:`AutoAttack` also re-checks every saved adversarial example.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bastion.exceptions import InputError

#: What a state file says it is; a file without it (e.g. the pickled state that earlier
#: versions of bastion wrote) is refused without being unpickled.
FORMAT = "bastion.AutoAttack.state"
VERSION = 2
#: Per-sample outcome codes; attack ``k`` (0-based, in the evaluation's order) is ``FIRST + k``.
ROBUST, CLEAN, FIRST = 0, 1, 2


def digest(*tensors: torch.Tensor | None) -> str:
    """SHA-256 of the tensors' values, shapes and dtypes (a ``None`` counts as such)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Progress:
    """Where an evaluation stands.

    Attributes
    ----------
    x_adv : torch.Tensor
        The best adversarial example found so far per sample (the clean input until one is).
    robust : torch.Tensor of bool, shape (N,)
        Still correctly classified after every attack run so far.
    broken_by : torch.Tensor of int64, shape (N,)
        :data:`ROBUST`, :data:`CLEAN` (misclassified without an attack), or ``FIRST + k`` for
        the ``k``-th attack of the evaluation, the first that broke the sample.
    done : list of str
        Labels of the attacks that have finished, in order.
    accuracy_after, seconds : dict
        Robust accuracy and wall-clock time after each finished attack.
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    broken_by: torch.Tensor
    done: list[str] = field(default_factory=list)
    accuracy_after: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, x: torch.Tensor, misclassified: torch.Tensor) -> Progress:
        """Before any attack: every correctly classified sample is robust."""
        codes = torch.where(misclassified, CLEAN, ROBUST).to(torch.int64)
        return cls(x_adv=x.clone(), robust=~misclassified, broken_by=codes)

    def robust_accuracy(self) -> float:
        return int(self.robust.sum()) / max(int(self.robust.numel()), 1)

    def break_samples(self, idx: torch.Tensor, x_adv: torch.Tensor, attack_index: int) -> None:
        """Record adversarial examples ``x_adv`` of the samples ``idx``, found by the
        ``attack_index``-th attack."""
        self.x_adv[idx] = x_adv
        self.robust[idx] = False
        self.broken_by[idx] = FIRST + attack_index

    def finish(self, label: str, seconds: float) -> None:
        """Close the record of the attack ``label``."""
        self.seconds[label] = seconds
        self.accuracy_after[label] = self.robust_accuracy()
        self.done.append(label)


def save_progress(path: Path, progress: Progress, settings: dict[str, Any]) -> None:
    """Write ``progress`` and the evaluation's ``settings`` to ``path``, atomically (a crash
    while writing leaves the previous state)."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        "settings": settings,
        "x_adv": progress.x_adv.detach().cpu(),
        "robust": progress.robust.detach().cpu(),
        "broken_by": progress.broken_by.detach().cpu(),
        "done": list(progress.done),
        "accuracy_after": dict(progress.accuracy_after),
        "seconds": dict(progress.seconds),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(record, tmp)
    os.replace(tmp, path)


def _refuse(path: Path, what: str) -> InputError:
    return InputError(
        f"The AutoAttack state_path {str(path)!r} {what}; nothing in it was used. Delete the "
        "file (the evaluation then starts from the beginning) or give another state_path."
    )


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_progress(
    path: Path,
    settings: dict[str, Any],
    labels: list[str],
    x: torch.Tensor,
) -> Progress:
    """Read the progress saved at ``path`` by an evaluation with the same ``settings`` over
    the attacks ``labels`` and the inputs ``x``.

    The file is read with ``torch.load(weights_only=True)``, then every field is checked:
    its format, the settings (each difference is named), the shapes and dtypes of the
    tensors, and the consistency of the per-sample records with the finished attacks.

    Raises
    ------
    InputError
        When the file cannot be read as data, or holds anything else than the state of this
        evaluation.
    """
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read the file as data is the same refusal
        raise _refuse(
            path,
            "is not an AutoAttack state file that can be read as data (earlier versions of "
            "bastion wrote pickles, which are never loaded: unpickling can run code; "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
        ) from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise _refuse(path, "is not an AutoAttack state file")
    if record.get("version") != VERSION:
        raise _refuse(
            path,
            f"was written in state format {record.get('version')!r}; this bastion reads "
            f"format {VERSION}",
        )
    saved = record.get("settings")
    if not isinstance(saved, dict):
        raise _refuse(path, "has no settings")
    changed = [
        f"{key}: saved {_describe(saved.get(key))}, now {_describe(settings.get(key))}"
        for key in sorted(set(saved) | set(settings))
        if saved.get(key) != settings.get(key)
    ]
    if changed:
        raise _refuse(
            path,
            "holds the state of a different evaluation (" + "; ".join(changed) + ")",
        )
    n = x.shape[0]
    tensors = {
        "x_adv": (tuple(x.shape), x.dtype),
        "robust": ((n,), torch.bool),
        "broken_by": ((n,), torch.int64),
    }
    for key, (shape, dtype) in tensors.items():
        t = record.get(key)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
            got = (
                f"shape {tuple(t.shape)} and dtype {t.dtype}"
                if isinstance(t, torch.Tensor)
                else type(t).__name__
            )
            raise _refuse(path, f"has a malformed {key!r} ({got}; expected {shape}, {dtype})")
    done = record.get("done")
    if (
        not isinstance(done, list)
        or not all(isinstance(d, str) for d in done)
        or done != labels[: len(done)]
    ):
        raise _refuse(
            path, f"lists finished attacks {_describe(done)} that are not a prefix of {labels}"
        )
    floats = {}
    for key in ("accuracy_after", "seconds"):
        d = record.get(key)
        if (
            not isinstance(d, dict)
            or list(d) != done
            or not all(isinstance(v, float) and math.isfinite(v) for v in d.values())
        ):
            raise _refuse(path, f"has a malformed {key!r} record")
        floats[key] = d
    progress = Progress(
        x_adv=record["x_adv"].to(x.device),
        robust=record["robust"].to(x.device),
        broken_by=record["broken_by"].to(x.device),
        done=list(done),
        accuracy_after=floats["accuracy_after"],
        seconds=floats["seconds"],
    )
    codes = progress.broken_by
    if bool(((codes < ROBUST) | (codes >= FIRST + len(done))).any()):
        raise _refuse(path, "credits samples to attacks that have not run")
    if not torch.equal(progress.robust, codes == ROBUST):
        raise _refuse(path, "has per-sample outcomes that contradict each other")
    after = list(progress.accuracy_after.values())
    if after and (
        after != sorted(after, reverse=True)
        or not math.isclose(after[-1], progress.robust_accuracy(), abs_tol=1e-9)
    ):
        raise _refuse(path, "has accuracies that contradict its per-sample outcomes")
    if not bool(torch.isfinite(progress.x_adv).all()):
        raise _refuse(path, "holds non-finite adversarial examples")
    return progress
