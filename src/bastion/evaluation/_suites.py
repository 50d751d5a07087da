"""Evaluation suites: which attacks :func:`~bastion.evaluation.evaluate` runs, and how."""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.exceptions import EstimatorError, InputError, InvalidParameterError

__all__ = ["SUITES", "AttackSpec", "Suite", "resolve_suite"]

#: The built-in suites and what they run (the exact settings are in ``docs/evaluation.md``).
SUITES: dict[str, str] = {
    "quick": "FGSM, then PGD (20 steps of 2.5 eps / 20, one random start) at each eps",
    "standard": "AutoAttack version='standard' (APGD-CE, APGD-T, FAB-T, Square) at each eps",
    "thorough": "AutoAttack standard at each eps, plus the minimum-norm FMN and FAB (100 "
    "iterations each) giving each sample's minimal adversarial distance",
    "blackbox": "Square (5000 queries per sample) at each eps, plus the decision-based "
    "minimum-norm HopSkipJump (5000 queries per sample), for predict-only models",
}
_WHITE_BOX = {"quick", "standard", "thorough"}
_SUITE_KEYS = {"name", "attacks", "defences", "defenses", "gradients"}
# Parameters that evaluate sets itself: the threat model and the budget.
_RESERVED = ("eps", "norm")


@dataclass
class AttackSpec:
    """One attack of a suite: the class name in :mod:`bastion.attacks.evasion`, its
    parameters and the label it is reported under."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "params": dict(self.params)}


@dataclass
class Suite:
    """A resolved suite: attacks in the order they run, optional defences."""

    name: str
    attacks: list[AttackSpec]
    defences: list[AttackSpec] = field(default_factory=list)
    gradients: str = "bpda"

    @property
    def defences_dict(self) -> dict[str, Any]:
        if not self.defences:
            return {}
        return {
            "preprocessors": [d.to_dict() for d in self.defences],
            "gradients": self.gradients,
        }


def _builtin(name: str) -> Suite:
    if name == "quick":
        return Suite("quick", [AttackSpec("FGSM"), AttackSpec("PGD", {"max_iter": 20})])
    if name == "standard":
        return Suite("standard", [AttackSpec("AutoAttack", {"version": "standard"})])
    if name == "thorough":
        return Suite(
            "thorough",
            [
                AttackSpec("AutoAttack", {"version": "standard"}),
                AttackSpec("FMN", {"max_iter": 100}),
                AttackSpec("FAB", {"max_iter": 100}),
            ],
        )
    return Suite(
        "blackbox",
        [
            AttackSpec("SquareAttack", {"max_queries": 5000}),
            AttackSpec("HopSkipJump", {"max_queries": 5000}),
        ],
    )


def _evasion_classes() -> dict[str, type]:
    import bastion.attacks.evasion as ev

    return {n: getattr(ev, n) for n in ev.__all__ if isinstance(getattr(ev, n), type)}


def _defence_classes() -> dict[str, type]:
    import bastion.defenses.preprocessing as pre

    return {n: getattr(pre, n) for n in pre.__all__ if n != "Preprocessor"}


def _entry(item: Any, what: str, known: Mapping[str, type]) -> AttackSpec:
    """An attack or defence entry: a class name, or ``{name, params, label}``."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, Mapping) or "name" not in item:
        raise InvalidParameterError(
            f"Each {what} of a custom suite must be a class name or a mapping with 'name' "
            f"(and optionally 'params'{', label' if what == 'attack' else ''}). Got {item!r}."
        )
    extra = set(item) - {"name", "params", "label"}
    if extra:
        raise InvalidParameterError(
            f"Unknown key(s) {sorted(extra)} in the {what} {item['name']!r} of a custom suite; "
            "use 'name', 'params' and 'label'."
        )
    name = str(item["name"])
    if name not in known:
        raise InvalidParameterError(
            f"Unknown {what} {name!r} in the custom suite; known: {', '.join(sorted(known))}."
        )
    params = item.get("params") or {}
    if not isinstance(params, Mapping):
        raise InvalidParameterError(
            f"The params of the {what} {name!r} must be a mapping. Got {params!r}."
        )
    if what == "attack":
        reserved = [k for k in _RESERVED if k in params]
        if reserved:
            raise InvalidParameterError(
                f"The {what} {name!r} of a custom suite sets {reserved}: the budget and the "
                "norm come from evaluate's eps and threat."
            )
    return AttackSpec(name, dict(params), str(item.get("label", "")))


def _custom(spec: Mapping[str, Any], default_name: str) -> Suite:
    unknown = set(spec) - _SUITE_KEYS
    if unknown:
        raise InvalidParameterError(
            f"Unknown key(s) {sorted(unknown)} in the custom suite; use {sorted(_SUITE_KEYS)}."
        )
    attacks = spec.get("attacks")
    if not isinstance(attacks, list) or not attacks:
        raise InvalidParameterError(
            f"A custom suite needs a non-empty list 'attacks'. Got {attacks!r}."
        )
    known = _evasion_classes()
    defences = spec.get("defences", spec.get("defenses")) or []
    if not isinstance(defences, list):
        raise InvalidParameterError(f"'defences' must be a list. Got {defences!r}.")
    gradients = spec.get("gradients", "bpda")
    if gradients not in ("bpda", "exact"):
        raise InvalidParameterError(
            f"The 'gradients' of a custom suite must be 'bpda' or 'exact'. Got {gradients!r}."
        )
    return Suite(
        str(spec.get("name", default_name)),
        [_entry(a, "attack", known) for a in attacks],
        [_entry(d, "defence", _defence_classes()) for d in defences],
        str(gradients),
    )


