"""Tree ensembles as plain arrays: what the tree attacks read (the ``"trees"`` capability).

A :class:`TreeEnsemble` holds each tree's nodes (split feature, threshold, children, leaf
outputs) as NumPy arrays, and how the leaves' outputs become class probabilities. Every
supported model is brought to one linear form: the class scores are

    s(x) = base + sum over trees t of value_t[leaf_t(x)]          (one column per class)

and the probabilities are ``s`` itself (``"average_proba"``: random forests, the leaf values
being class distributions divided by the number of trees) or ``softmax(scale * s)``
(``"sum_logits"``: gradient boosting, where a binary model's single logit ``z`` is stored as
the two columns ``(-z/2, z/2)``; ``"samme"``: AdaBoost's weighted votes). The class predicted
is the argmax of ``s`` in every case, and ``s`` is linear in the leaf indicators, which is what
the mixed-integer attack needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from bastion.estimators.base import SupportsPredict
from bastion.exceptions import EstimatorError

__all__ = ["SupportsTreesAndPredict", "Tree", "TreeEnsemble", "ensemble_from_sklearn"]

Aggregation = Literal["average_proba", "sum_logits", "samme"]


@dataclasses.dataclass(frozen=True)
class Tree:
    """One binary decision tree as arrays over its nodes (node 0 is the root).

    Attributes
    ----------
    feature : ndarray of int64, shape (n_nodes,)
        The feature an internal node splits on; -1 at leaves.
    threshold : ndarray of float64, shape (n_nodes,)
        The split threshold (unused at leaves).
    left, right : ndarray of int64, shape (n_nodes,)
        Child indices (-1 at leaves). A sample goes left when ``x[feature] <= threshold``
        (``left_if="le"``) or ``x[feature] < threshold`` (``"lt"``), see :class:`TreeEnsemble`.
    value : ndarray of float64, shape (n_nodes, n_classes)
        The leaf's contribution to the class scores (rows of internal nodes are unused).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    @property
    def leaves(self) -> np.ndarray:
        """Indices of the leaves."""
        return np.flatnonzero(self.feature < 0)

    def leaf_boxes(self, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The leaves and, per leaf, the box of inputs that reach it.

        Returns
        -------
        leaves : ndarray of int64, shape (L,)
        lower, upper : ndarray of float64, shape (L, n_features)
            A sample reaches the leaf when, for every feature, it is on the right side of both
            bounds: ``lower < x <= upper`` for ``left_if="le"`` (``lower <= x < upper`` for
            ``"lt"``); unbounded sides are -inf / +inf.
        """
        leaves, lowers, uppers = [], [], []
        stack = [(0, np.full(n_features, -np.inf), np.full(n_features, np.inf))]
        while stack:
            node, lo, hi = stack.pop()
            f = int(self.feature[node])
            if f < 0:
                leaves.append(node)
                lowers.append(lo)
                uppers.append(hi)
                continue
            t = float(self.threshold[node])
            hi_left = hi.copy()
            hi_left[f] = min(hi[f], t)
            lo_right = lo.copy()
            lo_right[f] = max(lo[f], t)
            stack.append((int(self.right[node]), lo_right, hi))
            stack.append((int(self.left[node]), lo, hi_left))
        order = np.argsort(leaves)
        return (
            np.asarray(leaves, dtype=np.int64)[order],
            np.asarray(lowers).reshape(-1, n_features)[order],
            np.asarray(uppers).reshape(-1, n_features)[order],
        )


@dataclasses.dataclass(frozen=True)
class TreeEnsemble:
    """A fitted tree ensemble (or single tree) as plain arrays.

    Attributes
    ----------
    trees : list of Tree
    n_features : int
    n_classes : int
    base : ndarray of float64, shape (n_classes,)
        The constant added to the summed leaf values (boosting's initial score; 0 otherwise).
    aggregation : {"average_proba", "sum_logits", "samme"}
        How scores become probabilities: ``s`` itself (``"average_proba"``), or
        ``softmax(scale * s)``.
    scale : float
        See ``aggregation``.
    left_if : {"le", "lt"}
        A sample goes left when ``x[f] <= t`` (scikit-learn, LightGBM) or ``x[f] < t``
        (XGBoost).
    input_dtype : {"float32", "float64"}
        The precision the model compares inputs in (scikit-learn's trees cast to float32).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from bastion.estimators import ensemble_from_sklearn
    >>> x, y = load_iris(return_X_y=True)
    >>> rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    >>> ens = ensemble_from_sklearn(rf)
    >>> bool(np.allclose(ens.predict_proba(x), rf.predict_proba(x)))
    True
    """

    trees: list[Tree]
    n_features: int
    n_classes: int
    base: np.ndarray
    aggregation: Aggregation
    scale: float = 1.0
    left_if: Literal["le", "lt"] = "le"
    input_dtype: Literal["float32", "float64"] = "float64"

    def _as_tensor(self, x: Any) -> tuple[torch.Tensor, bool]:
        is_numpy = not isinstance(x, torch.Tensor)
        xt = torch.as_tensor(np.asarray(x)) if is_numpy else x
        xt = xt.reshape(xt.shape[0], -1) if xt.numel() else xt.reshape(0, self.n_features)
        if xt.shape[1] != self.n_features:
            raise EstimatorError(
                f"the ensemble has {self.n_features} features; got samples of {xt.shape[1]}"
            )
        dtype = torch.float32 if self.input_dtype == "float32" else torch.float64
        return xt.to(dtype).to(torch.float64), is_numpy

    def apply(self, x: Any) -> Any:
        """The leaf each sample reaches in each tree: ints of shape ``(N, n_trees)``."""
        xt, is_numpy = self._as_tensor(x)
        out = torch.stack([self._leaf(xt, tree) for tree in self.trees], dim=1)
        return out.cpu().numpy() if is_numpy else out

    def _leaf(self, x: torch.Tensor, tree: Tree) -> torch.Tensor:
        dev = x.device
        feature = torch.as_tensor(tree.feature, device=dev)
        threshold = torch.as_tensor(tree.threshold, device=dev)
        left = torch.as_tensor(tree.left, device=dev)
        right = torch.as_tensor(tree.right, device=dev)
        node = torch.zeros(x.shape[0], dtype=torch.int64, device=dev)
        rows = torch.arange(x.shape[0], device=dev)
        while True:
            f = feature[node]
            internal = f >= 0
            if not bool(internal.any()):
                return node
            v = x[rows, f.clamp_min(0)]
            t = threshold[node]
            go_left = v <= t if self.left_if == "le" else v < t
            node = torch.where(internal, torch.where(go_left, left[node], right[node]), node)

    def decision_scores(self, x: Any) -> Any:
        """The class scores ``s(x)`` (linear in the leaves), shape ``(N, n_classes)``."""
        xt, is_numpy = self._as_tensor(x)
        s = torch.as_tensor(self.base, device=xt.device).expand(xt.shape[0], -1).clone()
        for tree in self.trees:
            value = torch.as_tensor(tree.value, device=xt.device)
            s += value[self._leaf(xt, tree)]
        return s.cpu().numpy() if is_numpy else s

    def predict_proba(self, x: Any) -> Any:
        """Class probabilities, as the model computes them; NumPy or torch in, the same out
        (float64)."""
        s = self.decision_scores(x)
        st = torch.as_tensor(s)
        p = st if self.aggregation == "average_proba" else torch.softmax(self.scale * st, dim=1)
        return p.numpy() if isinstance(s, np.ndarray) else p

    def predict(self, x: Any) -> Any:
        """Class indices (argmax of the scores, first index on ties)."""
        s = self.decision_scores(x)
        return s.argmax(axis=1) if isinstance(s, np.ndarray) else s.argmax(dim=1)


@runtime_checkable
class SupportsTreesAndPredict(SupportsPredict, Protocol):
    """Predictions and the fitted trees (the ``"trees"`` capability): what the tree attacks
    need. Not re-exported from :mod:`bastion.estimators`, whose every ``Supports*`` protocol a
    ``TorchClassifier`` matches."""

    def trees(self) -> TreeEnsemble: ...


# --------------------------------------------------------------------------- scikit-learn


def _sklearn_tree(est: Any, n_classes: int, *, regression: bool = False) -> Tree:
    t = est.tree_
    feature = t.feature.astype(np.int64).copy()
    leaf = t.children_left < 0
    feature[leaf] = -1
    if regression:
        value = t.value[:, 0, :].astype(np.float64)  # (n_nodes, 1)
    else:
        raw = t.value[:, 0, :].astype(np.float64)
        total = raw.sum(axis=1, keepdims=True)
        value = np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)
        if value.shape[1] != n_classes:  # a tree that saw fewer classes (bootstrap)
            full = np.zeros((value.shape[0], n_classes))
            full[:, est.classes_.astype(np.int64)] = value
            value = full
    return Tree(
        feature=feature,
        threshold=t.threshold.astype(np.float64).copy(),
        left=t.children_left.astype(np.int64).copy(),
        right=t.children_right.astype(np.int64).copy(),
        value=value,
    )


def _scaled(tree: Tree, value: np.ndarray) -> Tree:
    return dataclasses.replace(tree, value=value)


def _forest(model: Any, trees: list[Any], k: int) -> TreeEnsemble:
    parsed = []
    for est in trees:
        tree = _sklearn_tree(est, k)
        parsed.append(_scaled(tree, tree.value / len(trees)))
    return TreeEnsemble(
        parsed, int(model.n_features_in_), k, np.zeros(k), "average_proba", input_dtype="float32"
    )


def _binary_columns(v: np.ndarray) -> np.ndarray:
    """A binary model's logit ``z`` as the two class scores ``(-z/2, z/2)``."""
    return np.concatenate([-v / 2.0, v / 2.0], axis=1)


def _gradient_boosting(model: Any, k: int) -> TreeEnsemble:
    init = model.init
    if init not in (None, "zero"):
        raise EstimatorError(
            "GradientBoostingClassifier with a custom init estimator cannot be parsed into "
            "trees (its initial score is not a constant)"
        )
    loss = type(model._loss).__name__
    scale = {"HalfBinomialLoss": 1.0, "ExponentialLoss": 2.0, "HalfMultinomialLoss": 1.0}.get(loss)
    if scale is None:
        raise EstimatorError(f"GradientBoostingClassifier with loss {loss} is not supported")
    nf = int(model.n_features_in_)
    raw0 = np.asarray(model._raw_predict_init(np.zeros((1, nf))), dtype=np.float64)[0]
    lr = float(model.learning_rate)
    trees = []
    for stage in model.estimators_:
        for col, est in enumerate(stage):
            t = _sklearn_tree(est, 1, regression=True)
            v = lr * t.value
            if k == 2:
                value = _binary_columns(v)
            else:
                value = np.zeros((t.n_nodes, k))
                value[:, col] = v[:, 0]
            trees.append(_scaled(t, value))
    base = _binary_columns(raw0[None, :])[0] if k == 2 else raw0
    return TreeEnsemble(trees, nf, k, base, "sum_logits", scale=scale, input_dtype="float32")


def _hist_gradient_boosting(model: Any, k: int) -> TreeEnsemble:
    nf = int(model.n_features_in_)
    trees = []
    for stage in model._predictors:
        for col, predictor in enumerate(stage):
            nodes = predictor.nodes
            if bool(nodes["is_categorical"].any()):
                raise EstimatorError(
                    "HistGradientBoostingClassifier with categorical splits is not supported"
                )
            is_leaf = nodes["is_leaf"].astype(bool)
            feature = np.where(is_leaf, -1, nodes["feature_idx"]).astype(np.int64)
            left = np.where(is_leaf, -1, nodes["left"].astype(np.int64))
            right = np.where(is_leaf, -1, nodes["right"].astype(np.int64))
            v = nodes["value"].astype(np.float64)[:, None]  # shrinkage already applied
            if k == 2:
                value = _binary_columns(v)
            else:
                value = np.zeros((len(nodes), k))
                value[:, col] = v[:, 0]
            trees.append(
                Tree(feature, nodes["num_threshold"].astype(np.float64), left, right, value)
            )
    raw0 = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    base = _binary_columns(raw0[None, :])[0] if k == 2 else raw0
    return TreeEnsemble(trees, nf, k, base, "sum_logits", input_dtype="float64")


def _adaboost(model: Any, k: int) -> TreeEnsemble:
    weights = np.asarray(model.estimator_weights_, dtype=np.float64)[: len(model.estimators_)]
    total = weights.sum()
    trees = []
    for est, w in zip(model.estimators_, weights, strict=True):
        if not hasattr(est, "tree_"):
            raise EstimatorError("AdaBoostClassifier is parsed only with tree base estimators")
        t = _sklearn_tree(est, k)
        # SAMME: a tree votes w for the class it predicts and -w / (K - 1) for the others.
        code = np.full((t.n_nodes, k), -1.0 / (k - 1))
        code[np.arange(t.n_nodes), t.value.argmax(axis=1)] = 1.0
        trees.append(_scaled(t, code * w / total))
    return TreeEnsemble(
        trees,
        int(model.n_features_in_),
        k,
        np.zeros(k),
        "samme",
        scale=1.0 / (k - 1),
        input_dtype="float32",
    )


def ensemble_from_sklearn(model: Any) -> TreeEnsemble:
    """Parse a fitted scikit-learn tree classifier into a :class:`TreeEnsemble`.

    Supported: ``DecisionTreeClassifier``, ``ExtraTreeClassifier``, ``RandomForestClassifier``,
    ``ExtraTreesClassifier``, ``GradientBoostingClassifier`` (default init),
    ``HistGradientBoostingClassifier`` (numerical splits) and ``AdaBoostClassifier`` (SAMME
    with tree base estimators). ``predict_proba`` of the result equals the model's.

    Raises
    ------
    EstimatorError
        Another model, a model that is not fitted, or an unsupported configuration.
    """
    name = type(model).__name__
    if not hasattr(model, "classes_"):
        raise EstimatorError(f"{name} is not fitted")
    k = len(model.classes_)
    if k < 2:
        raise EstimatorError(f"{name} has a single class: nothing to parse")
    if getattr(model, "n_outputs_", 1) != 1:
        raise EstimatorError(f"{name} with several outputs is not supported")
    if name in ("DecisionTreeClassifier", "ExtraTreeClassifier"):
        return _forest(model, [model], k)
    if name in ("RandomForestClassifier", "ExtraTreesClassifier"):
        return _forest(model, list(model.estimators_), k)
    if name == "GradientBoostingClassifier":
        return _gradient_boosting(model, k)
    if name == "HistGradientBoostingClassifier":
        return _hist_gradient_boosting(model, k)
    if name == "AdaBoostClassifier":
        return _adaboost(model, k)
    raise EstimatorError(
        f"{name} is not a supported tree model (DecisionTreeClassifier, ExtraTreeClassifier, "
        "RandomForestClassifier, ExtraTreesClassifier, GradientBoostingClassifier, "
        "HistGradientBoostingClassifier, AdaBoostClassifier)"
    )
