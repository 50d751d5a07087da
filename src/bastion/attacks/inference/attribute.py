"""Attribute inference: recover a hidden feature of a training record from the model.

The attacker knows every feature of a target record except one (``attack_feature``, e.g. a
sensitive categorical attribute) and sees the model's output for the record. Four attacks:

* :class:`AttributeInferenceBlackBox`: an attack model learns ``(other features, model output)
  -> hidden value`` on records the attacker holds in full (Fredrikson et al., 2014; ART's
  black-box attack).
* :class:`AttributeInferenceBaseline`: the same attack model without the model's output, i.e.
  what the attacker learns from the data distribution alone. The gap between the two is what the
  model leaks.
* :class:`AttributeInferenceWhiteBoxDecisionTree`: for a decision tree, try every candidate
  value, keep those for which the tree gives the record's known label, and weigh each by the
  number of training samples in the leaf it reaches and its prior (Fredrikson et al., 2015).
* :class:`AttributeInferenceWhiteBoxLifestyleDecisionTree`: the label-free variant of Mehnaz
  et al. (2022): leaf counts normalised per candidate value by the total count of the leaves
  that value reaches over the attacked records.

The hidden feature is one column of tabular ``x``, with a finite set of values. Records given to
``infer`` omit that column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bastion._params import Parametrized
from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    RANDOM_STATE,
    Constraint,
    Interval,
    Options,
    Satisfies,
    check_labels,
)
from bastion.estimators.base import SupportsPredict, require_capabilities
from bastion.exceptions import EstimatorError, InputError, NotFittedError

__all__ = [
    "AttributeInferenceBaseline",
    "AttributeInferenceBlackBox",
    "AttributeInferenceWhiteBoxDecisionTree",
    "AttributeInferenceWhiteBoxLifestyleDecisionTree",
]


def _to_numpy(x: Any, name: str, ndim: int = 2) -> tuple[np.ndarray, bool, Any]:
    """NumPy view of ``x`` and how to give results back (tensor in, tensor out); data that is
    not real numbers (strings, ragged lists, complex values) is an InputError."""
    try:
        t, kind = to_tensor(x, dtype=None)
    except InputError as err:
        raise InputError(f"{name}: {err}") from None
    if t.is_complex():
        raise InputError(f"{name} must hold real numbers; got dtype {t.dtype}.")
    arr, is_tensor, device = t.cpu().numpy(), kind.is_tensor, kind.device
    if arr.ndim != ndim or arr.shape[0] == 0:
        raise InputError(
            f"{name} must be a non-empty array of {ndim} dimensions (samples first); got shape "
            f"{arr.shape}."
        )
    if arr.dtype.kind in "biuf" and not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values.")
    return arr, is_tensor, device


def _restore(values: np.ndarray, is_tensor: bool, device: Any) -> Any:
    return torch.as_tensor(values, device=device) if is_tensor else values


def _seed(random_state: RandomStateLike) -> int | None:
    if random_state is None:
        return None
    gen = resolve_random_state(random_state, "cpu")
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def _is_classifier_spec(value: Any) -> bool:
    return value in ("rf", "mlp") or (hasattr(value, "fit") and hasattr(value, "predict"))


_ATTACK_MODEL: list[Constraint] = [
    Satisfies(_is_classifier_spec, "'rf', 'mlp' or a scikit-learn classifier")
]
_FEATURE: list[Constraint] = [Interval(int, 0, None)]


def _insert_column(x: np.ndarray, feature: int, value: Any) -> np.ndarray:
    column = np.full((x.shape[0], 1), value, dtype=np.result_type(x.dtype, np.asarray(value)))
    return np.concatenate([x[:, :feature], column, x[:, feature:]], axis=1)


class _AttackModelMixin(Parametrized):
    """Shared by the black-box attack and its baseline: a scikit-learn attack model."""

    attack_feature: int
    attack_model: Any
    random_state: RandomStateLike

    def _split(self, x: Any, n_features: int | None) -> tuple[np.ndarray, np.ndarray]:
        arr, _, _ = _to_numpy(x, "x")
        if n_features is not None and arr.shape[1] != n_features:
            raise InputError(
                f"x must have {n_features} features (the model's), got {arr.shape[1]}."
            )
        if self.attack_feature >= arr.shape[1]:
            raise InputError(
                f"attack_feature={self.attack_feature} is not a column of x ({arr.shape[1]} "
                "features)."
            )
        return np.delete(arr, self.attack_feature, axis=1), arr[:, self.attack_feature]

    def _fit_attack_model(self, features: np.ndarray, hidden: np.ndarray) -> None:
        seed = _seed(self.random_state)
        if self.attack_model == "rf":
            model: Any = RandomForestClassifier(n_estimators=100, random_state=seed)
        elif self.attack_model == "mlp":
            model = MLPClassifier(hidden_layer_sizes=(100,), max_iter=500, random_state=seed)
        else:
            model = clone(self.attack_model)
        self.attack_model_ = make_pipeline(StandardScaler(), model).fit(features, hidden)
        self.values_ = np.asarray(self.attack_model_.classes_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "attack_model_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(x) first.")


class AttributeInferenceBlackBox(_AttackModelMixin):
    """Black-box attribute inference with a learned attack model.

    The attacker holds some complete records (for instance public or leaked data from the same
    population, or part of the training set), queries the model on them and trains an attack
    model that maps ``(the other features, the model's output)`` to the hidden feature. For a
    target record it then combines the known features with the model's output on the record.
    Compare with :class:`AttributeInferenceBaseline`, which learns the same mapping without the
    model's output: only the difference is leaked by the model.

    Threat model: black-box (scores or labels). The hidden feature is categorical (a finite
    set of values, learned from the attacker's records).

    Parameters
    ----------
    estimator : Classifier
        The target model (capability ``predict``), on tabular inputs ``(N, n_features)``.
    attack_feature : int, default=0
        Column of the hidden feature in the model's input.
    attack_model : {"rf", "mlp"} or scikit-learn classifier, default="rf"
        The attack model: a random forest (100 trees), an MLP (one hidden layer of 100), or any
        classifier (cloned before fitting). Inputs are standardised first.
    prediction : {"probabilities", "label"}, default="probabilities"
        What the attacker sees of the model's output: the class scores, or only the predicted
        label (one-hot encoded for the attack model, as ART does with labels).
    random_state : None, int or torch.Generator, default=None
        Seed of the attack model.

    Attributes
    ----------
    attack_model_ : sklearn.pipeline.Pipeline
        The fitted attack model.
    values_ : numpy.ndarray
        The values of the hidden feature seen in ``fit``.

    References
    ----------
    M. Fredrikson, E. Lantz, S. Jha, S. Lin, D. Page, T. Ristenpart. "Privacy in
    Pharmacogenetics: An End-to-End Case Study of Personalized Warfarin Dosing." USENIX Security
    2014. https://www.usenix.org/conference/usenixsecurity14/technical-sessions/presentation/fredrikson_matthew

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.estimators import SklearnClassifier
    >>> from bastion.attacks.inference.attribute import AttributeInferenceBlackBox
    >>> rng = np.random.default_rng(0)
    >>> h = rng.integers(0, 2, 400)
    >>> x = np.c_[h, rng.normal(size=(400, 2))]
    >>> y = (x[:, 1] + 2 * h - 1 > 0).astype(int)
    >>> clf = SklearnClassifier(LogisticRegression().fit(x, y))
    >>> attack = AttributeInferenceBlackBox(clf, attack_feature=0, random_state=0).fit(x[:200])
    >>> guess = attack.infer(x[200:, 1:], pred=clf.predict(x[200:]))
    >>> guess.shape
    (200,)
    """

    estimator: SupportsPredict

    _parameter_constraints = {  # noqa: RUF012
        "attack_feature": _FEATURE,
        "attack_model": _ATTACK_MODEL,
        "prediction": [Options(["probabilities", "label"])],
        "random_state": RANDOM_STATE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        attack_feature: int = 0,
        attack_model: Any = "rf",
        prediction: str = "probabilities",
        random_state: RandomStateLike = None,
    ) -> None:
        self.estimator = estimator
        self.attack_feature = attack_feature
        self.attack_model = attack_model
        self.prediction = prediction
        self.random_state = random_state

    @classmethod
    def _param_names(cls) -> list[str]:
        return [n for n in super()._param_names() if n != "estimator"]

    def _output_features(self, pred: np.ndarray) -> np.ndarray:
        k = self.estimator.nb_classes
        if self.prediction == "label":
            labels = pred.argmax(axis=1) if pred.ndim == 2 else pred.astype(np.int64)
            return np.eye(k)[labels]
        if pred.ndim != 2 or pred.shape[1] != k:
            raise InputError(
                f"pred must hold the model's class scores of shape (N, {k}) with "
                f"prediction='probabilities'; got shape {pred.shape}."
            )
        return pred

    def fit(self, x: Any, y: Any = None) -> AttributeInferenceBlackBox:
        """Train the attack model on complete records ``x`` (hidden feature included).

        ``y`` is accepted for API symmetry and ignored: the model is queried on ``x``.
        """
        self._validate()
        require_capabilities(self.estimator, ("predict",), type(self).__name__)
        n_features = int(np.prod(self.estimator.input_shape))
        others, hidden = self._split(x, n_features)
        full, _, _ = _to_numpy(x, "x")
        pred = np.asarray(self.estimator.predict(full.astype(np.float32)))
        self._fit_attack_model(np.c_[others, self._output_features(pred)], hidden)
        return self

    def infer(self, x: Any, *, pred: Any) -> Any:
        """Infer the hidden feature of records from the model's output on them.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, n_features - 1)
            The known features (the model's input without ``attack_feature``).
        pred : array-like or torch.Tensor
            The model's output on the records: scores ``(N, nb_classes)``, or labels ``(N,)``
            with ``prediction="label"``.

        Returns
        -------
        values : shape (N,), same array type as ``x``
            The inferred values, among ``values_``.
        """
        self._check_fitted()
        arr, is_tensor, device = _to_numpy(x, "x")
        known = int(np.prod(self.estimator.input_shape)) - 1
        if arr.shape[1] != known:
            raise InputError(
                f"x must hold the {known} known features (the model's inputs without "
                f"attack_feature); got {arr.shape[1]}."
            )
        p, _, _ = _to_numpy(pred, "pred", ndim=np.ndim(pred))
        if p.shape[0] != arr.shape[0]:
            raise InputError(f"pred has {p.shape[0]} rows but x has {arr.shape[0]}.")
        guess = self.attack_model_.predict(np.c_[arr, self._output_features(p)])
        return _restore(guess, is_tensor, device)


class AttributeInferenceBaseline(_AttackModelMixin):
    """What an attacker infers about a hidden feature without the model.

    The same attack model as :class:`AttributeInferenceBlackBox`, trained to predict the hidden
    feature from the other features only. Its accuracy is the reference against which the
    model's leakage is measured (Jayaraman & Evans, 2022).

    Parameters
    ----------
    attack_feature : int, default=0
        Column of the hidden feature.
    attack_model : {"rf", "mlp"} or scikit-learn classifier, default="rf"
        As in :class:`AttributeInferenceBlackBox`.
    random_state : None, int or torch.Generator, default=None
        Seed of the attack model.

    References
    ----------
    B. Jayaraman, D. Evans. "Are Attribute Inference Attacks Just Imputation?" CCS 2022.
    https://arxiv.org/abs/2209.01292

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.attacks.inference.attribute import AttributeInferenceBaseline
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 3))
    >>> x[:, 0] = x[:, 1] > 0  # the hidden feature follows the second one
    >>> baseline = AttributeInferenceBaseline(attack_feature=0, random_state=0).fit(x[:200])
    >>> bool((baseline.infer(x[200:, 1:]) == x[200:, 0]).mean() > 0.9)
    True
    """

    _parameter_constraints = {  # noqa: RUF012
        "attack_feature": _FEATURE,
        "attack_model": _ATTACK_MODEL,
        "random_state": RANDOM_STATE,
    }

    def __init__(
        self,
        *,
        attack_feature: int = 0,
        attack_model: Any = "rf",
        random_state: RandomStateLike = None,
    ) -> None:
        self.attack_feature = attack_feature
        self.attack_model = attack_model
        self.random_state = random_state

    def fit(self, x: Any, y: Any = None) -> AttributeInferenceBaseline:
        """Train on complete records ``x`` (hidden feature included); ``y`` is ignored."""
        self._validate()
        others, hidden = self._split(x, None)
        self._fit_attack_model(others, hidden)
        return self

    def infer(self, x: Any) -> Any:
        """Infer the hidden feature of records from their other features.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, n_features - 1)
            The known features (the records without ``attack_feature``).

        Returns
        -------
        values : shape (N,), same array type as ``x``
            The inferred values, among ``values_``.
        """
        self._check_fitted()
        arr, is_tensor, device = _to_numpy(x, "x")
        known = self.attack_model_.n_features_in_
        if arr.shape[1] != known:
            raise InputError(
                f"x must hold the {known} known features seen in fit; got {arr.shape[1]}."
            )
        return _restore(self.attack_model_.predict(arr), is_tensor, device)


# --------------------------------------------------------------------------- decision trees


def _tree_of(estimator: Any, owner: str) -> Any:
    model = getattr(estimator, "model", estimator)
    if not hasattr(model, "tree_") or not hasattr(model, "apply"):
        raise EstimatorError(
            f"{owner} needs a fitted scikit-learn DecisionTreeClassifier (or a "
            f"SklearnClassifier around one); got {type(model).__name__}. For other models use "
            "AttributeInferenceBlackBox."
        )
    return model


def _candidates(
    values: Sequence[Any], priors: Sequence[float] | None, owner: str
) -> tuple[np.ndarray, np.ndarray]:
    vals = np.asarray(values)
    if vals.ndim != 1 or vals.size == 0:
        raise InputError(f"{owner}: values must be a non-empty 1-D sequence of candidates.")
    if priors is None:
        pri = np.full(vals.size, 1.0 / vals.size)
    else:
        pri = np.asarray(priors, dtype=np.float64)
        if pri.shape != vals.shape or np.any(pri < 0) or not np.isfinite(pri).all():
            raise InputError(
                f"{owner}: priors must be {vals.size} non-negative numbers, one per value; got "
                f"{priors!r}."
            )
    return vals, pri


class _TreeAttack(Parametrized):
    # A fitted scikit-learn decision tree, or a SklearnClassifier around one: the attacks read
    # the tree itself (``tree_``, ``apply``), which no estimator protocol offers.
    estimator: Any
    attack_feature: int

    _parameter_constraints = {"attack_feature": _FEATURE}  # noqa: RUF012

    @classmethod
    def _param_names(cls) -> list[str]:
        return [n for n in super()._param_names() if n != "estimator"]

    def _leaf_counts(
        self, x: Any, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """Per candidate value: the leaf each record reaches, its training-sample count, and
        the tree's predicted class (index), as arrays of shape (n_values, N)."""
        self._validate()
        owner = type(self).__name__
        tree = _tree_of(self.estimator, owner)
        arr, is_tensor, device = _to_numpy(x, "x")
        if arr.shape[1] + 1 != tree.n_features_in_:
            raise InputError(
                f"x must hold the {tree.n_features_in_ - 1} known features (the model's inputs "
                f"without attack_feature); got {arr.shape[1]}."
            )
        if self.attack_feature > arr.shape[1]:
            raise InputError(f"attack_feature={self.attack_feature} is not a column of the model.")
        # All candidates in one batch: (n_values * N, n_features).
        stacked = np.concatenate([_insert_column(arr, self.attack_feature, v) for v in values])
        stacked = stacked.astype(np.float32)
        leaves = tree.apply(stacked).reshape(len(values), -1)
        counts = tree.tree_.n_node_samples[leaves].astype(np.float64)
        classes = tree.tree_.value[leaves][..., 0, :].argmax(axis=-1)
        return leaves, counts, classes, (is_tensor, device, tree)


