"""AutoAttack (Croce and Hein, 2020): the parameter-free ensemble for robustness evaluation."""

from __future__ import annotations

import copy
import hashlib
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bastion._tensor import resolve_random_state, to_tensor
from bastion._validation import NONE, Constraint, Interval, Options, Satisfies, check_x
from bastion.attacks._lp import canonical_norm, lp_norm
from bastion.attacks.base import (
    BATCH_SIZE,
    BUDGET,
    NORM,
    RANDOM_STATE,
    VERBOSE,
    EvasionAttack,
    FixedBudgetAttack,
)
from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["AutoAttack", "AutoAttackResult", "EvaluationFlag"]

#: The attacks AutoAttack knows by name.
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")

_VERSIONS: dict[str, dict[str, Any]] = {
    # Croce and Hein 2020, and the reference implementation's settings.
    "standard": {
        "inf": ["apgd-ce", "apgd-t", "fab-t", "square"],
        "2": ["apgd-ce", "apgd-t", "fab-t", "square"],
        "1": ["apgd-ce", "apgd-t", "fab-t"],
    },
    "plus": {
        "inf": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
        "2": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
        "1": ["apgd-ce", "apgd-dlr", "fab", "apgd-t", "fab-t"],
    },
    "rand": {"inf": ["apgd-ce", "apgd-dlr"], "2": ["apgd-ce", "apgd-dlr"], "1": ["apgd-ce"]},
}


