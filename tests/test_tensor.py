import random

import numpy as np
import pytest
import torch

from bastion._tensor import resolve_random_state, to_tensor


def test_numpy_roundtrip_keeps_dtype():
    x = np.random.default_rng(0).random((2, 3))  # float64
    t, kind = to_tensor(x)
    assert t.dtype == torch.float32
    out = kind.restore(t * 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, 2 * x, rtol=1e-6)


def test_tensor_roundtrip_keeps_dtype_and_is_not_copied():
    x = torch.rand(2, 3, dtype=torch.float64)
    t, kind = to_tensor(x, dtype=None)
    assert t.data_ptr() == x.data_ptr()
    out = kind.restore(t.float())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


def test_labels_keep_their_dtype():
    _, kind = to_tensor(np.zeros(3, dtype=np.float32))
    out = kind.restore(torch.tensor([1, 2, 3]), keep_dtype=True)
    assert out.dtype == np.int64


def test_scalar_input():
    t, _ = to_tensor(0.5)
    assert t.ndim == 0 and float(t) == 0.5


def test_random_state_int_is_reproducible():
    a = torch.rand(4, generator=resolve_random_state(7))
    b = torch.rand(4, generator=resolve_random_state(7))
    c = torch.rand(4, generator=resolve_random_state(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_state_generator_is_used_as_is():
    g = torch.Generator().manual_seed(3)
    assert resolve_random_state(g) is g


def test_random_state_none_differs():
    a = torch.rand(4, generator=resolve_random_state(None))
    b = torch.rand(4, generator=resolve_random_state(None))
    assert not torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_random_state_on_cuda():
    g = resolve_random_state(torch.Generator().manual_seed(1), "cuda")
    assert g.device.type == "cuda"


def test_global_rngs_are_never_touched(digits_cnn, digits_test):
    """Running seeded and unseeded attacks, training and estimators leaves every global RNG
    exactly where it was."""
    from bastion.attacks.evasion import FGSM, PGD
    from bastion.estimators import TorchClassifier
    from bastion.zoo import SmallCNN, train_classifier

    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()  # noqa: NPY002 - checking the legacy global RNG
    py_state = random.getstate()
    x, y = digits_test
    PGD(digits_cnn, eps=0.1, max_iter=2, random_state=0).generate(x[:8], y[:8])
    PGD(digits_cnn, eps=0.1, max_iter=2, random_state=None).generate(x[:8], y[:8])
    FGSM(digits_cnn, eps=0.1).generate(x[:8])
    train_classifier(SmallCNN(1, 10, random_state=1), x[:16], y[:16], epochs=1, random_state=0)
    fresh = TorchClassifier(SmallCNN(1, 10, random_state=2), input_shape=(1, 28, 28), nb_classes=10)
    fresh.fit(x[:8], y[:8], epochs=1, random_state=None)
    assert torch.equal(torch_state, torch.get_rng_state())
    after = np.random.get_state()  # noqa: NPY002
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])
    assert py_state == random.getstate()


@pytest.mark.parametrize(
    "bad", [["a", "b"], [[1.0, 2.0], [3.0]], object(), {"x": 1}, np.array([1 + 2j])]
)
def test_non_numeric_input_is_an_input_error(bad):
    from bastion.exceptions import InputError

    with pytest.raises(InputError, match="numeric array"):
        to_tensor(bad)
