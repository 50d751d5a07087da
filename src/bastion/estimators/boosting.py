"""Gradient-boosting libraries (XGBoost, LightGBM, CatBoost) as predict-only estimators with
trees.

Each estimator answers ``predict`` with the library's own ``predict_proba`` and gives its trees
(the ``"trees"`` capability, read by :class:`~bastion.attacks.evasion.DecisionTreeAttack` and
:class:`~bastion.attacks.evasion.TreeEnsembleMILPAttack`) parsed from the library's JSON model
dump into a :class:`~bastion.estimators.TreeEnsemble`. The libraries are optional: install them
with ``pip install 'bastion[boosting]'`` (CatBoost apart, see :class:`CatBoostClassifier`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bastion._tensor import as_device
from bastion._validation import invalid_parameter
from bastion.estimators._trees import Tree, TreeEnsemble
from bastion.estimators.base import Classifier
from bastion.estimators.pytorch import _check_clip_values, _check_input_shape
from bastion.exceptions import EstimatorError

__all__ = ["CatBoostClassifier", "LightGBMClassifier", "XGBoostClassifier"]


class _BoostedTrees(Classifier):
    """A fitted scikit-learn-API boosting classifier: predictions from the model, trees from
    its JSON dump."""

    capabilities = frozenset({"predict", "trees"})
    _model_type = ""

    def __init__(
        self,
        model: Any,
        *,
        input_shape: Sequence[int] | None = None,
        clip_values: tuple[float, float] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if type(model).__name__ != self._model_type or not hasattr(model, "classes_"):
            raise invalid_parameter(
                "model", owner, f"a fitted {self._model_type}", type(model).__name__
            )
        self.model = model
        self.classes_ = np.asarray(model.classes_)
        self.nb_classes = len(self.classes_)
        n_features = int(model.n_features_in_)
        self.input_shape = _check_input_shape(input_shape or (n_features,), owner)
        if math.prod(self.input_shape) != n_features:
            raise invalid_parameter(
                "input_shape", owner, f"a shape with {n_features} elements in all", input_shape
            )
        self.clip_values = _check_clip_values(clip_values, owner)
        self.device = as_device(device)

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).cpu().numpy()
        proba = self.model.predict_proba(flat)
        return torch.as_tensor(np.asarray(proba), dtype=torch.float32, device=x.device)

    def trees(self) -> TreeEnsemble:
        """The model's trees as a :class:`~bastion.estimators.TreeEnsemble`, parsed from the
        library's JSON dump."""
        trees, classes, left_if, dtype, aggregation, scale = self._parse()
        k = self.nb_classes
        valued = []
        for tree, cls in zip(trees, classes, strict=True):
            v = tree.value[:, :1]
            if k == 2:
                value = np.concatenate([-v / 2.0, v / 2.0], axis=1)
            else:
                value = np.zeros((tree.n_nodes, k))
                value[:, cls] = v[:, 0]
            valued.append(Tree(tree.feature, tree.threshold, tree.left, tree.right, value))
        ens = TreeEnsemble(
            valued,
            int(np.prod(self.input_shape)),
            k,
            np.zeros(k),
            aggregation,
            scale=scale,
            left_if=left_if,
            input_dtype=dtype,
        )
        # The initial score (base_score, init_score, boost_from_average): the model's margin
        # minus the sum of the leaves, the same at every probe.
        probe = np.random.default_rng(0).uniform(-1, 1, size=(8, ens.n_features))
        margin = np.asarray(self._margin(probe), dtype=np.float64).reshape(len(probe), -1)
        if k == 2:
            margin = np.concatenate([-margin / 2.0, margin / 2.0], axis=1)
        base = margin - np.asarray(ens.decision_scores(probe))
        if np.ptp(base, axis=0).max() > 1e-4:
            raise EstimatorError(
                f"{type(self).__name__}: could not reproduce the model's raw scores from its "
                "tree dump (unsupported options, e.g. categorical splits or missing values "
                "handled as zeros)"
            )
        return TreeEnsemble(
            valued,
            ens.n_features,
            k,
            base.mean(axis=0),
            aggregation,
            scale=scale,
            left_if=left_if,
            input_dtype=dtype,
        )

    def _parse(self) -> tuple[list[Tree], list[int], Any, Any, Any, float]:
        raise NotImplementedError  # pragma: no cover

    def _margin(self, x: np.ndarray) -> Any:
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, input_shape={self.input_shape}, "
            f"nb_classes={self.nb_classes}, clip_values={self.clip_values})"
        )


