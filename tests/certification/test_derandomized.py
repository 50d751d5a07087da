"""Derandomized smoothing (Levine and Feizi 2020): known answers, a brute-force check of the
certificate, and soundness against patch attacks on a CNN trained on ablated 8x8 digits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bastion.certification import DerandomizedSmoothing
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.testing._bad_inputs import black_box, linear
from bastion.zoo import SmallCNN


def _linear_clf(shape=(2, 8, 8), clip=(0.0, 1.0)) -> TorchClassifier:
    n_in = int(np.prod(shape))
    layer = linear(n_in, 10)
    with torch.no_grad():  # distinct scores per class, no global RNG drawn
        layer.weight.copy_(torch.linspace(-1, 1, 10 * n_in).reshape(10, n_in))
    net = torch.nn.Sequential(torch.nn.Flatten(), layer)
    return TorchClassifier(net, input_shape=shape, nb_classes=10, clip_values=clip)


def _rand(n: int, seed: int = 0, shape=(1, 8, 8)) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=gen).numpy()


@pytest.fixture(scope="module")
def digits8():
    return load_digits(size=8, random_state=0)


@pytest.fixture(scope="module")
def column_ds(digits8):
    """SmallCNN on 2x8x8 encodings, trained 30 epochs on random 2-column ablations."""
    (x_tr, y_tr), _ = digits8
    clf = TorchClassifier(
        SmallCNN(2, input_size=8, random_state=0),
        input_shape=(2, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    ds = DerandomizedSmoothing(clf, ablation="column", ablation_size=2, threshold=0.3)
    ds.set_params(batch_size=1024)
    ds.fit(x_tr, y_tr, epochs=30, batch_size=64, learning_rate=2e-3, random_state=0)
    return ds


@pytest.fixture(scope="module")
def block_ds(digits8):
    """SmallCNN on 2x8x8 encodings, trained on random 3x3 block ablations."""
    (x_tr, y_tr), _ = digits8
    clf = TorchClassifier(
        SmallCNN(2, input_size=8, random_state=1),
        input_shape=(2, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    ds = DerandomizedSmoothing(clf, ablation="block", ablation_size=3, threshold=0.3)
    ds.set_params(batch_size=2048)
    ds.fit(x_tr, y_tr, epochs=30, batch_size=64, learning_rate=2e-3, random_state=0)
    return ds


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize(
    ("ablation", "s", "m", "shape", "delta"),
    [
        ("column", 2, 2, (2, 8, 8), 3),
        ("column", 1, 1, (2, 8, 8), 1),
        ("column", 4, 5, (2, 28, 28), 8),
        ("column", 6, 5, (2, 8, 8), 8),  # capped at the W positions
        ("block", 3, 2, (2, 8, 8), 16),
        ("block", 1, 1, (2, 8, 8), 1),
        ("block", 4, 5, (2, 28, 28), 64),
        ("block", 8, 8, (2, 8, 8), 64),  # capped at the H * W positions
    ],
)
def test_nb_affected_known(ablation, s, m, shape, delta):
    ds = DerandomizedSmoothing(_linear_clf(shape), ablation=ablation, ablation_size=s)
    assert ds.nb_affected(m) == delta


@pytest.mark.parametrize(("ablation", "s"), [("column", 2), ("column", 3), ("block", 2)])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_nb_affected_is_the_brute_force_maximum(ablation, s, m):
    """The largest number of ablations (read off :meth:`encode`) whose kept pixels meet an
    ``m x m`` patch, over every patch location, is exactly ``nb_affected``."""
    ds = DerandomizedSmoothing(_linear_clf(), ablation=ablation, ablation_size=s)
    ones = np.ones((1, 1, 8, 8), dtype=np.float32)
    kept = np.stack([ds.encode(ones, p)[0, 0] > 0 for p in range(ds.nb_positions)])
    counts = [
        int(kept[:, i : i + m, j : j + m].any(axis=(1, 2)).sum())
        for i in range(8 - m + 1)
        for j in range(8 - m + 1)
    ]
    assert max(counts) == ds.nb_affected(m)


def test_encode_known():
    ds = DerandomizedSmoothing(_linear_clf(), ablation="column", ablation_size=3)
    x = np.full((1, 1, 8, 8), 0.25, dtype=np.float32)
    enc = ds.encode(x, 6)  # columns 6, 7 and (wrapping) 0
    kept = np.zeros(8, dtype=bool)
    kept[[6, 7, 0]] = True
    assert enc.shape == (1, 2, 8, 8)
    np.testing.assert_array_equal(enc[0, 0], np.where(kept[None, :], 0.25, 0.0) * np.ones((8, 1)))
    np.testing.assert_array_equal(enc[0, 1], np.where(kept[None, :], 0.75, 0.0) * np.ones((8, 1)))
    # A black kept pixel reads (0, 1), an ablated one (0, 0): they differ.
    black = ds.encode(np.zeros((1, 1, 8, 8), dtype=np.float32), 0)
    assert black[0, 1, 0, 0] == 1.0 and black[0, 1, 0, 5] == 0.0
    blocks = DerandomizedSmoothing(_linear_clf(), ablation="block", ablation_size=2)
    enc = blocks.encode(np.ones((1, 1, 8, 8), dtype=np.float32), 7 * 8 + 7)  # wraps both ways
    assert set(zip(*np.nonzero(enc[0, 0]), strict=True)) == {(7, 7), (7, 0), (0, 7), (0, 0)}


@pytest.mark.parametrize(
    ("votes", "delta", "pred", "certified"),
    [
        ([5, 2, 0], 1, 0, True),  # 5 - 2 > 2
        ([4, 2, 0], 1, 0, True),  # 4 >= 2 + 2 and class 1 > class 0 loses the tie
        ([3, 2, 0], 1, 0, False),
        ([2, 4, 0], 1, 1, False),  # 4 > 2 + 2 fails: class 0 would win the tie
        ([2, 5, 0], 1, 1, True),
        ([3, 3, 0], 0, 0, True),  # a tie goes to the smallest index
        ([3, 3, 0], 1, 0, False),
        ([0, 6, 3, 1], 1, 1, True),
        ([0, 6, 3, 1], 2, 1, False),  # 6 >= 3 + 4 fails
        ([0, 0, 8, 0], 4, 2, False),  # 8 > 0 + 8 fails for classes 0 and 1
        ([0, 0, 0, 8], 4, 3, False),
        ([0, 0, 9, 0], 4, 2, True),
        ([8, 0, 0, 0], 4, 0, True),  # 8 >= 0 + 8 against larger indices
    ],
)
def test_certify_votes_known(votes, delta, pred, certified):
    p, c = DerandomizedSmoothing.certify_votes(torch.tensor([votes]), delta)
    assert int(p[0]) == pred and bool(c[0]) is certified


@pytest.mark.parametrize("delta", [0, 1, 2])
def test_certify_votes_brute_force(delta):
    """On every vote vector of 3 classes with counts up to 6: certified exactly when no change
    of each count by at most ``delta`` moves the argmax (ties to the smallest index)."""
    grid = torch.tensor(list(itertools.product(range(7), repeat=3)))
    moves = torch.tensor(list(itertools.product(range(-delta, delta + 1), repeat=3)))
    pred, cert = DerandomizedSmoothing.certify_votes(grid, delta)
    moved = (grid[:, None, :] + moves[None, :, :]).argmax(dim=2)
    stays = (moved == pred[:, None]).all(dim=1)
    assert torch.equal(cert, stays)


# --------------------------------------------------------------------------- the smoothed model


def test_votes_count_thresholded_probabilities():
    """Votes equal the brute-force count over positions of ``predict(encode(x, p)) > theta``."""
    clf = _linear_clf()
    x = _rand(3)
    for ablation, s in (("column", 2), ("block", 3)):
        for theta in (0.0, 0.1, 0.3):
            ds = DerandomizedSmoothing(clf, ablation=ablation, ablation_size=s, threshold=theta)
            want = sum(
                (clf.predict(ds.encode(x, p)) > theta).astype(np.int64)
                for p in range(ds.nb_positions)
            )
            np.testing.assert_array_equal(ds.votes(x), want)


def test_batch_size_invariance_and_determinism():
    clf = _linear_clf()
    x = _rand(5, seed=3)
    ds = DerandomizedSmoothing(clf, ablation="block", ablation_size=2, threshold=0.1)
    ref = ds.votes(x)
    for bs in (1, 7, 64, 10_000):
        np.testing.assert_array_equal(ds.set_params(batch_size=bs).votes(x), ref)
    np.testing.assert_array_equal(ds.votes(x), ref)
    assert ref.sum(axis=1).max() > 0


def test_types_in_and_out():
    ds = DerandomizedSmoothing(_linear_clf(), ablation="column", ablation_size=2)
    x = _rand(4)
    pred, cert = ds.certify(x, patch_size=2)
    assert isinstance(pred, np.ndarray) and pred.dtype == np.int64 and pred.shape == (4,)
    assert isinstance(cert, np.ndarray) and cert.dtype == np.bool_ and cert.shape == (4,)
    xt = torch.as_tensor(x)
    pred_t, cert_t = ds.certify(xt, patch_size=2)
    assert isinstance(pred_t, torch.Tensor) and pred_t.dtype == torch.int64
    assert isinstance(cert_t, torch.Tensor) and cert_t.dtype == torch.bool
    np.testing.assert_array_equal(pred_t.numpy(), pred)
    np.testing.assert_array_equal(cert_t.numpy(), cert)
    np.testing.assert_array_equal(ds.predict(x), pred)
    assert isinstance(ds.predict(xt), torch.Tensor)
    enc = ds.encode(xt, 1)
    assert isinstance(enc, torch.Tensor) and enc.shape == (4, 2, 8, 8)
    assert isinstance(ds.votes(x.astype(np.float64)), np.ndarray)


def test_predict_breaks_ties_to_the_smallest_class():
    """A model that gives classes 3 and 7 the same probability 0.5 everywhere: every ablation
    votes for both, and the smoothed prediction is 3."""

    class Tied(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.full((x.shape[0], 10), -1e4)
            z[:, 3] = z[:, 7] = 0.0
            return z

    clf = TorchClassifier(Tied(), input_shape=(2, 8, 8), nb_classes=10, clip_values=(0, 1))
    ds = DerandomizedSmoothing(clf, ablation="column", ablation_size=2, threshold=0.3)
    votes = ds.votes(_rand(2))
    assert (votes[:, 3] == 8).all() and (votes[:, 7] == 8).all()
    pred, cert = ds.certify(_rand(2), patch_size=1)
    assert (pred == 3).all() and not cert.any()


# --------------------------------------------------------------------------- soundness


def _patch_masks(m: int, side: int = 8) -> torch.Tensor:
    """Every ``m x m`` patch location in a ``side x side`` image: ``(L, 1, side, side)``."""
    out = []
    for i in range(side - m + 1):
        for j in range(side - m + 1):
            mask = torch.zeros(1, side, side)
            mask[:, i : i + m, j : j + m] = 1
            out.append(mask)
    return torch.stack(out)


def _all_ablations(ds: DerandomizedSmoothing, x: torch.Tensor) -> torch.Tensor:
    """Every ablated encoding of ``x`` (N, 1, 8, 8), written independently of the class
    (``(N, P, 2, 8, 8)``, differentiable in ``x``)."""
    ones = torch.ones(1, 1, 8, 8)
    keep = torch.stack(
        [torch.as_tensor(ds.encode(ones, p))[0, :1] for p in range(ds.nb_positions)]
    )  # (P, 1, 8, 8)
    keep = keep[None]
    return torch.cat([x[:, None] * keep, (1 - x[:, None]) * keep], dim=2)


def _pgd_patches(ds, x, label, masks, *, steps, restarts, gen):
    """For one image: a PGD on the base classifier's scores of every ablation, restricted to
    each patch location (all locations at once), that pushes the best other class over the
    predicted one; ``restarts`` random starts. Returns ``(restarts * L, 1, 8, 8)``."""
    module = ds.estimator.torch_module().eval()
    out = []
    for _ in range(restarts):
        start = torch.rand(masks.shape, generator=gen)
        x_adv = (x * (1 - masks) + start * masks).clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            enc = _all_ablations(ds, x_adv)
            z = module(enc.reshape(-1, 2, 8, 8)).log_softmax(1)
            z = z.reshape(x_adv.shape[0], -1, z.shape[1])
            other = z.clone()
            other[..., label] = -torch.inf
            gap = (other.max(dim=2).values - z[..., label]).clamp(max=2.0)
            (grad,) = torch.autograd.grad(gap.sum(), x_adv)
            with torch.no_grad():
                x_adv = (x_adv + 0.25 * grad.sign() * masks).clamp(0, 1)
        out.append(x_adv.detach())
    return torch.cat(out)


def _check_sound(ds, x_te, m, *, nb_samples, steps, restarts, nb_random=4):
    x = torch.as_tensor(x_te)
    pred, cert = ds.certify(x, patch_size=m)
    chosen = torch.nonzero(cert).flatten()[:nb_samples]
    assert chosen.numel() > 0, "no sample certified: the test would be vacuous"
    delta = ds.nb_affected(m)
    masks = _patch_masks(m)
    gen = torch.Generator().manual_seed(0)
    for i in chosen.tolist():
        xi, c = x[i : i + 1], int(pred[i])
        votes = ds.votes(xi)
        random_content = torch.rand((nb_random, *masks.shape), generator=gen)
        extremes = torch.stack([torch.zeros(masks.shape), torch.ones(masks.shape)])
        contents = torch.cat([random_content, extremes, (random_content > 0.5).float()])
        randoms = (xi * (1 - masks) + contents * masks).reshape(-1, 1, 8, 8)
        attacked = _pgd_patches(ds, xi, c, masks, steps=steps, restarts=restarts, gen=gen)
        x_adv = torch.cat([randoms, attacked])
        allowed = masks.repeat(len(x_adv) // len(masks), 1, 1, 1)
        assert float(((x_adv - xi) * (1 - allowed)).abs().max()) == 0.0, "patch leaked"
        adv_votes = ds.votes(x_adv)
        assert int((adv_votes - votes).abs().max()) <= delta, "a patch moved a count by > Delta"
        assert (ds.certify_votes(adv_votes, 0)[0] == c).all(), f"sample {i}: prediction changed"


def test_column_certificate_is_sound(column_ds, digits8):
    _, (x_te, y_te) = digits8
    pred, cert = column_ds.certify(x_te, patch_size=2)
    assert (pred == y_te).mean() > 0.85
    assert ((pred == y_te) & cert).mean() > 0.05  # nonzero certified accuracy
    _check_sound(column_ds, x_te, 2, nb_samples=6, steps=10, restarts=2)
    _check_sound(column_ds, x_te, 1, nb_samples=3, steps=10, restarts=1)


def test_block_certificate_is_sound(block_ds, digits8):
    _, (x_te, y_te) = digits8
    pred, cert = block_ds.certify(x_te[:120], patch_size=1)
    assert ((pred == y_te[:120]) & cert).mean() > 0.05
    _check_sound(block_ds, x_te[:120], 1, nb_samples=2, steps=5, restarts=1, nb_random=2)


def test_attacks_do_change_uncertified_votes(column_ds, digits8):
    """The patch attack of the soundness test is not toothless: on uncertified samples it
    changes the smoothed prediction of some."""
    _, (x_te, _) = digits8
    x = torch.as_tensor(x_te[:120])
    pred, cert = column_ds.certify(x, patch_size=3)
    masks = _patch_masks(3)
    gen = torch.Generator().manual_seed(0)
    flipped = 0
    for i in torch.nonzero(~cert).flatten()[:10].tolist():
        x_adv = _pgd_patches(
            column_ds, x[i : i + 1], int(pred[i]), masks, steps=10, restarts=1, gen=gen
        )
        flipped += int((column_ds.predict(x_adv) != pred[i]).any())
    assert flipped >= 3


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"ablation": "row"}, "ablation"),
        ({"ablation_size": 0}, "ablation_size"),
        ({"ablation_size": 9}, "ablation_size"),
        ({"threshold": 1.0}, "threshold"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_parameters(params, match):
    ds = DerandomizedSmoothing(_linear_clf(), **params)
    with pytest.raises(InvalidParameterError, match=match):
        ds.predict(_rand(2))


def test_bad_estimators_and_inputs():
    x = _rand(2)
    with pytest.raises(InvalidParameterError, match="input_shape"):
        DerandomizedSmoothing(_linear_clf((1, 8, 8))).predict(x)
    with pytest.raises(InvalidParameterError, match="input_shape"):
        DerandomizedSmoothing(_linear_clf((128,))).predict(x)
    with pytest.raises(InvalidParameterError, match="clip_values"):
        DerandomizedSmoothing(_linear_clf(clip=(0.0, 0.5))).predict(x * 0.5)
    ds = DerandomizedSmoothing(_linear_clf(), ablation_size=2)
    with pytest.raises(InvalidParameterError, match="patch_size"):
        ds.certify(x, patch_size=0)
    with pytest.raises(InvalidParameterError, match="patch_size"):
        ds.certify(x, patch_size=9)
    with pytest.raises(InputError, match="shape"):
        ds.predict(_rand(2, shape=(2, 8, 8)))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ds.predict(bad)
    with pytest.raises(InvalidParameterError, match="position"):
        ds.encode(x, 8)
    est = _linear_clf()
    bb = black_box(lambda z: est.predict(z), (2, 8, 8), 10)
    DerandomizedSmoothing(bb, ablation_size=2).predict(x)  # predict needs only predict
    with pytest.raises(EstimatorError, match="fit"):
        DerandomizedSmoothing(bb, ablation_size=2).fit(x, np.array([0, 1]))


def _rows():
    from bastion.testing._bad_inputs_derandomized import derandomized_cases

    return derandomized_cases(DerandomizedSmoothing)


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r.id)
def test_bad_input_rows(row):
    row.run()
