"""The estimator protocol's newer capabilities (activation and parameter gradients, clone,
prune, soft-target and warm-started fit), the checks of model outputs, and faithfulness to the
user's module (its mode, layout and hooks are left as they were)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.estimators import EOT, BlackBoxClassifier, TorchClassifier
from bastion.estimators.base import EstimatorWrapper
from bastion.exceptions import EstimatorError, InputError, ModelError
from bastion.zoo import SmallCNN

SHAPE = (1, 8, 8)


def _cnn(seed: int = 0, **kwargs) -> TorchClassifier:
    return TorchClassifier(
        SmallCNN(input_size=8, random_state=seed), input_shape=SHAPE, nb_classes=10, **kwargs
    )


def _x(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _finite_difference(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of a scalar function of a float64 tensor."""
    g = torch.zeros_like(x)
    flat, gflat = x.view(-1), g.view(-1)
    for i in range(flat.numel()):
        old = float(flat[i])
        flat[i] = old + eps
        hi = float(f(x))
        flat[i] = old - eps
        lo = float(f(x))
        flat[i] = old
        gflat[i] = (hi - lo) / (2 * eps)
    return g


def test_activation_gradient_matches_finite_differences():
    clf = TorchClassifier(
        SmallCNN(input_size=8, random_state=0).double(),
        input_shape=SHAPE,
        nb_classes=10,
        clip_values=None,
    )
    x = _x(2).double()
    width = clf.activations_tensor(x, "relu2").flatten(1).shape[1]
    target = torch.randn(2, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def objective(act: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        return ((act.flatten(1) - target[rows]) ** 2).sum(dim=1)

    grad, value, acts = clf.activation_gradient_tensor(x, "relu2", objective)
    assert acts.shape[0] == 2 and value.shape == (2,)
    torch.testing.assert_close(acts, clf.activations_tensor(x, "relu2"))
    for i in range(2):
        fd = _finite_difference(
            lambda xi, i=i: objective(clf.activations_tensor(xi, "relu2"), slice(i, i + 1))[0],
            x[i : i + 1].clone(),
        )
        torch.testing.assert_close(grad[i : i + 1], fd, rtol=1e-4, atol=1e-6)
    assert clf.gradient_count == 2


def test_parameter_gradient_is_the_loss_gradient_and_differentiable_in_x():
    clf = _cnn()
    x, y = _x(), torch.arange(6) % 10
    grads = clf.parameter_gradient_tensor(x, y)
    model = copy.deepcopy(clf.model).eval()
    loss = F.cross_entropy(model(x), y)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)
    # create_graph: a function of the parameter gradient differentiates with respect to x
    xr = x.clone().requires_grad_(True)
    with torch.enable_grad():
        g = clf.parameter_gradient_tensor(xr, y, create_graph=True)
        (dx,) = torch.autograd.grad(sum((t * t).sum() for t in g), xr)
    assert dx.shape == x.shape and float(dx.abs().sum()) > 0


def test_clone_is_independent_and_reinitialises_on_request():
    clf = _cnn()
    x = _x()
    twin = clf.clone()
    assert twin.model is not clf.model and twin.query_count == 0
    torch.testing.assert_close(twin.predict(x), clf.predict(x))
    with torch.no_grad():
        next(twin.model.parameters()).add_(1.0)
    assert not torch.allclose(twin.predict(x), clf.predict(x))
    fresh_a = clf.clone(reinitialize=True, random_state=3)
    fresh_b = clf.clone(reinitialize=True, random_state=3)
    torch.testing.assert_close(fresh_a.predict(x), fresh_b.predict(x))
    assert not torch.allclose(fresh_a.predict(x), clf.predict(x))


def test_prune_zeroes_units_and_survives_clone_and_training():
    clf = _cnn().clone()
    x = _x()
    clf.prune("relu2", [0, 3])
    act = clf.get_activations(x, "relu2")
    assert float(act[:, [0, 3]].abs().sum()) == 0 and float(act[:, 1].abs().sum()) > 0
    copy_ = clf.clone()
    assert float(copy_.get_activations(x, "relu2")[:, [0, 3]].abs().sum()) == 0
    clf.fit(x, torch.arange(6), epochs=2, random_state=0)
    assert float(clf.get_activations(x, "relu2")[:, [0, 3]].abs().sum()) == 0
    clf.prune("relu2", [])  # restores the layer
    assert float(clf.get_activations(x, "relu2")[:, 0].abs().sum()) > 0
    with pytest.raises(InputError, match="units"):
        clf.prune("relu2", [99])
    with pytest.raises(InputError, match="unknown layer"):
        clf.prune("nope", [0])


def test_fit_on_soft_targets_and_warm_start_equals_one_run():
    x = _x(32)
    y = torch.arange(32) % 10
    soft = F.softmax(torch.randn(32, 10, generator=torch.Generator().manual_seed(0)), dim=1)
    a, b = _cnn(), _cnn()
    a.fit(x, soft, epochs=2, batch_size=32, random_state=0)
    gen = torch.Generator().manual_seed(0)
    b.fit(x, soft, epochs=1, batch_size=32, random_state=gen)
    b.fit(x, soft, epochs=1, batch_size=32, random_state=gen, warm_start=True)
    torch.testing.assert_close(a.predict(x), b.predict(x))
    # one-hot rows are class indices
    c, d = _cnn(), _cnn()
    c.fit(x, F.one_hot(y, 10).float(), random_state=0)
    d.fit(x, y, random_state=0)
    torch.testing.assert_close(c.predict(x), d.predict(x))
    with pytest.raises(InputError, match="probabilities"):
        _cnn().fit(x, soft * 2, random_state=0)


def test_the_users_model_is_left_as_it_was():
    model = SmallCNN(input_size=8, random_state=0)
    model.fc1.eval()  # a mixed-mode model
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    clf = TorchClassifier(model, input_shape=SHAPE, nb_classes=10)
    x, y = _x(), torch.arange(6)
    clf.predict(x)
    clf.loss_gradient(x, y)
    clf.class_gradient(x)
    clf.get_activations(x, "conv2")
    clf.activation_gradient_tensor(x, "conv2", lambda a: a.flatten(1).sum(1))
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous()
    model.conv1.weight.view(-1)


class _Bad(nn.Module):
    def __init__(self, fill: float = float("nan"), classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(64, classes)
        self.fill = fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.flatten(1))
        return torch.where(torch.arange(x.shape[0])[:, None] == 1, self.fill, z)


@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_non_finite_outputs_raise_a_model_error(fill):
    clf = TorchClassifier(_Bad(fill), input_shape=SHAPE, nb_classes=10)
    x = _x(4)
    for call in (
        lambda: clf.predict(x),
        lambda: clf.logits(x),
        lambda: clf.loss_gradient(x, [0, 1, 2, 3]),
        lambda: clf.class_gradient(x),
    ):
        with pytest.raises(ModelError, match=r"TorchClassifier.*rows 1"):
            call()
    assert clf.query_count == 0  # unanswered queries are not counted


def test_wrong_nb_classes_or_input_shape_raise_a_model_error():
    wrong_k = TorchClassifier(_Bad(0.0, classes=7), input_shape=SHAPE, nb_classes=10)
    with pytest.raises(ModelError, match="nb_classes"):
        wrong_k.predict(_x())
    wrong_shape = TorchClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(50, 10)), input_shape=SHAPE, nb_classes=10
    )
    with pytest.raises(ModelError, match=r"input_shape=\(1, 8, 8\)") as info:
        wrong_shape.loss_gradient(_x(), np.arange(6))
    assert isinstance(info.value.__cause__, RuntimeError)  # the model's own error, chained


