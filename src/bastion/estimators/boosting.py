"""Gradient-boosting libraries (XGBoost, LightGBM) as predict-only estimators with trees.

Each estimator answers ``predict`` with the library's own ``predict_proba`` and gives its trees
(the ``"trees"`` capability, read by :class:`~bastion.attacks.evasion.DecisionTreeAttack` and
:class:`~bastion.attacks.evasion.TreeEnsembleMILPAttack`) parsed from the library's JSON model
dump into a :class:`~bastion.estimators.TreeEnsemble`. The libraries are optional: install them
with ``pip install 'bastion[boosting]'``.
"""

from __future__ import annotations

import json
import math
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

__all__ = ["LightGBMClassifier", "XGBoostClassifier"]


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
