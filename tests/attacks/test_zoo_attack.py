"""ZOO: zeroth-order CW-L2 attack on the digits CNN behind a prediction API."""

import numpy as np
import torch

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion.carlini_wagner import CarliniWagnerL2
from bastion.attacks.evasion.zoo_attack import ZooAttack
from bastion.estimators import BlackBoxClassifier
from bastion.testing import check_attack


def test_conformance():
    check_attack(ZooAttack)


def test_zoo_close_to_white_box_cw_on_digits(digits_cnn, digits_test):
    """Measured on 3 digits: all broken, L2 distance 1.05-1.46 times that of white-box CW-L2,
    with 10000 queries per sample (attack space 7x7 -> 14x14 -> 28x28, importance sampling)."""
    x, y = digits_test
    ok = digits_cnn.predict(x).argmax(1) == y
    x, y = x[ok][:3], y[ok][:3]
    bb = BlackBoxClassifier(
        digits_cnn.predict, input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1)
    )
    x_cw = CarliniWagnerL2(
        digits_cnn, binary_search_steps=5, max_iter=100, initial_const=0.1, learning_rate=0.05
    ).generate(x, y)
    cw = perturbation_norms(x, x_cw, 2)
    assert np.all(digits_cnn.predict(x_cw).argmax(1) != y)
    attack = ZooAttack(
        bb, use_resize=True, init_size=7, resize_every=40, nb_parallel=32, learning_rate=0.05,
        max_iter=120, binary_search_steps=3, initial_const=1.0, max_queries=10000,
        random_state=0,
    )  # fmt: skip
    before = bb.query_count
    x_adv = attack.generate(x, y)
    assert attack.queries_.max() <= 10000
    assert bb.query_count - before == attack.queries_.sum()
    assert np.all(digits_cnn.predict(x_adv).argmax(1) != y)
    ratio = perturbation_norms(x, x_adv, 2) / cw
    assert np.all(ratio < 2.0) and np.median(ratio) < 1.6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_zoo_finds_the_linear_distance():
    """Known answer: for a two-class linear model without a box, the minimal L2 perturbation
    has length ``|w . x| / ||w||``; ZOO gets within 5% of it (measured: 0.2% to 2.5% above)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=gen)

    def api(x):
        z = torch.as_tensor(x).reshape(len(x), -1) @ w
        return torch.softmax(torch.stack([z, -z], 1), 1).numpy()

    clf = BlackBoxClassifier(api, input_shape=(16,), nb_classes=2)
    x = torch.randn(6, 16, generator=gen) * 0.3
    exact = (x @ w).abs() / w.norm()
    attack = ZooAttack(
        clf, nb_parallel=8, max_iter=300, binary_search_steps=8, learning_rate=0.01,
        initial_const=1.0, max_queries=30000, random_state=0,
    )  # fmt: skip
    x_adv = attack.generate(x)
    assert bool((clf.predict(x_adv).argmax(1) != clf.predict(x).argmax(1)).all())
    ratio = (x_adv - x).norm(dim=1) / exact
    assert bool((ratio >= 1 - 1e-3).all()) and bool((ratio < 1.05).all())


def _linear_api(w):
    def api(x):
        z = torch.as_tensor(x).reshape(len(x), -1) @ w
        return torch.softmax(torch.stack([z, -z], 1), 1).numpy()

    return api


def test_budget_below_one_iteration_warns_and_names_the_minimum():
    """One iteration costs the iterate plus two probes per coordinate (2 * 8 + 1 = 17 queries
    here): a smaller budget warns with that number and returns the inputs unchanged, without a
    query; a budget of exactly 17 pays for one iteration and does not warn."""
    import warnings

    import pytest

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=gen)
    clf = BlackBoxClassifier(_linear_api(w), input_shape=(16,), nb_classes=2)
    x = torch.randn(3, 16, generator=gen) * 0.3
    y = torch.as_tensor(clf.predict(x)).argmax(1)
    params = dict(nb_parallel=8, max_iter=5, binary_search_steps=1, random_state=0)
    attack = ZooAttack(clf, max_queries=16, **params)
    with pytest.warns(RuntimeWarning, match=r"max_queries=16 cannot pay for one iteration.*\b17\b"):
        x_adv = attack.generate(x, y)
    assert torch.equal(x_adv, x)
    assert attack.queries_.tolist() == [0, 0, 0]
    # Without labels the clean prediction costs one query: 18 are needed.
    with pytest.warns(RuntimeWarning, match=r"max_queries=17 cannot pay for one iteration.*\b18\b"):
        ZooAttack(clf, max_queries=17, **params).generate(x)
    attack = ZooAttack(clf, max_queries=17, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        attack.generate(x, y)
    assert attack.queries_.tolist() == [17, 17, 17]
