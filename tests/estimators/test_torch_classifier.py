import numpy as np
import pytest
import torch
from torch import nn

from bastion.estimators import TorchClassifier
from bastion.exceptions import InputError, InvalidParameterError


def _net(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lin1 = nn.Linear(12, 8, device="meta").to_empty(device="cpu")
    lin2 = nn.Linear(8, 3, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for p in (*lin1.parameters(), *lin2.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    return nn.Sequential(nn.Flatten(), lin1, nn.Softplus(), lin2).to(dtype)


def _data(n=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 2, 2, generator=g, dtype=dtype), torch.tensor([0, 1, 2, 1, 0][:n])


def test_loss_gradient_matches_finite_differences_per_coordinate():
    clf = TorchClassifier(_net(), input_shape=(3, 2, 2), nb_classes=3)
    x, y = _data()
    grad = clf.loss_gradient(x, y)
    h = 1e-6
    fd = torch.zeros_like(x)
    flat = x.reshape(len(x), -1)
    for j in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, j] = h
        lp = nn.functional.cross_entropy(
            clf.logits((flat + e).reshape(x.shape)), y, reduction="none"
        )
        lm = nn.functional.cross_entropy(
            clf.logits((flat - e).reshape(x.shape)), y, reduction="none"
        )
        fd.reshape(len(x), -1)[:, j] = (lp - lm) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_class_gradient_is_full_jacobian_in_one_call():
    clf = TorchClassifier(_net(), input_shape=(3, 2, 2), nb_classes=3)
    x, _ = _data()
    jac = clf.class_gradient(x)
    expected = torch.func.vmap(torch.func.jacrev(lambda s: clf.model(s.unsqueeze(0))[0]))(x)
    torch.testing.assert_close(jac, expected)
    torch.testing.assert_close(clf.class_gradient(x, label=2), expected[:, 2])
    labels = np.array([2, 0, 1, 1, 0])
    torch.testing.assert_close(clf.class_gradient(x, label=labels), expected[range(5), labels])
    with pytest.raises(InputError):
        clf.class_gradient(x, label=3)


def test_preprocessing_is_inside_the_estimator():
    net = _net()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    clf = TorchClassifier(net, input_shape=(3, 2, 2), nb_classes=3, preprocessing=(mean, std))
    x, y = _data()
    m = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(clf.logits(x), net((x - m) / s))
    # gradient in input space: chain rule through the normalisation
    xr = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(net((xr - m) / s), y, reduction="sum").backward()
    torch.testing.assert_close(clf.loss_gradient(x, y), xr.grad)


def test_types_devices_and_counts():
    clf = TorchClassifier(_net(dtype=torch.float32), input_shape=(3, 2, 2), nb_classes=3)
    x, y = _data(dtype=torch.float32)
    p = clf.predict(x.numpy().astype(np.float64), batch_size=2)
    assert isinstance(p, np.ndarray) and p.dtype == np.float64 and p.shape == (5, 3)
    assert clf.query_count == 5
    g = clf.loss_gradient(x, y)
    assert isinstance(g, torch.Tensor) and g.shape == x.shape and clf.gradient_count == 5
    clf.reset_counts()
    assert clf.query_count == 0 and clf.gradient_count == 0


def test_custom_loss_with_mean_reduction_still_gives_per_sample_gradients():
    clf_sum = TorchClassifier(_net(), input_shape=(3, 2, 2), nb_classes=3)
    clf_mean = TorchClassifier(
        _net(), input_shape=(3, 2, 2), nb_classes=3, loss=nn.CrossEntropyLoss(reduction="mean")
    )
    x, y = _data()
    torch.testing.assert_close(clf_mean.loss_gradient(x, y), clf_sum.loss_gradient(x, y))


def test_activations_by_name_and_index_and_hooks_removed():
    clf = TorchClassifier(_net(), input_shape=(3, 2, 2), nb_classes=3)
    assert clf.layer_names == ["0", "1", "2", "3"]
    x, _ = _data()
    act = clf.get_activations(x, "2", batch_size=2)
    torch.testing.assert_close(act, nn.functional.softplus(clf.model[1](x.reshape(5, -1))))
    torch.testing.assert_close(clf.get_activations(x, -1), clf.logits(x))
    assert all(not m._forward_hooks for m in clf.model.modules())
    with pytest.raises(InputError, match="unknown layer"):
        clf.get_activations(x, "fc9")
    with pytest.raises(InputError, match="out of range"):
        clf.get_activations(x, 7)


def test_fit_learns_and_is_seeded(digits28):
    (x_tr, y_tr), (x_te, y_te) = digits28
    from bastion.zoo import MLP

    accs, weights = [], []
    for _ in range(2):
        clf = TorchClassifier(MLP(784, 10, random_state=0), input_shape=(1, 28, 28), nb_classes=10)
        assert clf.fit(x_tr, y_tr, epochs=5, learning_rate=3e-3, random_state=0) is clf
        accs.append((clf.predict(x_te).argmax(1) == y_te).mean())
        weights.append(next(clf.model.parameters()).detach().clone())
    assert accs[0] > 0.9
    assert torch.equal(weights[0], weights[1])
    assert clf.model.training  # built in train mode: fit gives the model its own mode back
    clf.model.eval()
    clf.fit(x_tr[:64], y_tr[:64], random_state=0)
    assert not any(m.training for m in clf.model.modules())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"input_shape": (0, 2)}, "input_shape"),
        ({"input_shape": "12"}, "input_shape"),
        ({"nb_classes": 1}, "nb_classes"),
        ({"clip_values": (1, 0)}, "clip_values"),
        ({"clip_values": (0, float("inf"))}, "clip_values"),
        ({"preprocessing": ([0.5], [0.0])}, "preprocessing"),
        ({"preprocessing": ([0.5] * 4, [1.0] * 4)}, "preprocessing"),
        ({"loss": "ce"}, "loss"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    args = {"input_shape": (3, 2, 2), "nb_classes": 3, **kwargs}
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of TorchClassifier"):
        TorchClassifier(_net(), **args)


def test_raw_model_type_is_rejected():
    with pytest.raises(InvalidParameterError, match=r"torch\.nn\.Module"):
        TorchClassifier(lambda x: x, input_shape=(2,), nb_classes=2)


def test_class_gradient_kernel_for_several_classes_per_sample():
    clf = TorchClassifier(_net(), input_shape=(3, 2, 2), nb_classes=3)
    x, _ = _data()
    full = clf.class_gradient_tensor(x)
    picks = torch.tensor([[2, 0], [1, 2], [0, 1], [2, 1], [0, 2]])
    some = clf.class_gradient_tensor(x, picks)
    assert some.shape == (5, 2, 3, 2, 2)
    torch.testing.assert_close(some, full[torch.arange(5).unsqueeze(1), picks])


def test_the_estimator_pickles_with_its_default_loss():
    """Saving an estimator (or sending it to a worker process) must not fail on the loss."""
    import pickle

    from bastion.zoo import SmallCNN

    clf = TorchClassifier(
        SmallCNN(input_size=8, random_state=0), input_shape=(1, 8, 8), nb_classes=10
    )
    x, y = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    copy = pickle.loads(pickle.dumps(clf))
    torch.testing.assert_close(copy.predict(x), clf.predict(x))
    torch.testing.assert_close(copy.loss_gradient(x, y), clf.loss_gradient(x, y))
