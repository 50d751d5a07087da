"""NewtonFool: the step formula, and small perturbations on a CNN and a linear model."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import MinMaxScaler

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion import DeepFool, NewtonFool
from bastion.estimators import SklearnClassifier


def test_one_step_is_the_papers_newton_step(digits_cnn, digits_test):
    x, y = digits_test
    x, y = x[:16], y[:16]
    eta = 0.01
    x_adv = NewtonFool(digits_cnn, max_iter=1, eta=eta).generate(x, y)
    # by hand: delta = min(eta ||x0|| ||g||, p - 1/K), x1 = x0 - delta g / ||g||^2
    xt = torch.as_tensor(x).requires_grad_(True)
    p = torch.softmax(digits_cnn.model(xt), 1)[torch.arange(16), torch.as_tensor(y)]
    (g,) = torch.autograd.grad(p.sum(), xt)
    gn = g.flatten(1).norm(dim=1)
    delta = torch.minimum(eta * xt.detach().flatten(1).norm(dim=1) * gn, p.detach() - 0.1)
    expected = (xt.detach() - (delta / gn**2).view(-1, 1, 1, 1) * g).clamp(0, 1)
    changed = np.any((x_adv != x).reshape(16, -1), axis=1)
    # one step rarely fools the model; those it fools are returned as computed
    np.testing.assert_allclose(x_adv[changed], expected.numpy()[changed], atol=1e-6)
    assert np.all(x_adv[~changed] == x[~changed])


def test_fools_the_digits_cnn_with_deepfool_sized_perturbations(digits_cnn, digits_test):
    x, y = digits_test
    ok = np.asarray(digits_cnn.predict(x)).argmax(1) == y
    x_adv = NewtonFool(digits_cnn, max_iter=100).generate(x, y)
    fooled = (np.asarray(digits_cnn.predict(x_adv)).argmax(1) != y)[ok]
    assert fooled.mean() >= 0.95
    norms = perturbation_norms(x, x_adv, 2)[ok][fooled]
    df = perturbation_norms(x, DeepFool(digits_cnn).generate(x, y), 2)[ok]
    assert np.median(norms) <= 1.3 * np.median(df[df > 0])


def test_never_beats_the_exact_minimum_on_a_linear_model():
    """For a multinomial linear model the exact minimal L2 distance is
    min_j |z_y - z_j| / ||w_y - w_j||; NewtonFool cannot go below it and lands close to it."""
    x, y = load_wine(return_X_y=True)
    x = MinMaxScaler().fit_transform(x).astype(np.float32)
    model = LogisticRegression(max_iter=5000).fit(x, y)
    clf = SklearnClassifier(model)
    ok = model.predict(x) == y
    x, y = x[ok], y[ok]
    x_adv = NewtonFool(clf, max_iter=200, eta=0.05).generate(x, y)
    fooled = model.predict(x_adv) != y
    assert fooled.mean() >= 0.95
    w, b = model.coef_, model.intercept_
    z = x @ w.T + b
    dist = np.full(len(x), np.inf)
    for j in range(3):
        dw = w[y] - w[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.abs(z[np.arange(len(x)), y] - z[:, j]) / np.linalg.norm(dw, axis=1)
        dist = np.where(y != j, np.minimum(dist, d), dist)
    ratio = perturbation_norms(x, x_adv, 2)[fooled] / dist[fooled]
    assert ratio.min() >= 1 - 1e-4
    assert np.median(ratio) <= 1.3


def test_mask_and_invalid_eta(digits_cnn, digits_test):
    x, y = digits_test
    mask = np.zeros((1, 28, 28), dtype=np.float32)
    mask[:, 7:21, 7:21] = 1
    x_adv = NewtonFool(digits_cnn, max_iter=30).generate(x[:20], y[:20], mask=mask)
    assert np.all((x_adv - x[:20])[:, :, mask[0] == 0] == 0)
    from bastion.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="'eta'"):
        NewtonFool(digits_cnn, eta=0).generate(x[:2], y[:2])
