"""``evaluate(..., ray=...)``: an evaluation's units of work spread over Ray workers.

bastion builds no scheduler: Ray places the work. :func:`~bastion.evaluation.evaluate` cuts
its samples into chunks of ``batch_size`` and its work into units, one per chunk for the
minimum-norm attacks and one per (chunk, budget) for the fixed-budget ones (a
:class:`~bastion.evaluation._evaluate.ChunkTask`). A unit's result depends on its chunk and
its seed (:func:`~bastion.evaluation._evaluate.chunk_seed`) only, so the units give the same
numbers on any worker as in one process, and are merged in the samples' order. Each worker is
an actor holding one copy of the estimator, shipped once through Ray's object store.

Ray is an optional dependency (``pip install 'bastion[ray]'``), imported only here and only
when ``ray`` is given.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from bastion.evaluation._evaluate import ChunkPart, ChunkTask, chunk_seed
from bastion.exceptions import InputError

__all__ = ["import_ray", "ray_session", "run_on_ray"]

_INSTALL = "pip install 'bastion[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            f"evaluate(..., ray=...) (--ray) shards the evaluation over Ray, which is not "
            f"installed: {_INSTALL} (or pip install 'ray>=2.9')."
        ) from err
    return ray


@contextmanager
def ray_session(where: str) -> Iterator[Any]:
    """Ray initialised for ``where`` (``"local"``, ``"auto"`` or an address) while inside,
    shut down on leaving if this call started it; a Ray already initialised in this process
    is used as it is. Several ``evaluate(..., ray=where)`` calls inside share one instance
    (the CLI's one call per budget)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if where == "local":
            ray.init(address="local", include_dashboard=False)
        else:
            ray.init(address=where)
    except ConnectionError as err:
        raise InputError(
            f"Cannot join the Ray cluster at {where!r}: {err} Start one with `ray start "
            "--head` (then ray='auto'), give its address, or use ray='local'."
        ) from err
    try:
        yield ray
    finally:
        ray.shutdown()


# --------------------------------------------------------------------- shipping the model


def _load_script(data: bytes) -> Any:
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export; it is the user's model format.
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        return torch.jit.load(io.BytesIO(data))


def dumps(estimator: Any) -> bytes:
    """The estimator as bytes for the workers: cloudpickle (classes defined in a script
    travel by value), with TorchScript modules, which do not pickle, as their
    ``torch.jit.save`` archive."""
    from ray import cloudpickle

    class _Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, torch.jit.ScriptModule):
                buf = io.BytesIO()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
                    torch.jit.save(obj, buf)
                return _load_script, (buf.getvalue(),)
            return super().reducer_override(obj)

    buf = io.BytesIO()
    try:
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(estimator)
    except Exception as err:  # whatever the model's pickling raises
        raise InputError(
            f"The estimator ({type(estimator).__name__}) cannot be sent to Ray workers: "
            f"{type(err).__name__}: {err}. Evaluate without ray, or wrap a model that "
            "pickles (a torch module, TorchScript, ONNX)."
        ) from err
    return buf.getvalue()


class _Worker:
    """A Ray actor: one copy of the estimator, any number of units."""

    def __init__(self, payload: bytes, task: ChunkTask) -> None:
        # The driver's own bytes (dumps), through Ray's object store: no file is unpickled.
        self.estimator = pickle.loads(payload)
        self.task = task

    def run(
        self, k: int, eps: float | None, chunk: tuple[np.ndarray, ...], seed: int
    ) -> tuple[int, float | None, ChunkPart]:
        device = self.estimator.device
        x, y, correct = (torch.tensor(a, device=device) for a in chunk)
        return k, eps, self.task.run(self.estimator, x, y, correct, eps, seed).cpu()


# ----------------------------------------------------------------------------- running


def run_on_ray(
    where: str,
    estimator: Any,
    task: ChunkTask,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    chunks: list[slice],
    units: list[tuple[int, float | None]],
    seed: int,
    bar: Any,
    on_done: Callable[[int, float | None, ChunkPart], None] | None = None,
) -> dict[tuple[int, float | None], ChunkPart]:
    """Every unit ``(chunk, eps)`` run by Ray actors; the results by unit.

    One actor per CPU of the cluster (per GPU when the estimator is on CUDA), at most one
    per unit, each holding one copy of the estimator; units go to whichever actor is free.
    ``on_done(k, eps, part)`` is called here as each unit arrives (the checkpoint).
    """
    if not units:
        return {}
    with ray_session(where) as ray:
        from ray.util import ActorPool

        resources = ray.cluster_resources()
        options: dict[str, Any] = {"num_cpus": 1}
        if torch.device(estimator.device).type == "cuda":
            options["num_gpus"] = 1
            workers = int(resources.get("GPU", 0))
            if workers == 0:
                raise InputError(
                    "The estimator runs on CUDA but the Ray cluster has no GPU: move it to "
                    "the CPU or add GPU nodes."
                )
        else:
            workers = int(resources.get("CPU", 1))
        workers = max(1, min(workers, len(units)))

        payload = ray.put(dumps(estimator))
        remote = ray.remote(_Worker).options(**options)
        quiet = dataclasses.replace(task, verbose=False)  # no progress bars from workers
        actors = [remote.remote(payload, quiet) for _ in range(workers)]
        try:
            data = [
                ray.put((x[sl].cpu().numpy(), y[sl].cpu().numpy(), correct[sl].cpu().numpy()))
                for sl in chunks
            ]

            def submit(actor: Any, unit: tuple[int, float | None]) -> Any:
                k, eps = unit
                return actor.run.remote(k, eps, data[k], chunk_seed(seed, k))

            parts: dict[tuple[int, float | None], ChunkPart] = {}
            try:
                for k, eps, part in ActorPool(actors).map_unordered(submit, list(units)):
                    parts[k, eps] = part
                    if on_done is not None:
                        on_done(k, eps, part)
                    bar.update()
            except ray.exceptions.RayTaskError as err:
                # The worker's own exception (an InputError, a model's error), not Ray's.
                raise err.as_instanceof_cause() from None
            return parts
        finally:
            for actor in actors:
                ray.kill(actor)
