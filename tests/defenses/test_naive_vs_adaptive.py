"""Preprocessing defences look strong against the naive attacker and fall to the adaptive one.

The digits-28 CNN of conftest behind feature squeezing, JPEG and Gaussian noise, attacked by
PGD-Linf (eps 0.2, eps_step 0.01, 40 steps, random_state 0) on the first 64 test images:

* naive: ``DefendedEstimator(gradients="exact")``: the quantiser and the codec pass a zero
  gradient, so PGD's sign steps do nothing and only its random start moves the input;
* adaptive: ``gradients="bpda"`` (the identity backward), with EOT for the randomised defence.

The numbers measured on 100 images (``benchmarks/naive_vs_adaptive.py``) are in
docs/defences.md, "Naive against adaptive attackers".
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bastion.attacks.evasion import PGD, AutoAttack
from bastion.defenses.preprocessing import FeatureSqueezing, GaussianNoise, JpegCompression
from bastion.estimators import DefendedEstimator
from bastion.estimators.wrappers import EOT

N = 64
PGD_KWARGS = dict(eps=0.2, eps_step=0.01, max_iter=40, random_state=0)


def accuracy(clf, x, y) -> float:
    return float(np.mean(np.asarray(clf.predict(x)).argmax(1) == np.asarray(y)))


@pytest.fixture(scope="module")
def data(digits_test):
    x, y = digits_test
    return x[:N], y[:N]


# Measured on these 64 images: (clean, naive, adaptive).
DETERMINISTIC = {
    "squeeze-1bit": (lambda: FeatureSqueezing(bit_depth=1), (0.891, 0.891, 0.031)),
    "squeeze-2bit": (lambda: FeatureSqueezing(bit_depth=2), (0.938, 0.906, 0.0)),
    "squeeze-3bit": (lambda: FeatureSqueezing(bit_depth=3), (0.906, 0.922, 0.0)),
    "jpeg-10": (lambda: JpegCompression(quality=10), (0.922, 0.922, 0.0)),
    "jpeg-20": (lambda: JpegCompression(quality=20), (0.922, 0.922, 0.0)),
    "jpeg-30": (lambda: JpegCompression(quality=30), (0.922, 0.938, 0.0)),
}


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_naive_looks_strong_adaptive_breaks(name, digits_cnn, data):
    factory, (clean, naive, adaptive) = DETERMINISTIC[name]
    x, y = data
    defended = DefendedEstimator(digits_cnn, preprocessors=[factory()])
    naive_est = DefendedEstimator(digits_cnn, preprocessors=[factory()], gradients="exact")
    assert (naive_est.loss_gradient(x[:4], y[:4]) == 0).all()
    acc_clean = accuracy(defended, x, y)
    acc_naive = accuracy(defended, PGD(naive_est, **PGD_KWARGS).generate(x, y), y)
    acc_adaptive = accuracy(defended, PGD(defended, **PGD_KWARGS).generate(x, y), y)
    assert acc_clean >= clean - 0.05
    assert acc_naive >= naive - 0.1
    assert acc_adaptive <= adaptive + 0.1
    assert acc_naive - acc_adaptive >= 0.6


def test_randomised_defence_falls_to_bpda_with_eot(digits_cnn, data):
    x, y = data[0][:32], data[1][:32]

    def defended(gradients="bpda"):
        noise = GaussianNoise(sigma=0.3, random_state=0)
        return DefendedEstimator(digits_cnn, preprocessors=[noise], gradients=gradients)

    judge = defended()
    acc_clean = accuracy(judge, x, y)
    adaptive = EOT(defended(), nb_samples=4, random_state=0)
    acc_adaptive = accuracy(judge, PGD(adaptive, **PGD_KWARGS).generate(x, y), y)
    # Measured: 0.969 clean, 0.0 under PGD with BPDA and EOT (4 draws).
    assert acc_clean >= 0.85
    assert acc_adaptive <= 0.1


def test_autoattack_flags_the_naive_configuration(digits_cnn, data):
    x, y = data[0][:32], data[1][:32]
    naive = DefendedEstimator(
        digits_cnn, preprocessors=[FeatureSqueezing(bit_depth=1)], gradients="exact"
    )
    aa = AutoAttack(
        naive,
        eps=0.2,
        version="custom",
        attacks=["apgd-ce", "square"],
        max_iter=20,
        max_queries=200,
        random_state=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = aa.evaluate(x, y)
    codes = {f.code for f in result.flags}
    assert {"zero-gradients", "black-box-stronger"} <= codes
    assert any("zero-gradients" in str(w.message) for w in caught)
    # The white-box attack is blind; the black-box one is not. Measured: 0.969 after
    # APGD-CE, 0.156 after Square (20 iterations, 200 queries).
    assert result.accuracy_after["apgd-ce"] >= 0.8
    assert result.robust_accuracy <= result.accuracy_after["apgd-ce"] - 0.5
