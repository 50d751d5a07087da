"""The tree parser: a TreeEnsemble computes exactly the model's predict_proba."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import (
    AdaBoostClassifier,
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from bastion.estimators import SklearnClassifier, TreeEnsemble, ensemble_from_sklearn
from bastion.exceptions import EstimatorError

MODELS = {
    "DecisionTree": lambda: DecisionTreeClassifier(max_depth=6, random_state=0),
    "ExtraTree": lambda: ExtraTreeClassifier(random_state=0),
    "RandomForest": lambda: RandomForestClassifier(n_estimators=8, random_state=0),
    "ExtraTrees": lambda: ExtraTreesClassifier(n_estimators=8, random_state=0),
    "GradientBoosting": lambda: GradientBoostingClassifier(n_estimators=5, random_state=0),
    "HistGradientBoosting": lambda: HistGradientBoostingClassifier(max_iter=5, random_state=0),
    "AdaBoost": lambda: AdaBoostClassifier(n_estimators=6, random_state=0),
}


def _data(kind):
    if kind == "binary":
        x, y = load_breast_cancer(return_X_y=True)
    else:
        x, y = load_digits(return_X_y=True)
    return x[:400], y[:400], x[400:700], y[400:700]


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
@pytest.mark.parametrize("name", list(MODELS))
def test_predict_proba_equals_the_model(name, kind):
    x, y, x_test, _ = _data(kind)
    model = MODELS[name]().fit(x, y)
    ens = ensemble_from_sklearn(model)
    assert isinstance(ens, TreeEnsemble)
    assert ens.n_classes == len(model.classes_) and ens.n_features == x.shape[1]
    expected = model.predict_proba(x_test)
    np.testing.assert_allclose(ens.predict_proba(x_test), expected, atol=1e-6, rtol=0)
    # torch in, torch out, the same numbers
    got = ens.predict_proba(torch.as_tensor(x_test))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(ens.predict(x_test), np.argmax(expected, axis=1))


def test_exponential_loss_binary_boosting():
    x, y, x_test, _ = _data("binary")
    model = GradientBoostingClassifier(n_estimators=5, loss="exponential", random_state=0)
    ens = ensemble_from_sklearn(model.fit(x, y))
    np.testing.assert_allclose(ens.predict_proba(x_test), model.predict_proba(x_test), atol=1e-6)


def test_leaves_and_boxes_agree_with_sklearn_apply():
    x, y, x_test, _ = _data("multiclass")
    model = DecisionTreeClassifier(max_depth=5, random_state=0).fit(x, y)
    ens = ensemble_from_sklearn(model)
    leaves = ens.apply(x_test)[:, 0]
    np.testing.assert_array_equal(leaves, model.apply(x_test.astype(np.float32)))
    ids, lower, upper = ens.trees[0].leaf_boxes(ens.n_features)
    # every sample lies in the box of its leaf, and in no other leaf's box
    inside = np.all((x_test[:, None, :] > lower) & (x_test[:, None, :] <= upper), axis=2)
    np.testing.assert_array_equal(inside.sum(1), 1)
    np.testing.assert_array_equal(ids[inside.argmax(1)], leaves)


def test_estimator_exposes_trees():
    x, y, _, _ = _data("multiclass")
    clf = SklearnClassifier(RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y))
    assert "trees" in clf.capabilities
    assert len(clf.trees().trees) == 3


def test_unsupported_models_raise():
    x, y, _, _ = _data("binary")
    with pytest.raises(EstimatorError, match="not a supported tree model"):
        ensemble_from_sklearn(GaussianNB().fit(x, y))
    with pytest.raises(EstimatorError, match="not fitted"):
        ensemble_from_sklearn(RandomForestClassifier())
    with pytest.raises(EstimatorError, match="custom init"):
        ensemble_from_sklearn(
            GradientBoostingClassifier(n_estimators=2, init=DecisionTreeClassifier()).fit(x, y)
        )
    ens = ensemble_from_sklearn(DecisionTreeClassifier(max_depth=2).fit(x, y))
    with pytest.raises(EstimatorError, match="features"):
        ens.predict_proba(x[:, :5])


BOOSTING = {
    "xgboost": lambda lib: lib.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1),
    "lightgbm": lambda lib: lib.LGBMClassifier(n_estimators=8, n_jobs=1, verbose=-1),
}


def _library(name):
    return pytest.importorskip(
        name, reason=f"{name} is not installed: pip install 'bastion[boosting]'"
    )


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
@pytest.mark.parametrize("name", list(BOOSTING))
def test_boosting_libraries_trees_equal_the_model(name, kind):
    from bastion.estimators import LightGBMClassifier, XGBoostClassifier

    lib = _library(name)
    x, y, x_test, _ = _data(kind)
    model = BOOSTING[name](lib).fit(x.astype(np.float32), y)
    cls = XGBoostClassifier if name == "xgboost" else LightGBMClassifier
    clf = cls(model)
    assert clf.capabilities == {"predict", "trees"}
    ens = clf.trees()
    assert ens.left_if == ("lt" if name == "xgboost" else "le")
    expected = model.predict_proba(x_test.astype(np.float32))
    np.testing.assert_allclose(ens.predict_proba(x_test.astype(np.float32)), expected, atol=1e-6)
    np.testing.assert_allclose(clf.predict(x_test.astype(np.float32)), expected, atol=1e-6)


def test_boosting_estimators_refuse_other_models():
    from bastion.estimators import LightGBMClassifier, XGBoostClassifier
    from bastion.exceptions import InvalidParameterError

    x, y, _, _ = _data("binary")
    forest = RandomForestClassifier(n_estimators=2).fit(x, y)
    for cls in (XGBoostClassifier, LightGBMClassifier):
        with pytest.raises(InvalidParameterError, match="model"):
            cls(forest)


def _catboost():
    return pytest.importorskip(
        "catboost",
        reason="catboost is not installed: pip install -c constraints.txt --no-deps catboost "
        "&& pip install -c constraints.txt pandas six",
    )


def _catboost_model(lib, **kw):
    params = dict(iterations=8, depth=3, verbose=0, thread_count=1, random_seed=0)
    return lib.CatBoostClassifier(allow_writing_files=False, **{**params, **kw})


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_catboost_oblivious_trees_equal_the_model(kind):
    from bastion.estimators import CatBoostClassifier

    lib = _catboost()
    x, y, x_test, _ = _data(kind)
    model = _catboost_model(lib).fit(x, y)
    # a non-trivial scale and bias (scale_and_bias), folded into the leaves and the base
    k = len(model.classes_)
    model.set_scale_and_bias(1.7, 0.3 if k == 2 else list(np.linspace(-1, 1, k)))
    clf = CatBoostClassifier(model)
    assert clf.capabilities == {"predict", "trees"}
    ens = clf.trees()
    assert (ens.left_if, ens.input_dtype, ens.n_classes) == ("le", "float32", k)
    # full binary trees of depth 3: 7 internal nodes, 8 leaves
    assert all(t.n_nodes == 15 and len(t.leaves) == 8 for t in ens.trees)
    expected = model.predict_proba(x_test)
    np.testing.assert_allclose(ens.predict_proba(x_test), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(clf.predict(x_test), expected, atol=1e-6, rtol=0)
    # on the borders themselves and one float32 step either side: CatBoost goes right when
    # x > border (in float32), the parsed trees too
    xx = np.repeat(x_test[:40], 3, axis=0).astype(np.float32)
    for tree in ens.trees[:4]:
        f, b = int(tree.feature[0]), np.float32(tree.threshold[0])
        xx[0::3, f] = b
        xx[1::3, f] = np.nextafter(b, np.float32(np.inf))
        xx[2::3, f] = np.nextafter(b, np.float32(-np.inf))
        np.testing.assert_allclose(ens.predict_proba(xx), model.predict_proba(xx), atol=1e-6)


def test_catboost_refuses_what_it_cannot_parse():
    from bastion.estimators import CatBoostClassifier
    from bastion.exceptions import InvalidParameterError

    lib = _catboost()
    pd = pytest.importorskip("pandas")
    x, y, _, _ = _data("multiclass")
    with pytest.raises(InvalidParameterError, match="fitted"):
        CatBoostClassifier(lib.CatBoostClassifier())
    frame = pd.DataFrame({"a": np.arange(60.0), "b": np.where(np.arange(60) % 2, "u", "v")})
    model = _catboost_model(lib, iterations=2, cat_features=["b"]).fit(frame, np.arange(60) % 3)
    with pytest.raises(InvalidParameterError, match="numerical features"):
        CatBoostClassifier(model)
    model = _catboost_model(lib, iterations=2, grow_policy="Depthwise").fit(x, y)
    with pytest.raises(EstimatorError, match="oblivious"):
        CatBoostClassifier(model).trees()
    model = _catboost_model(lib, iterations=2, loss_function="MultiClassOneVsAll").fit(x, y)
    with pytest.raises(EstimatorError, match="MultiClassOneVsAll"):
        CatBoostClassifier(model).trees()