def _tree_from_nodes(nodes: dict[int, dict[str, Any]]) -> Tree:
    n = max(nodes) + 1
    feature = np.full(n, -1, dtype=np.int64)
    threshold = np.zeros(n)
    left = np.full(n, -1, dtype=np.int64)
    right = np.full(n, -1, dtype=np.int64)
    value = np.zeros((n, 1))
    for i, node in nodes.items():
        if "leaf" in node:
            value[i, 0] = node["leaf"]
        else:
            feature[i], threshold[i] = node["feature"], node["threshold"]
            left[i], right[i] = node["left"], node["right"]
    return Tree(feature, threshold, left, right, value)


class XGBoostClassifier(_BoostedTrees):
    """A fitted ``xgboost.XGBClassifier`` (objectives ``binary:logistic`` and
    ``multi:softprob``) as a predict-only estimator with trees.

    XGBoost sends a sample left when ``x[f] < threshold``, comparing in float32; the parsed
    :class:`~bastion.estimators.TreeEnsemble` says so (``left_if="lt"``).

    Parameters
    ----------
    model : xgboost.XGBClassifier
        Fitted, on numerical features.
    input_shape : tuple of int, optional
        Shape of one sample; default ``(n_features_in_,)`` (samples are flattened).
    clip_values : (float, float) or None
    device : str or torch.device, optional

    Examples
    --------
    Needs ``pip install 'bastion[boosting]'`` (the example is skipped by the doctests):

    >>> import numpy as np
    >>> import xgboost  # doctest: +SKIP
    >>> from sklearn.datasets import load_iris
    >>> from bastion.estimators.boosting import XGBoostClassifier  # doctest: +SKIP
    >>> x, y = load_iris(return_X_y=True)
    >>> model = xgboost.XGBClassifier(n_estimators=5, n_jobs=1)  # doctest: +SKIP
    >>> clf = XGBoostClassifier(model.fit(x, y))  # doctest: +SKIP
    >>> p = clf.trees().predict_proba(x)  # doctest: +SKIP
    >>> bool(np.allclose(p, model.predict_proba(x), atol=1e-5))  # doctest: +SKIP
    True
    """

    _model_type = "XGBClassifier"

    def _parse(self) -> tuple[list[Tree], list[int], Any, Any, Any, float]:
        booster = self.model.get_booster()
        config = json.loads(booster.save_config())
        objective = config["learner"]["objective"]["name"]
        if objective not in ("binary:logistic", "multi:softprob"):
            raise EstimatorError(f"XGBoostClassifier: objective {objective} is not supported")
        names = booster.feature_names
        index = {name: i for i, name in enumerate(names)} if names else None
        parallel = int(
            config["learner"]["gradient_booster"]
            .get("gbtree_model_param", {})
            .get("num_parallel_tree", 1)
        )
        k = self.nb_classes
        groups = 1 if k == 2 else k
        trees, classes = [], []
        for i, dump in enumerate(booster.get_dump(dump_format="json")):
            nodes: dict[int, dict[str, Any]] = {}
            stack = [json.loads(dump)]
            while stack:
                node = stack.pop()
                nid = int(node["nodeid"])
                if "leaf" in node:
                    nodes[nid] = {"leaf": float(node["leaf"])}
                    continue
                split = node["split"]
                f = index[split] if index is not None else int(split.lstrip("f"))
                nodes[nid] = {
                    "feature": f,
                    "threshold": float(np.float32(node["split_condition"])),
                    "left": int(node["yes"]),
                    "right": int(node["no"]),
                }
                stack += node["children"]
            trees.append(_tree_from_nodes(nodes))
            classes.append((i // parallel) % groups)
        return trees, classes, "lt", "float32", "sum_logits", 1.0

    def _margin(self, x: np.ndarray) -> Any:
        return self.model.predict(x, output_margin=True)


class LightGBMClassifier(_BoostedTrees):
    """A fitted ``lightgbm.LGBMClassifier`` (objectives ``binary`` and ``multiclass``) as a
    predict-only estimator with trees.

    LightGBM sends a sample left when ``x[f] <= threshold``, comparing in float64.

    Parameters
    ----------
    model : lightgbm.LGBMClassifier
        Fitted, on numerical features.
    input_shape : tuple of int, optional
        Shape of one sample; default ``(n_features_in_,)`` (samples are flattened).
    clip_values : (float, float) or None
    device : str or torch.device, optional

    Examples
    --------
    Needs ``pip install 'bastion[boosting]'`` (the example is skipped by the doctests):

    >>> import numpy as np
    >>> import lightgbm  # doctest: +SKIP
    >>> from sklearn.datasets import load_iris
    >>> from bastion.estimators.boosting import LightGBMClassifier  # doctest: +SKIP
    >>> x, y = load_iris(return_X_y=True)
    >>> model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1)  # doctest: +SKIP
    >>> clf = LightGBMClassifier(model.fit(x, y))  # doctest: +SKIP
    >>> p = clf.trees().predict_proba(x)  # doctest: +SKIP
    >>> bool(np.allclose(p, model.predict_proba(x), atol=1e-6))  # doctest: +SKIP
    True
    """

    _model_type = "LGBMClassifier"

    def _parse(self) -> tuple[list[Tree], list[int], Any, Any, Any, float]:
        dump = self.model.booster_.dump_model()
        objective = str(dump["objective"]).split()
        scale = 1.0
        if objective[0] == "binary":
            for part in objective[1:]:
                if part.startswith("sigmoid:"):
                    scale = float(part.split(":")[1])
        elif objective[0] != "multiclass":
            raise EstimatorError(f"LightGBMClassifier: objective {objective[0]} is not supported")
        per_iteration = int(dump["num_tree_per_iteration"])
        trees, classes = [], []
        for i, info in enumerate(dump["tree_info"]):
            trees.append(_tree_from_nodes(_lightgbm_nodes(info["tree_structure"])))
            classes.append(i % per_iteration)
        return trees, classes, "le", "float64", "sum_logits", scale

    def _margin(self, x: np.ndarray) -> Any:
        return self.model.predict(x, raw_score=True)


def _lightgbm_nodes(root: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The nodes of a LightGBM tree dump, numbered in preorder."""
    nodes: dict[int, dict[str, Any]] = {}
    # (node, parent id, "left" | "right" | None): a parent's entry learns its child's id.
    stack: list[tuple[dict[str, Any], int, str | None]] = [(root, -1, None)]
    while stack:
        node, parent, side = stack.pop()
        nid = len(nodes)
        if side is not None:
            nodes[parent][side] = nid
        if "split_feature" not in node:
            nodes[nid] = {"leaf": float(node.get("leaf_value", 0.0))}
            continue
        if node["decision_type"] != "<=":
            raise EstimatorError("LightGBMClassifier: categorical splits are not supported")
        nodes[nid] = {"feature": int(node["split_feature"]), "threshold": float(node["threshold"])}
        stack.append((node["right_child"], nid, "right"))
        stack.append((node["left_child"], nid, "left"))
    return nodes


class CatBoostClassifier(_BoostedTrees):
    """A fitted ``catboost.CatBoostClassifier`` (losses ``Logloss``, ``CrossEntropy`` and
    ``MultiClass``) on numerical features, as a predict-only estimator with trees.

    CatBoost grows oblivious (symmetric) trees: a tree of depth ``d`` asks the same question
    ``x[f_j] > b_j`` at every node of level ``j`` and its ``2**d`` leaves are indexed by the
    answers, bit ``j`` of the leaf index being the answer of ``splits[j]`` in the JSON dump
    (``save_model(..., format="json")``; reading it runs no code). Each tree becomes a full
    binary tree of depth ``d`` whose level ``j`` splits on ``(f_j, b_j)``; a sample goes left
    when ``x[f] <= b`` compared in float32 (CatBoost casts the inputs to float32). The raw
    scores are ``scale * sum(leaves) + bias`` (``scale_and_bias``): the scale is folded into
    the leaf values and the bias is the ensemble's base; probabilities are the sigmoid of the
    single raw score (binary) or the softmax of the class scores (``MultiClass``).
    Categorical, text and embedding features, non-symmetric trees (``grow_policy`` other than
    ``"SymmetricTree"``) and other losses are refused with an :class:`EstimatorError`.

    Parameters
    ----------
    model : catboost.CatBoostClassifier
        Fitted, on numerical features.
    input_shape : tuple of int, optional
        Shape of one sample; default ``(n_features_in_,)`` (samples are flattened).
    clip_values : (float, float) or None
    device : str or torch.device, optional

    Notes
    -----
    CatBoost is not in the ``boosting`` extra (its wheel requires the plotting packages
    ``plotly`` and ``graphviz``); without them it still fits and predicts::

        pip install -c constraints.txt --no-deps catboost
        pip install -c constraints.txt pandas six

    Examples
    --------
    Needs CatBoost (see the notes; the example is skipped by the doctests):

    >>> import numpy as np
    >>> import catboost  # doctest: +SKIP
    >>> from sklearn.datasets import load_iris
    >>> from bastion.estimators.boosting import CatBoostClassifier  # doctest: +SKIP
    >>> x, y = load_iris(return_X_y=True)
    >>> model = catboost.CatBoostClassifier(
    ...     iterations=5, depth=3, verbose=0, thread_count=1, allow_writing_files=False
    ... )  # doctest: +SKIP
    >>> clf = CatBoostClassifier(model.fit(x, y))  # doctest: +SKIP
    >>> p = clf.trees().predict_proba(x)  # doctest: +SKIP
    >>> bool(np.allclose(p, model.predict_proba(x), atol=1e-6))  # doctest: +SKIP
    True
    """

    _model_type = "CatBoostClassifier"

    def __init__(
        self,
        model: Any,
        *,
        input_shape: Sequence[int] | None = None,
        clip_values: tuple[float, float] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        fitted = getattr(model, "is_fitted", None)
        if type(model).__name__ == self._model_type and callable(fitted) and not fitted():
            raise invalid_parameter(
                "model", type(self).__name__, f"a fitted {self._model_type}", "an unfitted one"
            )
        super().__init__(model, input_shape=input_shape, clip_values=clip_values, device=device)
        for kind in ("cat", "text", "embedding"):
            if list(getattr(model, f"get_{kind}_feature_indices", list)()):
                raise invalid_parameter(
                    "model",
                    type(self).__name__,
                    f"a {self._model_type} on numerical features only",
                    f"one with {kind} features",
                )

    def _dump(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.json")
            self.model.save_model(path, format="json")
            with open(path, encoding="utf-8") as fh:
                return dict(json.load(fh))

    def trees(self) -> TreeEnsemble:
        """The model's oblivious trees as a :class:`~bastion.estimators.TreeEnsemble` (full
        binary trees), parsed from CatBoost's JSON dump."""
        owner = type(self).__name__
        dump = self._dump()
        info = dump.get("features_info", {})
        for kind in ("categorical_features", "text_features", "embedding_features"):
            if info.get(kind):
                what = kind.replace("_", " ")
                raise EstimatorError(f"{owner}: {what} are not supported (numerical only)")
        if "oblivious_trees" not in dump:
            raise EstimatorError(
                f"{owner}: only symmetric (oblivious) trees are supported "
                "(grow_policy='SymmetricTree')"
            )
        loss = str(dump["model_info"]["params"]["loss_function"]["type"])
        k = self.nb_classes
        if not (
            (k == 2 and loss in ("Logloss", "CrossEntropy")) or (k > 2 and loss == "MultiClass")
        ):
            raise EstimatorError(f"{owner}: loss {loss} is not supported")
        flat = {
            int(f["feature_index"]): int(f["flat_feature_index"])
            for f in info.get("float_features", [])
        }
        scale, bias = dump.get("scale_and_bias", [1.0, [0.0]])
        scale = float(scale)
        bias = np.asarray(bias, dtype=np.float64).reshape(-1)
        columns = 1 if k == 2 else k
        valued = []
        for tree in dump["oblivious_trees"]:
            splits = tree.get("splits", [])
            for split in splits:
                if split.get("split_type") != "FloatFeature":
                    raise EstimatorError(
                        f"{owner}: {split.get('split_type')} splits are not supported "
                        "(numerical features only)"
                    )
            features = [flat[int(sp["float_feature_index"])] for sp in splits]
            borders = [float(np.float32(sp["border"])) for sp in splits]
            leaves = scale * np.asarray(tree["leaf_values"], dtype=np.float64)
            valued.append(_oblivious_tree(features, borders, leaves.reshape(-1, columns), k))
        if k == 2:
            base = np.array([-bias[0] / 2.0, bias[0] / 2.0]) if bias.size else np.zeros(2)
        else:
            base = bias if bias.size == k else np.zeros(k)
        ens = TreeEnsemble(
            valued,
            int(np.prod(self.input_shape)),
            k,
            base,
            "sum_logits",
            left_if="le",
            input_dtype="float32",
        )
        # A check against the model's raw scores (catches options the dump misses).
        probe = np.random.default_rng(0).uniform(-1, 1, size=(8, ens.n_features))
        margin = np.asarray(self._margin(probe), dtype=np.float64).reshape(len(probe), -1)
        if k == 2:
            margin = np.concatenate([-margin / 2.0, margin / 2.0], axis=1)
        if np.abs(margin - np.asarray(ens.decision_scores(probe))).max() > 1e-6:
            raise EstimatorError(
                f"{owner}: could not reproduce the model's raw scores from its JSON dump"
            )
        return ens

    def _margin(self, x: np.ndarray) -> Any:
        return self.model.predict(x, prediction_type="RawFormulaVal")


def _oblivious_tree(features: list[int], borders: list[float], leaves: np.ndarray, k: int) -> Tree:
    """A full binary tree equal to an oblivious one: level ``j`` splits on ``features[j] >
    borders[j]`` (right when true) and the leaf reached has index ``sum_j answer_j << j``.

    Nodes are numbered breadth-first (node ``i`` has children ``2i+1``, ``2i+2``); a
    depth-0 tree is a single leaf. ``leaves`` has one row per leaf index, one column per
    class (a single column for a binary model's logit, stored as ``(-z/2, z/2)``).
    """
    depth = len(features)
    n_internal = 2**depth - 1
    n = 2 ** (depth + 1) - 1
    feature = np.full(n, -1, dtype=np.int64)
    threshold = np.zeros(n)
    left = np.full(n, -1, dtype=np.int64)
    right = np.full(n, -1, dtype=np.int64)
    value = np.zeros((n, k))
    for i in range(n_internal):
        level = int(math.log2(i + 1))
        feature[i], threshold[i] = features[level], borders[level]
        left[i], right[i] = 2 * i + 1, 2 * i + 2
    for position in range(2**depth):
        # The path from the root: bit (depth-1-level) of `position` is the answer at `level`.
        index = sum(((position >> (depth - 1 - lv)) & 1) << lv for lv in range(depth))
        row = leaves[index]
        node = n_internal + position
        value[node] = np.array([-row[0] / 2.0, row[0] / 2.0]) if k == 2 else row
    return Tree(feature, threshold, left, right, value)
