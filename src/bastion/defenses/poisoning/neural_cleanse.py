"""Neural Cleanse (Wang et al. 2019): reverse-engineer a minimal trigger for every class."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Protocol, cast

import numpy as np
import torch

from bastion._tensor import RandomStateLike, resolve_random_state
from bastion._validation import (
    BATCH_SIZE,
    OPTIONAL_LAYER,
    RANDOM_STATE,
    VERBOSE,
    Boolean,
    Constraint,
    Interval,
    Options,
    validate_params,
)
from bastion.defenses.poisoning._trigger_search import TriggerSearch
from bastion.defenses.poisoning.base import DetectionResult, PoisonDetector
from bastion.estimators.base import (
    EstimatorWrapper,
    SupportsClassGradient,
    SupportsClone,
    SupportsCloneFitAndPredict,
    SupportsPredict,
    SupportsPrune,
)
from bastion.exceptions import InputError

__all__ = ["NeuralCleanse"]

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of a normal's std
_FORWARD_BATCH = 256  # samples per forward pass when reading activations and predictions


class _SupportsCloneAndPredict(SupportsClone, SupportsPredict, Protocol):
    """What every ``mitigate`` but the filter needs on top of the detection's capabilities."""


class _SupportsCloneAndPrune(_SupportsCloneAndPredict, SupportsPrune, Protocol):
    """What ``mitigate(method="pruning")`` needs on top of the detection's capabilities."""


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """``|n - median| / (1.4826 * MAD)`` of each norm (MAD: median absolute deviation)."""
    med = np.median(norms)
    mad = MAD_CONSISTENCY * np.median(np.abs(norms - med))
    return np.abs(norms - med) / max(mad, np.finfo(np.float64).tiny)


