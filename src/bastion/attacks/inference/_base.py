"""Templates of membership inference attacks.

* :class:`MembershipInferenceAttack`: sklearn-style parameters (``__init__`` only stores them;
  validation and capability checks when work starts), ``fit`` where the attack needs
  calibration, and ``infer(x, y) -> scores`` (higher means more likely a member), scores in the
  caller's array type (float64).
* :class:`ReferenceModelAttack`: the machinery of attacks that train reference models (LiRA,
  RMIA): the models are trained by bastion through a user-given
  ``reference_trainer(x, y, random_state=...)`` on random halves of the attacker's population
  (each population sample in exactly half of the models), with a progress bar, optionally
  saved to and resumed from a directory; candidates given to ``infer`` are matched to the
  population so that the models that trained on them (IN) and those that did not (OUT) are
  known.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import ArrayKind, resolve_random_state, to_tensor
from bastion._validation import (
    NONE,
    Constraint,
    Satisfies,
    check_labels,
    check_x,
    validate_params,
)
from bastion.estimators.base import (
    SupportsClone,
    SupportsLogits,
    SupportsPredict,
    require_capabilities,
)
from bastion.estimators.persistence import SUFFIXES, load_estimator, save_estimator
from bastion.exceptions import EstimatorError, InputError, NotFittedError

__all__ = ["MembershipInferenceAttack", "ReferenceModelAttack"]


def _is_type_names(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


#: Constraints of the persistence parameters of the reference-model attacks.
REFERENCE_TEMPLATE: list[Constraint] = [
    NONE,
    Satisfies(
        lambda v: "clone" in getattr(v, "capabilities", ()),
        "None or an estimator with the 'clone' capability",
    ),
]
TRUSTED_TYPES: list[Constraint] = [Satisfies(_is_type_names, "a list or tuple of type names (str)")]


def log_scores(estimator: SupportsPredict, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class scores whose softmax is the prediction, in float64, without gradients: the logits
    where the estimator has them, else the log-probabilities (the same up to a constant per
    row). Every row is one query of ``estimator``."""
    use_logits = "logits" in getattr(estimator, "capabilities", ())
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            if use_logits:  # the estimator declares logits: it is a SupportsLogits
                z = cast(SupportsLogits, estimator).logits_tensor(xb)
            else:
                z = estimator.predict_tensor(xb).clamp_min(1e-38).log()
            out.append(z.to(torch.float64))
    return torch.cat(out)


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy loss from class scores ``z`` (N, K) and labels (N,), as
    ``softplus(-phi)`` with ``phi`` the :func:`logit_confidence`: ``logsumexp(z) - z_y`` rounds
    to exactly 0 once ``z_y`` leads by ~37 (float64), which ties the losses of confident
    members and non-members; this form keeps them apart down to ~1e-300."""
    return torch.nn.functional.softplus(-logit_confidence(z, y))


def logit_confidence(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``phi = log(p_y / (1 - p_y))`` computed stably from class scores: ``z_y - logsumexp of
    the other classes`` (no cancellation when ``p_y`` is close to 1)."""
    z_y = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return z_y - torch.logsumexp(others, dim=1)


