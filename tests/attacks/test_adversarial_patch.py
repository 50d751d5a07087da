"""Adversarial Patch on the digits CNN: transfer to held-out images, geometry of the paste."""

import math

import numpy as np
import pytest
import torch

from bastion.attacks.evasion.adversarial_patch import AdversarialPatch
from bastion.exceptions import BastionError, InvalidParameterError
from bastion.testing import check_attack

TARGET = 3


@pytest.fixture(scope="module")
def fitted(digits_cnn, digits_test):
    x, _ = digits_test
    attack = AdversarialPatch(
        digits_cnn,
        target=TARGET,
        scale_min=0.6,
        scale_max=0.7,
        max_iter=40,
        learning_rate=0.05,
        random_state=0,
    )
    return attack.fit(x[:100])


def _hit_rate(clf, x, y, target):
    keep = np.asarray(y) != target
    return float(np.mean(np.asarray(clf.predict(x)).argmax(1)[keep] == target))


def _constant_patch(attack, value=1.0):
    """A copy of a fitted attack whose patch is constant, to read the paste's footprint."""
    other = AdversarialPatch(attack.estimator, **attack.get_params())
    other.patch_ = torch.full_like(attack.patch_, value)
    other.patch_mask_ = attack.patch_mask_
    return other


def test_conformance():
    ran = check_attack(AdversarialPatch)
    assert {"check_mask", "check_batch_size_invariance", "check_effective"} <= set(ran)


def test_patch_transfers_to_held_out_images_far_more_than_noise(fitted, digits_cnn, digits_test):
    x, y = digits_test
    x_new, y_new = x[100:], y[100:]  # not seen by fit
    assert fitted.patch_.shape == (1, 20, 20)  # round(0.7 * 28)
    assert float(fitted.patch_.min()) >= 0.0 and float(fitted.patch_.max()) <= 1.0
    assert 0.5 <= fitted.success_rate_ <= 1.0 and fitted.n_iter_ == 40
    random_place = fitted.apply(x_new, scale=0.65, location="random", random_state=1)
    centred = fitted.apply(x_new, scale=0.65)
    hit_random = _hit_rate(digits_cnn, random_place, y_new, TARGET)
    hit_centre = _hit_rate(digits_cnn, centred, y_new, TARGET)
    noise = AdversarialPatch(digits_cnn, **fitted.get_params())
    noise.patch_ = torch.rand(fitted.patch_.shape, generator=torch.Generator().manual_seed(0))
    noise.patch_mask_ = fitted.patch_mask_
    noise_place = noise.apply(x_new, scale=0.65, location="random", random_state=1)
    hit_noise = _hit_rate(digits_cnn, noise_place, y_new, TARGET)
    # measured: 0.76 at random places, 1.00 centred, 0.06 for the noise patch
    assert hit_random >= 0.6 and hit_centre >= 0.9
    assert hit_noise <= 0.2 and hit_random - hit_noise >= 0.4


@pytest.mark.parametrize("scale", [0.2, 0.35, 0.5, 0.71])
def test_paste_writes_exactly_the_asked_square(fitted, scale):
    attack = _constant_patch(fitted)
    side = round(scale * 28)
    row, col = 28 - side, 3
    out = attack.apply(np.zeros((2, 1, 28, 28), np.float32), scale=scale, location=(row, col))
    expected = np.zeros((2, 1, 28, 28), np.float32)
    expected[:, :, row : row + side, col : col + side] = 1.0
    np.testing.assert_array_equal(out > 0.5, expected > 0.5)  # the footprint, exactly
    np.testing.assert_allclose(out, expected, atol=1e-6)  # bilinear weights sum to 1 +- ulp


def test_apply_keeps_patch_values_and_the_rest_of_the_image(fitted, digits_test):
    x, _ = digits_test
    x4 = x[:4]
    out = fitted.apply(x4, scale=20 / 28, location=(5, 2))  # 1:1 with the 20x20 patch
    assert isinstance(out, np.ndarray) and out.dtype == x4.dtype and out.shape == x4.shape
    np.testing.assert_allclose(
        out[:, :, 5:25, 2:22], np.broadcast_to(fitted.patch_.numpy(), (4, 1, 20, 20)), atol=1e-5
    )
    outside = np.ones((28, 28), bool)
    outside[5:25, 2:22] = False
    np.testing.assert_array_equal(out[:, 0, outside], x4[:, 0, outside])
    np.testing.assert_array_equal(out, fitted.apply(x4, scale=20 / 28, location=(5, 2)))
    t = fitted.apply(torch.as_tensor(x4, dtype=torch.float64), scale=20 / 28, location=(5, 2))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), out, atol=1e-6)