def _valid_attacks(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        return False
    return all(
        (isinstance(a, str) and a in ATTACK_NAMES) or isinstance(a, EvasionAttack) for a in value
    )


@dataclass(frozen=True)
class EvaluationFlag:
    """A warning sign raised during an evaluation (the reference implementation's checks).

    Attributes
    ----------
    code : str
        ``"randomized"``, ``"probability-outputs"``, ``"zero-gradients"``,
        ``"black-box-stronger"`` or ``"few-classes"``.
    message : str
        What was seen and what to do about it.
    """

    code: str
    message: str


@dataclass
class AutoAttackResult:
    """What an :class:`AutoAttack` evaluation found.

    Attributes
    ----------
    x_adv : array or tensor
        Adversarial examples (the clean input where none was found), in the caller's type.
    clean_accuracy, robust_accuracy : float
        Accuracy on the clean inputs, and on the worst case found within the budget.
    robust : numpy.ndarray of bool
        Per sample: still correctly classified after every attack.
    broken_by : numpy.ndarray of str
        Per sample: ``"clean"`` when misclassified without any attack, the name of the first
        attack that broke it, or ``""`` when it is robust.
    accuracy_after : dict
        Robust accuracy after each attack, in the order they ran.
    seconds : dict
        Wall-clock time of each attack.
    flags : list of EvaluationFlag
        Signs that the evaluation may overestimate robustness.
    norm, eps, version, attacks
        The evaluation's threat model and attack list.
    """

    x_adv: Any
    clean_accuracy: float
    robust_accuracy: float
    robust: np.ndarray
    broken_by: np.ndarray
    accuracy_after: dict[str, float]
    seconds: dict[str, float]
    flags: list[EvaluationFlag] = field(default_factory=list)
    norm: str = "inf"
    eps: Any = None
    version: str = "standard"
    attacks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A plain-text table: accuracy after each attack, time, flags."""
        lines = [
            f"AutoAttack ({self.version}, L{self.norm}, eps={self.eps}) on {len(self.robust)} "
            "samples",
            f"  clean accuracy        {self.clean_accuracy:7.2%}",
        ]
        for name, acc in self.accuracy_after.items():
            lines.append(f"  after {name:<15} {acc:7.2%}   ({self.seconds.get(name, 0.0):.1f} s)")
        lines.append(f"  robust accuracy       {self.robust_accuracy:7.2%}")
        lines += [f"  FLAG {f.code}: {f.message}" for f in self.flags]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the adversarial examples)."""
        return {
            "version": self.version,
            "norm": self.norm,
            "eps": self.eps if np.isscalar(self.eps) else np.asarray(self.eps).tolist(),
            "attacks": list(self.attacks),
            "n": len(self.robust),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "accuracy_after": dict(self.accuracy_after),
            "seconds": dict(self.seconds),
            "broken_by": {
                str(k): int(v)
                for k, v in zip(*np.unique(self.broken_by, return_counts=True), strict=True)
            },
            "flags": [{"code": f.code, "message": f.message} for f in self.flags],
        }


class AutoAttack(FixedBudgetAttack):
    """AutoAttack: a fixed ensemble of complementary, parameter-free attacks, run in sequence.

    Each attack runs only on the points that every earlier attack failed to break, so the
    result is the worst case per sample over the ensemble, at the cost of attacking the robust
    points only. ``version="standard"`` (Linf and L2) runs

    1. APGD with the cross-entropy loss (100 iterations, one run from a random start);
    2. APGD-T: targeted APGD with the DLR loss, against each of the 9 classes with the highest
       clean logits after the true one (100 iterations each);
    3. FAB-T: the targeted minimum-norm FAB attack against the same 9 classes, a point counting
       only when its perturbation lies within ``eps``;
    4. Square: the score-based black-box random search, 5000 queries per point.

    For L1, standard runs APGD-CE with 5 random restarts, APGD-T against 5 classes and FAB-T
    (Square has no L1 version here). ``version="plus"`` adds untargeted APGD-DLR and FAB with
    5 restarts each; ``version="rand"``, for randomised defences, runs APGD-CE and APGD-DLR on
    the estimator wrapped in :class:`~bastion.estimators.ExpectationOverTransformation` (20
    draws per gradient, the original's ``eot_iter``). ``version="custom"`` runs ``attacks``: names
    from ``("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")`` and/or configured
    attack instances (any bastion evasion attack).

    Every candidate is checked before it is accepted: misclassified, inside ``clip_values``,
    and within ``eps`` in the chosen norm (up to 1e-6), so an attack that overshoots cannot
    lower the robust accuracy.

    The evaluation also raises the reference implementation's warning signs, as
    :class:`EvaluationFlag` entries in the result and as Python warnings: predictions that
    change between identical calls (use ``version="rand"``), outputs that look like
    probabilities rather than logits (the DLR loss needs logits), inputs whose loss gradient is
    exactly zero (gradient masking), the black-box Square attack breaking points that every
    white-box attack missed (gradient masking), and too few classes for the targeted attacks.

    Threat model: white-box (loss gradients, class gradients and logits), the Square stage
    using scores only. Norms: inf, 2, 1.

    Parameters
    ----------
    estimator : estimator with ``loss_gradient``, ``class_gradient`` and ``logits``
    eps : float or array-like of float, default 0.3
        Budget, one value or one per sample.
    norm : {"inf", 2, 1}, default "inf"
    version : {"standard", "plus", "rand", "custom"}, default "standard"
    attacks : list of str or EvasionAttack, optional
        Only (and required) with ``version="custom"``.
    max_iter : int, default 100
        Iterations of each APGD and FAB run (the paper's 100; lower it only for quick looks).
    max_queries : int, default 5000
        Square's queries per point.
    state_path : str or Path, optional
        Where to save the progress after each attack; an evaluation given the path of an
        earlier, interrupted run of the same inputs and settings resumes after the last
        finished attack.
    batch_size : int, default 500
        Batch size of every attack.
    random_state : None, int or torch.Generator
        Seeds every attack's randomness.
    verbose : bool, default False
        Progress bars and a line per attack (through :mod:`logging` and tqdm).

    Attributes
    ----------
    result_ : AutoAttackResult
        After :meth:`generate` or :meth:`evaluate`: the last evaluation's result.

    References
    ----------
    Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690

    Croce and Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image
    classifiers", ICML 2021. https://arxiv.org/abs/2103.01208

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion import AutoAttack
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 4))
    >>> clf = TorchClassifier(net, input_shape=(8,), nb_classes=4, clip_values=(0, 1))
    >>> x = torch.rand(6, 8)
    >>> aa = AutoAttack(clf, eps=0.2, version="custom", attacks=["apgd-ce", "apgd-t"],
    ...                 max_iter=10, random_state=0)
    >>> result = aa.evaluate(x)
    >>> result.robust_accuracy <= result.clean_accuracy
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": BUDGET,
        "norm": [NORM],
        "version": [Options(["standard", "plus", "rand", "custom"])],
        "attacks": [
            Satisfies(
                _valid_attacks,
                f"None or a non-empty list of names from {ATTACK_NAMES} or attack instances",
            )
        ],
        "max_iter": [Interval(int, 1, None)],
        "max_queries": [Interval(int, 1, None)],
        "state_path": [NONE, Satisfies(lambda p: isinstance(p, (str, os.PathLike)), "a path")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "logits", "loss_gradient", "class_gradient")
    _conformance: ClassVar[dict[str, Any]] = {
        "params": {"version": "custom", "attacks": ["apgd-ce", "apgd-t", "fab-t"], "max_iter": 5},
    }

    def __init__(
        self,
        estimator: Any,
        *,
        eps: Any = 0.3,
        norm: Any = "inf",
        version: str = "standard",
        attacks: Sequence[Any] | None = None,
        max_iter: int = 100,
        max_queries: int = 5000,
        state_path: str | os.PathLike[str] | None = None,
        batch_size: int = 500,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.eps = eps
        self.norm = norm
        self.version = version
        self.attacks = attacks
        self.max_iter = max_iter
        self.max_queries = max_queries
        self.state_path = state_path
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ configuration

    def _validate(self) -> None:
        super()._validate()
        if (self.version == "custom") != (self.attacks is not None):
            raise InvalidParameterError(
                "The 'attacks' parameter of AutoAttack must be given with version='custom' "
                f"and only then. Got version={self.version!r} and attacks={self.attacks!r}."
            )

    def _attack_list(self) -> list[Any]:
        if self.version == "custom":
            return list(self.attacks or [])
        return list(_VERSIONS[self.version][canonical_norm(self.norm)])

    @staticmethod
    def _label(attack: Any) -> str:
        return attack if isinstance(attack, str) else type(attack).__name__

    def _nb_targets(self) -> int:
        wanted = 5 if canonical_norm(self.norm) == "1" and self.version == "standard" else 9
        return min(wanted, self.estimator.nb_classes - 1)

    def _build(self, name: str, seed: int) -> tuple[Any, bool]:
        """The configured attack for ``name`` and whether it is targeted (run per class)."""
        from bastion.attacks.evasion.auto_pgd import APGD
        from bastion.attacks.evasion.fab import FAB
        from bastion.estimators.wrappers import ExpectationOverTransformation

        norm = canonical_norm(self.norm)
        norm_arg: Any = "inf" if norm == "inf" else int(norm)
        common: dict[str, Any] = {
            "batch_size": self.batch_size,
            "random_state": seed,
            "verbose": self.verbose,
        }
        est = self.estimator
        if self.version == "rand":
            est = ExpectationOverTransformation(est, nb_samples=20)
        restarts = 5 if (self.version == "plus" or norm == "1") else 1
        if name in ("apgd-ce", "apgd-dlr"):
            loss = name.split("-")[1]
            return APGD(
                est,
                eps=self.eps,
                norm=norm_arg,
                max_iter=self.max_iter,
                loss=loss,
                num_random_init=restarts,
                **common,
            ), False
        if name == "apgd-t":
            return APGD(
                est,
                eps=self.eps,
                norm=norm_arg,
                max_iter=self.max_iter,
                loss="dlr",
                targeted=True,
                num_random_init=1,
                **common,
            ), True
        if name in ("fab", "fab-t"):
            eps = float(self.eps) if isinstance(self.eps, (int, float)) else None
            fab_restarts = restarts if name == "fab" else 1
            return FAB(
                est,
                norm=norm_arg,
                max_iter=self.max_iter,
                eps=eps,
                n_restarts=fab_restarts,
                targeted=name == "fab-t",
                **common,
            ), name == "fab-t"
        from bastion.attacks.evasion.square import SquareAttack

        return SquareAttack(
            est, eps=self.eps, norm=norm_arg, max_queries=self.max_queries, **common
        ), False

    def _fingerprint(self, x: torch.Tensor, y: torch.Tensor) -> str:
        h = hashlib.sha256()
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().contiguous().numpy().tobytes())
        eps = self.eps if np.isscalar(self.eps) else np.asarray(self.eps).tolist()
        attacks = [self._label(a) for a in self._attack_list()]
        h.update(
            repr(
                (
                    eps,
                    canonical_norm(self.norm),
                    self.version,
                    attacks,
                    self.max_iter,
                    self.max_queries,
                    self.random_state if isinstance(self.random_state, int) else None,
                )
            ).encode()
        )
        return h.hexdigest()

    # ------------------------------------------------------------------ checks

    def _health_checks(self, x: torch.Tensor, y: torch.Tensor) -> list[EvaluationFlag]:
        est = self.estimator
        flags = []
        xb, yb = x[: min(len(x), 100)], y[: min(len(x), 100)]
        with torch.no_grad():
            runs = [est.logits_tensor(xb) for _ in range(3)]
        if any(not torch.allclose(runs[0], r, rtol=1e-4, atol=1e-5) for r in runs[1:]):
            hint = (
                "" if self.version == "rand" else " Use version='rand' (EOT over the randomness)."
            )
            flags.append(
                EvaluationFlag(
                    "randomized",
                    "the model's outputs change between identical calls: it is "
                    f"randomised, and a single-draw evaluation may overestimate robustness.{hint}",
                )
            )
        z = runs[0]
        if bool(
            (z >= 0).all()
            and (z <= 1).all()
            and torch.allclose(z.sum(1), torch.ones_like(z[:, 0]), atol=1e-4)
        ):
            flags.append(
                EvaluationFlag(
                    "probability-outputs",
                    "the estimator's logits sum to one: they look like "
                    "probabilities. The DLR loss of APGD-DLR/APGD-T is meant for logits; give the "
                    "model without its final softmax.",
                )
            )
        grad = est.loss_gradient_tensor(xb, yb)
        zero = float((grad.reshape(len(grad), -1).abs().amax(1) == 0).to(torch.float32).mean())
        if zero > 0:
            flags.append(
                EvaluationFlag(
                    "zero-gradients",
                    f"the loss gradient is exactly zero for {zero:.1%} of the "
                    "points checked: gradients may be masked (non-differentiable or saturated "
                    "defence); consider BPDA or a black-box attack.",
                )
            )
        needs_targets = any(a in ("apgd-t", "fab-t", "apgd-dlr") for a in self._attack_list())
        if needs_targets and est.nb_classes < 4:
            flags.append(
                EvaluationFlag(
                    "few-classes",
                    f"the DLR loss needs at least 3 classes (4 targeted); this model "
                    f"has {est.nb_classes}: DLR-based attacks are skipped.",
                )
            )
        return flags

    # ------------------------------------------------------------------ evaluation

    def generate(self, x: Any, y: Any = None, *, mask: Any = None) -> Any:
        """Adversarial examples from :meth:`evaluate` (its result is kept in ``result_``)."""
        return self.evaluate(x, y, mask=mask).x_adv

    def evaluate(self, x: Any, y: Any = None, *, mask: Any = None) -> AutoAttackResult:
        """Run the ensemble and report robust accuracy, per-sample outcomes and flags.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
        y : array-like or torch.Tensor, optional
            True labels; the estimator's predictions when omitted.
        mask : array-like or torch.Tensor, optional
            Which features may change (1) and which may not (0).

        Returns
        -------
        AutoAttackResult
        """
        self._validate()
        est = self.estimator
        xt, kind = to_tensor(x, device=est.device, dtype=getattr(est, "dtype", torch.float32))
        check_x(xt, input_shape=est.input_shape, clip_values=est.clip_values)
        yt = self._resolve_labels(xt, y)
        mt = self._resolve_mask(mask, xt)
        eps_all = self._budget("eps", xt)
        norm = canonical_norm(self.norm)
        gen = resolve_random_state(self.random_state, est.device)
        attack_list = self._attack_list()
        labels = [self._label(a) for a in attack_list]
        seeds = [
            int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))
            for _ in attack_list
        ]

        n = xt.shape[0]
        pred = self._predicted_labels(xt)
        state: dict[str, Any] = {
            "x_adv": xt.clone(),
            "robust": pred == yt,
            "broken_by": np.where((pred != yt).cpu().numpy(), "clean", "").astype(object),
            "done": [],
            "accuracy_after": {},
            "seconds": {},
        }
        clean_acc = int(state["robust"].sum()) / max(n, 1)
        path = Path(self.state_path) if self.state_path is not None else None
        fingerprint = self._fingerprint(xt, yt)
        if path is not None and path.exists():
            saved = torch.load(path, map_location=est.device, weights_only=False)
            if saved.get("fingerprint") != fingerprint:
                raise InputError(
                    f"{path} holds the state of a different evaluation (other inputs, labels or "
                    "settings); delete it or give another state_path."
                )
            state = saved["state"]

        flags = self._health_checks(xt, yt)
        white_box_robust: torch.Tensor | None = None
        for attack, label, seed in zip(attack_list, labels, seeds, strict=True):
            if label in state["done"]:
                continue
            if label == "square" or label == "SquareAttack":
                white_box_robust = state["robust"].clone()
            start = time.perf_counter()
            self._run_one(attack, label, seed, xt, yt, mt, eps_all, norm, state)
            state["seconds"][label] = time.perf_counter() - start
            state["accuracy_after"][label] = int(state["robust"].sum()) / max(n, 1)
            state["done"].append(label)
            if self.verbose:
                import logging

                logging.getLogger("bastion").info(
                    "AutoAttack: robust accuracy after %s: %.2f%%",
                    label,
                    100 * state["accuracy_after"][label],
                )
            if path is not None:
                tmp = path.with_suffix(path.suffix + ".tmp")
                torch.save({"fingerprint": fingerprint, "state": state}, tmp)
                os.replace(tmp, path)
            if label in ("square", "SquareAttack") and white_box_robust is not None:
                extra = int((white_box_robust & ~state["robust"]).sum())
                if extra > 0:
                    flags.append(
                        EvaluationFlag(
                            "black-box-stronger",
                            f"the black-box Square attack broke {extra} "
                            "point(s) that every white-box attack before it missed: a sign of "
                            "gradient masking; the white-box numbers alone would overestimate "
                            "robustness.",
                        )
                    )
        for flag in flags:
            warnings.warn(f"AutoAttack [{flag.code}]: {flag.message}", stacklevel=2)

        result = AutoAttackResult(
            x_adv=kind.restore(state["x_adv"]),
            clean_accuracy=clean_acc,
            robust_accuracy=int(state["robust"].sum()) / max(n, 1),
            robust=state["robust"].cpu().numpy(),
            broken_by=np.asarray(state["broken_by"], dtype=str),
            accuracy_after=dict(state["accuracy_after"]),
            seconds=dict(state["seconds"]),
            flags=flags,
            norm=norm,
            eps=self.eps if np.isscalar(self.eps) else np.asarray(self.eps),
            version=self.version,
            attacks=labels,
        )
        self.result_ = result
        return result

    def _run_one(
        self,
        attack: Any,
        label: str,
        seed: int,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        eps_all: torch.Tensor,
        norm: str,
        state: dict[str, Any],
    ) -> None:
        est = self.estimator
        if isinstance(attack, str):
            if "dlr" in attack or attack.endswith("-t"):
                needed = 4 if attack.endswith("-t") else 3
                if est.nb_classes < needed:
                    return
            attack, targeted = self._build(attack, seed)
        else:
            attack, targeted = copy.copy(attack), False  # the caller's instance stays as given
        if targeted:
            with torch.no_grad():
                logits = torch.cat(
                    [
                        est.logits_tensor(x[i : i + self.batch_size])
                        for i in range(0, len(x), self.batch_size)
                    ]
                )
            ranked = logits.argsort(dim=1, descending=True)
            targets: list[torch.Tensor | None] = [
                ranked[:, k] for k in range(1, self._nb_targets() + 1)
            ]
        else:
            targets = [None]
        for target in targets:
            idx = state["robust"].nonzero().squeeze(1)
            if idx.numel() == 0:
                return
            xs = x[idx]
            ms = None if mask is None else (mask[idx] if mask.shape[0] > 1 else mask)
            eps = eps_all[idx].reshape(-1)
            params = attack.get_params()
            if "eps" in params and isinstance(attack, FixedBudgetAttack):
                attack.set_params(eps=eps if eps.unique().numel() > 1 else float(eps[0]))
            goal = y[idx] if target is None else target[idx]
            cand = attack.generate(xs, goal, mask=ms)
            with torch.no_grad():
                wrong = self._predicted_labels(cand) != y[idx]
            within = lp_norm(cand - xs, norm) <= eps + 1e-6
            if est.clip_values is not None:
                lo, hi = est.clip_values
                flat = cand.reshape(len(cand), -1)
                within &= (flat.amin(1) >= lo) & (flat.amax(1) <= hi)
            ok = wrong & within
            if bool(ok.any()):
                hit = idx[ok]
                state["x_adv"][hit] = cand[ok]
                state["robust"][hit] = False
                state["broken_by"][hit.cpu().numpy()] = label
