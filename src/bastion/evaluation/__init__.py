"""Evaluations of a user's model on a user's data.

Loading (this part): :func:`load_model` reads a model file as a bastion estimator without
running code hidden in the file (TorchScript, torch.export, state dicts with the
architecture named, ONNX, skops; pickles only on request), and :func:`load_data` reads
evaluation data (``.npz``, ``.npy``, a folder of images, CSV) with stratified subsampling.
See ``docs/evaluation.md``.
"""

from bastion.evaluation._data import (
    DATA_FORMATS,
    Dataset,
    check_compatibility,
    check_labels,
    load_data,
    stratified_indices,
)
from bastion.evaluation._models import (
    FLAGS,
    MODEL_FORMATS,
    detect_format,
    format_error,
    load_model,
)

__all__ = [
    "DATA_FORMATS",
    "FLAGS",
    "MODEL_FORMATS",
    "Dataset",
    "check_compatibility",
    "check_labels",
    "detect_format",
    "format_error",
    "load_data",
    "load_model",
    "stratified_indices",
]