class NeuralCleanse(PoisonDetector):
    """Find backdoored classes by reverse-engineering the smallest trigger for every class.

    For each class ``t``, Neural Cleanse looks for the smallest mask ``m`` (values in
    ``[0, 1]``, one per pixel, shared by the channels) and pattern ``p`` (within
    ``clip_values``) such that stamping ``x' = (1 - m) * x + m * p`` on clean inputs makes
    the model predict ``t``: Adam minimises ``CE(f(x'), t) + lambda * |m|_1`` with ``m`` and
    ``p`` parametrised through ``tanh``. ``lambda`` is adjusted on the fly as in the paper's
    code: after ``patience`` epochs with an attack success of at least
    ``attack_success_threshold`` it is multiplied by ``cost_multiplier``, after ``patience``
    epochs below it divided by ``cost_multiplier ** 1.5``; the best mask (smallest L1 among
    the successful ones) is kept, and a class stops once its best L1 has not improved by more
    than ``1 - early_stop_threshold`` for ``early_stop_patience`` epochs after lambda has
    gone both up and down. All classes are optimised jointly, one mini-batch of clean inputs
    stamped with every class's trigger per model call (Adam is element-wise, so this is the
    same as K separate runs on the same batches); a class that stops leaves the batch.

    An infected class needs a much smaller trigger than the others: with the L1 norms of the
    masks, the anomaly index of a class is ``|norm - median| / (1.4826 * MAD)``; classes
    whose norm is below the median with an index above ``anomaly_threshold`` (2 in the
    paper, a 95% confidence under a normal model) are reported infected.

    ``detect`` (training data): the "trigger neurons" of an infected class ``t`` are the
    ``neuron_fraction`` of the units of ``layer`` (the penultimate one by default) whose mean
    activation rises most when the reversed trigger of ``t`` is stamped on clean inputs.
    A sample is scored by the mean activation of those neurons, standardised on the clean
    inputs given to :meth:`reverse_engineer`, minus the standardised threshold that rejects
    ``false_positive_rate`` of them (the paper's filter): a positive score means the input
    carries the trigger. With labels, a sample is flagged when it is labelled ``t`` and its
    score for ``t`` is positive (the poison of a backdoor is labelled with the target); with
    ``y=None`` (run-time filtering) any positive score flags it.

    :meth:`mitigate` repairs the model with one of the paper's three methods (see there).

    Threat model: the defender holds the model (white box, gradients) and a small set of
    clean inputs; the attack is an all-to-one, input-agnostic trigger (patch or blend).

    Parameters
    ----------
    estimator : Classifier
        The suspect model; needs the ``logits`` and ``class_gradient`` capabilities (a
        differentiable model: the search asks it for ``objective_gradient_tensor``), and
        ``activations`` for ``detect``. :meth:`mitigate` needs ``clone`` and ``fit``
        (unlearning), ``clone``, ``prune`` and ``activations`` (pruning), or
        ``activations`` (filter).
    max_epochs : int, default=100
        Largest number of passes of the optimisation over the clean data.
    learning_rate : float, default=0.1
        Adam's step size on the tanh parameters (betas 0.5 and 0.9, as in the paper's code).
    init_cost : float, default=1e-3
        Initial weight ``lambda`` of the mask's L1 norm.
    cost_multiplier : float, default=1.5
        Factor by which lambda goes up (and ``cost_multiplier ** 1.5`` down).
    patience : int, default=5
        Epochs above (below) the success threshold before lambda goes up (down).
    attack_success_threshold : float, default=0.99
        Success rate a reversed trigger must reach on an epoch to count.
    early_stop : bool, default=True
        Stop a class when its best mask stops shrinking.
    early_stop_threshold : float, default=0.99
        A new best L1 below ``early_stop_threshold`` times the previous best resets the
        early-stopping counter.
    early_stop_patience : int, default=10
        Epochs without such an improvement before a class stops.
    anomaly_threshold : float, default=2.0
        Anomaly index above which a class with a small trigger is infected.
    layer : str, int or None, default=None
        Layer of the trigger neurons (``detect``, filtering, pruning); ``None`` takes the
        penultimate one.
    neuron_fraction : float, default=0.01
        Fraction of the layer's units taken as trigger neurons (at least one).
    false_positive_rate : float, default=0.05
        Fraction of clean inputs the filter rejects, which sets its threshold.
    batch_size : int, default=32
        Clean inputs per optimisation step (each stamped with every active class's trigger).
    random_state : None, int or torch.Generator, default=None
        Initial masks and patterns, mini-batches, samples chosen for unlearning.
    verbose : bool, default=False
        Show progress bars.

    Attributes
    ----------
    masks_ : numpy.ndarray, shape (K, 1, H, W)
        The best reversed mask of every class (``(K, *input_shape)`` for non-image inputs).
    patterns_ : numpy.ndarray, shape (K, *input_shape)
        The matching patterns.
    l1_norms_ : numpy.ndarray, shape (K,)
        L1 norms of the masks.
    trigger_success_ : numpy.ndarray, shape (K,)
        Success rate of each reversed trigger in its best epoch (NaN when it never reached
        ``attack_success_threshold``; its last mask is kept then).
    anomaly_index_ : numpy.ndarray, shape (K,)
        Anomaly index of every class.
    infected_classes_ : list of int
        Classes judged infected, most anomalous first.
    epochs_ : numpy.ndarray of int, shape (K,)
        Epochs each class was optimised for.

    References
    ----------
    B. Wang, Y. Yao, S. Shan, H. Li, B. Viswanath, H. Zheng, B. Y. Zhao. "Neural Cleanse:
    Identifying and Mitigating Backdoor Attacks in Neural Networks." IEEE S&P 2019.
    https://doi.org/10.1109/SP.2019.00031

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.poisoning.neural_cleanse import NeuralCleanse
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 3))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=3)
    >>> nc = NeuralCleanse(clf, max_epochs=3, random_state=0)
    >>> nc = nc.reverse_engineer(torch.rand(40, 1, 4, 4))
    >>> nc.masks_.shape, nc.patterns_.shape, nc.anomaly_index_.shape
    ((3, 1, 4, 4), (3, 1, 4, 4), (3,))
    """

    estimator: SupportsClassGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_epochs": [Interval(int, 1, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "init_cost": [Interval(float, 0, None, closed="left")],
        "cost_multiplier": [Interval(float, 1, None, closed="neither")],
        "patience": [Interval(int, 1, None)],
        "attack_success_threshold": [Interval(float, 0, 1, closed="right")],
        "early_stop": [Boolean()],
        "early_stop_threshold": [Interval(float, 0, 1, closed="right")],
        "early_stop_patience": [Interval(int, 1, None)],
        "anomaly_threshold": [Interval(float, 0, None, closed="neither")],
        "layer": OPTIONAL_LAYER,
        "neuron_fraction": [Interval(float, 0, 1, closed="right")],
        "false_positive_rate": [Interval(float, 0, 1, closed="neither")],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements: ClassVar[tuple[str, ...]] = ("predict", "logits", "class_gradient")

    def __init__(
        self,
        estimator: SupportsClassGradient,
        *,
        max_epochs: int = 100,
        learning_rate: float = 0.1,
        init_cost: float = 1e-3,
        cost_multiplier: float = 1.5,
        patience: int = 5,
        attack_success_threshold: float = 0.99,
        early_stop: bool = True,
        early_stop_threshold: float = 0.99,
        early_stop_patience: int = 10,
        anomaly_threshold: float = 2.0,
        layer: str | int | None = None,
        neuron_fraction: float = 0.01,
        false_positive_rate: float = 0.05,
        batch_size: int = 32,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.init_cost = init_cost
        self.cost_multiplier = cost_multiplier
        self.patience = patience
        self.attack_success_threshold = attack_success_threshold
        self.early_stop = early_stop
        self.early_stop_threshold = early_stop_threshold
        self.early_stop_patience = early_stop_patience
        self.anomaly_threshold = anomaly_threshold
        self.layer = layer
        self.neuron_fraction = neuron_fraction
        self.false_positive_rate = false_positive_rate
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ triggers

    def stamp(self, x: Any, label: int) -> Any:
        """Stamp the reversed trigger of class ``label`` on ``x`` (same type out as in)."""
        self._check_fitted("masks_", "reverse_engineer(x)")
        xt, kind = self._x_and_kind(x)
        k = self.estimator.nb_classes
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise InputError(f"label must be a class index (an int); got {label!r}.")
        if not 0 <= label < k:
            raise InputError(f"label {label} is outside the {k} classes [0, {k - 1}].")
        return kind.restore(self._stamp(xt, int(label)))

    def _stamp(self, x: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        m = self._masks[label].to(x.dtype)
        p = self._patterns[label].to(x.dtype)
        return (1 - m) * x + m * p

    def reverse_engineer(self, x: Any, y: Any = None) -> NeuralCleanse:
        """Reverse-engineer the smallest trigger of every class on clean inputs.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Clean inputs (a few hundred suffice). Kept (by reference) to calibrate the filter
            of ``detect`` and the pruning of :meth:`mitigate`.
        y : ignored
            Accepted for symmetry with ``detect``; the optimisation needs no labels.

        Returns
        -------
        self
        """
        self._validate()
        xt = self._x(x)
        search = TriggerSearch.run(self, xt, resolve_random_state(self.random_state, "cpu"))
        self._masks, self._patterns = search.triggers()
        self._x_clean = xt
        self.masks_ = self._masks.cpu().numpy()
        self.patterns_ = self._patterns.cpu().numpy()
        self.l1_norms_ = self._masks.abs().flatten(1).sum(dim=1).to(torch.float64).cpu().numpy()
        self.trigger_success_ = search.best_success.cpu().numpy()
        self.epochs_ = search.epochs.cpu().numpy()
        self._find_infected()
        self._neurons: dict[tuple[int, bool], tuple[torch.Tensor, float, float, float]] = {}
        if hasattr(self, "_clean_act"):
            del self._clean_act
        return self

    def _find_infected(self) -> None:
        """Anomaly index of every class; the infected ones, most anomalous first."""
        self.anomaly_index_ = anomaly_index(self.l1_norms_)
        small = self.l1_norms_ < np.median(self.l1_norms_)
        flagged = np.flatnonzero((self.anomaly_index_ > self.anomaly_threshold) & small)
        self.infected_classes_ = [
            int(c) for c in flagged[np.argsort(-self.anomaly_index_[flagged])]
        ]

    # ------------------------------------------------------------------ trigger neurons

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        """Activations ``(N, units)`` of the chosen layer (sets ``layer_``)."""
        self.layer_ = self._layer()
        return self._unit_activations(x, self.layer_, _FORWARD_BATCH)

    def _trigger_neurons(
        self, label: int, within_class: bool
    ) -> tuple[torch.Tensor, float, float, float]:
        """Units of ``layer`` most excited by the reversed trigger of ``label``, and the mean,
        std and standardised threshold of their activation on clean inputs.

        The reference is every clean input (run-time filter), or with ``within_class`` the
        clean inputs the model assigns to ``label`` (training-set poison is labelled
        ``label``, so it must stand out from genuine members of that class).
        """
        key = (label, within_class)
        if key not in self._neurons:
            if not hasattr(self, "_clean_act"):
                self._clean_act = self._act(self._x_clean)
                self._clean_pred = self._predicted(
                    self.estimator, self._x_clean, _FORWARD_BATCH
                ).cpu()
            clean = self._clean_act
            if within_class and int((self._clean_pred == label).sum()) >= 2:
                clean = clean[self._clean_pred.to(clean.device) == label]
            stamped = self._act(self._stamp(self._x_clean, label))
            gap = stamped.mean(dim=0) - clean.mean(dim=0)
            count = max(1, math.ceil(self.neuron_fraction * gap.shape[0]))
            units = torch.argsort(gap, descending=True)[:count]
            score = clean[:, units].mean(dim=1)
            mu, sd = float(score.mean()), float(score.std())
            sd = sd if math.isfinite(sd) and sd > 0 else 1.0
            z = (score - mu) / sd
            threshold = float(torch.quantile(z, 1 - self.false_positive_rate))
            self._neurons[key] = (units, mu, sd, threshold)
        return self._neurons[key]

    def _scores(self, x: torch.Tensor, labels: list[int], within_class: bool) -> torch.Tensor:
        """``(len(labels), N)`` standardised trigger-neuron activation minus the threshold."""
        act = self._act(x)
        rows = []
        for c in labels:
            units, mu, sd, threshold = self._trigger_neurons(c, within_class)
            rows.append((act[:, units].mean(dim=1) - mu) / sd - threshold)
        return torch.stack(rows) if rows else torch.empty((0, x.shape[0]), dtype=torch.float64)

    # ------------------------------------------------------------------ detect

    def detect(self, x: Any, y: Any = None) -> DetectionResult:
        """Flag the inputs that carry the trigger of an infected class.

        Reverse-engineers the triggers on ``x`` first when :meth:`reverse_engineer` has not
        run (better: run it on clean data).

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Training (or incoming) inputs.
        y : array-like or torch.Tensor, optional
            Their labels. With labels, only samples labelled with an infected class can be
            flagged (training-set poison); without, any input (run-time filtering).

        Returns
        -------
        DetectionResult
            ``scores``: the largest, over infected classes, standardised activation of the
            trigger neurons above the filter's threshold (positive: carries the trigger;
            all zero when no class is infected). ``report[c]`` for every label ``c``: its
            size, the number flagged, the class's anomaly index and mask L1 norm, and
            whether it is infected.
        """
        self._validate()
        xt = self._x(x)
        labels = None if y is None else self._labels(y, xt.shape[0]).numpy()
        self._require(("activations",), "detect")
        self._layer()  # an unknown layer fails before the search
        if not hasattr(self, "masks_"):
            self.reverse_engineer(xt)
        infected = self.infected_classes_
        n = xt.shape[0]
        if infected:
            per_class = self._scores(xt, infected, labels is not None).cpu().numpy()
            scores = per_class.max(axis=0)  # (n_infected, N) -> (N,)
            if labels is not None:
                rows = {c: i for i, c in enumerate(infected)}
                own = np.array([rows.get(int(c), -1) for c in labels])
                has = own >= 0
                scores[has] = per_class[own[has], np.flatnonzero(has)]
                is_poison = has & (scores > 0)
            else:
                is_poison = scores > 0
        else:
            scores, is_poison = np.zeros(n), np.zeros(n, dtype=bool)
        report = {}
        if labels is not None:
            report = self._class_report(
                labels,
                is_poison,
                lambda c, _: {
                    "anomaly_index": float(self.anomaly_index_[c]),
                    "l1_norm": float(self.l1_norms_[c]),
                    "infected": c in infected,
                },
            )
        return DetectionResult(
            is_poison=is_poison,
            scores=scores.astype(np.float64),
            report=report,
            method="NeuralCleanse",
            labels=labels,
        )

    # ------------------------------------------------------------------ mitigation

    def mitigate(
        self,
        x: Any,
        y: Any,
        method: str = "unlearning",
        *,
        epochs: int = 2,
        learning_rate: float = 1e-3,
        fraction: float = 0.2,
        max_prune_ratio: float = 0.5,
        success_threshold: float = 0.05,
    ) -> SupportsPredict:
        """Repair the model against the infected classes' triggers; returns a new estimator.

        Parameters
        ----------
        x, y : array-like or torch.Tensor
            Clean data with correct labels (for fine-tuning, and to check the pruning).
        method : {"unlearning", "pruning", "filter"}
            * ``"unlearning"``: fine-tune a copy of the network (Adam, ``epochs``,
              ``learning_rate``) on the clean data where ``fraction`` of the samples (20% in
              the paper) carry the reversed trigger of an infected class and keep their
              correct label.
            * ``"pruning"``: mask, in a copy, the units of ``layer`` in decreasing order of
              how much the reversed triggers raise their mean activation, until the reversed
              triggers succeed on at most ``success_threshold`` of the clean inputs not of
              their class, or ``max_prune_ratio`` of the units are gone.
            * ``"filter"``: an estimator that rejects the inputs ``detect(x)`` flags: their
              probabilities are all zero (no class wins), others pass unchanged.
        epochs, learning_rate, fraction : unlearning settings.
        max_prune_ratio, success_threshold : pruning settings.

        Returns
        -------
        estimator
            A clone of the estimator (``estimator.clone()``, its own model: unlearning,
            pruning) or a predict-only filtering wrapper; the original estimator and its model
            are left unchanged. With no infected class, a warning and an unchanged clone.

        Attributes set
        --------------
        pruned_neurons_ : numpy.ndarray of int
            After ``"pruning"``: the masked units of ``layer_``, in order.
        """
        validate_params(
            "NeuralCleanse.mitigate",
            {
                "method": method,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "fraction": fraction,
                "max_prune_ratio": max_prune_ratio,
                "success_threshold": success_threshold,
            },
            {
                "method": [Options(["unlearning", "pruning", "filter"])],
                "epochs": [Interval(int, 1, None)],
                "learning_rate": [Interval(float, 0, None, closed="neither")],
                "fraction": [Interval(float, 0, 1, closed="right")],
                "max_prune_ratio": [Interval(float, 0, 1, closed="neither")],
                "success_threshold": [Interval(float, 0, 1)],
            },
        )
        self._validate()
        self._check_fitted("masks_", "reverse_engineer(x)")
        needs = {
            "unlearning": ("clone", "fit"),
            "pruning": ("clone", "prune", "activations"),
            "filter": ("activations",),
        }
        self._require(needs[method], f"mitigate(method={method!r})")
        if method == "filter":
            return _FilteredClassifier(self)
        xt = self._x(x)
        yt = self._labels(y, xt.shape[0]).to(xt.device)
        if not self.infected_classes_:
            warnings.warn(
                "NeuralCleanse found no infected class: the returned model is an unchanged copy.",
                stacklevel=2,
            )
            return cast(_SupportsCloneAndPredict, self.estimator).clone()  # checked above
        if method == "unlearning":
            return self._unlearn(xt, yt, epochs, learning_rate, fraction)
        return self._prune(xt, yt, max_prune_ratio, success_threshold)

    def _unlearn(
        self, x: torch.Tensor, y: torch.Tensor, epochs: int, learning_rate: float, fraction: float
    ) -> Any:
        """Fine-tune a clone on ``x`` where ``fraction`` of the samples carry the reversed
        trigger of an infected class (drawn per sample) and keep their label."""
        gen = resolve_random_state(self.random_state, "cpu")
        infected = self.infected_classes_
        n = x.shape[0]
        count = math.floor(fraction * n + 0.5)
        chosen = torch.randperm(n, generator=gen)[:count].to(x.device)
        which = torch.tensor(infected, device=x.device)[
            torch.randint(0, len(infected), (count,), generator=gen).to(x.device)
        ]
        x_ft = x.clone()
        x_ft[chosen] = self._stamp(x[chosen], which)
        model = cast(SupportsCloneFitAndPredict, self.estimator).clone()  # checked by mitigate
        model.fit(
            x_ft,
            y,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=self.batch_size,
            random_state=gen,
            verbose=self.verbose,
        )
        return model

    def _prune(
        self, x: torch.Tensor, y: torch.Tensor, max_prune_ratio: float, success_threshold: float
    ) -> Any:
        """Prune, in a clone, the units of ``layer`` that the reversed triggers excite most,
        until the triggers fail (sets ``pruned_neurons_``)."""
        infected = self.infected_classes_
        clean = self._act(x).mean(dim=0)
        layer = self.layer_
        gap = torch.stack([self._act(self._stamp(x, c)).mean(dim=0) - clean for c in infected])
        order = torch.argsort(gap.sum(dim=0), descending=True)
        stamped = [(self._stamp(x[y != c], c), c) for c in infected]
        pruned = cast(_SupportsCloneAndPrune, self.estimator).clone()  # checked by mitigate

        def success() -> float:
            """The largest success rate of a reversed trigger on the pruned clone."""
            rates = [
                float((self._predicted(pruned, xs, _FORWARD_BATCH) == c).float().mean())
                for xs, c in stamped
                if xs.shape[0]
            ]
            return max(rates, default=0.0)

        limit = max(1, math.floor(max_prune_ratio * order.shape[0]))
        n_pruned = 0
        while n_pruned < limit and success() > success_threshold:
            n_pruned += 1
            pruned.prune(layer, order[:n_pruned])
        self.pruned_neurons_ = order[:n_pruned].cpu().numpy()
        return pruned


class _FilteredClassifier(EstimatorWrapper):
    """Predict-only wrapper: inputs Neural Cleanse's filter flags get all-zero probabilities."""

    forwarded = frozenset({"predict"})

    def __init__(self, defence: NeuralCleanse) -> None:
        super().__init__(defence.estimator)
        self.defence = defence

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.estimator.predict_tensor(x)
        nc = self.defence
        if not nc.infected_classes_:
            return probs
        rejected = (nc._scores(x, nc.infected_classes_, False) > 0).any(dim=0).to(probs.device)
        return probs * (~rejected).unsqueeze(1).to(probs.dtype)
