"""MI-Face model inversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from bastion.attacks.inference.model_inversion import MIFace
from bastion.datasets import load_digits
from bastion.estimators import SklearnClassifier, TorchClassifier
from bastion.exceptions import EstimatorError, InvalidParameterError
from bastion.zoo import MLP, train_classifier


@pytest.fixture(scope="module")
def digits8():
    return load_digits(size=8, random_state=0)


@pytest.fixture(scope="module")
def digits_mlp(digits8):
    (x, y), _ = digits8
    model = train_classifier(MLP(64, 10, random_state=0), x, y, epochs=10, random_state=0)
    return TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0))


@pytest.fixture(scope="module")
def digits_logreg(digits8):
    (x, y), _ = digits8
    lr = LogisticRegression(max_iter=300).fit(x.reshape(len(x), -1), y)
    return SklearnClassifier(lr, clip_values=(0.0, 1.0))


def test_representatives_are_classified_as_their_class(digits_mlp):
    classes = np.arange(10)
    attack = MIFace(digits_mlp, max_iter=300, threshold=0.02, learning_rate=1.0)
    faces = attack.infer(None, classes)
    probs = digits_mlp.predict(faces)
    assert faces.shape == (10, 1, 8, 8) and faces.min() >= 0.0 and faces.max() <= 1.0
    np.testing.assert_array_equal(probs.argmax(1), classes)
    assert probs[classes, classes].min() >= 0.98 - 1e-6
    np.testing.assert_allclose(attack.cost_, 1 - probs[classes, classes], atol=1e-5)
    assert (attack.n_iter_ <= 300).all()


def test_first_step_matches_the_closed_form_gradient(digits_logreg):
    # For softmax(Wx + b), grad p_c = p_c (w_c - sum_j p_j w_j).
    model = digits_logreg.model
    w, b = model.coef_, model.intercept_
    x0 = np.full(64, 0.5)
    p = np.exp(w @ x0 + b - (w @ x0 + b).max())
    p /= p.sum()
    lr = 2.0
    expected = np.stack([np.clip(x0 + lr * p[c] * (w[c] - p @ w), 0.0, 1.0) for c in range(10)])
    attack = MIFace(digits_logreg, max_iter=1, threshold=0.0, learning_rate=lr)
    got = attack.infer(None, np.arange(10))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(attack.n_iter_, np.ones(10))


def test_per_sample_stopping_is_independent_of_the_batch(digits_mlp):
    attack = MIFace(digits_mlp, max_iter=60, window_length=5, threshold=0.3, learning_rate=0.5)
    start = torch.full((10, 1, 8, 8), 0.5)
    together = attack.infer(start, torch.arange(10))
    steps_together = attack.n_iter_.copy()
    alone = torch.cat([attack.infer(start[i : i + 1], torch.tensor([i])) for i in range(10)])
    assert isinstance(together, torch.Tensor)
    torch.testing.assert_close(together, alone)
    assert len(set(steps_together.tolist())) > 1  # samples stopped at different steps
    # The threshold stops a sample as soon as its cost is low enough.
    probs = digits_mlp.predict(together)
    stopped_early = steps_together < 60
    assert (1 - probs[np.arange(10), np.arange(10)])[stopped_early].max() <= 0.3 + 1e-6
    # threshold=1 stops at once: the start is returned unchanged.
    same = MIFace(digits_mlp, threshold=1.0).infer(start, torch.arange(10))
    torch.testing.assert_close(same, start)


def test_mi_face_errors(digits8, digits_mlp):
    (x, y), _ = digits8
    forest = SklearnClassifier(RandomForestClassifier(n_estimators=3).fit(x.reshape(len(x), -1), y))
    with pytest.raises(EstimatorError, match="class_gradient"):
        MIFace(forest).infer(None, [0])
    with pytest.raises(InvalidParameterError, match="'threshold' parameter of MIFace"):
        MIFace(digits_mlp, threshold=2.0).infer(None, [0])
    assert repr(MIFace(digits_mlp, max_iter=5)) == "MIFace(max_iter=5)"
