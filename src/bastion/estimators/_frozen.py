"""Forward-only graphs of a torch model, frozen and optimised for oneDNN on the CPU.

Predictions, scores and activations need no autograd. For them :class:`FrozenForward` traces
the model (``torch.jit.trace``), freezes its weights into the graph (``torch.jit.freeze``) and
lets ``torch.jit.optimize_for_inference`` convert the convolutions to oneDNN's blocked layout
with pre-packed weights (fused with their ReLU where it can). On the digits CNN with one thread
this runs the forward pass about 1.3x faster than the eager channels-last model.

A frozen graph is a copy of the model at one moment, so it is used only while it provably
stands for the model:

- it is rebuilt whenever a parameter or buffer changes: a new tensor, an in-place change (the
  tensor's version counter), a change through ``.data`` (which the version counter does not see:
  a per-tensor sum is compared as well), a sub-module replaced, a plain attribute of one changed
  (train/eval mode, a temperature stored as a float, ...), or a ``forward`` assigned on one;
- the model runs eagerly while any forward (pre-)hook is registered on it or globally, since a
  traced graph would skip them, and for batches of fewer than 8 samples, where the frozen
  path's fixed cost per call outweighs its gain;
- at most 4 graphs are kept (each holds a copy of the weights), the least recently used is
  dropped;
- the first batches of each new input shape are also computed eagerly and must agree to float
  rounding; a model that traces with a ``TracerWarning`` (data-dependent control flow), fails
  to trace, or disagrees is run eagerly from then on (with one warning).

Gradient computations always run the eager model.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_mod

__all__ = ["FrozenForward", "LayerOutput", "frozen_supported"]

_VERIFY_SHAPES = 4  # input shapes checked against the eager model, per graph
# Smaller batches run eagerly: the per-call cost of the frozen path (the change check, the
# conversions to and from oneDNN's layout) outweighs its gain there (digits CNN, one thread:
# 467 vs 252 us/image at batch 1, break-even near 8, 104 vs 203 at 16).
_MIN_BATCH = 8
# Each graph holds its own (pre-packed) copy of the weights: the least recently used graph is
# dropped beyond this many (the model's output and a few layers' activations).
_MAX_GRAPHS = 4


def frozen_supported() -> bool:
    """Whether this torch build can trace, freeze and optimise graphs for inference."""
    jit = getattr(torch, "jit", None)
    return all(hasattr(jit, name) for name in ("trace", "freeze", "optimize_for_inference"))


class LayerOutput(nn.Module):
    """Runs the model and returns what ``layer`` computed (its first element for a tuple), by
    a forward hook that lives for the call. Traced and frozen, the layers after ``layer`` are
    dead code in the graph and are removed."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            captured.append(out[0] if isinstance(out, (tuple, list)) else out)

        handle = self.layer.register_forward_hook(hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[-1]


def _plain(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is None or isinstance(v, (bool, int, float, str))}


def _has_hooks(model: nn.Module) -> bool:
    if getattr(module_mod, "_global_forward_hooks", None) or getattr(
        module_mod, "_global_forward_pre_hooks", None
    ):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class FrozenForward:
    """Frozen, oneDNN-optimised forward graphs of one model, rebuilt when the model changes.

    Parameters
    ----------
    owner : str
        Named in the warning given when the model cannot be frozen.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.disabled: str | None = None  # why the model runs eagerly for good
        self._graphs: dict[Hashable, Any] = {}
        self._verified: dict[Hashable, set[tuple[int, ...]]] = {}
        self._state: tuple[Any, ...] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Script modules do not pickle; the graphs are rebuilt on first use.
        return {"owner": self.owner, "disabled": self.disabled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["owner"])  # type: ignore[misc]
        self.disabled = state["disabled"]

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenForward:
        new = FrozenForward(self.owner)
        new.disabled = self.disabled
        return new

    @staticmethod
    def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
        tensors = [*model.parameters(), *model.buffers()]
        meta = tuple(
            (id(t), t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, tuple(t.shape))
            for t in tensors
        )
        # Sub-modules by identity (a replaced one), their plain attributes (train/eval mode, a
        # temperature stored as a float, ...) and a forward assigned on the instance.
        modes = tuple(
            (id(m), id(vars(m).get("forward")), *sorted(_plain(vars(m)).items()))
            for m in model.modules()
        )
        floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
        # Catches in-place edits through .data, which leave the version counter alone; compared
        # bit for bit, so NaN weights compare equal to themselves.
        sums = (
            torch.stack([t.sum().double() for t in floats]).view(torch.int64).tolist()
            if floats
            else []
        )
        return meta, modes, tuple(sums)

    def _build(self, module: nn.Module, x: torch.Tensor) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(module, x, check_trace=False)
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        if tracer:
            raise RuntimeError(f"tracing is not reliable for this model: {tracer[0].message}")
        return graph

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        self._graphs.clear()
        self._verified.clear()
        warnings.warn(
            f"{self.owner}: running the model eagerly (inference='frozen' not possible: {reason}).",
            RuntimeWarning,
            stacklevel=4,
        )

    def __call__(
        self, model: nn.Module, x: torch.Tensor, key: Hashable, module: nn.Module
    ) -> torch.Tensor:
        """``module(x)`` (``module`` is ``model``, or a :class:`LayerOutput` of it, identified
        by ``key``) through its frozen graph when it may, eagerly otherwise. Call without
        autograd."""
        if self.disabled is not None or x.shape[0] < _MIN_BATCH or _has_hooks(model):
            return module(x)
        state = self._fingerprint(model)
        if state != self._state:
            self._graphs.clear()
            self._verified.clear()
            self._state = state
        full_key = (key, x.dtype, tuple(x.shape[1:]))
        graph = self._graphs.pop(full_key, None)
        if graph is None:
            if len(self._graphs) >= _MAX_GRAPHS:
                oldest = next(iter(self._graphs))
                del self._graphs[oldest], self._verified[oldest]
            try:
                graph = self._build(module, x)
            except Exception as exc:  # any failure to trace means: run eagerly
                self._disable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                return module(x)
            self._verified[full_key] = set()
        self._graphs[full_key] = graph  # (re)inserted last: the most recently used
        out = graph(x)
        checked = self._verified[full_key]
        if len(checked) < _VERIFY_SHAPES and tuple(x.shape) not in checked:
            ref = module(x)
            scale = float(ref.abs().max()) if ref.numel() else 0.0
            if (
                not isinstance(out, torch.Tensor)
                or out.shape != ref.shape
                or not torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
            ):
                self._disable("the frozen graph does not reproduce the model's outputs")
                return ref
            checked.add(tuple(x.shape))
        return out
