"""TorchClassifier(inference=...): opt-in frozen oneDNN graphs for forward-only work, faithful
to the eager model's tensors (rebuilt on every change, bypassed for hooks, abandoned when
unfaithful). The default runs the module eagerly."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.estimators import TorchClassifier
from bastion.exceptions import InvalidParameterError
from bastion.zoo import SmallCNN

SHAPE = (1, 8, 8)


def _pair(model: nn.Module, **kwargs) -> tuple[TorchClassifier, TorchClassifier]:
    frozen = TorchClassifier(model, input_shape=SHAPE, nb_classes=10, inference="auto", **kwargs)
    eager = TorchClassifier(
        copy.deepcopy(model), input_shape=SHAPE, nb_classes=10, inference="eager", **kwargs
    )
    return frozen, eager


def _graph_count(clf: TorchClassifier) -> int:
    assert clf._frozen is not None
    return len(clf._frozen._graphs)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(37, *SHAPE, generator=torch.Generator().manual_seed(0))


def test_auto_freezes_float32_cnns_on_the_cpu_only():
    auto = {"input_shape": SHAPE, "nb_classes": 10, "inference": "auto"}
    cnn = TorchClassifier(SmallCNN(input_size=8), **auto)
    assert cnn._frozen is not None and "inference='auto'" in repr(cnn)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert TorchClassifier(mlp, **auto)._frozen is None
    forced = TorchClassifier(mlp, input_shape=SHAPE, nb_classes=10, inference="frozen")
    assert forced._frozen is not None
    double = TorchClassifier(SmallCNN(input_size=8).double(), **auto)
    assert double._frozen is None
    default = TorchClassifier(SmallCNN(input_size=8), input_shape=SHAPE, nb_classes=10)
    assert default._frozen is None and "inference='eager'" in repr(default)


def test_the_default_calls_the_module_once_per_query(x):
    """A model whose forward has a side effect (a call counter) sees every forward pass the
    work needs, once: the faithful default; the frozen graph would replay tensors only."""

    class Counting(SmallCNN):
        calls = 0

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            type(self).calls += inp.shape[0]
            return super().forward(inp)

    clf = TorchClassifier(Counting(input_size=8, random_state=0), input_shape=SHAPE, nb_classes=10)
    clf.predict(x, batch_size=16)
    clf.get_activations(x, "conv1")
    assert Counting.calls == 2 * 37 and clf.query_count == 37


def test_small_batches_run_eagerly(x):
    frozen, eager = _pair(SmallCNN(input_size=8, random_state=0))
    torch.testing.assert_close(frozen.predict(x, batch_size=7), eager.predict(x, batch_size=7))
    assert _graph_count(frozen) == 0  # below 8 samples the frozen path does not pay
    frozen.predict(x, batch_size=8)
    assert _graph_count(frozen) == 1


def test_at_most_four_graphs_are_kept(x):
    frozen, eager = _pair(SmallCNN(input_size=8, random_state=0))
    layers = ("conv1", "relu1", "pool1", "conv2", "relu2", "fc1")
    for layer in layers:
        frozen.get_activations(x, layer)
    assert _graph_count(frozen) == 4
    for layer in layers:  # evicted graphs are rebuilt, and still right
        torch.testing.assert_close(
            frozen.get_activations(x, layer), eager.get_activations(x, layer)
        )


def test_bad_inference_mode_raises():
    with pytest.raises(InvalidParameterError, match="inference"):
        TorchClassifier(SmallCNN(input_size=8), input_shape=SHAPE, nb_classes=10, inference="jit")


def test_frozen_matches_eager_for_predictions_logits_and_activations(x):
    frozen, eager = _pair(SmallCNN(input_size=8, random_state=0), preprocessing=(0.5, 0.25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the CNN freezes faithfully
        for batch_size in (5, 16, 37):  # several input shapes, incl. a ragged last batch
            torch.testing.assert_close(
                frozen.predict(x, batch_size=batch_size), eager.predict(x, batch_size=batch_size)
            )
            torch.testing.assert_close(
                frozen.logits(x, batch_size=batch_size), eager.logits(x, batch_size=batch_size)
            )
        for layer in ("conv1", "pool2", "relu3", "fc2"):
            a = frozen.get_activations(x, layer, batch_size=16)
            b = eager.get_activations(x, layer, batch_size=16)
            assert a.is_contiguous()
            torch.testing.assert_close(a, b)
    assert frozen._frozen is not None and frozen._frozen.disabled is None
    assert _graph_count(frozen) == 4  # logits + four layers, the least recent dropped


def test_graph_is_rebuilt_after_every_kind_of_weight_change(x):
    model = SmallCNN(input_size=8, random_state=0)
    frozen, eager = _pair(model)

    def same() -> None:
        torch.testing.assert_close(frozen.logits(x), eager.logits(x))

    same()
    with torch.no_grad():  # in place: the version counter moves
        model.fc2.weight[0].mul_(-3.0)
        eager.model.fc2.weight[0].mul_(-3.0)
    same()
    model.conv1.weight.data[0].fill_(0.7)  # through .data: only the checksum sees it
    eager.model.conv1.weight.data[0].fill_(0.7)
    same()
    new = SmallCNN(input_size=8, random_state=3).state_dict()
    model.load_state_dict(new)
    eager.model.load_state_dict(new)
    same()
    model.fc1.bias = nn.Parameter(torch.ones(128))  # a new tensor
    eager.model.fc1.bias = nn.Parameter(torch.ones(128))
    same()
    model.relu3 = nn.Tanh()  # a parameter-free sub-module replaced
    eager.model.relu3 = nn.Tanh()
    same()
    model.relu3 = nn.LeakyReLU(0.1)
    eager.model.relu3 = nn.LeakyReLU(0.1)
    same()
    model.relu3.negative_slope = 0.5  # a plain attribute the forward reads
    eager.model.relu3.negative_slope = 0.5
    same()
    y = torch.arange(37) % 10
    frozen.fit(x, y, epochs=1, random_state=0)  # training steps, then back to eval
    eager.fit(x, y, epochs=1, random_state=0)
    same()


def test_submodule_mode_change_is_seen(x):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(144, 10)
    )
    model.eval()
    frozen = TorchClassifier(model, input_shape=SHAPE, nb_classes=10, inference="auto")
    frozen.predict(x)
    assert _graph_count(frozen) == 1
    model[3].train()  # MC dropout: the eager model is random now, the eval-mode graph is not
    with pytest.warns(RuntimeWarning, match="eagerly"):
        frozen.predict(x)
    assert frozen._frozen is not None and frozen._frozen.disabled is not None


def test_forward_hooks_bypass_the_frozen_graph(x):
    model = SmallCNN(input_size=8, random_state=0)
    frozen, eager = _pair(model)
    frozen.predict(x)  # a graph exists
    calls: list[int] = []
    handle = model.conv1.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        torch.testing.assert_close(frozen.predict(x), eager.predict(x))
    finally:
        handle.remove()
    assert sum(calls) == 37  # the user's hook saw every sample
    calls.clear()
    frozen.predict(x)
    assert not calls


class _Branchy(nn.Module):
    """Data-dependent control flow: a trace would record one branch only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(72, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(1)
        if h.mean() > 0:
            h = -h
        return self.fc(h)


def test_untraceable_model_runs_eagerly_with_one_warning(x):
    model = _Branchy()
    frozen, eager = _pair(model, clip_values=None)
    with pytest.warns(RuntimeWarning, match="TracerWarning|tracing is not reliable"):
        out = frozen.logits(x)
    torch.testing.assert_close(out, eager.logits(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(frozen.logits(-x), eager.logits(-x))


class _Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(72, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(self.conv(x).flatten(1), 0.5, training=True))


def test_random_model_is_not_frozen(x):
    frozen = TorchClassifier(_Noisy(), input_shape=SHAPE, nb_classes=10, inference="frozen")
    with pytest.warns(RuntimeWarning, match="does not reproduce"):
        frozen.predict(x)
    assert frozen._frozen is not None and frozen._frozen.disabled is not None


def test_gradients_never_use_the_frozen_graph(x):
    frozen, eager = _pair(SmallCNN(input_size=8, random_state=0))
    y = torch.arange(37) % 10
    torch.testing.assert_close(frozen.loss_gradient(x, y), eager.loss_gradient(x, y))
    torch.testing.assert_close(frozen.class_gradient(x), eager.class_gradient(x))
    assert _graph_count(frozen) == 0
    with torch.enable_grad():
        z = frozen.logits_tensor(x.requires_grad_(True))
    assert z.requires_grad


def test_pickle_and_deepcopy_rebuild_their_graphs(x):
    frozen = TorchClassifier(
        SmallCNN(input_size=8, random_state=0), input_shape=SHAPE, nb_classes=10, inference="auto"
    )
    expected = frozen.predict(x)
    for clone in (pickle.loads(pickle.dumps(frozen)), copy.deepcopy(frozen)):
        assert clone._frozen is not None and not clone._frozen._graphs
        torch.testing.assert_close(clone.predict(x), expected)
