"""Audits of a trained model: membership privacy, backdoors in its training data, extraction.

Each audit drives attacks and defences the library already has and returns an
:class:`AuditResult`, whose ``numbers`` are what ``bastion audit`` writes to ``results.json``
and draws in its HTML page.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion._tensor import resolve_random_state
from bastion.evaluation._evaluate import _versions
from bastion.evaluation._result import _plain
from bastion.exceptions import (
    BastionError,
    EstimatorError,
    InputError,
    InvalidParameterError,
    ModelError,
)
from bastion.metrics.privacy import membership_report, roc_curve

__all__ = [
    "AUDIT_KINDS",
    "AUDIT_SCHEMA_VERSION",
    "BACKDOOR_METHODS",
    "EXTRACTION_ATTACKS",
    "PRIVACY_ATTACKS",
    "AuditResult",
    "audit_backdoor",
    "audit_extraction",
    "audit_privacy",
]

#: Version of the ``results.json`` document of an audit.
AUDIT_SCHEMA_VERSION = 1
AUDIT_KINDS = ("privacy", "backdoor", "extraction")


def audit_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an audit's ``results.json`` (this schema version).

    It ships with the package as ``bastion/evaluation/schema/audit-v1.json``.

    Examples
    --------
    >>> from bastion.evaluation import audit_schema
    >>> audit_schema()["properties"]["schema_version"]["const"]
    1
    """
    from importlib import resources

    text = resources.files("bastion.evaluation").joinpath(
        f"schema/audit-v{AUDIT_SCHEMA_VERSION}.json"
    )
    return dict(json.loads(text.read_text(encoding="utf-8")))


#: Membership attacks of :func:`audit_privacy`, and whether they train reference models.
PRIVACY_ATTACKS: dict[str, str] = {
    "lira": "LiRA online (Carlini et al. 2022): trains reference models",
    "lira-offline": "LiRA offline (Carlini et al. 2022): trains reference models",
    "rmia": "RMIA (Zarifzadeh et al. 2024): trains reference models",
    "loss": "loss threshold (Yeom et al. 2018): no reference models",
}
BACKDOOR_METHODS = ("activation-clustering", "spectral-signatures", "both")
EXTRACTION_ATTACKS: dict[str, str] = {
    "copycat": "Copycat CNN (Correia-Silva et al. 2018): the victim's top-1 labels",
    "knockoff": "Knockoff Nets, random sampling (Orekondy et al. 2019): its probabilities",
}
#: ROC points kept in the JSON (the low-FPR end in full, the rest thinned).
_ROC_POINTS = 1000
#: Classes whose 2-D projection a backdoor audit keeps for its plot.
_PROJECTED_CLASSES = 4
_REFERENCE_DEFAULT = {"lira": 16, "lira-offline": 16, "rmia": 2}


