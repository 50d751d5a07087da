"""BadNets backdoor poisoning and its triggers: known answers, semantics, types, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import (
    BackdoorAttack,
    BlendTrigger,
    PatchTrigger,
    PixelTrigger,
    SinusoidalTrigger,
)
from bastion.exceptions import InputError, InvalidParameterError


def _zeros(n=3, c=1, h=6, w=7):
    return torch.zeros(n, c, h, w)


# --------------------------------------------------------------------------- triggers


@pytest.mark.parametrize(
    ("position", "rows", "cols"),
    [
        ("bottom-right", slice(3, 6), slice(4, 7)),
        ("bottom-left", slice(3, 6), slice(0, 3)),
        ("top-left", slice(0, 3), slice(0, 3)),
        ("top-right", slice(0, 3), slice(4, 7)),
        ("center", slice(1, 4), slice(2, 5)),
        ((2, 1), slice(2, 5), slice(1, 4)),
    ],
)
def test_patch_writes_exactly_its_square(position, rows, cols):
    x = _zeros(c=2)
    out = PatchTrigger(size=3, position=position, value=0.7).apply(x)
    expected = torch.zeros_like(x)
    expected[:, :, rows, cols] = 0.7
    torch.testing.assert_close(out, expected)
    assert x.abs().sum() == 0  # input not mutated


def test_patch_margin_and_rectangle():
    out = PatchTrigger(size=(1, 2), position="bottom-right", margin=1).apply(_zeros())
    assert torch.nonzero(out[0, 0]).tolist() == [[4, 4], [4, 5]]


def test_patch_pattern_is_copied_channel_by_channel():
    pattern = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3) / 20
    out = PatchTrigger(size=None, position="top-left", value=pattern).apply(_zeros(c=2))
    torch.testing.assert_close(out[:, :, :2, :3], torch.from_numpy(pattern).expand(3, -1, -1, -1))
    assert out[:, :, 2:, :].abs().sum() == 0 and out[:, :, :, 3:].abs().sum() == 0
    # A per-channel colour fills the square channel by channel.
    out = PatchTrigger(size=2, position="top-left", value=[0.2, 0.9]).apply(_zeros(c=2))
    assert torch.all(out[:, 0, :2, :2] == 0.2) and torch.all(out[:, 1, :2, :2] == 0.9)


def test_patch_values_are_clipped_and_overwrite():
    x = torch.full((2, 1, 4, 4), 0.5)
    out = PatchTrigger(size=1, position="top-left", value=3.0, clip_values=(0.0, 0.8)).apply(x)
    assert out[0, 0, 0, 0] == 0.8 and torch.all(out[:, :, 1:, :] == 0.5)


def test_random_patch_is_drawn_per_sample_and_seeded():
    x = _zeros(n=200, h=10, w=10)
    trigger = PatchTrigger(size=3, position="random", value=1.0, margin=1)
    out = trigger.apply(x, random_state=0)
    assert torch.all(out.sum(dim=(1, 2, 3)) == 9)  # one whole 3x3 patch per sample
    rows = out[:, 0].amax(dim=2).argmax(dim=1)  # first row holding the patch
    cols = out[:, 0].amax(dim=1).argmax(dim=1)
    for i in (0, 57, 199):  # the patch is the 3x3 square at (row, col)
        assert torch.all(out[i, 0, rows[i] : rows[i] + 3, cols[i] : cols[i] + 3] == 1)
    assert rows.min() >= 1 and rows.max() <= 10 - 3 - 1  # margin respected
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 20  # positions vary
    torch.testing.assert_close(trigger.apply(x, random_state=0), out)
    assert not torch.equal(trigger.apply(x, random_state=1), out)


def test_pixel_trigger_sets_one_pixel_in_every_channel():
    out = PixelTrigger(position="bottom-right", value=0.9).apply(np.zeros((2, 3, 4, 5)))
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert np.count_nonzero(out) == 2 * 3 and np.all(out[:, :, 3, 4] == 0.9)


def test_blend_trigger_formula_and_fixed_random_key():
    x = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    trigger = BlendTrigger(alpha=0.3, random_state=3)
    out = trigger.apply(x)
    key = trigger.pattern_.float()
    torch.testing.assert_close(out, 0.7 * x + 0.3 * key)
    assert key.shape == (1, 5, 5) and 0 <= key.min() and key.max() <= 1
    # The same key at test time; another seed gives another key.
    torch.testing.assert_close(BlendTrigger(alpha=0.3, random_state=3).apply(x), out)
    assert not torch.allclose(BlendTrigger(alpha=0.3, random_state=4).apply(x), out)
    pattern = torch.linspace(0, 1, 5).expand(5, 5)
    torch.testing.assert_close(
        BlendTrigger(pattern=pattern, alpha=1.0).apply(x), pattern.expand_as(x).contiguous()
    )


def test_sinusoidal_trigger_known_answer():
    x = torch.full((2, 3, 4, 8), 0.5)
    out = SinusoidalTrigger(amplitude=0.1, frequency=2).apply(x)
    j = torch.arange(8, dtype=torch.float64)
    expected = 0.5 + 0.1 * torch.sin(2 * math.pi * 2 * j / 8)
    torch.testing.assert_close(out, expected.float().expand_as(x))
    # clipped to the valid range
    assert SinusoidalTrigger(amplitude=1.0, frequency=1).apply(x).max() == 1.0


def test_trigger_keeps_tensor_dtype():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    out = PatchTrigger(size=2).apply(x)
    assert out.dtype == torch.float64 and isinstance(out, torch.Tensor)


@pytest.mark.parametrize(
    ("trigger", "name"),
    [
        (PatchTrigger(size=0), "size"),
        (PatchTrigger(position="middle"), "position"),
        (PatchTrigger(value="white"), "value"),
        (PatchTrigger(size=2, value=np.ones((3, 3))), "value"),
        (PatchTrigger(margin=-1), "margin"),
        (PatchTrigger(clip_values=(1, 0)), "clip_values"),
        (BlendTrigger(alpha=1.5), "alpha"),
        (BlendTrigger(pattern="kitty"), "pattern"),
        (BlendTrigger(pattern=np.ones((3, 3))), "pattern"),
        (SinusoidalTrigger(frequency=0), "frequency"),
        (SinusoidalTrigger(amplitude=-1), "amplitude"),
    ],
)
def test_bad_trigger_parameters_name_the_parameter(trigger, name):
    with pytest.raises(InvalidParameterError, match=f"'{name}'"):
        trigger.apply(_zeros())


def test_trigger_rejects_bad_images():
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        PatchTrigger().apply(torch.zeros(3, 8, 8))
    with pytest.raises(InputError, match="does not fit"):
        PatchTrigger(size=5).apply(torch.zeros(1, 1, 4, 4))
    with pytest.raises(InputError, match="NaN"):
        PatchTrigger().apply(torch.full((1, 1, 4, 4), float("nan")))


# --------------------------------------------------------------------------- the attack


@pytest.fixture
def toy():
    y = np.repeat(np.arange(5), 20)  # 20 samples per class
    x = np.random.default_rng(0).uniform(0, 0.5, size=(100, 1, 6, 6)).astype(np.float32)
    return x, y


def test_all_to_one_semantics(toy):
    x, y = toy
    attack = BackdoorAttack(PatchTrigger(size=2), target=4, source=[1, 3], fraction=0.25)
    x_p, y_p, mask = attack.poison(x, y)
    assert mask.dtype == np.bool_ and mask.shape == (100,)
    # 25% of each source class, none elsewhere
    assert np.bincount(y[mask], minlength=5).tolist() == [0, 5, 0, 5, 0]
    assert np.all(y_p[mask] == 4) and np.array_equal(y_p[~mask], y[~mask])
    np.testing.assert_array_equal(x_p[~mask], x[~mask])  # aligned: clean samples untouched
    np.testing.assert_array_equal(x_p[mask][:, :, 4:, 4:], 1.0)
    np.testing.assert_array_equal(x_p[mask][:, :, :4], x[mask][:, :, :4])
    np.testing.assert_array_equal(np.flatnonzero(mask), attack.poison_indices_)


def test_default_source_is_every_other_class(toy):
    x, y = toy
    *_, mask = BackdoorAttack(PatchTrigger(), target=2, fraction=0.5).poison(x, y)
    assert np.bincount(y[mask], minlength=5).tolist() == [10, 10, 0, 10, 10]


def test_all_to_all(toy):
    x, y = toy
    attack = BackdoorAttack(PixelTrigger(), target="all-to-all", fraction=0.1, random_state=0)
    _, y_p, mask = attack.poison(x, y)
    assert np.bincount(y[mask], minlength=5).tolist() == [2] * 5
    np.testing.assert_array_equal(y_p[mask], (y[mask] + 1) % 5)
    np.testing.assert_array_equal(attack.target_labels(np.array([0, 3, 4])), [1, 4, 0])
    assert BackdoorAttack(PixelTrigger(), target=3).target_labels(np.array([0, 1])).tolist() == [
        3,
        3,
    ]


def test_seeded_reproducibility(toy):
    x, y = toy
    make = lambda s: BackdoorAttack(  # noqa: E731
        PatchTrigger(position="random"), target=0, fraction=0.3, random_state=s
    )
    a, b, c = make(0).poison(x, y), make(0).poison(x, y), make(1).poison(x, y)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[2], c[2])


def test_type_preservation_tensor_and_one_hot(toy):
    x, y = toy
    xt = torch.from_numpy(x).double()
    yt = torch.nn.functional.one_hot(torch.from_numpy(y), 5).float()
    x_p, y_p, mask = BackdoorAttack(PatchTrigger(), target=0, random_state=0).poison(xt, yt)
    assert isinstance(x_p, torch.Tensor) and x_p.dtype == torch.float64
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    assert y_p.shape == (100, 5) and y_p.dtype == torch.float32
    assert torch.all(y_p[mask].argmax(1) == 0)
    x_p2, y_p2, _ = BackdoorAttack(PatchTrigger(), target=0).poison(x, y.astype(np.int32))
    assert x_p2.dtype == np.float32 and y_p2.dtype == np.int32
    trig = BackdoorAttack(PatchTrigger(), target=0).apply_trigger(xt)
    assert isinstance(trig, torch.Tensor) and torch.all(trig[:, :, -3:, -3:] == 1)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"target": -1}, "target"),
        ({"target": "all-to-one"}, "target"),
        ({"target": 0, "fraction": 0.0}, "fraction"),
        ({"target": 0, "fraction": 1.5}, "fraction"),
        ({"target": 0, "source": [0, 1]}, "source"),
        ({"target": 0, "source": [1, 1]}, "source"),
        ({"target": 0, "source": [9]}, "source"),
        ({"target": 0, "random_state": -3}, "random_state"),
        ({"target": 0, "nb_classes": 1}, "nb_classes"),
        ({"target": 7, "nb_classes": 5}, "target"),
    ],
)
def test_bad_attack_parameters_name_the_parameter(toy, params, name):
    x, y = toy
    with pytest.raises(InvalidParameterError, match=f"'{name}'"):
        BackdoorAttack(PatchTrigger(), **params).poison(x, y)


def test_bad_trigger_object_and_inputs(toy):
    x, y = toy
    with pytest.raises(InvalidParameterError, match="'trigger'"):
        BackdoorAttack("patch", target=0).poison(x, y)
    with pytest.raises(InvalidParameterError, match="'size'"):
        BackdoorAttack(PatchTrigger(size=-2), target=0).poison(x, y)
    with pytest.raises(InputError, match="labels"):
        BackdoorAttack(PatchTrigger(), target=0).poison(x, y[:10])
    with pytest.raises(InputError, match="integer"):
        BackdoorAttack(PatchTrigger(), target=0).poison(x, y + 0.5)


def test_nothing_poisoned_warns(toy):
    x, y = toy
    with pytest.warns(UserWarning, match="no sample"):
        _, _, mask = BackdoorAttack(PatchTrigger(), target=0, fraction=0.01).poison(x, y)
    assert not mask.any()


def test_params_api():
    attack = BackdoorAttack(PatchTrigger(), target=3, fraction=0.2)
    assert attack.get_params()["fraction"] == 0.2
    assert attack.set_params(fraction=0.5) is attack and attack.fraction == 0.5
    with pytest.raises(InvalidParameterError, match="nope"):
        attack.set_params(nope=1)
    assert repr(attack).startswith("BackdoorAttack(trigger=PatchTrigger(), target=3")


# --------------------------------------------------------------------------- bad data


def test_target_outside_the_label_set_is_rejected(toy):
    x, y = toy  # classes 0..4
    with pytest.raises(InvalidParameterError, match=r"'target'.*\[0, 4\]\. Got 7"):
        BackdoorAttack(PatchTrigger(), target=7).poison(x, y)
    with pytest.raises(InvalidParameterError, match=r"'target'.*\[0, 4\]\. Got 5"):
        BackdoorAttack(PatchTrigger(), target=5).poison(x, np.eye(5)[y])  # one-hot: 5 classes
    # A class no sample has yet is a valid target when nb_classes says it exists.
    _, y_p, mask = BackdoorAttack(PatchTrigger(), target=7, nb_classes=8).poison(x, y)
    assert mask.any() and np.all(y_p[mask] == 7)


def test_data_outside_the_trigger_range_is_rejected(toy):
    x, y = toy
    with pytest.raises(InputError, match=r"outside clip_values \(0, 1\)"):
        BackdoorAttack(PatchTrigger(), target=0).poison(x * 3, y)  # up to 1.5
    with pytest.raises(InputError, match=r"outside clip_values"):
        BackdoorAttack(PatchTrigger(), target=0).apply_trigger(x - 1)
    # The range is the trigger's: 8-bit images with a trigger clipping to (0, 255) are fine.
    trigger = PatchTrigger(size=2, value=255.0, clip_values=(0, 255))
    x_p, _, mask = BackdoorAttack(trigger, target=0, fraction=0.5).poison(x * 255, y)
    assert np.all(x_p[mask][:, :, -2:, -2:] == 255)
    np.testing.assert_array_equal(x_p[~mask], (x * 255)[~mask])


def _nan_x(x, y):
    x = x.copy()
    x[3, 0, 1, 1] = np.nan
    return x, y


def _inf_x(x, y):
    x = x.copy()
    x[0, 0, 0, 0] = np.inf
    return x, y


def _label_at_0(value):
    def make(x, y):
        y = y.astype(np.asarray(value).dtype if isinstance(value, float) else y.dtype)
        y[0] = value
        return x, y

    return make


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_nan_x, "NaN"),
        (_inf_x, "NaN or infinite"),
        (lambda x, y: (x[:0], y[:0]), "empty"),
        (lambda x, y: (x[:, 0], y), r"\(N, C, H, W\)"),
        (lambda x, y: ((x * 0).astype(np.int64), y), "floating-point"),
        (lambda x, y: (x, y[:-1]), "99 labels but x has 100"),
        (_label_at_0(float("nan")), "NaN"),
        (_label_at_0(-1), r"labels in \[-1, 4\]"),
        (lambda x, y: (x, y.astype(bool)), "integer class indices"),
        (lambda x, y: (x, np.array(["cat"] * len(y))), "numeric"),
        (lambda x, y: (x, y[:, None, None]), "class indices of shape"),
    ],
)
def test_bad_data_is_a_clear_input_error(toy, make, match):
    x, y = make(*toy)
    with pytest.raises(InputError, match=match):
        BackdoorAttack(PatchTrigger(), target=0).poison(x, y)


def test_labels_beyond_nb_classes_are_rejected(toy):
    x, y = toy
    with pytest.raises(InputError, match=r"outside the 4 classes"):
        BackdoorAttack(PatchTrigger(), target=0, nb_classes=4).poison(x, y)
    with pytest.raises(InputError, match="one-hot of shape"):
        BackdoorAttack(PatchTrigger(), target=0, nb_classes=6).poison(x, np.eye(5)[y])