def test_area_of_the_training_paste_and_rotation_invariance(fitted):
    """The EOT paste covers scale**2 * H * W pixels (up to the outline), for any rotation."""
    attack = _constant_patch(fitted)
    # up to 0.7: a square rotated by 45 degrees then still fits in the image (sqrt(2) * 0.7 < 1)
    scales = torch.tensor([0.15, 0.3, 0.45, 0.6, 0.7], dtype=torch.float64)
    patch = attack.patch_.double()
    for degrees in (0.0, 17.0, 45.0, 80.0):
        angle = torch.full_like(scales, math.radians(degrees))
        canvas, m = attack._transform(patch, scales, angle, torch.zeros(5, 2, dtype=scales.dtype))
        area = m.sum(dim=(1, 2, 3))
        exact = scales**2 * 28 * 28
        side = scales * 28
        assert torch.all((area - exact).abs() <= 2 * side + 4), (degrees, area, exact)
        torch.testing.assert_close(canvas * m, m)  # the patch (all ones here) fills the mask
    area = attack.apply(np.zeros((1, 1, 28, 28), np.float32), scale=0.5, rotation=30.0).sum()
    assert abs(area - 14 * 14) <= 2 * 14


def test_circle_shape_covers_the_inscribed_disk(digits_cnn, digits_test):
    x, _ = digits_test
    attack = AdversarialPatch(
        digits_cnn, target=1, shape="circle", scale_min=0.5, scale_max=0.5, max_iter=1
    ).fit(x[:4])
    inside = attack.patch_mask_[0]
    assert inside.shape == (14, 14) and inside[0, 0] == 0 and inside[7, 7] == 1
    ones = _constant_patch(attack)
    for rotation in (0.0, 33.0):
        out = ones.apply(np.zeros((1, 1, 28, 28), np.float32), scale=0.5, rotation=rotation)
        assert abs(out.sum() - math.pi * 7**2) <= 2 * math.pi * 7 * 0.5 + 2


def test_rotation_is_counter_clockwise_and_random_placement_is_seeded(fitted):
    attack = _constant_patch(fitted, 0.0)
    attack.patch_[0, :5, -5:] = 1.0  # a mark in the top-right corner of the patch
    out = attack.apply(np.ones((1, 1, 28, 28), np.float32) * 0.5, scale=20 / 28, rotation=90.0)
    marked = np.argwhere(out[0, 0] > 0.9)
    assert marked.size and marked[:, 0].max() < 14 and marked[:, 1].max() < 14  # top-left
    x = np.zeros((5, 1, 28, 28), np.float32)
    a = fitted.apply(x, scale=0.3, location="random", random_state=7)
    b = fitted.apply(x, scale=0.3, location="random", random_state=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # one place per image


def test_untargeted_generate_and_mask(digits_cnn, digits_test):
    x, y = digits_test
    attack = AdversarialPatch(
        digits_cnn, scale_min=0.6, scale_max=0.6, max_iter=10, learning_rate=0.1, random_state=0
    )
    mask = np.zeros((1, 28, 28), np.float32)
    mask[:, :, :14] = 1
    x_adv = attack.generate(x[:40], y[:40], mask=mask)
    np.testing.assert_array_equal(x_adv[..., 14:], x[:40, :, :, 14:])
    assert np.any(x_adv[..., :14] != x[:40, :, :, :14])
    x_adv = attack.generate(x[:40], y[:40])
    acc = float(np.mean(np.asarray(digits_cnn.predict(x_adv)).argmax(1) == y[:40]))
    assert acc < 0.5


def test_errors(digits_cnn, digits_test, fitted):
    x, _ = digits_test
    with pytest.raises(BastionError, match="fit"):
        AdversarialPatch(digits_cnn).apply(x[:2])
    with pytest.raises(InvalidParameterError, match="'scale_min'"):
        AdversarialPatch(digits_cnn, scale_min=0.5, scale_max=0.4).fit(x[:2])
    with pytest.raises(InvalidParameterError, match="'target'"):
        AdversarialPatch(digits_cnn, target=10).fit(x[:2])
    with pytest.raises(InvalidParameterError, match="'patch_shape'"):
        AdversarialPatch(digits_cnn, patch_shape=(3, 5, 5)).fit(x[:2])
    with pytest.raises(InvalidParameterError, match="'location'"):
        fitted.apply(x[:2], scale=0.5, location=(20, 0))
    with pytest.raises(InvalidParameterError, match="'scale'"):
        fitted.apply(x[:2], scale=1.5)