def resolve_suite(suite: Any) -> Suite:
    """The :class:`Suite` for a built-in name, a YAML file or a mapping.

    Raises
    ------
    InvalidParameterError
        An unknown suite name, attack or defence, or a malformed mapping.
    InputError
        A YAML file that cannot be read.
    """
    if isinstance(suite, Mapping):
        return _custom(suite, "custom")
    if isinstance(suite, (str, Path)):
        if isinstance(suite, str) and suite in SUITES:
            return _builtin(suite)
        path = Path(suite)
        if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
            return _custom(_read_yaml(path), path.stem)
    raise InvalidParameterError(
        f"The 'suite' parameter of evaluate must be one of {sorted(SUITES)}, the path of a "
        f"YAML suite file, or a mapping with 'attacks'. Got {suite!r} instead."
    )


def _read_yaml(path: Path) -> Mapping[str, Any]:
    import yaml

    if not path.is_file():
        raise InputError(f"The suite file {str(path)!r} does not exist.")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"The suite file {str(path)!r} is not valid YAML: {err}.") from None
    if not isinstance(spec, Mapping):
        raise InvalidParameterError(
            f"The suite file {str(path)!r} must hold a mapping with 'attacks'. Got {spec!r}."
        )
    return spec


# ----------------------------------------------------------------------------- building


def label_attacks(suite: Suite) -> None:
    """Give every attack a unique label (its name; ``#2``, ``#3`` for repeats)."""
    seen: dict[str, int] = {}
    for a in suite.attacks:
        base = a.label or a.name
        seen[base] = seen.get(base, 0) + 1
        a.label = base if seen[base] == 1 else f"{base}#{seen[base]}"


def attack_class(spec: AttackSpec) -> type:
    return _evasion_classes()[spec.name]


def is_minimum_norm(cls: type) -> bool:
    """Whether the attack looks for minimal perturbations (no ``eps`` budget to set)."""
    from bastion.attacks.base import FixedBudgetAttack

    return not issubclass(cls, FixedBudgetAttack)


def check_capabilities(estimator: Any, suite: Suite, suite_arg: Any) -> None:
    """Raise an :class:`EstimatorError` suggesting the black-box suite when an attack needs a
    capability (gradients, logits) the estimator lacks."""
    caps = set(getattr(estimator, "capabilities", ()))
    for spec in suite.attacks:
        needed = getattr(attack_class(spec), "_estimator_requirements", ("predict",))
        if spec.name == "AutoAttack" and spec.params.get("version") != "custom":
            needed = ("predict", "logits", "loss_gradient", "class_gradient")
        missing = [c for c in needed if c not in caps]
        if missing:
            which = f"suite {suite_arg!r}" if isinstance(suite_arg, str) else "custom suite"
            raise EstimatorError(
                f"The {which} runs {spec.name}, a white-box attack that needs "
                f"{', '.join(repr(m) for m in missing)}, which {type(estimator).__name__} does "
                f"not provide (it has: {', '.join(sorted(caps))}). For a predict-only model "
                "use suite='blackbox' (--suite blackbox)."
            )


def check_suite(estimator: Any, suite: Any) -> None:
    """Fail fast: resolve ``suite`` (a built-in name, a YAML file or a mapping) and check
    that ``estimator`` (behind the suite's defences) has every capability its attacks need,
    before any work.

    Parameters
    ----------
    estimator : Classifier
    suite : {"quick", "standard", "thorough", "blackbox"}, path or mapping

    Raises
    ------
    InvalidParameterError
        An unknown suite, attack or defence, or bad parameters in a custom suite.
    EstimatorError
        A white-box attack of the suite on an estimator without gradients (the message
        suggests ``suite="blackbox"``).

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import BlackBoxClassifier
    >>> from bastion.evaluation import check_suite
    >>> api = BlackBoxClassifier(lambda x: torch.ones(len(x), 3) / 3, input_shape=(4,),
    ...                          nb_classes=3, clip_values=(0, 1))
    >>> check_suite(api, "blackbox")
    >>> check_suite(api, "quick")
    Traceback (most recent call last):
    ...
    bastion.exceptions.EstimatorError: The suite 'quick' runs FGSM, a white-box attack ...
    """
    spec = resolve_suite(suite)
    label_attacks(spec)
    check_capabilities(build_defended(estimator, spec), spec, suite)


