"""Evaluations of a user's model on a user's data.

Loading (this part): :func:`load_model` reads a model file as a bastion estimator without
running code hidden in the file (TorchScript, torch.export, state dicts with the
architecture named, ONNX, skops; pickles only on request), and :func:`load_data` reads
evaluation data (``.npz``, ``.npy``, a folder of images, CSV) with stratified subsampling.
Evaluation (this part): :func:`evaluate` runs a suite of attacks at each budget, then
health checks, and returns an :class:`EvaluationResult` (``results.json`` with a shipped
JSON Schema, :func:`results_schema`). See ``docs/evaluation.md``.
"""

from bastion.evaluation._audit import (
    AUDIT_KINDS,
    AuditResult,
    audit_backdoor,
    audit_extraction,
    audit_privacy,
    audit_schema,
)
from bastion.evaluation._data import (
    DATA_FORMATS,
    Dataset,
    check_compatibility,
    check_labels,
    load_data,
    stratified_indices,
)
from bastion.evaluation._evaluate import THREATS, evaluate
from bastion.evaluation._health import HEALTH_CHECKS
from bastion.evaluation._models import (
    FLAGS,
    MODEL_FORMATS,
    detect_format,
    format_error,
    load_model,
)
from bastion.evaluation._ray import ray_session
from bastion.evaluation._result import (
    SCHEMA_VERSION,
    EpsResult,
    EvaluationResult,
    HealthCheck,
    results_schema,
)
from bastion.evaluation._suites import SUITES, check_suite

__all__ = [
    "AUDIT_KINDS",
    "DATA_FORMATS",
    "FLAGS",
    "HEALTH_CHECKS",
    "MODEL_FORMATS",
    "SCHEMA_VERSION",
    "SUITES",
    "THREATS",
    "AuditResult",
    "Dataset",
    "EpsResult",
    "EvaluationResult",
    "HealthCheck",
    "audit_backdoor",
    "audit_extraction",
    "audit_privacy",
    "audit_schema",
    "check_compatibility",
    "check_labels",
    "check_suite",
    "detect_format",
    "evaluate",
    "format_error",
    "load_data",
    "load_model",
    "ray_session",
    "results_schema",
    "stratified_indices",
]
