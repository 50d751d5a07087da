"""TorchClassifier's memory_format: opt-in channels-last convolution weights on the CPU, same
results; the default leaves the user's model alone."""

import pytest
import torch

from bastion.estimators import TorchClassifier
from bastion.exceptions import InvalidParameterError
from bastion.zoo import MLP, SmallCNN


def _cl(model: torch.nn.Module) -> bool:
    return model.conv2.weight.is_contiguous(memory_format=torch.channels_last) and not (
        model.conv2.weight.is_contiguous()
    )


def test_auto_stores_conv_weights_channels_last_with_the_same_results():
    # Three input channels: with one, NCHW and NHWC gradients have the same strides and a
    # layout leak could not show.
    reference = SmallCNN(in_channels=3, input_size=8, random_state=0)
    model = SmallCNN(in_channels=3, input_size=8, random_state=0)
    shape = (3, 8, 8)
    nchw = TorchClassifier(reference, input_shape=shape, nb_classes=10, memory_format="preserve")
    auto = TorchClassifier(model, input_shape=shape, nb_classes=10, memory_format="auto")
    assert _cl(auto.model) and not _cl(nchw.model)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)  # values unchanged
    x = torch.rand(16, *shape)
    y = torch.randint(0, 10, (16,))
    torch.testing.assert_close(auto.predict(x), nchw.predict(x), rtol=1e-5, atol=1e-6)
    g_auto, g_ref = auto.loss_gradient(x, y), nchw.loss_gradient(x, y)
    assert g_auto.is_contiguous()
    torch.testing.assert_close(g_auto, g_ref, rtol=1e-4, atol=1e-6)
    g_obj = auto.objective_gradient_tensor(x, lambda z: z[:, 0])[0]
    assert g_obj.is_contiguous()
    torch.testing.assert_close(
        g_obj, nchw.objective_gradient_tensor(x, lambda z: z[:, 0])[0], rtol=1e-4, atol=1e-6
    )
    jac = auto.class_gradient(x)
    assert jac.is_contiguous()
    torch.testing.assert_close(jac, nchw.class_gradient(x), rtol=1e-4, atol=1e-6)
    act = auto.get_activations(x, "conv2")
    assert act.is_contiguous()
    torch.testing.assert_close(act, nchw.get_activations(x, "conv2"), rtol=1e-5, atol=1e-6)


def test_models_without_images_or_convolutions_are_left_alone():
    mlp = MLP(64, 10, random_state=0)
    TorchClassifier(mlp, input_shape=(64,), nb_classes=10, memory_format="auto")
    assert all(p.is_contiguous() for p in mlp.parameters())
    cnn = SmallCNN(input_size=8, random_state=0)
    clf = TorchClassifier(cnn, input_shape=(1, 8, 8), nb_classes=10)  # the default
    assert not _cl(cnn) and "memory_format='preserve'" in repr(clf)
    cnn.conv2.weight.view(-1)  # still a plain NCHW tensor
    forced = SmallCNN(input_size=8, random_state=0)
    clf = TorchClassifier(
        forced, input_shape=(1, 8, 8), nb_classes=10, memory_format="channels_last"
    )
    assert _cl(forced)
    assert "memory_format='channels_last'" in repr(clf)


def test_training_a_channels_last_model_matches_nchw():
    a, b = SmallCNN(input_size=8, random_state=0), SmallCNN(input_size=8, random_state=0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    ca = TorchClassifier(a, input_shape=(1, 8, 8), nb_classes=10, memory_format="channels_last")
    cb = TorchClassifier(b, input_shape=(1, 8, 8), nb_classes=10)
    ca.fit(x, y, epochs=2, batch_size=16, random_state=0)
    cb.fit(x, y, epochs=2, batch_size=16, random_state=0)
    torch.testing.assert_close(a.fc2.weight, b.fc2.weight, rtol=1e-3, atol=1e-5)


def test_bad_memory_format_raises():
    with pytest.raises(InvalidParameterError, match="memory_format"):
        TorchClassifier(
            SmallCNN(input_size=8), input_shape=(1, 8, 8), nb_classes=10, memory_format="nhwc"
        )
