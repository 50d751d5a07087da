"""What :func:`~bastion.evaluation.evaluate` found, and its JSON form (``results.json``)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bastion.exceptions import InputError

__all__ = [
    "SCHEMA_VERSION",
    "EpsResult",
    "EvaluationResult",
    "HealthCheck",
    "results_schema",
]

#: The version of the ``results.json`` layout (``schema/results-v1.json``).
SCHEMA_VERSION = "1"
HEALTH_STATUSES = ("pass", "warn", "fail")

StrPath = str | os.PathLike[str]


def results_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every ``results.json`` of this version follows.

    It ships with the package as ``bastion/evaluation/schema/results-v1.json``.

    Examples
    --------
    >>> from bastion.evaluation import results_schema
    >>> results_schema()["properties"]["schema_version"]["const"]
    '1'
    """
    text = resources.files("bastion.evaluation").joinpath(f"schema/results-v{SCHEMA_VERSION}.json")
    return dict(json.loads(text.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class HealthCheck:
    """One health check of an evaluation (see ``docs/evaluation.md``).

    Attributes
    ----------
    code : str
        Short identifier, e.g. ``"zero-gradients"``.
    status : {"pass", "warn", "fail"}
        ``"fail"`` means the evaluation cannot be trusted as it stands.
    message : str
        What was checked and what was seen, in plain language.
    fix : str
        What to do about it (empty when the check passed).
    applicable : bool
        False when the check does not apply to this model or suite (it then passes and its
        message says why).
    details : dict
        The numbers behind the verdict (JSON-ready).
    seconds : float
        Time the check took.
    """

    code: str
    status: str
    message: str
    fix: str = ""
    applicable: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in HEALTH_STATUSES:
            raise ValueError(f"status must be one of {HEALTH_STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
            "applicable": self.applicable,
            "details": _plain(self.details),
            "seconds": float(self.seconds),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HealthCheck:
        return cls(
            code=str(d["code"]),
            status=str(d["status"]),
            message=str(d["message"]),
            fix=str(d.get("fix", "")),
            applicable=bool(d.get("applicable", True)),
            details=dict(d.get("details", {})),
            seconds=float(d.get("seconds", 0.0)),
        )


@dataclass
class EpsResult:
    """The outcome at one budget.

    Attributes
    ----------
    eps : float
    robust_accuracy : float
        Fraction of all samples still correctly classified after every attack of the suite
        (the per-sample worst case).
    robust : numpy.ndarray of bool, shape (N,)
    broken_by : numpy.ndarray of str, shape (N,)
        ``"clean"`` (misclassified without attack), the label of the first attack that broke
        the sample, or ``""`` (robust).
    adv_prediction : numpy.ndarray of int, shape (N,)
        The class predicted for the adversarial example (the clean prediction where none).
    l2, linf : numpy.ndarray of float, shape (N,)
        Norms of each successful adversarial perturbation, NaN where there is none.
    per_class : dict
        ``{class: robust accuracy among the samples of that class}``.
    seconds : dict
        Wall-clock time of each attack at this budget.
    gallery : numpy.ndarray of int
        Indices of a few broken samples kept for a gallery.
    gallery_x_adv : numpy.ndarray or None
        Their adversarial examples (in memory only; :meth:`EvaluationResult.save_gallery`).
    """

    eps: float
    robust_accuracy: float
    robust: np.ndarray
    broken_by: np.ndarray
    adv_prediction: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    per_class: dict[int, float]
    seconds: dict[str, float]
    gallery: np.ndarray
    gallery_x_adv: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        counts = dict(zip(*np.unique(self.broken_by, return_counts=True), strict=True))
        return {
            "eps": float(self.eps),
            "robust_accuracy": float(self.robust_accuracy),
            "per_class": {str(k): _num(v) for k, v in self.per_class.items()},
            "broken_by_counts": {str(k): int(v) for k, v in counts.items()},
            "seconds": {k: float(v) for k, v in self.seconds.items()},
            "gallery": [int(i) for i in self.gallery],
            "samples": {
                "robust": [bool(v) for v in self.robust],
                "broken_by": [str(v) for v in self.broken_by],
                "adv_prediction": [int(v) for v in self.adv_prediction],
                "l2": [_num(v) for v in self.l2],
                "linf": [_num(v) for v in self.linf],
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpsResult:
        s = d["samples"]
        return cls(
            eps=float(d["eps"]),
            robust_accuracy=float(d["robust_accuracy"]),
            robust=np.asarray(s["robust"], dtype=bool),
            broken_by=np.asarray(s["broken_by"], dtype=str),
            adv_prediction=np.asarray(s["adv_prediction"], dtype=np.int64),
            l2=_floats(s["l2"]),
            linf=_floats(s["linf"]),
            per_class={int(k): _unnum(v) for k, v in d["per_class"].items()},
            seconds={k: float(v) for k, v in d["seconds"].items()},
            gallery=np.asarray(d["gallery"], dtype=np.int64),
        )


@dataclass
class EvaluationResult:
    """A whole evaluation: every number a report needs, per budget and per sample.

    Attributes
    ----------
    suite : str
        ``"quick"``, ``"standard"``, ``"thorough"``, ``"blackbox"`` or the custom suite's name.
    threat : {"linf", "l2"}
    norm : {"inf", "2"}
    eps : list of float
        The budgets, ascending.
    nb_classes : int
    indices : numpy.ndarray of int
        Which rows of the caller's data were evaluated (all, or the ``limit`` subsample).
    labels, clean_prediction : numpy.ndarray of int
    clean_correct : numpy.ndarray of bool
    clean_accuracy : float
    results : list of EpsResult
        One per budget, in the order of ``eps``.
    min_distance : numpy.ndarray of float or None
        Per sample, the smallest adversarial perturbation the suite's minimum-norm attacks
        found (in the threat's norm): 0 for a misclassified sample, ``inf`` where none was
        found; None when the suite has no minimum-norm attack.
    curve : dict or None
        ``{"eps": [...], "robust_accuracy": [...]}``: robust accuracy against the budget from
        ``min_distance`` (combined with the fixed-budget results at the evaluated budgets).
    health : list of HealthCheck
    attacks : list of dict
        Each attack of the suite: ``label``, ``name`` (class) and ``params``.
    defences : list of dict
        Preprocessing defences of a custom suite (``name``, ``params``) and ``gradients``.
    config : dict
        ``random_state`` (the seed every attack got), ``batch_size``, ``limit``, ...
    versions : dict
        ``bastion``, ``torch``, ``numpy``, ``python``.
    seconds : dict
        ``attacks`` and ``health`` wall-clock times and the ``total``.
    gallery_x : numpy.ndarray or None
        Clean inputs of every sample in a gallery, keyed by ``gallery_indices`` (memory only).
    """

    suite: str
    threat: str
    norm: str
    eps: list[float]
    nb_classes: int
    indices: np.ndarray
    labels: np.ndarray
    clean_prediction: np.ndarray
    clean_correct: np.ndarray
    clean_accuracy: float
    results: list[EpsResult]
    health: list[HealthCheck] = field(default_factory=list)
    min_distance: np.ndarray | None = None
    curve: dict[str, list[float]] | None = None
    attacks: list[dict[str, Any]] = field(default_factory=list)
    defences: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    gallery_indices: np.ndarray | None = None
    gallery_x: np.ndarray | None = None

    # ------------------------------------------------------------------ views

    @property
    def robust_accuracy(self) -> dict[float, float]:
        """``{eps: robust accuracy}``."""
        return {r.eps: r.robust_accuracy for r in self.results}

    @property
    def reliable(self) -> bool:
        """False when a health check failed: the numbers may overestimate robustness."""
        return not any(h.status == "fail" for h in self.health)

    def check(self, code: str) -> HealthCheck:
        """The health check named ``code``."""
        for h in self.health:
            if h.code == code:
                return h
        raise KeyError(code)

    def summary(self) -> str:
        """A plain-text summary: accuracies per budget, then the health checks."""
        unit = "Linf" if self.threat == "linf" else "L2"
        lines = [
            f"bastion evaluation: suite {self.suite!r}, {unit} threat, {len(self.labels)} samples",
            f"  clean accuracy          {self.clean_accuracy:7.2%}",
        ]
        for r in self.results:
            lines.append(f"  robust accuracy @ {r.eps:<6.4g} {r.robust_accuracy:7.2%}")
        if not self.reliable:
            lines.append("  UNRELIABLE: a health check failed; the robust accuracy above may be")
            lines.append("  far too high. See the checks below.")
        lines.append("  health checks:")
        for h in self.health:
            lines.append(f"    [{h.status.upper():4}] {h.code}: {h.message}")
            if h.fix and h.status != "pass":
                lines.append(f"           fix: {h.fix}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` document (JSON-ready; arrays as lists, NaN/inf as null)."""
        min_distance = None
        if self.min_distance is not None:
            min_distance = [_num(v) for v in self.min_distance]
        return {
            "schema_version": SCHEMA_VERSION,
            "suite": self.suite,
            "threat": self.threat,
            "norm": self.norm,
            "eps": [float(e) for e in self.eps],
            "n": len(self.labels),
            "nb_classes": int(self.nb_classes),
            "clean_accuracy": float(self.clean_accuracy),
            "robust_accuracy": [float(r.robust_accuracy) for r in self.results],
            "reliable": self.reliable,
            "attacks": _plain(self.attacks),
            "defences": _plain(self.defences),
            "config": _plain(self.config),
            "versions": dict(self.versions),
            "seconds": {k: float(v) for k, v in self.seconds.items()},
            "health": [h.to_dict() for h in self.health],
            "samples": {
                "index": [int(i) for i in self.indices],
                "label": [int(v) for v in self.labels],
                "clean_prediction": [int(v) for v in self.clean_prediction],
                "clean_correct": [bool(v) for v in self.clean_correct],
                "min_distance": min_distance,
            },
            "curve": None if self.curve is None else _plain(self.curve),
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self, path: StrPath) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (strict JSON: no NaN); returns the path.

        The gallery's arrays are not in the JSON: :meth:`save_gallery` writes them to a
        ``.npz``.
        """
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        path.write_text(text + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationResult:
        """Rebuild a result from :meth:`to_dict`'s document (gallery arrays not included)."""
        version = d.get("schema_version") if isinstance(d, dict) else None
        if version != SCHEMA_VERSION:
            raise InputError(
                f"This is not a bastion results document of schema version {SCHEMA_VERSION} "
                f"(schema_version={version!r})."
            )
        try:
            s = d["samples"]
            md = s.get("min_distance")
            results = [EpsResult.from_dict(r) for r in d["results"]]
            gallery = sorted({int(i) for r in results for i in r.gallery})
            return cls(
                suite=str(d["suite"]),
                threat=str(d["threat"]),
                norm=str(d["norm"]),
                eps=[float(e) for e in d["eps"]],
                nb_classes=int(d["nb_classes"]),
                indices=np.asarray(s["index"], dtype=np.int64),
                labels=np.asarray(s["label"], dtype=np.int64),
                clean_prediction=np.asarray(s["clean_prediction"], dtype=np.int64),
                clean_correct=np.asarray(s["clean_correct"], dtype=bool),
                clean_accuracy=float(d["clean_accuracy"]),
                results=results,
                health=[HealthCheck.from_dict(h) for h in d["health"]],
                min_distance=None if md is None else _floats(md, missing=math.inf),
                curve=d.get("curve"),
                attacks=list(d.get("attacks", [])),
                defences=dict(d.get("defences", {})),
                config=dict(d.get("config", {})),
                versions=dict(d.get("versions", {})),
                seconds={k: float(v) for k, v in d.get("seconds", {}).items()},
                gallery_indices=np.asarray(gallery, dtype=np.int64),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"A malformed bastion results document: {err!r}.") from None

    @classmethod
    def from_json(cls, path: StrPath) -> EvaluationResult:
        """Read a ``results.json`` written by :meth:`to_json` (plain JSON: no code runs)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"The results file {str(path)!r} does not exist.")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{str(path)!r} is not a JSON file: {err}.") from None
        return cls.from_dict(d)

    def to_html(self, path: StrPath, *, class_names: Any = None) -> Path:
        """Write the self-contained HTML report (inline CSS, plots as embedded PNG).

        Parameters
        ----------
        path : str or os.PathLike
        class_names : sequence of str, optional
            Names of the class indices, for the gallery and the per-class table.

        Returns
        -------
        pathlib.Path
            ``path``. The gallery shows images only while the result holds its arrays (not
            after :meth:`from_json`).
        """
        from bastion.evaluation._html import write_html

        return write_html(self, path, class_names=class_names)

    def save_gallery(self, path: StrPath) -> Path:
        """Write the gallery to a ``.npz`` (``indices``, ``x``, and ``x_adv_<k>`` /
        ``indices_<k>`` for the ``k``-th budget); plain arrays, no pickles."""
        if self.gallery_x is None or self.gallery_indices is None:
            raise InputError(
                "This result holds no gallery arrays (a result read from JSON has only the "
                "gallery's indices)."
            )
        arrays: dict[str, np.ndarray] = {
            "indices": np.asarray(self.gallery_indices),
            "x": np.asarray(self.gallery_x),
            "eps": np.asarray(self.eps, dtype=np.float64),
        }
        for k, r in enumerate(self.results):
            arrays[f"indices_{k}"] = np.asarray(r.gallery)
            if r.gallery_x_adv is not None:
                arrays[f"x_adv_{k}"] = np.asarray(r.gallery_x_adv)
        path = Path(path)
        np.savez(path, **arrays)  # type: ignore[arg-type]
        return path


def _num(v: Any) -> float | None:
    """A float for JSON: NaN and infinities become null."""
    f = float(v)
    return f if math.isfinite(f) else None


def _unnum(v: Any) -> float:
    return math.nan if v is None else float(v)


def _floats(values: list[Any], missing: float = math.nan) -> np.ndarray:
    return np.asarray([missing if v is None else float(v) for v in values], dtype=np.float64)


def _plain(value: Any) -> Any:
    """JSON-ready copy: NumPy scalars and arrays to Python, non-finite floats to null, tuples
    to lists, anything else to its ``repr``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _num(value)
    if value is None or isinstance(value, str):
        return value
    return repr(value)
