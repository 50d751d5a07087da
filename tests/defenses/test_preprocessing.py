"""Input preprocessing defences: test vectors, SciPy agreement, the shared contract (kind,
shape, range, no mutation, determinism, batch-size invariance, errors) and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter

from bastion.defenses.postprocessing import HighConfidence
from bastion.defenses.preprocessing import (
    FeatureSqueezing,
    GaussianNoise,
    JpegCompression,
    Preprocessor,
    RandomResizePad,
    SpatialSmoothing,
    ThermometerEncoding,
    TotalVarianceMinimization,
)
from bastion.exceptions import BastionError, InputError, InvalidParameterError
from bastion.testing import all_preprocessors, check_bad_inputs

DETERMINISTIC = [
    FeatureSqueezing(bit_depth=3),
    SpatialSmoothing(window=3),
    JpegCompression(quality=50),
    ThermometerEncoding(levels=4),
]
RANDOMIZED = [
    GaussianNoise(sigma=0.1),
    RandomResizePad(max_size=10),
    TotalVarianceMinimization(prob=0.5, max_iter=3),
]
ALL = DETERMINISTIC + RANDOMIZED


def _images(n: int = 3, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


def _fresh(pre: Preprocessor, **params) -> Preprocessor:
    """A new instance with ``pre``'s parameters, some changed (``random_state`` only where
    it is one)."""
    if not pre.randomized:
        params.pop("random_state", None)
    return type(pre)(**{**pre.get_params(), **params})


def _out_shape(pre: Preprocessor, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(pre, ThermometerEncoding):
        return (shape[0], shape[1] * pre.levels, *shape[2:])
    return shape


# --------------------------------------------------------------------------- test vectors


def test_feature_squeezing_vector_rounds_half_to_even():
    x = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    out = FeatureSqueezing(bit_depth=2, clip_values=(0, 4))(x)
    np.testing.assert_allclose(out, [[0, 4 / 3, 8 / 3, 8 / 3, 4]], rtol=1e-12)
    assert out.dtype == np.float64
    # 8 bits over (0, 1): the 256 levels k / 255 are fixed points
    levels = torch.arange(256, dtype=torch.float64).view(1, -1) / 255
    assert torch.allclose(FeatureSqueezing(bit_depth=8)(levels), levels)


def test_spatial_smoothing_vector():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = SpatialSmoothing(window=2, clip_values=(0, 4))(x)
    assert torch.equal(out, torch.tensor([[[[1.0, 2.0], [3.0, 3.0]]]]))


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 1, 2, 3)])
def test_spatial_smoothing_matches_scipy_reflect(window, shape):
    x = np.random.default_rng(window).random(shape)
    out = SpatialSmoothing(window=window)(x)
    expected = median_filter(x, size=(1, 1, window, window), mode="reflect")
    np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("pre", ALL, ids=lambda p: type(p).__name__)
def test_kind_shape_range_and_no_mutation(pre):
    x = _images()
    before = x.copy()
    out = _fresh(pre, random_state=0)(x) if pre.randomized else pre(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == _out_shape(pre, x.shape)
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(x, before)
    # tensors: dtype and device kept, not modified
    t = torch.as_tensor(_images(), dtype=torch.float64)
    t_before = t.clone()
    out_t = _fresh(pre, random_state=0)(t) if pre.randomized else pre(t)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    assert out_t.device == t.device and tuple(out_t.shape) == _out_shape(pre, tuple(t.shape))
    assert torch.equal(t, t_before)
    # apply_tensor: the same kernel
    k = _fresh(pre, random_state=0).apply_tensor(t) if pre.randomized else pre.apply_tensor(t)
    assert torch.equal(k, out_t)


@pytest.mark.parametrize("pre", ALL, ids=lambda p: type(p).__name__)
def test_other_clip_values(pre):
    x = _images() * 255.0
    out = _fresh(pre, clip_values=(0.0, 255.0), random_state=1)(x)
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert out.shape == _out_shape(pre, x.shape)
    if not isinstance(pre, ThermometerEncoding):
        assert out.max() > 100.0  # works in the given range, not in (0, 1)


@pytest.mark.parametrize("pre", DETERMINISTIC, ids=lambda p: type(p).__name__)
def test_batch_size_invariance(pre):
    x = torch.as_tensor(_images(n=4))
    whole = pre(x)
    one_by_one = torch.cat([pre(x[i : i + 1]) for i in range(4)])
    assert torch.equal(whole, one_by_one)
    assert not pre.randomized


@pytest.mark.parametrize("pre", RANDOMIZED, ids=lambda p: type(p).__name__)
def test_seeded_determinism(pre):
    x = torch.as_tensor(_images())
    a, b = _fresh(pre, random_state=3), _fresh(pre, random_state=3)
    first, second = a(x), a(x)
    assert torch.equal(first, b(x)) and torch.equal(second, b(x))
    assert not torch.equal(first, second), "the stream must advance between calls"
    assert not torch.equal(first, _fresh(pre, random_state=4)(x))
    a.reset()
    assert torch.equal(a(x), first)
    assert pre.randomized
    # a generator is used as given (and advanced)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(_fresh(pre, random_state=g1)(x), _fresh(pre, random_state=g2)(x))


def test_global_rng_untouched():
    state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 (the global RNG)
    for pre in RANDOMIZED:
        _fresh(pre, random_state=None)(_images())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


def test_flags():
    assert {type(p).__name__ for p in ALL} == {c.__name__ for c in all_preprocessors()}
    differentiable = {c.__name__ for c in all_preprocessors() if c.differentiable}
    randomized = {c.__name__ for c in all_preprocessors() if c.randomized}
    assert differentiable == {"GaussianNoise", "RandomResizePad"}
    assert randomized == {"GaussianNoise", "RandomResizePad", "TotalVarianceMinimization"}
    x = torch.rand(2, 3, 4, 4)
    for pre in ALL:
        if not isinstance(pre, ThermometerEncoding):
            assert pre.bpda(x) is x


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("pre", ALL, ids=lambda p: type(p).__name__)
def test_bad_inputs(pre):
    x = _images()
    bad_nan = x.copy()
    bad_nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pre(bad_nan)
    with pytest.raises(InputError, match="outside clip_values"):
        pre(x + 0.5)
    with pytest.raises(InputError, match="ndim"):
        pre(x.reshape(-1))
    with pytest.raises(InputError, match="floating"):
        pre(np.zeros((2, 3, 4, 4), dtype=np.int64))
    with pytest.raises(InvalidParameterError, match="clip_values"):
        _fresh(pre, clip_values=(1.0, 1.0))(x)
    if type(pre).__name__ in ("SpatialSmoothing", "JpegCompression", "RandomResizePad"):
        with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
            pre(x[0])


@pytest.mark.parametrize("pre", ALL, ids=lambda p: type(p).__name__)
def test_empty_images(pre):
    with pytest.raises(InputError, match="empty"):
        pre(np.zeros((2, 3, 0, 4), dtype=np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pre", ALL, ids=lambda p: type(p).__name__)
def test_cuda_device_and_seed(pre):
    x = torch.as_tensor(_images()).cuda()
    out = _fresh(pre, random_state=0)(x)
    assert out.device == x.device and out.dtype == x.dtype
    assert out.shape == _out_shape(pre, tuple(x.shape))
    assert torch.equal(out, _fresh(pre, random_state=0)(x))
    if not pre.randomized:
        assert torch.allclose(out.cpu(), pre(x.cpu()), atol=1e-5)


def test_bad_parameters():
    x = _images()
    for pre, name in (
        (FeatureSqueezing(bit_depth=0), "bit_depth"),
        (SpatialSmoothing(window=0), "window"),
        (JpegCompression(quality=101), "quality"),
        (ThermometerEncoding(levels=1), "levels"),
        (TotalVarianceMinimization(norm=3), "norm"),
        (TotalVarianceMinimization(prob=0.0), "prob"),
        (GaussianNoise(sigma=-1.0), "sigma"),
        (GaussianNoise(random_state=-1), "random_state"),
        (RandomResizePad(max_size=1.5), "max_size"),
    ):
        with pytest.raises(InvalidParameterError, match=f"'{name}'"):
            pre(x)
        with pytest.raises(InvalidParameterError, match=f"'{name}'"):
            pre.apply_tensor(torch.as_tensor(x))


def test_jpeg_channels_and_quality():
    with pytest.raises(InputError, match="channels"):
        JpegCompression()(_images(c=2))
    grey = JpegCompression()(_images(c=1))
    assert grey.shape == (3, 1, 8, 8)
    # a smooth image: nearly identity at quality 100, visibly lossy at 10
    ramp = torch.linspace(0, 1, 32)
    smooth = torch.stack([ramp.view(1, -1) * ramp.view(-1, 1)] * 3).unsqueeze(0)
    # noise in greyscale (Pillow's default 4:2:0 chroma subsampling, kept as in ART, blurs
    # colour noise even at quality 100)
    noisy = torch.as_tensor(_images(n=1, c=1, h=32, w=32))
    for x in (smooth, noisy):
        err100 = (JpegCompression(quality=100)(x) - x).abs().mean()
        err10 = (JpegCompression(quality=10)(x) - x).abs().mean()
        assert err100 < 0.01
        assert err10 > 2 * err100 and err10 > 0.005


def test_random_resize_pad_max_size_must_exceed_height():
    with pytest.raises(InputError, match="max_size"):
        RandomResizePad(max_size=8)(_images())
    out = RandomResizePad(random_state=0)(_images(h=30, w=20))
    assert out.shape == (3, 3, 30, 20)


def test_random_resize_pad_geometry():
    # an image of ones on a canvas one pixel larger: s = H, so the image covers 8 x 8 of the
    # 9 x 9 canvas, and the padding (0) shows on one side of each axis
    x = torch.ones(16, 1, 8, 8, dtype=torch.float64)
    out = RandomResizePad(max_size=9, random_state=0)(x)
    assert torch.allclose(
        out.mean(dim=(1, 2, 3)), torch.full((16,), 64 / 81, dtype=torch.float64), atol=0.03
    )
    assert bool((out[:, :, 3:5, 3:5] == 1).all())  # the centre is always covered
    borders = torch.stack([out[:, 0, 0, 4], out[:, 0, -1, 4], out[:, 0, 4, 0], out[:, 0, 4, -1]])
    assert bool((borders < 1).any(dim=0).all())
    # different offsets for different images of one batch
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1


def test_total_variance_minimization_smooths():
    x = torch.as_tensor(_images(n=2, h=16, w=16))
    tv = TotalVarianceMinimization(prob=0.5, lamb=1.0, max_iter=20, random_state=0)
    out = tv(x)

    def total_variation(z):
        return (z[..., 1:, :] - z[..., :-1, :]).abs().sum() + (z[..., 1:] - z[..., :-1]).abs().sum()

    assert total_variation(out) < 0.5 * total_variation(x)
    out1 = _fresh(tv, norm=1)(x)
    assert total_variation(out1) < total_variation(x)


# --------------------------------------------------------------------------- gradients


def _reseeded(pre: Preprocessor):
    """``apply_tensor`` with the same randomness at every call."""

    def fn(x):
        pre.reset()
        return pre.apply_tensor(x)

    return fn


def test_gaussian_noise_gradient_matches_finite_differences():
    x = (0.3 + 0.4 * torch.rand(2, 3, 3, 3, dtype=torch.float64)).requires_grad_(True)
    pre = GaussianNoise(sigma=0.05, random_state=0)
    assert torch.autograd.gradcheck(_reseeded(pre), (x,), eps=1e-6, atol=1e-6)


def test_random_resize_pad_gradient_matches_finite_differences():
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64).requires_grad_(True)
    pre = RandomResizePad(max_size=8, random_state=0)
    assert torch.autograd.gradcheck(_reseeded(pre), (x,), eps=1e-6, atol=1e-6)
    out = _reseeded(pre)(x)
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_thermometer_bpda():
    enc = ThermometerEncoding(levels=5)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    hard, soft = enc.apply_tensor(x), enc.bpda(x)
    assert hard.shape == soft.shape == (2, 15, 4, 4)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    # soft differs from hard in at most one level per value, by less than 1
    diff = (hard - soft).abs().view(2, 3, 5, 4, 4)
    assert float(diff.amax()) < 1 and bool((diff.sum(dim=2) < 1).all())
    assert float(diff.mean()) <= 1 / 5
    # the levels of the soft encoding sum to 1 + max(5u - 1, 0): linear in u
    sums = soft.view(2, 3, 5, 4, 4).sum(dim=2)
    assert torch.allclose(sums, 1 + (5 * x - 1).clamp_min(0))
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(enc.bpda, (xg,), eps=1e-7, atol=1e-5)
    # and the hard encoding: level k is on iff u > k / levels (level 0 always)
    out = ThermometerEncoding(levels=4)(torch.tensor([[0.0, 0.25, 0.3, 1.0]]))
    expected = [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert out.view(4, 4).tolist() == expected


# --------------------------------------------------------------------------- params, table


def test_params_protocol():
    pre = TotalVarianceMinimization(prob=0.4, random_state=3)
    assert pre.get_params()["prob"] == 0.4 and pre.get_params()["clip_values"] == (0.0, 1.0)
    assert pre.set_params(lamb=0.1) is pre and pre.lamb == 0.1
    assert "prob=0.4" in repr(pre)
    with pytest.raises(InvalidParameterError):
        pre.set_params(nope=1)


@pytest.mark.parametrize("cls", [*all_preprocessors(), HighConfidence], ids=lambda c: c.__name__)
def test_bad_input_table_rows(cls):
    assert check_bad_inputs(cls) > 10


def test_high_confidence():
    p = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
    assert torch.equal(HighConfidence(cutoff=0.25)(p), torch.tensor([[0.5, 0, 0.3], [0, 0, 0.8]]))
    assert torch.equal(HighConfidence(cutoff=0.0)(p), p)
    with pytest.raises(InvalidParameterError, match="'cutoff'"):
        HighConfidence(cutoff=1.5)(p)
    with pytest.raises(BastionError):
        HighConfidence()(p + 1)
