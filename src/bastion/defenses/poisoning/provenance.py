"""Provenance-based defence (Baracaldo et al. 2017): drop the sources whose data hurt."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._tensor import RandomStateLike, resolve_random_state
from bastion._validation import (
    NONE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Satisfies,
    check_x,
)
from bastion.defenses.poisoning.base import DetectionResult, PoisonDetector
from bastion.estimators.base import (
    SupportsCloneFitAndPredict,
    SupportsPredict,
    require_capabilities,
)
from bastion.exceptions import InputError

__all__ = ["ProvenanceDefense"]


class ProvenanceDefense(PoisonDetector):
    """Flag the data sources whose removal improves a model on trusted data.

    Training data often comes from several sources (devices, users, vendors), recorded as a
    provenance feature: one source id per sample. If an attacker controls a source, the
    model trained without that source's data should do better on data the defender trusts.
    For each source the defence trains a model on all the data except that source's and
    compares its accuracy on the trusted validation set with that of a model trained on all
    the data: a source is poisonous when removing it raises the accuracy by more than
    ``eps`` (the paper's variant for partially trusted data).

    Every model is trained from the same starting point: ``estimator.clone(reinitialize=True,
    random_state=seed)`` with one seed drawn from ``random_state`` (a
    :class:`~bastion.estimators.TorchClassifier` draws fresh weights, a
    :class:`~bastion.estimators.SklearnClassifier` refits from scratch anyway), then
    ``fit``; or whatever ``train_fn(x, y)`` returns. Cost: one training per source plus one.

    Threat model: the attacker injects or alters the data of some sources (any poisoning
    that lowers the accuracy on clean data: label flipping, noise, availability attacks);
    the defender knows each sample's source and holds a small trusted, clean validation
    set. A backdoor that leaves clean accuracy intact is out of its reach unless the
    validation set contains correctly labelled triggered inputs.

    Parameters
    ----------
    estimator : Classifier or None
        A model of the kind to train; needs the ``clone`` and ``fit`` capabilities (used on
        clones: the estimator itself is never trained). May be ``None`` when ``train_fn`` is
        given.
    train_fn : callable or None, default=None
        ``train_fn(x, y) -> Classifier``: trains a fresh model on tensors ``x`` and class
        indices ``y``; replaces the copies of ``estimator``.
    eps : float, default=0.01
        Accuracy gain (in ``[0, 1)``) beyond which removing a source flags it.
    fit_params : dict or None, default=None
        Keyword arguments for ``estimator.fit`` (e.g. ``{"epochs": 10}``).
    random_state : None, int or torch.Generator, default=None
        Seeds the re-initialisation of the clones (the same seed for every retraining) and
        ``random_state`` in ``fit_params`` when the estimator's ``fit`` takes one.
    verbose : bool, default=False
        Show a progress bar over the sources.

    Attributes
    ----------
    sources_ : list
        The distinct source ids, in sorted order.
    accuracy_all_ : float
        Validation accuracy of the model trained on all the data.
    accuracy_without_ : dict
        Validation accuracy of the model trained without each source.
    flagged_sources_ : list
        The sources judged poisonous.

    References
    ----------
    N. Baracaldo, B. Chen, H. Ludwig, J. A. Safavi. "Mitigating Poisoning Attacks on Machine
    Learning Models: A Data Provenance Based Approach." AISec 2017.
    https://doi.org/10.1145/3128572.3140450

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.estimators import SklearnClassifier
    >>> from bastion.defenses.poisoning.provenance import ProvenanceDefense
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 2)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(int)
    >>> sources = np.arange(300) % 3
    >>> y[sources == 2] = 1 - y[sources == 2]  # source 2 flips its labels
    >>> clf = SklearnClassifier(LogisticRegression().fit(x, y))
    >>> result = ProvenanceDefense(clf, eps=0.05).detect(x, y, sources=sources,
    ...                                                  x_val=x[:50], y_val=(x[:50, 0] > 0))
    >>> result.n_flagged, ProvenanceDefense(clf).set_params(eps=0.05).eps
    (100, 0.05)
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "train_fn": [NONE, Satisfies(callable, "a callable train_fn(x, y) -> Classifier")],
        "eps": [Interval(float, 0, 1, closed="left")],
        "fit_params": [NONE, Satisfies(lambda v: isinstance(v, dict), "a dict")],
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict", "clone", "fit")

    def __init__(
        self,
        estimator: SupportsCloneFitAndPredict | None = None,
        *,
        train_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
        eps: float = 0.01,
        fit_params: dict[str, Any] | None = None,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.train_fn = train_fn
        self.eps = eps
        self.fit_params = fit_params
        self.random_state = random_state
        self.verbose = verbose

    def _needed_capabilities(self) -> tuple[str, ...]:
        if self.train_fn is not None:
            return ()  # the estimator, if any, only tells the data's shape and classes
        if self.estimator is None:
            raise InputError("ProvenanceDefense needs an estimator or a train_fn.")
        return self._estimator_requirements

    def _train(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> SupportsPredict:
        if self.train_fn is not None:
            model = self.train_fn(x, y)
            require_capabilities(model, ("predict",), "ProvenanceDefense (the train_fn result)")
            return model
        model = self.estimator.clone(reinitialize=True, random_state=seed)
        params = dict(self.fit_params or {})
        if "random_state" in inspect.signature(model.fit).parameters:
            params.setdefault("random_state", seed)
        model.fit(x, y, **params)
        return model

    def detect(
        self, x: Any, y: Any, *, sources: Any = None, x_val: Any = None, y_val: Any = None
    ) -> DetectionResult:
        """Retrain without each source and flag those whose removal helps.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            The training data.
        y : array-like or torch.Tensor
            Their labels (class indices or one-hot).
        sources : array-like, shape (N,)
            The provenance: a source id (int or str) per sample.
        x_val, y_val : array-like or torch.Tensor
            The trusted, clean validation data.

        Returns
        -------
        DetectionResult
            ``is_poison``: the samples of flagged sources; ``scores``: the accuracy gain of
            removing the sample's source; ``report[c]`` per label: size and number flagged.
        """
        self._validate()
        if sources is None or x_val is None or y_val is None:
            raise InputError("ProvenanceDefense.detect needs sources, x_val and y_val.")
        xt, labels = self._data(x, y, ("x", "y"))
        # without an estimator, the validation data has the training data's shape and classes
        xv, yv = self._data(
            x_val, y_val, ("x_val", "y_val"), tuple(xt.shape[1:]), int(labels.max()) + 1
        )
        src = np.asarray(sources.cpu() if isinstance(sources, torch.Tensor) else sources)
        if src.ndim != 1 or src.shape[0] != xt.shape[0]:
            raise InputError(
                f"sources must hold one id per sample ({xt.shape[0]}); got shape {src.shape}."
            )
        ids = sorted(np.unique(src).tolist())
        if len(ids) < 2:
            raise InputError("ProvenanceDefense needs at least two sources.")
        gen = resolve_random_state(self.random_state, "cpu")
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        y_dev = torch.as_tensor(labels, device=xt.device)

        def accuracy(model: SupportsPredict) -> float:
            probs = model.predict(xv)
            if isinstance(probs, torch.Tensor):
                probs = probs.detach().cpu().numpy()
            return float((np.asarray(probs).argmax(axis=1) == yv).mean())

        self.accuracy_all_ = accuracy(self._train(xt, y_dev, seed))
        self.accuracy_without_ = {}
        for s in tqdm(ids, desc="ProvenanceDefense", disable=not self.verbose):
            keep = torch.as_tensor(src != s, device=xt.device)
            self.accuracy_without_[s] = accuracy(self._train(xt[keep], y_dev[keep], seed))
        gain = {s: self.accuracy_without_[s] - self.accuracy_all_ for s in ids}
        self.sources_ = ids
        self.flagged_sources_ = [s for s in ids if gain[s] > self.eps]
        scores = np.array([gain[s] for s in src.tolist()], dtype=np.float64)
        is_poison = np.isin(src, np.asarray(self.flagged_sources_, dtype=src.dtype))
        return DetectionResult(
            is_poison=is_poison,
            scores=scores,
            report=self._class_report(labels, is_poison),
            method="ProvenanceDefense",
            labels=labels,
        )

    def _data(
        self,
        x: Any,
        y: Any,
        names: tuple[str, str],
        shape: tuple[int, ...] | None = None,
        nb_classes: int | None = None,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Checked inputs and int64 labels (booleans count as classes 0 and 1). Without an
        estimator (``train_fn`` only) the samples must have ``shape`` and the labels be
        below ``nb_classes`` where they are given, else the classes are those the labels
        show."""
        if y is None:
            raise InputError(f"ProvenanceDefense needs the labels {names[1]}.")
        yt, _ = self._numeric(y, names[1], dtype=None)
        yt = yt.long() if yt.dtype == torch.bool else yt
        if self.estimator is not None:
            xt = self._x(x, names[0])
            return xt, self._labels(yt, xt.shape[0], names[1]).numpy()
        xt, _ = self._numeric(x, names[0])
        check_x(xt, input_shape=shape, clip_values=None, name=names[0])
        if nb_classes is None and yt.ndim == 2:
            nb_classes = int(yt.shape[1])
        elif nb_classes is None:
            seen = yt[torch.isfinite(yt)] if yt.is_floating_point() else yt
            nb_classes = 1 + max(0, int(seen.max())) if seen.numel() else 1
        return xt, self._labels(yt, xt.shape[0], names[1], nb_classes=nb_classes).numpy()
