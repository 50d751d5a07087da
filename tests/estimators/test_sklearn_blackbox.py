import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import MinMaxScaler

from bastion.estimators import BlackBoxClassifier, SklearnClassifier
from bastion.exceptions import EstimatorError, InputError, ModelError


def _scaled(loader):
    x, y = loader(return_X_y=True)
    return MinMaxScaler().fit_transform(x).astype(np.float32), y


@pytest.mark.parametrize("loader", [load_iris, load_breast_cancer, load_wine])
@pytest.mark.parametrize(
    "make",
    [
        lambda: LogisticRegression(max_iter=2000),
        lambda: MLPClassifier(
            hidden_layer_sizes=(10,), activation="tanh", max_iter=400, random_state=0
        ),
        lambda: MLPClassifier(hidden_layer_sizes=(8, 6), max_iter=400, random_state=0),
    ],
)
def test_twin_reproduces_predict_proba(loader, make):
    x, y = _scaled(loader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make().fit(x, y)
    clf = SklearnClassifier(model, clip_values=(0, 1))
    np.testing.assert_allclose(clf.predict(x), model.predict_proba(x), atol=1e-5)
    assert "loss_gradient" in clf.capabilities


def test_logistic_gradient_is_exact():
    x, y = _scaled(load_wine)
    model = LogisticRegression(max_iter=2000).fit(x, y)
    clf = SklearnClassifier(model, clip_values=(0, 1))
    # closed form: d/dx CE(softmax(Wx + b), y) = W^T (p - onehot(y))
    p = model.predict_proba(x[:10])
    expected = (p - np.eye(3)[y[:10]]) @ model.coef_
    np.testing.assert_allclose(clf.loss_gradient(x[:10], y[:10]), expected, atol=1e-5)
    jac = clf.class_gradient(x[:2])
    np.testing.assert_allclose(jac, np.broadcast_to(model.coef_, (2, 3, 13)), atol=1e-6)


def test_binary_logistic_labels_and_classes():
    x, y = _scaled(load_breast_cancer)
    names = np.array(["malignant", "benign"])[y]
    model = LogisticRegression(max_iter=2000).fit(x, names)
    clf = SklearnClassifier(model)
    assert clf.nb_classes == 2 and list(clf.classes_) == ["benign", "malignant"]
    np.testing.assert_allclose(clf.predict(x[:5]), model.predict_proba(x[:5]), atol=1e-5)


def test_image_shaped_inputs_are_flattened():
    x, y = _scaled(load_iris)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    clf = SklearnClassifier(model, input_shape=(1, 2, 2))
    assert clf.loss_gradient(x.reshape(-1, 1, 2, 2)[:3], y[:3]).shape == (3, 1, 2, 2)
    with pytest.raises(Exception, match="4 elements"):
        SklearnClassifier(model, input_shape=(1, 3, 3))


def test_model_without_gradients_is_predict_only():
    x, y = _scaled(load_iris)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    clf = SklearnClassifier(model)
    assert clf.capabilities == {"predict", "fit", "clone", "trees"}  # no gradients
    np.testing.assert_allclose(clf.predict(x[:4]), model.predict_proba(x[:4]))
    with pytest.raises(EstimatorError, match=r"'loss_gradient'.*black-box"):
        clf.loss_gradient(x[:2], y[:2])


def test_refit_rebuilds_twin_and_refuses_missing_classes():
    x, y = _scaled(load_iris)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few iterations on purpose
        clf = SklearnClassifier(LogisticRegression(max_iter=10).fit(x, y))
        clf.fit(x, y, sample_weight=np.ones(len(x)))
    np.testing.assert_allclose(clf.predict(x), clf.model.predict_proba(x), atol=1e-5)
    with pytest.raises(InputError, match="lacks the classes"):
        clf.fit(x[y < 2], y[y < 2])


def test_blackbox_probabilities_and_labels_count_queries():
    calls = []

    def api(batch):
        calls.append(batch.shape)
        assert isinstance(batch, np.ndarray) and batch.dtype == np.float32
        s = batch.reshape(len(batch), -1).sum(1)
        return np.stack([1 - s / 4, s / 4], axis=1)

    clf = BlackBoxClassifier(api, input_shape=(4,), nb_classes=2, clip_values=(0, 1))
    x = np.full((5, 4), 0.25, dtype=np.float32)
    np.testing.assert_allclose(clf.predict(x, batch_size=2)[:, 1], 0.25)
    assert clf.query_count == 5 and len(calls) == 3
    labels = BlackBoxClassifier(
        lambda b: (b.sum(1) > 2).astype(int), input_shape=(4,), nb_classes=2, labels_only=True
    )
    out = labels.predict(torch.ones(2, 4))
    assert isinstance(out, torch.Tensor) and out.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    with pytest.raises(EstimatorError, match="labels_only=True"):
        BlackBoxClassifier(lambda b: np.zeros(len(b)), input_shape=(4,), nb_classes=2).predict(x)
    with pytest.raises(ModelError, match="expected"):
        BlackBoxClassifier(lambda b: np.zeros((len(b), 3)), input_shape=(4,), nb_classes=2).predict(
            x
        )
    with pytest.raises(EstimatorError, match="class_gradient"):
        clf.class_gradient(x)