class AttributeInferenceWhiteBoxDecisionTree(_TreeAttack):
    """White-box attribute inference on a decision tree (Fredrikson et al., 2015).

    For each candidate value ``v`` of the hidden feature, the record completed with ``v``
    follows one path of the tree. Paths whose leaf predicts a label other than the record's
    known label ``y`` are ruled out; each remaining value scores ``n_leaf(v) / n * prior(v)``,
    the empirical probability of its path times the prior, and the best is returned. When no
    value agrees with ``y`` (or ``y`` is not given), all values compete on the same score.
    (ART keeps a value only when it is the single one agreeing with ``y`` and otherwise ignores
    ``y``; here every agreeing value competes, as in the paper.)

    Threat model: white-box (the tree's structure and leaf counts).

    Parameters
    ----------
    estimator : SklearnClassifier or sklearn.tree.DecisionTreeClassifier
        The fitted tree.
    attack_feature : int, default=0
        Column of the hidden feature in the tree's input.

    References
    ----------
    M. Fredrikson, S. Jha, T. Ristenpart. "Model Inversion Attacks that Exploit Confidence
    Information and Basic Countermeasures." CCS 2015. https://doi.org/10.1145/2810103.2813677

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> from bastion.attacks.inference.attribute import AttributeInferenceWhiteBoxDecisionTree
    >>> rng = np.random.default_rng(0)
    >>> h = rng.integers(0, 2, 300)
    >>> x = np.c_[h, rng.normal(size=(300, 2))]
    >>> y = h ^ (x[:, 1] > 0)
    >>> tree = DecisionTreeClassifier(random_state=0).fit(x, y)
    >>> attack = AttributeInferenceWhiteBoxDecisionTree(tree, attack_feature=0)
    >>> bool((attack.infer(x[:, 1:], y, values=[0, 1]) == h).mean() > 0.9)
    True
    """

    def __init__(self, estimator: Any, *, attack_feature: int = 0) -> None:  # see _TreeAttack
        self.estimator = estimator
        self.attack_feature = attack_feature

    def infer(
        self,
        x: Any,
        y: Any = None,
        *,
        values: Sequence[Any],
        priors: Sequence[float] | None = None,
    ) -> Any:
        """Infer the hidden feature.

        Parameters
        ----------
        x : array-like, shape (N, n_features - 1)
            The known features (the model's input without ``attack_feature``).
        y : array-like of shape (N,), optional
            The records' labels as the model sees them (class indices ``0 .. K-1`` in the order
            of ``classes_``).
        values : sequence
            The candidate values of the hidden feature.
        priors : sequence of float, optional
            Their prior probabilities (uniform when omitted).

        Returns
        -------
        values : shape (N,), same array type as ``x``
            The inferred value of each record, one of ``values``.
        """
        vals, pri = _candidates(values, priors, type(self).__name__)
        _, counts, classes, (is_tensor, device, tree) = self._leaf_counts(x, vals)
        score = counts / tree.tree_.n_node_samples[0] * pri[:, None]
        if y is not None:
            yt, _ = to_tensor(y, dtype=None)
            try:
                labels = check_labels(
                    yt.cpu(), n=counts.shape[1], nb_classes=len(tree.classes_)
                ).numpy()
            except InputError as err:
                raise InputError(
                    f"{err} (class indices follow the order of the tree's classes_)"
                ) from None
            agree = classes == labels[None, :]
            # Keep only agreeing values where at least one agrees.
            score = np.where(agree.any(axis=0, keepdims=True), score * agree, score)
        return _restore(vals[score.argmax(axis=0)], is_tensor, device)


