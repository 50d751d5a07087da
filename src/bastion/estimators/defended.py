"""A defended estimator: preprocessors before the model, postprocessors after it.

:class:`DefendedEstimator` is an estimator like the one it protects (DESIGN principle 7), so
attacks, metrics and the other wrappers (:class:`~bastion.estimators.EOT`) use it unchanged.
How an attacker differentiates through the defence is a parameter of the wrapper
(``gradients="bpda"`` for the adaptive attacker, ``"exact"`` for the naive one), never a flag
inside an attack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from bastion._tensor import resolve_random_state
from bastion._validation import (
    NONE,
    RANDOM_STATE,
    Options,
    Satisfies,
    invalid_parameter,
    validate_params,
)
from bastion.estimators.base import EstimatorWrapper, SupportsPredict
from bastion.exceptions import InvalidParameterError

__all__ = ["DefendedEstimator"]

#: What a preprocessor must have (the contract of :mod:`bastion.defenses.preprocessing`).
_PREPROCESSOR_METHODS = ("apply_tensor", "bpda")
_PREPROCESSOR_FLAGS = ("differentiable", "randomized")

# A recorded forward pass through the preprocessors: pairs ``(input, output)`` to pull a
# gradient back through, last pair first (``output`` not requiring grad: zero gradient).
_Tape = list[tuple[torch.Tensor, torch.Tensor]]


def _check_preprocessor(p: Any, owner: str) -> None:
    ok = all(callable(getattr(p, m, None)) for m in _PREPROCESSOR_METHODS) and all(
        isinstance(getattr(p, f, None), bool) for f in _PREPROCESSOR_FLAGS
    )
    if not ok or not hasattr(p, "clip_values"):
        raise invalid_parameter(
            "preprocessors",
            owner,
            "a sequence of preprocessors (objects with apply_tensor(x), bpda(x), clip_values "
            "and the bool attributes differentiable and randomized, e.g. those of "
            "bastion.defenses.preprocessing)",
            p,
        )


def _is_shape(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    )


def _same_clip(a: Any, b: Any) -> bool:
    try:
        return len(a) == 2 and float(a[0]) == float(b[0]) and float(a[1]) == float(b[1])
    except (TypeError, ValueError, IndexError):
        return False


def _column(index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``d -> d[n, index[n]]``: one score per sample."""
    return lambda d: d.gather(1, index).squeeze(1)


