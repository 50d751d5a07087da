"""AutoAttack (Croce and Hein, 2020): the parameter-free ensemble for robustness evaluation."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from bastion._tensor import ArrayKind, resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    BUDGET,
    NONE,
    NORM,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Options,
    Satisfies,
)
from bastion.attacks._lp import canonical_norm, lp_norm
from bastion.attacks.base import EvasionAttack, FixedBudgetAttack, checked_input
from bastion.attacks.evasion._auto_attack_state import (
    CLEAN,
    FIRST,
    Progress,
    digest,
    load_progress,
    save_progress,
)
from bastion.estimators.base import SupportsClassGradient, SupportsLossGradient
from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["AutoAttack", "AutoAttackResult", "EvaluationFlag"]

_LOG = logging.getLogger("bastion")


class _SupportsLossAndClassGradient(SupportsClassGradient, SupportsLossGradient, Protocol):
    """What AutoAttack's ensemble uses: loss gradients (APGD-CE), class gradients and logits
    (APGD-DLR, APGD-T, FAB, the check of the logits) and predictions (Square)."""


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


def _unique_labels(attacks: list[Any], label: Callable[[Any], str]) -> list[str]:
    """One label per attack; a repeated one gets ``#2``, ``#3``... (two APGD instances in a
    custom list are two attacks, each with its own record)."""
    seen: dict[str, int] = {}
    out = []
    for attack in attacks:
        name = label(attack)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _plain(value: Any) -> bool | int | float | str | None:
    """``value`` as a built-in scalar (NumPy scalars are not data to ``weights_only``
    loading), or None when it is not a scalar."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return None


def _describe_attack(attack: Any, label: str) -> Any:
    """A name, or an instance's label and plain-valued parameters (what a resumed evaluation
    must share with the saved one)."""
    if isinstance(attack, str):
        return attack
    params = {k: _plain(v) for k, v in attack.get_params().items()}
    return {"attack": label, "params": {k: v for k, v in params.items() if v is not None}}


def _is_square(attack: Any) -> bool:
    from bastion.attacks.evasion.square import SquareAttack

    return attack == "square" or isinstance(attack, SquareAttack)


@dataclass
class _Run:
    """One evaluation's resolved inputs and attack plan."""

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor | None
    eps: torch.Tensor
    norm: str
    kind: ArrayKind
    attacks: list[Any]
    labels: list[str]
    seeds: list[int]
    labels_from: str
    path: Path | None


