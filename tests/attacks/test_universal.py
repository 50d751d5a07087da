"""Universal adversarial perturbations on the digits CNN."""

import numpy as np
import pytest

from bastion.attacks import perturbation_norms
from bastion.attacks.evasion import FGSM, DeepFool, UniversalPerturbation
from bastion.exceptions import BastionError


@pytest.fixture(scope="module")
def fitted(digits_cnn, digits28):
    (x_tr, _), _ = digits28
    uap = UniversalPerturbation(
        digits_cnn, attacker=DeepFool(digits_cnn, overshoot=0.2), eps=0.2, max_iter=3
    )
    return uap.fit(x_tr[:200])


def test_one_perturbation_fools_unseen_images_far_more_than_noise(fitted, digits_cnn, digits_test):
    x, _ = digits_test
    v = fitted.perturbation_
    assert v.shape == (1, 28, 28) and float(v.abs().max()) <= 0.2 + 1e-6
    clean = np.asarray(digits_cnn.predict(x)).argmax(1)
    fooled = np.asarray(digits_cnn.predict(fitted.apply(x))).argmax(1) != clean
    noise = np.random.default_rng(0).choice([-0.2, 0.2], size=(1, 1, 28, 28)).astype(np.float32)
    noise_fooled = np.asarray(digits_cnn.predict(np.clip(x + noise, 0, 1))).argmax(1) != clean
    assert fooled.mean() > 0.25 and fooled.mean() > 4 * noise_fooled.mean()
    assert 0 < fitted.fooling_rate_ <= 1 and 1 <= fitted.n_passes_ <= 3


def test_generate_applies_the_same_perturbation_to_every_sample(digits_cnn, digits_test):
    x, _ = digits_test
    uap = UniversalPerturbation(digits_cnn, eps=3.0, norm=2, max_iter=1, batch_size=64)
    x_adv = uap.generate(x[:64])
    assert perturbation_norms(x[:64], x_adv, 2).max() <= 3.0 + 1e-5
    np.testing.assert_allclose(x_adv, uap.apply(x[:64]), atol=1e-6)
    inside = np.all((x[:64] > 0.25) & (x[:64] < 0.75), axis=0)  # pixels where no clip happens
    diffs = (x_adv - x[:64])[:, inside]
    np.testing.assert_allclose(diffs, np.broadcast_to(diffs[0], diffs.shape), atol=1e-6)


def test_stops_once_the_fooling_rate_is_reached(digits_cnn, digits_test):
    x, _ = digits_test
    uap = UniversalPerturbation(
        digits_cnn, attacker=FGSM(digits_cnn, eps=0.3), eps=0.3, delta=0.95, max_iter=5
    ).fit(x[:50])
    assert uap.n_passes_ == 1 and uap.fooling_rate_ >= 0.05


def test_apply_before_fit_and_bad_attacker(digits_cnn, digits_test):
    x, _ = digits_test
    with pytest.raises(BastionError, match="fit"):
        UniversalPerturbation(digits_cnn).apply(x[:2])
    from bastion.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="'attacker'"):
        UniversalPerturbation(digits_cnn, attacker="deepfool").fit(x[:2])