def test_blackbox_answers_are_checked():
    def make(fn, **kw):
        return BlackBoxClassifier(fn, input_shape=(4,), nb_classes=3, **kw)

    x = np.random.default_rng(0).random((5, 4)).astype(np.float32)
    cases = {
        "nan": make(lambda b: np.full((len(b), 3), np.nan)),
        "strings": make(lambda b: np.array(["a"] * len(b)), labels_only=True),
        "out of range": make(lambda b: np.full(len(b), 3), labels_only=True),
        "fractional": make(lambda b: np.full(len(b), 0.5), labels_only=True),
        "wrong count": make(lambda b: np.zeros((len(b) + 1, 3))),
    }
    for name, clf in cases.items():
        with pytest.raises(ModelError):
            clf.predict(x)
        assert clf.query_count == 0, name

    def broken(b):
        raise ConnectionError("endpoint down")

    with pytest.raises(ModelError, match="ConnectionError") as info:
        make(broken).predict(x)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_wrappers_forward_only_what_they_list():
    clf = _cnn()

    class Quiet(EstimatorWrapper):
        forwarded = frozenset({"predict", "activations"})

    q = Quiet(clf)
    assert q.capabilities == {"predict", "activations"}
    x = _x()
    torch.testing.assert_close(q.predict(x), clf.predict(x))
    torch.testing.assert_close(q.get_activations(x, "conv1"), clf.get_activations(x, "conv1"))
    assert q.query_count == 6 and clf.query_count == 12
    with pytest.raises(EstimatorError, match="loss_gradient"):
        q.loss_gradient(x, np.arange(6))
    assert EOT(clf, nb_samples=2).capabilities == {
        "predict",
        "logits",
        "loss_gradient",
        "class_gradient",
    }


def test_generic_gradients_from_a_vector_jacobian_product_match_autograd():
    """An estimator that implements only ``_logits`` and ``_logits_vjp`` gets loss, class and
    objective gradients from the base class; they equal the fused torch kernels."""
    clf = _cnn()

    class VjpOnly(TorchClassifier):
        _objective_gradient = TorchClassifier.__mro__[1]._objective_gradient
        _class_gradient_and_logits = TorchClassifier.__mro__[1]._class_gradient_and_logits
        _loss_gradient = TorchClassifier.__mro__[1]._loss_gradient

    generic = VjpOnly(clf.model, input_shape=SHAPE, nb_classes=10)
    x, y = _x(), torch.arange(6)
    torch.testing.assert_close(generic.loss_gradient(x, y), clf.loss_gradient(x, y))
    torch.testing.assert_close(generic.class_gradient(x), clf.class_gradient(x))
    torch.testing.assert_close(generic.class_gradient(x, 3), clf.class_gradient(x, 3))
    lab = torch.tensor([[1, 2]] * 6)
    torch.testing.assert_close(
        generic.class_gradient_tensor(x, lab), clf.class_gradient_tensor(x, lab)
    )