@dataclass(frozen=True)
class EvaluationFlag:
    """A warning sign raised during an evaluation (the reference implementation's checks).

    Attributes
    ----------
    code : str
        ``"randomized"``, ``"probability-outputs"``, ``"zero-gradients"``,
        ``"black-box-stronger"``, ``"few-classes"`` or ``"predicted-labels"`` (no true labels
        were given: see :meth:`AutoAttack.generate`).
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
        Accuracy on the clean inputs, and on the worst case found within the budget. With
        ``labels="predicted"`` the clean accuracy is NaN (unknown) and the robust accuracy is
        the fraction of predictions that no attack changed.
    robust : numpy.ndarray of bool
        Per sample: still correctly classified after every attack.
    broken_by : numpy.ndarray of str
        Per sample: ``"clean"`` when misclassified without any attack, the label of the first
        attack that broke it, or ``""`` when it is robust.
    accuracy_after : dict
        Robust accuracy after each attack, in the order they ran.
    seconds : dict
        Wall-clock time of each attack.
    flags : list of EvaluationFlag
        Signs that the evaluation may overestimate robustness.
    norm, eps, version, attacks
        The evaluation's threat model and attack labels (a label repeated in a custom list
        gets ``#2``, ``#3``...).
    labels : {"given", "predicted"}
        Whether the accuracies are measured against the labels given, or against the model's
        own predictions (:meth:`AutoAttack.generate` without ``y``).
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
    labels: str = "given"

    def summary(self) -> str:
        """A plain-text table: accuracy after each attack, time, flags."""
        clean = (
            f"{self.clean_accuracy:7.2%}"
            if math.isfinite(self.clean_accuracy)
            else "unknown (no labels: accuracies against the model's own predictions)"
        )
        lines = [
            f"AutoAttack ({self.version}, L{self.norm}, eps={self.eps}) on {len(self.robust)} "
            "samples",
            f"  clean accuracy        {clean}",
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
            "labels": self.labels,
            "clean_accuracy": (self.clean_accuracy if math.isfinite(self.clean_accuracy) else None),
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

    :meth:`evaluate` needs the true labels. :meth:`generate` follows the convention of every
    evasion attack (without ``y``, the model's predictions serve as labels) and keeps its
    evaluation in ``result_``, marked ``labels="predicted"`` with an unknown (NaN) clean
    accuracy and a ``"predicted-labels"`` flag.

    A model that fails or returns NaN/infinite outputs stops the evaluation with the
    estimator's :class:`~bastion.exceptions.ModelError`: robustness is never reported on
    outputs that cannot be trusted.

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
        earlier, interrupted run of the same inputs, labels, mask and settings resumes after
        the last finished attack, with the same result as an uninterrupted run (for an int
        ``random_state``). The file holds data only (tensors, strings and numbers, read back
        with ``torch.load(weights_only=True)``), so a planted file cannot run code; it is
        checked before use (its settings, shapes and dtypes, and every saved adversarial
        example against the model), and anything else raises
        :class:`~bastion.exceptions.InputError`. State files of earlier bastion versions
        (pickles) are refused, never unpickled.
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
    >>> y = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(0))
    >>> aa = AutoAttack(clf, eps=0.2, version="custom", attacks=["apgd-ce", "apgd-t"],
    ...                 max_iter=10, random_state=0)
    >>> result = aa.evaluate(x, y)
    >>> result.robust_accuracy <= result.clean_accuracy
    True
    """

    estimator: _SupportsLossAndClassGradient

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

    def __init__(
        self,
        estimator: _SupportsLossAndClassGradient,
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
            # AutoAttack's "n_restarts" runs of FAB count the first (from x) too.
            fab_random_init = restarts - 1 if name == "fab" else 0
            return FAB(
                est,
                norm=norm_arg,
                max_iter=self.max_iter,
                eps=eps,
                num_random_init=fab_random_init,
                targeted=name == "fab-t",
                **common,
            ), name == "fab-t"
        from bastion.attacks.evasion.square import SquareAttack

        return SquareAttack(
            est, eps=self.eps, norm=norm_arg, max_queries=self.max_queries, **common
        ), False

    def _settings(self, run: _Run) -> dict[str, Any]:
        """What a saved state must share with this evaluation to be resumed by it: the inputs,
        labels and mask (as digests) and every setting that changes the result."""
        eps = _plain(self.eps)
        if eps is None:  # one budget per sample
            eps = digest(to_tensor(self.eps, dtype=torch.float64)[0])
        return {
            "inputs": digest(run.x, run.y, run.mask),
            "labels": run.labels_from,
            "eps": eps,
            "norm": run.norm,
            "version": self.version,
            "attacks": [
                _describe_attack(a, label) for a, label in zip(run.attacks, run.labels, strict=True)
            ],
            "max_iter": _plain(self.max_iter),
            "max_queries": _plain(self.max_queries),
            "random_state": _plain(self.random_state),
        }

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
        """Adversarial examples of the ensemble (the evaluation is kept in ``result_``).

        Like every evasion attack, without ``y`` the estimator's predictions serve as labels:
        ``result_.labels`` is then ``"predicted"``, its clean accuracy is NaN (unknown) and
        its robust accuracy is the fraction of predictions no attack could change. Use
        :meth:`evaluate` with the true labels to measure robustness.
        """
        return self._evaluate(x, y, mask).x_adv

    def evaluate(self, x: Any, y: Any = None, *, mask: Any = None) -> AutoAttackResult:
        """Run the ensemble and report robust accuracy, per-sample outcomes and flags.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
        y : array-like or torch.Tensor
            True labels, class indices ``(N,)`` or one-hot ``(N, nb_classes)``. Required:
            against the model's own predictions the clean accuracy would be 1 by construction
            and misclassified points would count as robust. To measure the stability of the
            predictions on purpose, pass them as ``y`` (or use :meth:`generate`).
        mask : array-like or torch.Tensor, optional
            Which features may change (1) and which may not (0).

        Returns
        -------
        AutoAttackResult

        Raises
        ------
        InputError
            Without ``y``; on bad inputs; when ``state_path`` holds anything else than the
            state of this evaluation.
        ModelError
            When the model fails or returns NaN/infinite outputs (raised by the estimator).
        """
        if y is None:
            raise InputError(
                "AutoAttack.evaluate needs the true labels y: without them robustness would be "
                "measured against the model's own predictions, so the clean accuracy would be "
                "1 by construction and misclassified points would count as robust. Pass "
                "evaluate(x, y); to measure how stable the predictions are, pass them "
                "explicitly as y (e.g. estimator.predict(x).argmax(1))."
            )
        return self._evaluate(x, y, mask)

    def _evaluate(self, x: Any, y: Any, mask: Any) -> AutoAttackResult:
        self._validate()
        run = self._prepare_run(x, y, mask)
        progress = self._start_or_resume(run)
        flags = self._health_checks(run.x, run.y)
        self._run_attacks(run, progress, flags)
        for flag in flags:
            warnings.warn(f"AutoAttack [{flag.code}]: {flag.message}", stacklevel=3)
        # Recorded, not warned: generate without y is the documented convention of every attack.
        if run.labels_from == "predicted":
            flags.append(
                EvaluationFlag(
                    "predicted-labels",
                    "no labels were given: the model's own predictions served as labels, so "
                    "the clean accuracy is unknown and the robust accuracy is the fraction of "
                    "predictions no attack could change (misclassified points count as "
                    "robust). Pass the true labels to evaluate().",
                )
            )
        self.result_ = self._result(run, progress, flags)
        return self.result_

    def _prepare_run(self, x: Any, y: Any, mask: Any) -> _Run:
        """Inputs as checked tensors, the budget, the attack list with unique labels and one
        seed per attack (drawn in order, so a resumed run seeds each attack as a whole one)."""
        est = self.estimator
        xt, kind = checked_input(est, x)
        labels_from = "predicted" if y is None else "given"
        yt = self._resolve_labels(xt, y)
        attacks = self._attack_list()
        gen = resolve_random_state(self.random_state, est.device)
        seeds = [
            int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))
            for _ in attacks
        ]
        path = None if self.state_path is None else Path(self.state_path)
        if path is not None and not path.parent.is_dir():
            raise InputError(
                f"The folder of the AutoAttack state_path {str(path)!r} does not exist; create "
                "it or give another state_path."
            )
        return _Run(
            x=xt,
            y=yt,
            mask=self._resolve_mask(mask, xt),
            eps=self._budget("eps", xt),
            norm=canonical_norm(self.norm),
            kind=kind,
            attacks=attacks,
            labels=_unique_labels(attacks, self._label),
            seeds=seeds,
            labels_from=labels_from,
            path=path,
        )

    def _start_or_resume(self, run: _Run) -> Progress:
        """The progress saved at ``state_path`` by an interrupted run of this evaluation
        (checked), or a fresh start."""
        misclassified = self._predicted_labels(run.x) != run.y
        if run.path is None or not run.path.exists():
            return Progress.start(run.x, misclassified)
        progress = load_progress(run.path, self._settings(run), run.labels, run.x)
        self._check_resumed(run, progress, misclassified)
        return progress

    def _check_resumed(self, run: _Run, progress: Progress, misclassified: torch.Tensor) -> None:
        """A saved state is used only if the model still agrees with it: the same clean
        mistakes, untouched inputs where no attack succeeded, and valid adversarial examples
        (misclassified, within the budget and the bounds) where one did."""
        where = f"The AutoAttack state_path {str(run.path)!r}"
        codes = progress.broken_by
        if not torch.equal(codes == CLEAN, misclassified):
            raise InputError(
                f"{where} was written for a model whose clean predictions differ from this "
                "estimator's (was the model changed or retrained?). Delete the file or give "
                "another state_path."
            )
        untouched = codes < FIRST
        if not torch.equal(progress.x_adv[untouched], run.x[untouched]):
            raise InputError(
                f"{where} holds modified inputs for samples no attack broke. Delete the file or "
                "give another state_path."
            )
        broken = (~untouched).nonzero().squeeze(1)
        if broken.numel() > 0 and not bool(
            self._valid_candidates(
                progress.x_adv[broken], run.x[broken], run.y[broken], run.eps[broken], run.norm
            ).all()
        ):
            raise InputError(
                f"{where} holds adversarial examples that are not (any longer) misclassified, "
                "within eps or within clip_values: the model or the settings changed. Delete "
                "the file or give another state_path."
            )

    def _run_attacks(self, run: _Run, progress: Progress, flags: list[EvaluationFlag]) -> None:
        """Each attack not yet done, in order, on the still-robust points; the progress saved
        after each one."""
        settings = self._settings(run) if run.path is not None else {}
        for k, (attack, label, seed) in enumerate(
            zip(run.attacks, run.labels, run.seeds, strict=True)
        ):
            if label in progress.done:
                continue
            before = progress.robust.clone() if _is_square(attack) else None
            start = time.perf_counter()
            self._run_attack(attack, k, seed, run, progress)
            progress.finish(label, time.perf_counter() - start)
            if self.verbose:
                _LOG.info(
                    "AutoAttack: robust accuracy after %s: %.2f%%",
                    label,
                    100 * progress.accuracy_after[label],
                )
            if run.path is not None:
                save_progress(run.path, progress, settings)
            if before is not None:
                flags.extend(self._black_box_flag(before, progress.robust))

    def _run_attack(self, attack: Any, k: int, seed: int, run: _Run, progress: Progress) -> None:
        """The ``k``-th attack on the points still robust, once per target class for the
        targeted ones; its valid candidates recorded in ``progress``."""
        built = self._instantiate(attack, seed)
        if built is None:
            return
        attack, targeted = built
        targets = self._target_classes(run.x) if targeted else [None]
        # A sample without budget (eps = 0) cannot be broken: no attack runs on it.
        has_budget = run.eps.reshape(run.x.shape[0], -1)[:, 0] > 0
        for target in targets:
            idx = (progress.robust & has_budget).nonzero().squeeze(1)
            if idx.numel() == 0:
                return
            xs, ys, eps = run.x[idx], run.y[idx], run.eps[idx].reshape(-1)
            ms = (
                None if run.mask is None else (run.mask[idx] if run.mask.shape[0] > 1 else run.mask)
            )
            if "eps" in attack.get_params() and isinstance(attack, FixedBudgetAttack):
                attack.set_params(eps=eps if eps.unique().numel() > 1 else float(eps[0]))
            goal = ys if target is None else target[idx]
            cand = attack.generate(xs, goal, mask=ms)
            ok = self._valid_candidates(cand, xs, ys, eps, run.norm)
            if bool(ok.any()):
                progress.break_samples(idx[ok], cand[ok], k)

    def _instantiate(self, attack: Any, seed: int) -> tuple[Any, bool] | None:
        """The attack to run and whether it runs once per target class; None when the model
        has too few classes for it (flagged by the health checks)."""
        if not isinstance(attack, str):
            return copy.copy(attack), False  # the caller's instance stays as given
        if "dlr" in attack or attack.endswith("-t"):
            needed = 4 if attack.endswith("-t") else 3
            if self.estimator.nb_classes < needed:
                return None
        return self._build(attack, seed)

    def _target_classes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per target rank ``k = 1 .. nb_targets``: each sample's class with the ``k``-th
        highest clean logit."""
        with torch.no_grad():
            logits = torch.cat(
                [
                    self.estimator.logits_tensor(x[i : i + self.batch_size])
                    for i in range(0, len(x), self.batch_size)
                ]
            )
        ranked = logits.argsort(dim=1, descending=True)
        return [ranked[:, k] for k in range(1, self._nb_targets() + 1)]

    def _valid_candidates(
        self, cand: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str
    ) -> torch.Tensor:
        """Which candidates count: misclassified, within ``eps`` (up to 1e-6) and inside
        ``clip_values``, so that an attack that overshoots cannot lower the robust accuracy."""
        with torch.no_grad():
            wrong = self._predicted_labels(cand) != y
        ok = wrong & (lp_norm(cand - x, norm) <= eps.reshape(-1) + 1e-6)
        if self.estimator.clip_values is not None:
            lo, hi = self.estimator.clip_values
            flat = cand.reshape(len(cand), -1)
            ok &= (flat.amin(1) >= lo) & (flat.amax(1) <= hi)
        return ok

    @staticmethod
    def _black_box_flag(
        white_box_robust: torch.Tensor, robust: torch.Tensor
    ) -> list[EvaluationFlag]:
        extra = int((white_box_robust & ~robust).sum())
        if extra == 0:
            return []
        return [
            EvaluationFlag(
                "black-box-stronger",
                f"the black-box Square attack broke {extra} point(s) that every white-box attack "
                "before it missed: a sign of gradient masking; the white-box numbers alone would "
                "overestimate robustness.",
            )
        ]

    def _result(
        self, run: _Run, progress: Progress, flags: list[EvaluationFlag]
    ) -> AutoAttackResult:
        n = run.x.shape[0]
        vocabulary = np.asarray(["", "clean", *run.labels], dtype=object)
        clean = int((progress.broken_by != CLEAN).sum()) / max(n, 1)
        return AutoAttackResult(
            x_adv=run.kind.restore(progress.x_adv, unchanged=run.x),
            clean_accuracy=clean if run.labels_from == "given" else float("nan"),
            robust_accuracy=progress.robust_accuracy(),
            robust=progress.robust.cpu().numpy(),
            broken_by=vocabulary[progress.broken_by.cpu().numpy()].astype(str),
            accuracy_after=dict(progress.accuracy_after),
            seconds=dict(progress.seconds),
            flags=flags,
            norm=run.norm,
            eps=self.eps if np.isscalar(self.eps) else np.asarray(self.eps),
            version=self.version,
            attacks=list(run.labels),
            labels=run.labels_from,
        )
