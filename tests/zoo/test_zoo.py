"""Tests of bastion.zoo: reference models, seeded initialisation and the trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bastion.datasets import load_digits
from bastion.exceptions import InputError, InvalidParameterError
from bastion.zoo import MLP, SmallCNN, SmallResNet, train_classifier


@pytest.fixture(scope="module")
def digits8():
    return load_digits(8, random_state=0)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- architectures


@pytest.mark.parametrize(
    ("model", "x_shape"),
    [
        (SmallCNN(), (2, 1, 28, 28)),
        (SmallCNN(input_size=8, nb_classes=4), (3, 1, 8, 8)),
        (SmallCNN(in_channels=3, input_size=32, random_state=0), (2, 3, 32, 32)),
        (SmallCNN(input_size=9), (1, 1, 9, 9)),
        (MLP(64, 10), (4, 1, 8, 8)),
        (MLP(12, 3, hidden=()), (4, 12)),
        (SmallResNet(), (2, 3, 32, 32)),
        (SmallResNet(5, in_channels=1, width=4, blocks=(2, 1, 3), random_state=1), (2, 1, 28, 28)),
    ],
)
def test_output_shapes(model, x_shape):
    out = model.eval()(torch.rand(x_shape))
    assert out.shape == (x_shape[0], model.nb_classes)
    assert out.dtype == torch.float32


def test_layer_names():
    assert [n for n, _ in SmallCNN().named_children()] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2",
    ]  # fmt: skip
    assert [n for n, _ in MLP(4, 2, hidden=(8, 8)).named_children()] == [
        "flatten", "fc1", "relu1", "fc2", "relu2", "fc3",
    ]  # fmt: skip
    resnet = SmallResNet(width=8, blocks=(1, 2, 1))
    assert [n for n, _ in resnet.named_children()] == [
        "stem", "stage1", "stage2", "stage3", "pool", "flatten", "fc",
    ]  # fmt: skip
    names = dict(resnet.named_modules())
    assert names["stage2.0.conv1"].stride == (2, 2)
    assert names["stage2.0.conv1"].out_channels == 16
    assert names["stage3.0.conv2"].out_channels == 32
    assert names["stage2.1.conv1"].stride == (1, 1)
    assert isinstance(names["stage1.0.shortcut"], nn.Identity)
    assert names["fc"].in_features == 32


def test_small_cnn_flattened_size_follows_input_size():
    assert SmallCNN(input_size=8).fc1.in_features == 64 * 2 * 2
    assert SmallCNN(input_size=28).fc1.in_features == 64 * 7 * 7


def test_resnet_residual_path_is_used():
    # Zeroing a block's second batch-norm leaves only its shortcut: the output must still depend
    # on that block's input, which it would not without the residual connection.
    block = SmallResNet(random_state=0).stage1[0].eval()
    nn.init.zeros_(block.bn2.weight)
    x = torch.rand(1, 16, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (lambda: SmallCNN(input_size=2), "input_size"),
        (lambda: SmallCNN(nb_classes=1), "nb_classes"),
        (lambda: SmallCNN(random_state="seed"), "random_state"),
        (lambda: MLP(0, 10), "in_features"),
        (lambda: MLP(10, 10, hidden=(8, 0)), "hidden"),
        (lambda: SmallResNet(blocks=(1, 1)), "blocks"),
        (lambda: SmallResNet(width=0), "width"),
    ],
)
def test_invalid_parameters(factory, name):
    with pytest.raises(InvalidParameterError, match=f"'{name}'"):
        factory()


# ----------------------------------------------------------------------------- seeded init


@pytest.mark.parametrize(
    "factory",
    [
        lambda rs: SmallCNN(input_size=8, random_state=rs),
        lambda rs: MLP(64, 10, random_state=rs),
        lambda rs: SmallResNet(width=4, random_state=rs),
    ],
)
def test_seeded_init_is_reproducible_and_leaves_global_rng_alone(factory):
    state = torch.get_rng_state()
    a, b, c = factory(0), factory(0), factory(1)
    d = factory(torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_state(a, b)
    assert _same_state(a, d)
    assert not _same_state(a, c)
    assert all(p.device.type == "cpu" and p.requires_grad for p in a.parameters())


@pytest.mark.parametrize(
    "factory",
    [
        lambda rs: SmallCNN(input_size=8, random_state=rs),
        lambda rs: MLP(64, 10, hidden=(32, 16), random_state=rs),
        lambda rs: SmallResNet(width=4, blocks=(2, 1, 1), random_state=rs),
    ],
)
def test_seeded_init_matches_pytorch_default_init(factory):
    # PyTorch's own initialisation, drawn from the global RNG seeded with the same seed (the
    # state is restored afterwards), must give exactly the same parameters.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        reference = factory(None)
    assert _same_state(factory(7), reference)


def test_seeded_init_values():
    model = SmallResNet(width=8, random_state=0)
    fc = model.fc
    bound = 1 / math.sqrt(fc.in_features)
    assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound
    assert fc.bias.abs().max() <= bound
    bn = model.stem.bn
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    assert torch.equal(bn.running_mean, torch.zeros(8))
    assert torch.equal(bn.running_var, torch.ones(8))
    assert int(bn.num_batches_tracked) == 0


def test_unseeded_models_differ():
    assert not _same_state(MLP(8, 2), MLP(8, 2))


# ----------------------------------------------------------------------------- training


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_train_small_cnn_on_digits(digits8):
    (x_train, y_train), (x_test, y_test) = digits8
    model = SmallCNN(input_size=8, random_state=0)
    assert _accuracy(model, x_test, y_test) < 0.3
    trained = train_classifier(model, x_train, y_train, epochs=8, random_state=0)
    assert trained is model
    assert not model.training
    assert _accuracy(model, x_test, y_test) > 0.9


def test_train_is_deterministic_and_leaves_global_rng_alone(digits8):
    (x_train, y_train), _ = digits8
    state = torch.get_rng_state()
    runs = [
        train_classifier(MLP(64, 10, random_state=0), x_train, y_train, epochs=2, random_state=rs)
        for rs in (3, 3, 4)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_state(runs[0], runs[1])
    assert not _same_state(runs[0], runs[2])


def test_train_accepts_tensors_and_one_hot(digits8):
    (x_train, y_train), (x_test, y_test) = digits8
    x = torch.from_numpy(x_train)
    y_onehot = torch.nn.functional.one_hot(torch.from_numpy(y_train), 10).float()
    model = train_classifier(
        MLP(64, 10, random_state=1), x, y_onehot, epochs=10, batch_size=32, random_state=0
    )
    assert _accuracy(model, x_test, y_test) > 0.9
    reference = train_classifier(
        MLP(64, 10, random_state=1), x_train, y_train, epochs=10, batch_size=32, random_state=0
    )
    assert _same_state(model, reference)


def test_train_verbose_shows_progress_only_when_asked(digits8, capsys):
    (x_train, y_train), _ = digits8
    train_classifier(MLP(64, 10), x_train[:100], y_train[:100], epochs=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    train_classifier(MLP(64, 10), x_train[:100], y_train[:100], epochs=2, verbose=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "loss=" in captured.err and "accuracy=" in captured.err


def test_train_input_validation(digits8):
    (x_train, y_train), _ = digits8
    x, y = x_train[:20], y_train[:20]
    model = MLP(64, 10)
    with pytest.raises(InputError, match="19 labels but x has 20 samples"):
        train_classifier(model, x, y[:19])
    with pytest.raises(InputError, match="outside the 10 classes"):
        train_classifier(model, x, y + 5)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        train_classifier(model, bad, y)
    with pytest.raises(InputError, match="empty"):
        train_classifier(model, x[:0], y[:0])
    with pytest.raises(InvalidParameterError, match="'epochs'"):
        train_classifier(model, x, y, epochs=0)
    with pytest.raises(InvalidParameterError, match="'batch_size'"):
        train_classifier(model, x, y, batch_size=0)
    with pytest.raises(InvalidParameterError, match="'learning_rate'"):
        train_classifier(model, x, y, learning_rate=0.0)
    with pytest.raises(InvalidParameterError, match="'model'"):
        train_classifier(nn.ReLU(), x, y)
    with pytest.raises(InvalidParameterError, match="'device'"):
        train_classifier(model, x, y, device="not-a-device")