def build_defended(estimator: Any, suite: Suite) -> Any:
    """The estimator behind the suite's preprocessing defences (itself when none)."""
    if not suite.defences:
        return estimator
    from bastion.estimators import DefendedEstimator

    classes = _defence_classes()
    pre = []
    for d in suite.defences:
        try:
            pre.append(classes[d.name](**d.params))
        except TypeError as err:
            raise InvalidParameterError(f"Bad params for the defence {d.name!r}: {err}.") from None
    return DefendedEstimator(estimator, preprocessors=pre, gradients=suite.gradients)


def instantiate(
    spec: AttackSpec,
    estimator: Any,
    *,
    eps: float | None,
    norm: Any,
    seed: int,
    batch_size: int,
    verbose: bool,
) -> Any:
    """The configured attack: the spec's params, the threat's norm, ``eps`` for fixed-budget
    attacks, and the evaluation's seed, batch size and verbosity unless the spec sets them."""
    cls = attack_class(spec)
    probe = set(inspect.signature(cls).parameters)
    params = dict(spec.params)
    norm_arg: Any = "inf" if norm == "inf" else 2
    params["norm"] = norm_arg
    if eps is not None and "eps" in probe:
        params["eps"] = eps
        if "eps_step" in probe and "eps_step" not in spec.params:
            # Madry et al.'s step: 2.5 eps / iterations, enough to cross the ball from a
            # random start.
            iters = int(params.get("max_iter", 40))
            params["eps_step"] = 2.5 * eps / iters if eps > 0 else 0.01
    defaults = {"random_state": seed, "batch_size": batch_size, "verbose": verbose}
    for k, v in defaults.items():
        if k in probe and k not in params:
            params[k] = v
    try:
        attack = cls(estimator, **params)
    except TypeError as err:
        raise InvalidParameterError(
            f"Bad params for the attack {spec.name!r} ({spec.label}): {err}."
        ) from None
    return attack


# ----------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """Per-sample outcome at one budget (tensors on the estimator's device)."""

    robust: torch.Tensor
    broken_by: np.ndarray
    x_adv: torch.Tensor
    seconds: dict[str, float]
    flags: list[Any] = field(default_factory=list)


def predicted(estimator: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                estimator.predict_tensor(x[i : i + batch_size]).argmax(1)
                for i in range(0, len(x), batch_size)
            ]
        )


def perturbation(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv - x).reshape(len(x), -1).to(torch.float64)
    return d.abs().amax(1) if norm == "inf" else d.norm(dim=1)


def valid(
    estimator: Any,
    cand: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    batch_size: int,
) -> torch.Tensor:
    """Which candidates count: misclassified, within ``eps`` (up to 1e-6) and inside
    ``clip_values`` (an attack that overshoots cannot lower the robust accuracy)."""
    ok = predicted(estimator, cand, batch_size) != y
    ok &= perturbation(cand, x, norm) <= eps + 1e-6
    if estimator.clip_values is not None:
        lo, hi = estimator.clip_values
        flat = cand.reshape(len(cand), -1)
        ok &= (flat.amin(1) >= lo) & (flat.amax(1) <= hi)
    return ok


def minimal_distances(
    estimator: Any,
    attack: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    todo: torch.Tensor,
    norm: str,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A minimum-norm attack on the samples ``todo``: each one's adversarial example and its
    distance (``inf`` where the attack failed or its candidate is not valid)."""
    dist = torch.full((len(x),), float("inf"), dtype=torch.float64, device=x.device)
    x_adv = x.clone()
    idx = todo.nonzero().squeeze(1)
    if idx.numel() == 0:
        return dist, x_adv
    cand = attack.generate(x[idx], y[idx])
    ok = valid(estimator, cand, x[idx], y[idx], float("inf"), norm, batch_size)
    dist[idx[ok]] = perturbation(cand[ok], x[idx][ok], norm)
    x_adv[idx[ok]] = cand[ok]
    return dist, x_adv


def run_fixed(
    estimator: Any,
    attack: Any,
    label: str,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    batch_size: int,
    out: Outcome,
) -> None:
    """A fixed-budget attack on the samples still robust; valid candidates recorded."""
    from bastion.attacks.evasion import AutoAttack

    idx = out.robust.nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    start = time.perf_counter()
    if isinstance(attack, AutoAttack):
        import warnings

        with warnings.catch_warnings():
            # Its warning signs are kept as health checks, not repeated as warnings.
            warnings.simplefilter("ignore")
            res = attack.evaluate(x[idx], y[idx])
        cand = torch.as_tensor(res.x_adv, device=x.device)
        names = np.asarray([f"{label}/{b}" for b in res.broken_by], dtype=object)
        out.flags.extend(res.flags)
    else:
        cand = attack.generate(x[idx], y[idx])
        names = np.full(len(idx), label, dtype=object)
    ok = valid(estimator, cand, x[idx], y[idx], eps, norm, batch_size)
    hit = idx[ok]
    out.x_adv[hit] = cand[ok]
    out.robust[hit] = False
    out.broken_by[hit.cpu().numpy()] = names[ok.cpu().numpy()]
    out.seconds[label] = out.seconds.get(label, 0.0) + time.perf_counter() - start