@dataclass
class AuditResult:
    """The outcome of :func:`audit_privacy`, :func:`audit_backdoor` or :func:`audit_extraction`.

    Attributes
    ----------
    kind : {"privacy", "backdoor", "extraction"}
    configuration : dict
        The audit's parameters (what to re-run it with).
    numbers : dict
        The measurements (see each audit's Returns section); plain JSON values.
    versions : dict
        Library versions (bastion, torch, numpy, python).
    seconds : dict
        Wall time of each step.
    """

    kind: str
    configuration: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for a terminal: the headline numbers of the audit."""
        n = self.numbers
        lines = [f"bastion audit {self.kind}"]
        if self.kind == "privacy":
            lines += [
                f"  attack            {n['attack']}"
                + (
                    f" ({n['nb_reference_models']} reference models)"
                    if n.get("nb_reference_models")
                    else ""
                ),
                f"  members / non-members  {n['nb_members']} / {n['nb_non_members']}",
                f"  train / test accuracy  {n['train_accuracy']:.2%} / {n['test_accuracy']:.2%}",
                f"  membership AUC    {n['auc']:.4f}",
                f"  TPR at 0.1% FPR   {n['tpr_at_0.1%_fpr']:.2%}",
                f"  TPR at 1% FPR     {n['tpr_at_1%_fpr']:.2%}",
            ]
        elif self.kind == "backdoor":
            flagged = n["flagged_classes"]
            lines.append(
                "  flagged classes   " + (", ".join(map(str, flagged)) if flagged else "none")
            )
            lines.append(f"  suspicious samples {len(n['suspicious_indices'])}")
            for name, m in n["methods"].items():
                fc = m["flagged_classes"]
                lines.append(
                    f"  {name}: " + (", ".join(map(str, fc)) if fc else "no class flagged")
                )
        elif self.kind == "extraction":
            lines.append(f"  attack {n['attack']}, thief {n['architecture']}")
            for q, f, a in zip(n["queries"], n["fidelity"], n["accuracy"], strict=True):
                acc = "" if a is None else f", accuracy {a:.2%}"
                lines.append(f"  {q:>7} queries: fidelity {f:.2%}{acc}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` document (plain JSON; NaN and infinities as null)."""
        return {
            "schema_version": AUDIT_SCHEMA_VERSION,
            "audit": self.kind,
            "configuration": _plain(self.configuration),
            "numbers": _plain(self.numbers),
            "versions": dict(self.versions),
            "seconds": {k: float(v) for k, v in self.seconds.items()},
        }

    def to_json(self, path: Any) -> Path:
        """Write :meth:`to_dict` to ``path`` as strict JSON (no NaN); returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n", "utf-8")
        return path

    @classmethod
    def from_dict(cls, d: Any) -> AuditResult:
        """Rebuild a result from :meth:`to_dict`'s document."""
        version = d.get("schema_version") if isinstance(d, dict) else None
        if version != AUDIT_SCHEMA_VERSION or d.get("audit") not in AUDIT_KINDS:
            raise InputError(
                f"This is not a bastion audit document of schema version {AUDIT_SCHEMA_VERSION} "
                f"(schema_version={version!r})."
            )
        return cls(
            kind=str(d["audit"]),
            configuration=dict(d.get("configuration", {})),
            numbers=dict(d.get("numbers", {})),
            versions=dict(d.get("versions", {})),
            seconds={k: float(v) for k, v in d.get("seconds", {}).items()},
        )

    @classmethod
    def from_json(cls, path: Any) -> AuditResult:
        """Read a ``results.json`` written by :meth:`to_json` (plain JSON: no code runs)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"The results file {str(path)!r} does not exist.")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{str(path)!r} is not a JSON file: {err}.") from None
        return cls.from_dict(d)


# ----------------------------------------------------------------------------- helpers


def _numpy(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be an array; got {type(a).__name__}: {err}") from None


def _option(value: Any, name: str, options: Sequence[str]) -> str:
    if value not in options:
        raise InvalidParameterError(
            f"The {name!r} parameter of the audit must be one of {', '.join(map(repr, options))}. "
            f"Got {value!r} instead."
        )
    return str(value)


def _positive(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidParameterError(
            f"The {name!r} parameter of the audit must be an int in [{low}, inf). "
            f"Got {value!r} instead."
        )
    return int(value)


def _seed(random_state: Any) -> int:
    """An int seed from ``random_state`` (None, int or torch.Generator)."""
    gen = resolve_random_state(random_state, "cpu")
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen).item())


def _accuracy(estimator: Any, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    probs = _numpy(estimator.predict(x, batch_size=batch_size), "predictions")
    return float(np.mean(probs.argmax(axis=1) == y))


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray) -> tuple[list[float], list[float]]:
    """At most about ``_ROC_POINTS`` points: the low-FPR end in full, then log-spaced."""
    n = fpr.size
    if n <= _ROC_POINTS:
        return fpr.tolist(), tpr.tolist()
    head = np.arange(min(n, _ROC_POINTS // 5))
    tail = np.unique(np.geomspace(1, n - 1, _ROC_POINTS - head.size).round().astype(np.int64))
    keep = np.unique(np.r_[head, tail, n - 1])
    return fpr[keep].tolist(), tpr[keep].tolist()


# ----------------------------------------------------------------------------- privacy


def _clone_error(estimator: Any) -> str | None:
    """Why ``estimator`` cannot give a freshly initialised copy of itself (None if it can)."""
    caps: frozenset[str] = getattr(estimator, "capabilities", frozenset())
    if not {"clone", "fit"} <= set(caps):
        return f"{type(estimator).__name__} lacks the 'clone' and 'fit' capabilities"
    try:  # e.g. a TorchScript module cannot be re-initialised
        estimator.clone(reinitialize=True, random_state=0)
    except Exception as err:  # the estimator's own reason, reported to the user
        return f"its model cannot be re-initialised ({type(err).__name__}: {err})"
    return None


def _reference_trainer(estimator: Any, epochs: int, batch_size: int, learning_rate: float) -> Any:
    """A LiRA/RMIA ``reference_trainer``: a fresh copy of the target trained like it."""
    why = _clone_error(estimator)
    if why is not None:
        raise EstimatorError(
            f"Training reference models needs a fresh copy of the target's architecture, but "
            f"{why}. Load the model as a state dict with its architecture (--arch), or use "
            "attack='loss', which needs no reference models."
        )

    def train(x: Any, y: Any, random_state: int) -> Any:
        model = estimator.clone(reinitialize=True, random_state=random_state)
        return model.fit(
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            random_state=random_state,
        )

    return train


def audit_privacy(
    estimator: Any,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    attack: str = "lira",
    reference_models: int | None = None,
    reference_dir: Any = None,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    random_state: Any = 0,
    verbose: bool = False,
) -> AuditResult:
    """Measure how well membership in the training data can be inferred from the model.

    The candidates are the training samples (members) and held-out samples from the same
    distribution (non-members). The membership scores of ``attack`` give the ROC curve, its
    AUC and, the numbers that matter for privacy, the true-positive rate at 0.1% and 1%
    false-positive rate (Carlini et al. 2022).

    LiRA and RMIA train reference models like the target: ``estimator.clone(reinitialize=
    True)`` fitted for ``epochs`` with Adam on random halves of the candidates (so each
    candidate is IN for half of them), which needs an estimator with the ``clone`` and ``fit``
    capabilities and a training recipe close to the target's (``epochs``, ``batch_size``,
    ``learning_rate``). ``reference_dir`` keeps them (as weights, never pickles) for a later
    audit of the same data.

    Parameters
    ----------
    estimator : estimator
        The target model, trained on ``(x_train, y_train)``.
    x_train, y_train : array-like
        Its training samples (members) and labels.
    x_test, y_test : array-like
        Samples it did not train on (non-members) and labels.
    attack : {"lira", "lira-offline", "rmia", "loss"}, default "lira"
        :class:`~bastion.attacks.inference.LiRA` online or offline (Carlini et al., "Membership
        Inference Attacks From First Principles", S&P 2022),
        :class:`~bastion.attacks.inference.RMIA` (Zarifzadeh et al., "Low-Cost High-Power
        Membership Inference Attacks", ICML 2024) or
        :class:`~bastion.attacks.inference.LossThreshold` (Yeom et al., "Privacy Risk in
        Machine Learning", CSF 2018), which needs no reference models.
    reference_models : int, optional
        Reference models to train (at least 2 for LiRA); default 16 for LiRA (the paper uses
        up to 256), 2 for RMIA.
    reference_dir : str or path-like, optional
        Folder where the reference models are saved and reloaded from.
    epochs, batch_size, learning_rate : int, int, float
        The reference models' training recipe.
    random_state : None, int or torch.Generator, default 0
        Seeds the halves and the reference models.
    verbose : bool, default False
        Progress bar over the reference models.

    Returns
    -------
    AuditResult
        ``numbers``: ``attack``, ``nb_reference_models``, ``nb_members``, ``nb_non_members``,
        ``train_accuracy``, ``test_accuracy``, ``auc``, ``advantage`` (best ``TPR - FPR``),
        ``tpr_at_0.1%_fpr``, ``tpr_at_1%_fpr`` and ``roc`` (``fpr``, ``tpr`` lists, thinned to
        about 1,000 points, for a log-log plot).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.evaluation import audit_privacy
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((80, 4), dtype=np.float32), rng.integers(0, 2, 80)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=2).fit(x[:40], y[:40], epochs=5)
    >>> result = audit_privacy(clf, x[:40], y[:40], x[40:], y[40:], attack="loss")
    >>> 0.0 <= result.numbers["auc"] <= 1.0
    True
    """
    from bastion.attacks.inference import RMIA, LiRA, LossThreshold

    attack = _option(attack, "attack", list(PRIVACY_ATTACKS))
    epochs = _positive(epochs, "epochs")
    batch_size = _positive(batch_size, "batch_size")
    xtr, ytr = _numpy(x_train, "x_train"), _numpy(y_train, "y_train").astype(np.int64)
    xte, yte = _numpy(x_test, "x_test"), _numpy(y_test, "y_test").astype(np.int64)
    if xtr.shape[0] == 0 or xte.shape[0] == 0:
        raise InputError("A privacy audit needs both training (member) and test samples.")
    if xtr.shape[1:] != xte.shape[1:]:
        raise InputError(
            f"The training and test samples differ in shape: {xtr.shape[1:]} and {xte.shape[1:]}."
        )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    x = np.concatenate([xtr, xte])
    y = np.concatenate([ytr, yte])
    is_member = np.r_[np.ones(len(xtr), bool), np.zeros(len(xte), bool)]
    nb_ref = 0
    if attack == "loss":
        if reference_models:
            raise InvalidParameterError(
                "attack='loss' uses no reference models; leave reference_models "
                "(--reference-models) unset or "
                "choose attack='lira' or 'rmia'."
            )
        mia: Any = LossThreshold(estimator, batch_size=256)
    else:
        nb_ref = _REFERENCE_DEFAULT[attack] if reference_models is None else reference_models
        nb_ref = _positive(nb_ref, "reference_models", 2 if attack.startswith("lira") else 1)
        trainer = _reference_trainer(estimator, epochs, batch_size, learning_rate)
        common = dict(
            reference_trainer=trainer,
            nb_reference_models=nb_ref,
            save_path=reference_dir,
            random_state=random_state,
            verbose=verbose,
        )
        if attack == "rmia":
            mia = RMIA(estimator, online=True, **common)
        else:
            mia = LiRA(estimator, online=attack == "lira", **common)
        mia.fit(x, y)
    seconds["reference_models"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = _numpy(mia.infer(x, y), "scores").astype(np.float64)
    seconds["attack"] = time.perf_counter() - t0
    report = membership_report(scores, is_member, fpr=(0.001, 0.01))
    fpr, tpr, _ = roc_curve(scores, is_member)
    roc_fpr, roc_tpr = _thin_roc(fpr, tpr)
    numbers = {
        "attack": attack,
        "nb_reference_models": nb_ref,
        "nb_members": int(is_member.sum()),
        "nb_non_members": int((~is_member).sum()),
        "train_accuracy": _accuracy(estimator, xtr, ytr, 256),
        "test_accuracy": _accuracy(estimator, xte, yte, 256),
        "auc": report["auc"],
        "advantage": report["advantage"],
        "tpr_at_0.1%_fpr": report["tpr@0.001fpr"],
        "tpr_at_1%_fpr": report["tpr@0.01fpr"],
        "roc": {"fpr": roc_fpr, "tpr": roc_tpr},
    }
    configuration = {
        "attack": attack,
        "reference_models": nb_ref,
        "reference_dir": None if reference_dir is None else str(reference_dir),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "random_state": random_state if isinstance(random_state, int) else None,
    }
    return AuditResult("privacy", configuration, numbers, _versions(), seconds)


# ----------------------------------------------------------------------------- backdoor


def _robust_outliers(values: dict[int, float], threshold: float = 2.0) -> list[int]:
    """Classes whose value lies above the others' median by more than ``threshold`` times
    the consistent median absolute deviation (the anomaly index of Wang et al. 2019)."""
    if len(values) < 3:
        return []
    v = np.asarray(list(values.values()))
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    if mad <= 0:
        return []
    return [c for c, s in values.items() if (s - med) / mad > threshold]


def _split_view(emb: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """2-D coordinates that show a class's split: along the line through the centres of its
    two largest clusters, and along the top principal direction orthogonal to it."""
    emb = emb - emb.mean(axis=0)
    if emb.shape[1] < 2:
        return np.c_[emb[:, :1], np.zeros(len(emb))]
    ids, counts = np.unique(clusters, return_counts=True)
    if ids.size < 2:
        u = np.eye(emb.shape[1])[0]
    else:
        a, b = ids[np.argsort(-counts)[:2]]
        u = emb[clusters == b].mean(axis=0) - emb[clusters == a].mean(axis=0)
        norm = np.linalg.norm(u)
        u = u / norm if norm > 0 else np.eye(emb.shape[1])[0]
    along = emb @ u
    rest = emb - along[:, None] * u
    v = np.linalg.svd(rest, full_matrices=False)[2][0]
    return np.c_[along, rest @ v]


def _activation_clustering(
    estimator: Any,
    x: np.ndarray,
    y: np.ndarray,
    layer: Any,
    nb_dims: int,
    random_state: Any,
    verbose: bool,
) -> dict[str, Any]:
    from bastion.defenses.poisoning import ActivationClustering

    detector = ActivationClustering(
        estimator, layer=layer, nb_dims=nb_dims, random_state=random_state, verbose=verbose
    )
    res = detector.detect(x, y)
    classes: dict[str, Any] = {}
    flagged: list[int] = []
    for c, entry in sorted(res.report.items()):
        classes[str(c)] = {
            k: entry.get(k)
            for k in ("size", "cluster_sizes", "relative_sizes", "silhouette", "n_flagged")
        }
        classes[str(c)]["flagged_clusters"] = list(entry.get("flagged_clusters", []))
        if entry.get("n_flagged", 0) > 0:
            flagged.append(int(c))
    # 2-D views (the first two whitened components) of the most split classes
    sil = {int(c): float(e["silhouette"]) for c, e in res.report.items() if "silhouette" in e}
    shown = flagged + [c for c in sorted(sil, key=lambda c: -sil[c]) if c not in flagged]
    projections: dict[str, Any] = {}
    labels = res.labels if res.labels is not None else y
    for c in shown[:_PROJECTED_CLASSES]:
        emb = (res.embeddings or {}).get(c)
        if emb is None:
            continue
        idx = np.flatnonzero(labels == c)
        clusters = res.clusters[idx] if res.clusters is not None else np.zeros(len(idx))
        pts = _split_view(emb.astype(np.float64), clusters)
        projections[str(c)] = {
            "x": np.round(pts[:, 0], 4).tolist(),
            "y": np.round(pts[:, 1], 4).tolist(),
            "cluster": clusters.astype(int).tolist(),
            "flagged_clusters": classes[str(c)]["flagged_clusters"],
        }
    out = {
        "layer": str(getattr(detector, "layer_", layer)),
        "classes": classes,
        "flagged_classes": flagged,
        "suspicious_indices": res.indices.tolist(),
        "projections": projections,
    }
    return out


def _spectral_signatures(
    estimator: Any,
    x: np.ndarray,
    y: np.ndarray,
    layer: Any,
    expected_poison_fraction: float,
    verbose: bool,
) -> dict[str, Any]:
    from bastion.defenses.poisoning import SpectralSignatures

    detector = SpectralSignatures(
        estimator,
        layer=layer,
        expected_poison_fraction=expected_poison_fraction,
        verbose=verbose,
    )
    res = detector.detect(x, y)
    labels = res.labels if res.labels is not None else y
    classes: dict[str, Any] = {}
    ratio: dict[int, float] = {}
    for c, entry in sorted(res.report.items()):
        idx = np.flatnonzero(labels == c)
        s = res.scores[idx]
        top = s[res.is_poison[idx]]
        # how far the removed samples stand out along the top direction: a poisoned class
        # puts a separate cluster there, a clean one only its Gaussian tail
        r = float(top.mean() / s.mean()) if top.size and s.mean() > 0 else 0.0
        ratio[int(c)] = r
        classes[str(c)] = {
            "size": int(entry.get("size", idx.size)),
            "n_removed": int(entry.get("n_flagged", 0)),
            "max_score": entry.get("max_score"),
            "mean_score": entry.get("mean_score"),
            "outlier_ratio": r,
        }
    flagged = _robust_outliers(ratio)
    suspicious = [int(i) for i in res.indices if int(labels[i]) in flagged]
    return {
        "layer": str(getattr(detector, "layer_", layer)),
        "classes": classes,
        "flagged_classes": flagged,
        "suspicious_indices": suspicious,
        "removed_indices": res.indices.tolist(),
    }


def _probe_activations(estimator: Any, x: np.ndarray, y: np.ndarray, layer: Any) -> None:
    """Read the layer's activations of two samples, so that a model that cannot show them
    fails at once, with advice, rather than after a progress bar."""
    from bastion.defenses.poisoning import SpectralSignatures

    try:
        SpectralSignatures(estimator, layer=layer).detect(x[:2], y[:2])
    except (RuntimeError, NotImplementedError) as err:
        if isinstance(err, BastionError) and not isinstance(err, ModelError):
            raise
        raise EstimatorError(
            f"Reading the activations of the model failed ({err}). A TorchScript model may "
            "not expose its layers: load it as a state dict with its architecture (--arch)."
        ) from err


def audit_backdoor(
    estimator: Any,
    x_train: Any,
    y_train: Any,
    *,
    method: str = "both",
    layer: str | int | None = None,
    nb_dims: int = 10,
    expected_poison_fraction: float = 0.05,
    random_state: Any = 0,
    verbose: bool = False,
) -> AuditResult:
    """Look for a backdoor planted in the model's training data.

    Poisoned samples reach their target class through the trigger rather than through the
    class's features, so a layer's activations of one class split into two groups:

    * activation clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks
      by Activation Clustering", SafeAI 2019): each class's activations whitened to
      ``nb_dims`` dimensions, split by 2-means; a class whose split is well separated
      (silhouette above 0.2) and has a small cluster is flagged, with that cluster's samples;
    * spectral signatures (Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks",
      NeurIPS 2018): samples scored by their squared projection on the top singular vector of
      their class's centred activations, and ``1.5 * expected_poison_fraction`` of each class
      removed. The paper removes from every class; to name classes, this audit flags those
      whose removed samples stand out most (the mean score of the removed samples over the
      class's mean score, ``outlier_ratio``) by a median-absolute-deviation anomaly index
      above 2 (the rule of Wang et al., Neural Cleanse, S&P 2019).

    Parameters
    ----------
    estimator : estimator with ``activations``
        The model trained on the suspect data.
    x_train, y_train : array-like
        The suspect training data and its labels (as trained on).
    method : {"activation-clustering", "spectral-signatures", "both"}, default "both"
    layer : str, int or None
        Layer read (default: the penultimate one).
    nb_dims : int, default 10
        Activation clustering's dimensions after whitening.
    expected_poison_fraction : float, default 0.05
        Spectral signatures' bound on the poisoned fraction of a class.
    random_state : None, int or torch.Generator, default 0
    verbose : bool, default False

    Returns
    -------
    AuditResult
        ``numbers``: ``methods`` (per method: ``classes`` (per class the sizes, cluster
        sizes and silhouette, or the spectral scores), ``flagged_classes``,
        ``suspicious_indices``; activation clustering adds ``projections``, a 2-D view of the
        flagged and most split classes), then ``flagged_classes`` and ``suspicious_indices``
        over all methods, and ``nb_samples``.
    """
    method = _option(method, "method", BACKDOOR_METHODS)
    nb_dims = _positive(nb_dims, "nb_dims")
    caps: frozenset[str] = getattr(estimator, "capabilities", frozenset())
    if "activations" not in caps:
        raise EstimatorError(
            f"A backdoor audit reads a layer's activations; {type(estimator).__name__} lacks "
            "the 'activations' capability (a predict-only model, e.g. ONNX). Load the model "
            "as TorchScript or a state dict with --arch."
        )
    x = _numpy(x_train, "x_train")
    y = _numpy(y_train, "y_train").astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise InputError(f"x_train has {x.shape[0]} samples but y_train {y.shape[0]} labels.")
    methods: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    _probe_activations(estimator, x, y, layer)
    if method in ("activation-clustering", "both"):
        t0 = time.perf_counter()
        methods["activation-clustering"] = _activation_clustering(
            estimator, x, y, layer, nb_dims, random_state, verbose
        )
        seconds["activation-clustering"] = time.perf_counter() - t0
    if method in ("spectral-signatures", "both"):
        t0 = time.perf_counter()
        methods["spectral-signatures"] = _spectral_signatures(
            estimator, x, y, layer, expected_poison_fraction, verbose
        )
        seconds["spectral-signatures"] = time.perf_counter() - t0
    flagged = sorted({c for m in methods.values() for c in m["flagged_classes"]})
    suspicious = sorted({i for m in methods.values() for i in m["suspicious_indices"]})
    numbers = {
        "nb_samples": int(x.shape[0]),
        "methods": methods,
        "flagged_classes": flagged,
        "suspicious_indices": suspicious,
    }
    configuration = {
        "method": method,
        "layer": layer,
        "nb_dims": nb_dims,
        "expected_poison_fraction": expected_poison_fraction,
        "random_state": random_state if isinstance(random_state, int) else None,
    }
    return AuditResult("backdoor", configuration, numbers, _versions(), seconds)


# ----------------------------------------------------------------------------- extraction


def _thief_factory(victim: Any, architecture: Any) -> tuple[Any, str]:
    """A function ``seed -> fresh thief estimator``, and its description."""
    from bastion.estimators import TorchClassifier
    from bastion.zoo import MLP, SmallCNN

    shape = tuple(int(s) for s in victim.input_shape)
    k = int(victim.nb_classes)
    clip = getattr(victim, "clip_values", None)
    clip = None if clip is None else tuple(float(c) for c in np.asarray(clip).ravel()[:2])
    arch = architecture
    why = _clone_error(victim) if arch in (None, "same") else None
    if arch is None:
        arch = "same" if why is None else "mlp"
    if arch == "same":
        if why is not None:
            raise EstimatorError(
                f"architecture='same' copies the victim's architecture, but {why}; use "
                "'mlp' or 'cnn'."
            )
        return (lambda seed: victim.clone(reinitialize=True, random_state=seed)), "same"
    if arch == "mlp":
        n = int(np.prod(shape))
        return (
            lambda seed: TorchClassifier(
                MLP(n, k, random_state=seed), input_shape=shape, nb_classes=k, clip_values=clip
            )
        ), "mlp"
    if arch == "cnn":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise InputError(
                f"architecture='cnn' needs square images (C, H, H); the input shape is {shape}."
            )
        return (
            lambda seed: TorchClassifier(
                SmallCNN(shape[0], k, input_size=shape[1], random_state=seed),
                input_shape=shape,
                nb_classes=k,
                clip_values=clip,
            )
        ), "cnn"
    raise InvalidParameterError(
        "The 'architecture' parameter of the audit must be None, 'same', 'mlp' or 'cnn'. "
        f"Got {architecture!r} instead."
    )


def _default_budgets(budget: int, nb_classes: int) -> list[int]:
    low = max(nb_classes, budget // 16)
    if budget <= low:
        return [budget]
    grid = np.unique(np.geomspace(low, budget, 5).round().astype(int))
    return sorted({*(int(g) for g in grid), budget})


def audit_extraction(
    estimator: Any,
    x_pool: Any,
    *,
    budget: int = 1000,
    budgets: Sequence[int] | None = None,
    x_test: Any = None,
    y_test: Any = None,
    y_pool: Any = None,
    attack: str = "copycat",
    architecture: str | None = None,
    epochs: int = 10,
    holdout: float = 0.2,
    random_state: Any = 0,
    verbose: bool = False,
) -> AuditResult:
    """Measure how cheaply the model can be stolen through its prediction API.

    For each query budget up to ``budget``, a fresh thief is trained on the victim's answers
    to that many samples of ``x_pool`` (Copycat: top-1 labels, Correia-Silva et al., "Copycat
    CNN", IJCNN 2018; Knockoff Nets: probabilities, Orekondy et al., CVPR 2019), and its
    fidelity (agreement with the victim, Jagielski et al., "High Accuracy and High Fidelity
    Extraction of Neural Networks", USENIX Security 2020) and accuracy are measured on held-out
    data: ``x_test`` (``y_test``), else a ``holdout`` fraction of the pool that is never
    queried by the thief (labelled by ``y_pool`` when given).

    Parameters
    ----------
    estimator : estimator with ``predict``
        The victim.
    x_pool : array-like
        The attacker's unlabelled data, from the victim's domain.
    budget : int, default 1000
        The largest number of victim queries.
    budgets : sequence of int, optional
        The budgets of the curve; those above ``budget`` are dropped and ``budget`` is always
        included (default: five from ``budget / 16`` to ``budget``, log-spaced).
    x_test, y_test : array-like, optional
        Held-out data for fidelity (and, with labels, accuracy).
    y_pool : array-like, optional
        Labels of ``x_pool``, used only to score the held-out part.
    attack : {"copycat", "knockoff"}, default "copycat"
    architecture : {None, "same", "mlp", "cnn"}
        The thief: the victim's architecture freshly initialised (``"same"``, default when
        the victim can be cloned), :class:`~bastion.zoo.MLP` or :class:`~bastion.zoo.SmallCNN`.
    epochs : int, default 10
        Thief training epochs.
    holdout : float, default 0.2
        Fraction of the pool held out when ``x_test`` is None.
    random_state : None, int or torch.Generator, default 0
    verbose : bool, default False

    Returns
    -------
    AuditResult
        ``numbers``: ``attack``, ``architecture``, ``budgets``, ``queries`` (spent at each),
        ``fidelity`` and ``accuracy`` (None without labels) at each, ``victim_accuracy``,
        ``nb_pool`` and ``nb_eval``.
    """
    from bastion.attacks.extraction import CopycatCNN, KnockoffNets
    from bastion.metrics import fidelity, thief_accuracy

    attack = _option(attack, "attack", list(EXTRACTION_ATTACKS))
    budget = _positive(budget, "budget")
    epochs = _positive(epochs, "epochs")
    if not 0.0 < float(holdout) < 1.0:
        raise InvalidParameterError(
            f"The 'holdout' parameter of the audit must be a float in (0, 1). Got {holdout!r} "
            "instead."
        )
    pool = _numpy(x_pool, "x_pool")
    ypool = None if y_pool is None else _numpy(y_pool, "y_pool").astype(np.int64)
    seed = _seed(random_state)
    rng = np.random.default_rng(seed)
    if x_test is None:
        n_eval = max(1, round(holdout * len(pool)))
        if len(pool) - n_eval < 1:
            raise InputError("The pool is too small to hold out evaluation samples.")
        order = rng.permutation(len(pool))
        ev, keep = np.sort(order[:n_eval]), np.sort(order[n_eval:])
        x_eval = pool[ev]
        y_eval = None if ypool is None else ypool[ev]
        pool = pool[keep]
    else:
        x_eval = _numpy(x_test, "x_test")
        y_eval = None if y_test is None else _numpy(y_test, "y_test").astype(np.int64)
    k = int(estimator.nb_classes)
    if budgets is None:
        grid = _default_budgets(budget, k)
    else:
        given = {_positive(b, "budgets") for b in budgets}
        grid = sorted({b for b in given if b <= budget} | {budget})
    make_thief, arch_name = _thief_factory(estimator, architecture)
    seconds: dict[str, float] = {}
    numbers: dict[str, Any] = {
        "attack": attack,
        "architecture": arch_name,
        "budgets": grid,
        "queries": [],
        "fidelity": [],
        "accuracy": [],
        "nb_pool": len(pool),
        "nb_eval": len(x_eval),
        "victim_accuracy": None if y_eval is None else _accuracy(estimator, x_eval, y_eval, 256),
    }
    for i, b in enumerate(grid):
        t0 = time.perf_counter()
        thief = make_thief(seed + i)
        cls = CopycatCNN if attack == "copycat" else KnockoffNets
        run = cls(
            estimator,
            thief=thief,
            nb_queries=int(b),
            epochs=epochs,
            random_state=seed + i,
            verbose=verbose,
        )
        stolen = run.extract(pool)
        numbers["queries"].append(int(run.queries_))
        numbers["fidelity"].append(fidelity(estimator, stolen, x_eval))
        numbers["accuracy"].append(
            None if y_eval is None else thief_accuracy(stolen, x_eval, y_eval)
        )
        seconds[f"budget_{b}"] = time.perf_counter() - t0
    configuration = {
        "attack": attack,
        "budget": budget,
        "budgets": grid,
        "architecture": arch_name,
        "epochs": epochs,
        "holdout": None if x_test is not None else float(holdout),
        "random_state": random_state if isinstance(random_state, int) else None,
    }
    if any(math.isnan(f) for f in numbers["fidelity"]):
        raise InputError("The victim returned NaN predictions.")
    return AuditResult("extraction", configuration, numbers, _versions(), seconds)