class AttributeInferenceWhiteBoxLifestyleDecisionTree(_TreeAttack):
    """Label-free white-box attribute inference on a decision tree (Mehnaz et al., 2022).

    For each candidate value ``v``, every attacked record completed with ``v`` reaches a leaf;
    ``phi(v)`` is the total training count of the distinct leaves reached by all attacked
    records with ``v``. A record's score for ``v`` is ``n_leaf(v) / phi(v) * prior(v)``, and the
    best-scoring value is returned. The record's label is not needed: the attack uses how the
    training data populate the tree ("lifestyle" of the other features).

    Threat model: white-box (the tree's structure and leaf counts).

    Parameters
    ----------
    estimator : SklearnClassifier or sklearn.tree.DecisionTreeClassifier
        The fitted tree.
    attack_feature : int, default=0
        Column of the hidden feature in the tree's input.

    References
    ----------
    S. Mehnaz, S. V. Dibbo, E. Kabir, N. Li, E. Bertino. "Are Your Sensitive Attributes
    Private? Novel Model Inversion Attribute Inference Attacks on Classification Models."
    USENIX Security 2022. https://arxiv.org/abs/2201.09370

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> from bastion.attacks.inference.attribute import (
    ...     AttributeInferenceWhiteBoxLifestyleDecisionTree)
    >>> rng = np.random.default_rng(0)
    >>> x = np.c_[rng.integers(0, 2, 200), rng.normal(size=(200, 2))]
    >>> tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, x[:, 1] > 0)
    >>> attack = AttributeInferenceWhiteBoxLifestyleDecisionTree(tree, attack_feature=0)
    >>> attack.infer(x[:5, 1:], values=[0, 1]).shape
    (5,)
    """

    def __init__(self, estimator: Any, *, attack_feature: int = 0) -> None:  # see _TreeAttack
        self.estimator = estimator
        self.attack_feature = attack_feature

    def infer(
        self,
        x: Any,
        y: Any = None,
        *,
        values: Sequence[Any],
        priors: Sequence[float] | None = None,
    ) -> Any:
        """Infer the hidden feature without the records' labels.

        Parameters
        ----------
        x : array-like, shape (N, n_features - 1)
            The known features (the model's input without ``attack_feature``).
        y : array-like, optional
            Not used (the attack needs no labels); accepted for symmetry with
            :class:`AttributeInferenceWhiteBoxDecisionTree`.
        values : sequence
            The candidate values of the hidden feature.
        priors : sequence of float, optional
            Their prior probabilities (uniform when omitted).

        Returns
        -------
        values : shape (N,), same array type as ``x``
            The inferred value of each record, one of ``values``.
        """
        vals, pri = _candidates(values, priors, type(self).__name__)
        leaves, counts, _, (is_tensor, device, tree) = self._leaf_counts(x, vals)
        n_nodes = tree.tree_.node_count
        phi = np.empty(len(vals))
        for i in range(len(vals)):  # one term per candidate value (a handful), not per sample
            reached = np.zeros(n_nodes, dtype=bool)
            reached[leaves[i]] = True
            phi[i] = tree.tree_.n_node_samples[reached].sum()
        score = counts / phi[:, None] * pri[:, None]
        return _restore(vals[score.argmax(axis=0)], is_tensor, device)