class MembershipInferenceAttack(Parametrized):
    """Base of membership inference attacks: ``infer(x, y) -> scores``.

    Subclasses define ``__init__(self, estimator, *, ...)`` that only stores its parameters, a
    ``_parameter_constraints`` mapping, the capabilities they need from the target in
    ``_estimator_requirements``, and implement :meth:`_infer` (and :meth:`fit` where they need
    calibration).
    """

    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict",)
    #: True when :meth:`infer` needs a prior :meth:`fit`.
    _needs_fit: ClassVar[bool] = False

    estimator: SupportsPredict
    batch_size: int

    @classmethod
    def _param_names(cls) -> list[str]:
        return [n for n in super()._param_names() if n != "estimator"]

    def __repr__(self) -> str:
        inner = super().__repr__()
        name = type(self).__name__
        rest = inner[len(name) + 1 : -1]
        est = f"estimator={type(self.estimator).__name__}"
        return f"{name}({est}{', ' + rest if rest else ''})"

    def _validate(self) -> None:
        super()._validate()
        require_capabilities(self.estimator, self._estimator_requirements, type(self).__name__)

    def _inputs(self, x: Any, y: Any, name: str = "x") -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``x`` and ``y`` as checked tensors on the target's device, and how to give results
        back."""
        est = self.estimator
        xt, kind = to_tensor(x, device=est.device, dtype=getattr(est, "dtype", torch.float32))
        check_x(xt, input_shape=est.input_shape, clip_values=est.clip_values, name=name)
        if y is None:
            raise InputError(f"{type(self).__name__} needs the labels y of the samples.")
        yt, _ = to_tensor(y, device=est.device, dtype=None)
        return xt, check_labels(yt, n=xt.shape[0], nb_classes=est.nb_classes), kind

    def fit(self, x: Any, y: Any) -> Any:
        """Calibrate the attack (a no-op for attacks that need no calibration); returns self."""
        self._validate()
        self._inputs(x, y)
        return self

    def infer(self, x: Any, y: Any) -> Any:
        """Membership scores of the samples ``(x, y)``.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Candidate samples.
        y : array-like or torch.Tensor
            Their true labels, class indices ``(N,)`` or one-hot ``(N, nb_classes)``.

        Returns
        -------
        scores : float64 array of shape (N,), NumPy or a tensor on x's device as x
            Higher means more likely a member of the target's training set. Evaluate with
            :func:`bastion.metrics.privacy.tpr_at_fpr` (the headline) and ``roc_auc``.
        """
        self._validate()
        if self._needs_fit and not hasattr(self, "_fitted"):
            raise NotFittedError(f"{type(self).__name__} must be fitted first: call fit(...).")
        xt, yt, kind = self._inputs(x, y)
        return self._restore(self._infer(xt, yt), kind)

    def _infer(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _restore(scores: torch.Tensor, kind: ArrayKind) -> Any:
        return kind.restore(scores.to(torch.float64), keep_dtype=True)


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(f"{tuple(x.shape)}{x.dtype};".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def _row_keys(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    """One hashable key per sample (its float32 bytes and its label)."""
    flat = x.detach().cpu().to(torch.float32).reshape(x.shape[0], -1).contiguous().numpy()
    lab = y.detach().cpu().to(torch.int64).numpy()
    rows = np.concatenate([flat.view(np.uint8), lab.view(np.uint8).reshape(-1, 8)], axis=1)
    return [r.tobytes() for r in rows]


def balanced_halves(m: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``keep`` of shape (m, n): model ``i`` trains on the samples ``j`` with ``keep[i, j]``.

    With ``m >= 2`` each sample is IN for exactly ``m // 2`` models (as in Carlini et al.'s
    code); one model trains on a random half of the samples.
    """
    if m == 1:
        keep = torch.zeros(1, n, dtype=torch.bool)
        keep[0, torch.randperm(n, generator=generator)[: n // 2]] = True
        return keep
    order = torch.rand(m, n, generator=generator).argsort(dim=0)
    return order < m // 2


class ReferenceModelAttack(MembershipInferenceAttack):
    """Template of attacks that compare the target with reference models trained by bastion.

    ``fit(x_population, y_population)`` trains ``nb_reference_models`` models, each on a
    random half of the population (each sample IN for exactly half of them, for
    ``nb_reference_models >= 2``), through ``reference_trainer(x, y, random_state=seed)``,
    which must return a fitted bastion estimator (e.g. ``SklearnClassifier(model.fit(x, y))``
    or a trained ``TorchClassifier``); ``x`` and ``y`` are passed in the type given to
    ``fit``. It then records each model's statistic (:meth:`_statistic`) on every population
    sample.

    ``infer(x, y)`` matches each candidate to the population by content (its values and label)
    or by ``population_index``: for a matched candidate the IN and OUT models are known and
    their statistics are read from the records (no query); a candidate outside the population
    is queried on every reference model and is OUT for all of them.

    With ``save_path``, the split (``keep.npy``), a description (``meta.json``) and each model
    are written as they are trained; a later ``fit`` on the same population loads the split
    and the models there and trains only those missing (so an interrupted run resumes, and
    models are reused across attacks). Everything is stored as data, so that a planted file
    cannot run code (see :mod:`bastion.estimators.persistence`): a ``TorchClassifier`` as its
    weights (``model_XXX.pt``, read with ``torch.load(weights_only=True)`` into a clone of
    ``reference_template``, default the target: the architecture always comes from the
    user's code), a ``SklearnClassifier`` as a skops file (``model_XXX.skops``, loaded only
    when skops trusts every type in it or the type is listed in ``trusted_types``). Each
    model file keeps the model's probabilities on a few population samples, checked when it
    is loaded. Other estimators cannot be saved (keep them yourself, e.g. in a cache of
    ``reference_trainer`` keyed by its ``random_state``); directories written by earlier
    versions of bastion (pickled ``model_XXX.pkl``) are refused, never unpickled.
    """

    _needs_fit = True
    reference_trainer: Any
    nb_reference_models: int
    reference_template: SupportsClone | None
    trusted_types: Any
    save_path: Any
    random_state: Any
    verbose: bool

    keep_: np.ndarray
    reference_models_: list[Any]
    population_statistics_: torch.Tensor

    # ------------------------------------------------------------------ hooks

    def _statistic(
        self, estimator: SupportsPredict, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample statistic of ``estimator`` on ``(x, y)``, shape (n, A) float64."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fit

    def fit(self, x: Any, y: Any) -> Any:
        """Train (or load) the reference models on random halves of the population.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            The attacker's population data. It may contain the candidates that will be given
            to :meth:`infer` (the online setting of LiRA needs that); the membership of these
            samples in the target's training set is unknown to the attack.
        y : array-like or torch.Tensor
            Their labels.

        Returns
        -------
        self
        """
        self._validate()
        if self.reference_trainer is None or not callable(self.reference_trainer):
            raise InputError(
                f"{type(self).__name__} needs reference_trainer: a function (x, y, "
                "random_state) -> fitted estimator, to train its reference models."
            )
        xt, yt, kind = self._inputs(x, y)
        n, m = xt.shape[0], self.nb_reference_models
        gen = resolve_random_state(self.random_state, "cpu")
        keep = balanced_halves(m, n, gen)
        seeds = torch.randint(0, 2**31 - 1, (m,), generator=gen).tolist()
        directory, keep, loaded = self._open_directory(xt, yt, keep)
        y_np = yt.cpu().numpy()
        models: list[Any] = []
        stats = []
        name = type(self).__name__
        for i in tqdm(range(m), desc=f"{name} reference models", disable=not self.verbose):
            model = loaded.get(i)
            if model is None:
                idx = keep[i].nonzero().squeeze(1)
                x_in = kind.restore(xt[idx.to(xt.device)])
                y_in = y_np[idx.numpy()] if not kind.is_tensor else yt[idx.to(yt.device)]
                model = self.reference_trainer(x_in, y_in, random_state=seeds[i])
                self._check_model(model)
                if directory is not None:
                    self._save_model(model, directory / f"model_{i:03d}", xt)
            models.append(model)
            stats.append(self._statistic(model, xt, yt).cpu())
        self.keep_ = keep.numpy()
        self.reference_models_ = models
        self.population_statistics_ = torch.stack(stats)  # (M, N, A)
        self._keys = {k: j for j, k in enumerate(_row_keys(xt, yt))}
        self._fitted = True
        self._after_fit(xt, yt)
        return self

    def _after_fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Extra work at the end of :meth:`fit` (e.g. RMIA's population samples)."""

    def _check_model(self, model: Any) -> None:  # whatever reference_trainer returned
        name = f"{type(self).__name__} (a model returned by reference_trainer)"
        require_capabilities(model, ("predict",), name)
        if model.nb_classes != self.estimator.nb_classes:
            raise EstimatorError(
                f"reference_trainer returned a model with {model.nb_classes} classes; the "
                f"target has {self.estimator.nb_classes}."
            )

    #: Population samples whose probabilities are stored with each saved model, and checked
    #: when it is loaded.
    _PROBE_SIZE: ClassVar[int] = 8
    #: Version of the directory layout of ``save_path`` (1: pickled models, never loaded).
    _SAVE_FORMAT: ClassVar[int] = 2

    def _open_directory(
        self, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor
    ) -> tuple[Path | None, torch.Tensor, dict[int, Any]]:
        """The ``save_path`` directory (created), the split to use (the saved one when the
        directory holds a fit of this population) and the models saved there."""
        if self.save_path is None:
            return None, keep, {}
        directory = Path(self.save_path)
        if directory.exists() and not directory.is_dir():
            raise InputError(f"save_path {str(directory)!r} is a file; give a directory.")
        directory.mkdir(parents=True, exist_ok=True)
        pickled = sorted(p.name for p in directory.glob("model_*.pkl"))
        if pickled:
            raise InputError(
                f"save_path {str(directory)!r} holds reference models pickled by an earlier "
                f"version of bastion ({pickled[0]}, ...); pickles are never loaded (unpickling "
                "can run arbitrary code). Delete the directory's contents (the models are then "
                "trained again) or give another save_path."
            )
        meta = {
            "format": self._SAVE_FORMAT,
            "attack": type(self).__name__,
            "nb_reference_models": self.nb_reference_models,
            "population": _fingerprint(x, y),
            "population_size": int(x.shape[0]),
        }
        meta_file, keep_file = directory / "meta.json", directory / "keep.npy"
        if meta_file.exists():
            self._check_meta(meta_file, meta, x)
            keep = self._read_keep(keep_file, (self.nb_reference_models, int(x.shape[0])))
        else:
            np.save(keep_file, keep.numpy(), allow_pickle=False)
            meta_file.write_text(json.dumps(meta, indent=1))
        loaded = {}
        for i in range(self.nb_reference_models):
            model = self._load_model(directory, i)
            if model is not None:
                self._check_model(model)
                loaded[i] = model
        return directory, keep, loaded

    def _check_meta(self, meta_file: Path, meta: dict[str, Any], x: torch.Tensor) -> None:
        where = f"save_path {str(meta_file.parent)!r}"
        try:
            old = json.loads(meta_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(
                f"{where}: meta.json cannot be read ({err}); use another directory."
            ) from err
        if not isinstance(old, dict) or old.get("format") != self._SAVE_FORMAT:
            raise InputError(
                f"{where} was not written by this version of bastion's {type(self).__name__} "
                "(its meta.json has another format); delete its contents or use another "
                "directory."
            )
        if (old.get("population"), old.get("nb_reference_models")) != (
            meta["population"],
            meta["nb_reference_models"],
        ):
            raise InputError(
                f"{where} holds {old.get('nb_reference_models')} reference models for another "
                f"population or count (this fit: {self.nb_reference_models} models on "
                f"{x.shape[0]} samples); use another directory."
            )

    @staticmethod
    def _read_keep(path: Path, shape: tuple[int, int]) -> torch.Tensor:
        try:
            keep = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise InputError(
                f"{str(path)!r} cannot be read as a NumPy array ({err}); delete the directory's "
                "contents or use another save_path."
            ) from err
        if not isinstance(keep, np.ndarray) or keep.dtype != np.bool_ or keep.shape != shape:
            raise InputError(
                f"{str(path)!r} must hold the split as a bool array of shape {shape}; got "
                f"{getattr(keep, 'dtype', type(keep).__name__)} of shape "
                f"{getattr(keep, 'shape', None)}. Delete the directory's contents or use another "
                "save_path."
            )
        return torch.as_tensor(keep)

    def _save_model(self, model: SupportsPredict, stem: Path, x: torch.Tensor) -> None:
        try:
            save_estimator(model, stem, probe=x[: self._PROBE_SIZE])
        except EstimatorError as err:
            raise EstimatorError(
                f"{type(self).__name__} cannot save the reference models in save_path: {err} "
                "Or use save_path=None."
            ) from err

    def _load_model(self, directory: Path, i: int) -> Any:
        """The ``i``-th saved model, or None when it was not saved yet."""
        files = [
            directory / f"model_{i:03d}{suffix}"
            for suffix in SUFFIXES.values()
            if (directory / f"model_{i:03d}{suffix}").exists()
        ]
        if not files:
            return None
        if len(files) > 1:
            raise InputError(
                f"save_path {str(directory)!r} holds several files for reference model {i} "
                f"({', '.join(p.name for p in files)}); delete all but one."
            )
        template: SupportsClone | SupportsPredict | None = self.reference_template
        if template is None:
            template = self.estimator
        try:
            return load_estimator(
                files[0],
                template=template,
                trusted_types=tuple(self.trusted_types),
                device=getattr(self.estimator, "device", None),
            )
        except EstimatorError as err:
            raise EstimatorError(
                f"{type(self).__name__}: {err} The saved torch reference models are loaded "
                "into a clone of reference_template (default: the target estimator): give "
                "reference_template=a TorchClassifier of the reference models' architecture."
            ) from err

    # ------------------------------------------------------------------ infer helpers

    def _population_index(self, x: torch.Tensor, y: torch.Tensor, given: Any) -> torch.Tensor:
        n_pop = self.keep_.shape[1]
        if given is not None:
            idx, _ = to_tensor(given, dtype=torch.int64)
            idx = idx.cpu()
            if idx.shape != (x.shape[0],) or bool(((idx < -1) | (idx >= n_pop)).any()):
                raise InputError(
                    f"population_index must hold one int per sample in [-1, {n_pop - 1}] "
                    f"(-1: not in the population); got shape {tuple(idx.shape)}."
                )
            return idx
        return torch.tensor([self._keys.get(k, -1) for k in _row_keys(x, y)], dtype=torch.int64)

    def _reference_statistics(
        self, x: torch.Tensor, y: torch.Tensor, population_index: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Statistics of every reference model on the candidates, (M, n, A), and which
        models trained on each candidate, (M, n) bool."""
        idx = self._population_index(x, y, population_index)
        found = idx >= 0
        m = len(self.reference_models_)
        stats = torch.empty((m, x.shape[0], self.population_statistics_.shape[2]))
        stats = stats.to(torch.float64)
        is_in = torch.zeros((m, x.shape[0]), dtype=torch.bool)
        if bool(found.any()):
            stats[:, found] = self.population_statistics_[:, idx[found]]
            is_in[:, found] = torch.as_tensor(self.keep_)[:, idx[found]]
        if not bool(found.all()):
            rest = (~found).nonzero().squeeze(1).to(x.device)
            for i, model in enumerate(self.reference_models_):
                stats[i, ~found] = self._statistic(model, x[rest], y[rest]).cpu()
        return stats, is_in

    def _warn_offline(self, nb_outside: int, n: int) -> None:
        warnings.warn(
            f"{type(self).__name__}: {nb_outside} of {n} candidates are not in the population "
            "given to fit, so no reference model trained on them: their scores use the "
            "offline test, which is on another scale than the online scores. Include the "
            "candidates in the population (or use online=False).",
            UserWarning,
            stacklevel=3,
        )

    def infer(self, x: Any, y: Any, *, population_index: Any = None) -> Any:
        """Membership scores of the samples ``(x, y)``.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Candidate samples; those found in the population given to :meth:`fit` use the
            records of that fit.
        y : array-like or torch.Tensor
            Their true labels.
        population_index : array-like of int, shape (N,), optional
            Where each candidate sits in the population (-1: not in it), instead of matching
            by content.

        Returns
        -------
        scores : float64 array of shape (N,), NumPy or a tensor on x's device as x
            Higher means more likely a member.
        """
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)
        if not getattr(self, "_fitted", False):
            raise NotFittedError(f"{type(self).__name__} must be fitted first: call fit(...).")
        require_capabilities(self.estimator, self._estimator_requirements, type(self).__name__)
        xt, yt, kind = self._inputs(x, y)
        if len(self.reference_models_) != self.nb_reference_models:
            raise InputError(
                f"{type(self).__name__} was fitted with {len(self.reference_models_)} reference "
                f"models but nb_reference_models is now {self.nb_reference_models}: fit again."
            )
        stats, is_in = self._reference_statistics(xt, yt, population_index)
        target = self._statistic(self.estimator, xt, yt).cpu()
        return self._restore(self._score(target, stats, is_in).to(xt.device), kind)

    def _score(self, target: torch.Tensor, stats: torch.Tensor, is_in: torch.Tensor) -> Any:
        raise NotImplementedError