class DefendedEstimator(EstimatorWrapper):
    """An estimator behind input preprocessors and output postprocessors.

    The forward pass (``predict``, ``logits``, ``get_activations``) is
    ``x -> preprocessors -> estimator -> postprocessors``: the preprocessors transform the
    input with their real operations, in order (or, with ``order="random"``, in a fresh
    random order at every kernel call, i.e. for every batch, drawn from the wrapper's own
    generator: the random ensemble of transformations of Raff et al. 2019); the
    postprocessors transform the probabilities.
    With postprocessors, the logits are the log of the postprocessed probabilities (clamped
    away from 0), so ``softmax(logits)`` equals ``predict`` wherever the postprocessed rows
    sum to one; without, they are the estimator's own logits.

    Gradients (``loss_gradient``, ``class_gradient`` and the objective gradients attacks use)
    come from the wrapped estimator's gradient kernels at the preprocessed input and are
    chained back to ``x`` through the preprocessors, in one of two ways:

    * ``gradients="bpda"`` (the adaptive attacker, Athalye, Carlini and Wagner 2018): the
      backward pass of each preprocessor is the vector-Jacobian product of its differentiable
      surrogate ``bpda`` at that preprocessor's input (the identity by default: the gradient
      passes straight through a quantiser, a median filter, JPEG). Postprocessors are the
      identity on the backward pass: the loss or objective is evaluated on the wrapped
      estimator's logits, before postprocessing (the logits returned alongside are the
      defended ones).
    * ``gradients="exact"`` (the naive attacker): autograd through the preprocessors' real
      operations as they are implemented. A preprocessor declared ``differentiable=False``
      contributes a zero gradient: this is the masked gradient that makes such defences look
      robust against attacks that do not adapt. Postprocessors are differentiated as
      implemented in torch (the loss is then the cross-entropy of the defended logits, and
      class gradients take one backward pass per class).

    Randomised preprocessors draw from their own generators at every call, so wrapping the
    defended estimator in :class:`~bastion.estimators.EOT` averages over fresh draws: with
    BPDA, this is the attack of Athalye et al. on randomised defences.

    Every query is counted on the wrapper and on the wrapped estimator. The wrapper has the
    wrapped estimator's ``predict``, ``logits``, ``loss_gradient``, ``class_gradient``,
    ``activations`` (of the preprocessed input) and ``fit`` capabilities where it has them.

    Parameters
    ----------
    estimator : Classifier
        The protected estimator. Never modified, except by :meth:`fit`.
    preprocessors : sequence of preprocessors, default ()
        Input transformations (:mod:`bastion.defenses.preprocessing`): each has
        ``apply_tensor(x)`` (the real operation), ``bpda(x)`` (its differentiable surrogate),
        ``clip_values`` (``None``, or equal to the estimator's) and the flags
        ``differentiable`` and ``randomized``. A single preprocessor is accepted too.
    postprocessors : sequence of Postprocessor, default ()
        Output transformations (:mod:`bastion.defenses.postprocessing`), applied in order to
        the probabilities.
    gradients : {"bpda", "exact"}, default "bpda"
        How gradients pass through the preprocessors (see above).
    order : {"fixed", "random"}, default "fixed"
        Apply the preprocessors in the given order, or in a random permutation per call.
    random_state : None, int or torch.Generator
        Seeds the permutations of ``order="random"`` (the preprocessors' own randomness is
        theirs).
    input_shape : tuple of int, optional
        The shape of one input sample, when a preprocessor changes it (``ThermometerEncoding``
        multiplies the channels: the estimator takes encoded inputs, the wrapper raw ones).
        Defaults to the estimator's ``input_shape``.

    References
    ----------
    Athalye, Carlini and Wagner, "Obfuscated gradients give a false sense of security:
    circumventing defenses to adversarial examples", ICML 2018.
    https://arxiv.org/abs/1802.00420

    Raff, Sylvester, Forsyth and McLean, "Barrage of random transforms for adversarially
    robust defense", CVPR 2019.

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import DefendedEstimator, TorchClassifier
    >>> class Quantize:
    ...     differentiable, randomized, clip_values = False, False, (0.0, 1.0)
    ...     def apply_tensor(self, x):
    ...         return torch.round(x)
    ...     def bpda(self, x):
    ...         return x
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> x, y = torch.rand(2, 4), torch.tensor([0, 1])
    >>> naive = DefendedEstimator(clf, preprocessors=[Quantize()], gradients="exact")
    >>> bool((naive.loss_gradient(x, y) == 0).all())
    True
    >>> adaptive = DefendedEstimator(clf, preprocessors=[Quantize()])
    >>> bool((adaptive.loss_gradient(x, y) != 0).any())
    True
    """

    forwarded = frozenset(
        {"predict", "logits", "loss_gradient", "class_gradient", "activations", "fit"}
    )

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        preprocessors: Any = (),
        postprocessors: Any = (),
        gradients: str = "bpda",
        order: str = "fixed",
        random_state: Any = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(estimator)
        owner = type(self).__name__
        validate_params(
            owner,
            {
                "gradients": gradients,
                "order": order,
                "random_state": random_state,
                "input_shape": input_shape,
            },
            {
                "gradients": [Options(["bpda", "exact"])],
                "order": [Options(["fixed", "random"])],
                "random_state": RANDOM_STATE,
                "input_shape": [NONE, Satisfies(_is_shape, "a tuple of positive ints")],
            },
        )
        if input_shape is not None:
            self.input_shape = tuple(int(d) for d in input_shape)
        self.preprocessors = self._preprocessors(preprocessors, owner)
        self.postprocessors = self._postprocessors(postprocessors, owner)
        self.gradients = gradients
        self.order = order
        self.random_state = random_state
        # Permutations are tiny: drawn on the CPU, whatever the estimator's device.
        self._generator = resolve_random_state(random_state, "cpu")
        if self.postprocessors and gradients == "exact":
            # The loss of the defended logits is an objective of the estimator's logits.
            if "class_gradient" not in self.capabilities:
                self.capabilities = self.capabilities - {"loss_gradient"}

    # ------------------------------------------------------------------ validation

    def _preprocessors(self, preprocessors: Any, owner: str) -> list[Any]:
        if callable(getattr(preprocessors, "apply_tensor", None)):
            preprocessors = [preprocessors]
        if isinstance(preprocessors, (str, bytes)) or not isinstance(preprocessors, Sequence):
            raise invalid_parameter(
                "preprocessors", owner, "a sequence of preprocessors", preprocessors
            )
        for p in preprocessors:
            _check_preprocessor(p, owner)
            clip = p.clip_values
            if self.clip_values is not None and clip is not None:
                if not _same_clip(clip, self.clip_values):
                    raise InvalidParameterError(
                        f"The 'preprocessors' parameter of {owner}: {type(p).__name__} has "
                        f"clip_values={clip!r}, but the estimator has clip_values="
                        f"{self.clip_values!r}; they must be equal (build the preprocessor "
                        f"with clip_values={self.clip_values!r})."
                    )
        return list(preprocessors)

    def _postprocessors(self, postprocessors: Any, owner: str) -> list[Any]:
        from bastion.defenses.postprocessing import Postprocessor

        if isinstance(postprocessors, Postprocessor):
            postprocessors = [postprocessors]
        if (
            isinstance(postprocessors, (str, bytes))
            or not isinstance(postprocessors, Sequence)
            or not all(isinstance(p, Postprocessor) for p in postprocessors)
        ):
            raise InvalidParameterError(
                f"The 'postprocessors' parameter of {owner} must be a sequence of "
                f"Postprocessor instances. Got {postprocessors!r} instead."
            )
        return list(postprocessors)

    # ------------------------------------------------------------------ the defence

    def _chain(self) -> list[Any]:
        """The preprocessors in the order of this call."""
        if self.order == "fixed" or len(self.preprocessors) < 2:
            return self.preprocessors
        perm = torch.randperm(len(self.preprocessors), generator=self._generator)
        return [self.preprocessors[i] for i in perm.tolist()]

    def _preprocess(self, x: torch.Tensor, chain: list[Any] | None = None) -> torch.Tensor:
        with torch.no_grad():
            for p in self._chain() if chain is None else chain:
                x = p.apply_tensor(x)
        return x

    def _record(self, x: torch.Tensor) -> tuple[torch.Tensor, _Tape]:
        """The preprocessed input (real operations) and the tape to chain gradients back."""
        tape: _Tape = []
        chain = self._chain()
        if not chain:
            return x, tape
        if self.gradients == "exact":
            xr = x.detach().requires_grad_(True)
            h = xr
            with torch.enable_grad():
                for p in chain:
                    h = p.apply_tensor(h if p.differentiable else h.detach())
            return h.detach(), [(xr, h)]
        # BPDA: real values forward, each surrogate's vector-Jacobian product at the
        # preprocessor's own input backward.
        h = x.detach()
        for p in chain:
            hr = h.detach().requires_grad_(True)
            with torch.enable_grad():
                tape.append((hr, p.bpda(hr)))
            with torch.no_grad():
                h = p.apply_tensor(h)
        return h, tape

    @staticmethod
    def _pullback(tape: _Tape, g: torch.Tensor) -> torch.Tensor:
        for inp, out in reversed(tape):
            if not out.requires_grad:
                g = torch.zeros_like(inp)
                continue
            (gi,) = torch.autograd.grad(out, inp, g, retain_graph=True, allow_unused=True)
            g = torch.zeros_like(inp) if gi is None else gi
        return g

    def _pullback_rows(self, tape: _Tape, jac: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
        """Chain gradients ``(N, *classes, *xp.shape[1:])`` back to the input."""
        if not tape:
            return jac
        k = jac.ndim - xp.ndim
        if k == 0:
            return self._pullback(tape, jac)
        classes = jac.shape[1 : 1 + k]
        flat = jac.reshape(jac.shape[0], -1, *xp.shape[1:])
        rows = [self._pullback(tape, flat[:, r]) for r in range(flat.shape[1])]
        g = torch.stack(rows, dim=1)
        return g.reshape(jac.shape[0], *classes, *g.shape[2:])

    def _postprocess(self, probs: torch.Tensor) -> torch.Tensor:
        for post in self.postprocessors:
            probs = post.apply_tensor(probs)
        return probs

    def _defended_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The log of the postprocessed probabilities of logits ``z`` (differentiable)."""
        if not self.postprocessors:
            return z
        p = self._postprocess(torch.softmax(z, dim=1))
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))

    def _exact_post_objective(
        self, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        # ``0 * z.sum`` keeps the value a function of z when a postprocessor cuts the graph
        # (labels only): its gradient is then zero, not an error.
        return lambda z: objective(self._defended_logits(z)) + 0.0 * z.sum(dim=1)

    # ------------------------------------------------------------------ kernels

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._postprocess(self.estimator.predict_tensor(self._preprocess(x)))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        xp = self._preprocess(x)
        with torch.no_grad():
            if not self.postprocessors:
                return self.estimator.logits_tensor(xp)
            p = self._postprocess(self.estimator.predict_tensor(xp))
            return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))

    def _activations(self, x: torch.Tensor, layer: str | int) -> torch.Tensor:
        return self.estimator.activations_tensor(self._preprocess(x), layer)

    def _objective_gradient(
        self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xp, tape = self._record(x)
        if self.postprocessors and self.gradients == "exact":
            objective = self._exact_post_objective(objective)
        g, value, z = self.estimator.objective_gradient_tensor(xp, objective)
        with torch.no_grad():
            z = self._defended_logits(z)
        return self._pullback_rows(tape, g, xp), value, z

    def _loss_gradient(self, x: torch.Tensor, y: torch.Tensor, return_outputs: bool) -> Any:
        if self.postprocessors and self.gradients == "exact":
            out = self._objective_gradient(x, lambda z: self._per_sample_loss(z, y))
            return out if return_outputs else out[0]
        xp, tape = self._record(x)
        g, loss, z = self.estimator.loss_gradient_tensor(xp, y, return_outputs=True)
        g = self._pullback_rows(tape, g, xp)
        if not return_outputs:
            return g
        with torch.no_grad():
            return g, loss, self._defended_logits(z)

    def _class_gradient(self, x: torch.Tensor, label: Any) -> torch.Tensor:
        return self._class_gradient_and_logits(x, label)[0]

    def _class_gradient_and_logits(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.postprocessors and self.gradients == "exact":
            return self._exact_post_class_gradient(x, label)
        xp, tape = self._record(x)
        jac, z = self.estimator.class_gradient_and_logits_tensor(xp, label)
        with torch.no_grad():
            z = self._defended_logits(z)
        return self._pullback_rows(tape, jac, xp), z

    def _exact_post_class_gradient(
        self, x: torch.Tensor, label: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The defended logits mix every class: one objective gradient per requested row.
        n = x.shape[0]
        xp, tape = self._record(x)
        if isinstance(label, int) or (isinstance(label, torch.Tensor) and label.ndim == 1):
            cols = [torch.as_tensor(label, device=xp.device).expand(n)]
            stacked = False
        else:
            table = (
                torch.arange(self.nb_classes, device=xp.device).expand(n, -1)
                if label is None
                else label
            )
            cols = [table[:, r] for r in range(table.shape[1])]
            stacked = True
        rows = []
        z = xp
        for col in cols:
            objective = self._exact_post_objective(_column(col.reshape(-1, 1)))
            g, _, z = self.estimator.objective_gradient_tensor(xp, objective)
            rows.append(self._pullback(tape, g) if tape else g)
        with torch.no_grad():
            z = self._defended_logits(z)
        return (torch.stack(rows, dim=1) if stacked else rows[0]), z

    # ------------------------------------------------------------------ training

    def fit(self, x: Any, y: Any, **kwargs: Any) -> DefendedEstimator:
        """Train the wrapped estimator on preprocessed inputs.

        The inputs are preprocessed once, with the real operations (in this call's order),
        and given to the wrapped estimator's ``fit`` with ``y`` and ``kwargs``: a randomised
        preprocessor is therefore drawn once for the whole training, not once per epoch.
        Postprocessors play no part in training.

        Returns
        -------
        self
        """
        self._require("fit", "fit")
        t, _ = self._input(x)
        chain = self._chain()
        xp = self._batched(lambda b: self._preprocess(b, chain), t, self._default_batch_size)
        self.estimator.fit(xp, y, **kwargs)
        return self

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.estimator!r}, preprocessors={self.preprocessors}, "
            f"postprocessors={self.postprocessors}, gradients={self.gradients!r}, "
            f"order={self.order!r})"
        )
