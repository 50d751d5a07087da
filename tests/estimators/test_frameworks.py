"""Models of other frameworks behind bastion's estimator protocol: JAX / Flax, Keras 3 on each
of its backends (JAX, torch, TensorFlow) and TensorFlow.

The issue's bar: the same small networks (an MLP 8 -> 16 ReLU -> 3 and a small conv net), built
in torch and in each framework with identical float64 weights, give the same predictions, loss
gradients, class gradients and PGD adversarial examples (same seed) to 1e-5, and their
gradients match finite differences. Keras chooses its backend once per process, so each Keras
backend runs in a subprocess of its own (``KERAS_BACKEND``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bastion.attacks.evasion import PGD
from bastion.estimators import TorchClassifier
from bastion.exceptions import EstimatorError
from bastion.testing import Problem, check_estimator

TOL = 1e-5  # float64 everywhere: the twins agree to ~1e-15; 1e-5 is the bar


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


NEEDS_JAX = pytest.mark.skipif(
    _missing("jax") or _missing("flax"), reason="JAX/Flax not installed: pip install 'bastion[jax]'"
)
NEEDS_TF = pytest.mark.skipif(
    _missing("tensorflow"),
    reason="TensorFlow not installed: pip install 'bastion[tensorflow]'",
)

# ---------------------------------------------------------------------------- torch twins
# Shared with the Keras subprocesses (which exec this source), so every framework is compared
# with the very same torch networks.

TWINS = textwrap.dedent(
    '''
    import numpy as np
    import torch

    def torch_mlp():
        gen = torch.Generator().manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        ).double()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.7)
        return net

    def torch_conv():
        gen = torch.Generator().manual_seed(1)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3)
        ).double()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        return net

    def data(shape, n=6):
        rng = np.random.default_rng(2)
        return rng.random((n, *shape)), rng.integers(0, 3, n)

    def compare(clf, net, shape):
        """Max differences between clf and a TorchClassifier of net on the same data."""
        from bastion.attacks.evasion import PGD
        from bastion.estimators import TorchClassifier

        ref = TorchClassifier(net, input_shape=shape, nb_classes=3, clip_values=(0, 1))
        x, y = data(shape)
        out = {}
        out["predict"] = np.abs(clf.predict(x) - ref.predict(x)).max()
        out["logits"] = np.abs(clf.logits(x) - ref.logits(x)).max()
        out["loss_gradient"] = np.abs(clf.loss_gradient(x, y) - ref.loss_gradient(x, y)).max()
        out["class_gradient"] = np.abs(clf.class_gradient(x) - ref.class_gradient(x)).max()
        out["class_gradient_label"] = np.abs(
            clf.class_gradient(x, label=y) - ref.class_gradient(x, label=y)
        ).max()
        kw = dict(eps=0.1, eps_step=0.02, max_iter=10, num_random_init=1, random_state=0)
        a = PGD(clf, **kw).generate(x, y)
        b = PGD(ref, **kw).generate(x, y)
        out["pgd"] = np.abs(a - b).max()
        out["pgd_differing"] = (np.abs(a - b) > 1e-5).mean()  # fraction of coordinates
        # One step from x itself: a coordinate may differ only where the float64 gradient
        # is within rounding of zero (the sign step goes either way there).
        one = dict(eps=0.1, eps_step=0.02, max_iter=1, num_random_init=0)
        a1, b1 = PGD(clf, **one).generate(x, y), PGD(ref, **one).generate(x, y)
        g = np.abs(ref.loss_gradient(x, y))
        out["pgd_step_grad_where_differing"] = float(g[np.abs(a1 - b1) > 1e-5].max(initial=0.0))
        out["pgd_moved"] = np.abs(a - x).max()
        return {k: float(v) for k, v in out.items()}
    '''
)
_NS: dict = {}
exec(TWINS, _NS)
torch_mlp, torch_conv, data, compare = (
    _NS[k] for k in ("torch_mlp", "torch_conv", "data", "compare")
)


def _check_equal(diffs: dict[str, float], float32: bool = False) -> None:
    assert diffs.pop("pgd_moved") > 0.05, "PGD did not move: the comparison would be empty"
    differing = diffs.pop("pgd_differing")
    if float32:
        # A model computing in float32 agrees with the float64 twin to ~1e-6 (checked below
        # at 1e-5), but PGD steps along the *sign* of the gradient: where a coordinate of the
        # gradient is within float32 rounding of zero, a step may go the other way and the
        # paths part for good. So one step is compared: it may differ only there.
        del differing  # measured and reported only: once paths part, they stay apart
        diffs.pop("pgd")
        assert diffs.pop("pgd_step_grad_where_differing") < 1e-5
    else:
        diffs.pop("pgd_step_grad_where_differing")
    bad = {k: v for k, v in diffs.items() if not v <= TOL}
    assert not bad, f"differences above {TOL}: {bad}"


def _state(net: torch.nn.Module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in net.parameters()]


# ---------------------------------------------------------------------------- JAX / Flax


@pytest.fixture()
def x64():
    import jax

    with jax.enable_x64(True):
        yield


def _mlp_apply(p, x):  # module level: the estimator pickles
    import jax

    return jax.nn.relu(x @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]


def _jax_mlp():
    from bastion.estimators import JaxClassifier

    w1, b1, w2, b2 = _state(torch_mlp())
    params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}  # NumPy float64 leaves
    return JaxClassifier(_mlp_apply, params, input_shape=(8,), nb_classes=3, clip_values=(0, 1))


def _flax_conv():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from bastion.estimators import JaxClassifier

    class Conv(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jnp.transpose(x, (0, 2, 3, 1))  # the torch twin's NCHW to Flax's NHWC
            x = nn.relu(nn.Conv(4, (3, 3), padding="VALID", param_dtype=jnp.float64)(x))
            x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # flatten as torch
            return nn.Dense(3, param_dtype=jnp.float64)(x)

    model = Conv()
    params = model.init(jax.random.key(0), jnp.zeros((1, 1, 6, 6), jnp.float64))
    cw, cb, lw, lb = _state(torch_conv())
    params = {
        "params": {
            "Conv_0": {"kernel": cw.transpose(2, 3, 1, 0), "bias": cb},
            "Dense_0": {"kernel": lw.T, "bias": lb},
        }
    }
    return JaxClassifier(
        model.apply, params, input_shape=(1, 6, 6), nb_classes=3, clip_values=(0, 1)
    )


def _flax_mlp():
    import flax.linen as nn
    import jax.numpy as jnp

    from bastion.estimators import JaxClassifier

    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
    w1, b1, w2, b2 = _state(torch_mlp())
    params = {
        "params": {
            "layers_0": {"kernel": jnp.asarray(w1.T), "bias": jnp.asarray(b1)},
            "layers_2": {"kernel": jnp.asarray(w2.T), "bias": jnp.asarray(b2)},
        }
    }
    return JaxClassifier(model.apply, params, input_shape=(8,), nb_classes=3, clip_values=(0, 1))


@NEEDS_JAX
def test_jax_mlp_equals_torch_twin():
    clf = _jax_mlp()
    assert clf.dtype == torch.float64  # float64 leaves: computed under JAX's x64 mode
    _check_equal(compare(clf, torch_mlp(), (8,)))


@NEEDS_JAX
def test_flax_mlp_equals_torch_twin(x64):
    clf = _flax_mlp()
    assert clf.dtype == torch.float64
    _check_equal(compare(clf, torch_mlp(), (8,)))


@NEEDS_JAX
def test_flax_conv_equals_torch_twin(x64):
    _check_equal(compare(_flax_conv(), torch_conv(), (1, 6, 6)))


@NEEDS_JAX
def test_jax_does_not_switch_x64_on_globally():
    import jax
    import jax.numpy as jnp

    before = jax.config.jax_enable_x64
    _jax_mlp().predict(np.zeros((1, 8)))
    assert jax.config.jax_enable_x64 == before
    assert jnp.ones(1).dtype == (jnp.float64 if before else jnp.float32)


@NEEDS_JAX
def test_jax_conformance_and_finite_differences(x64):
    for clf, shape in ((_jax_mlp(), (8,)), (_flax_conv(), (1, 6, 6))):
        x, y = data(shape, n=8)
        ran = check_estimator(Problem(clf, x.astype(np.float32), y, x.astype(np.float32), y))
        assert {"check_loss_gradient", "check_class_gradient"} <= set(ran)


@NEEDS_JAX
def test_jax_float32_params_and_types_in_out():
    import jax.numpy as jnp

    from bastion.estimators import JaxClassifier

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    clf = JaxClassifier(lambda p, x: x @ p, jnp.asarray(w), input_shape=(4,), nb_classes=3)
    assert clf.dtype == torch.float32
    x = np.random.default_rng(1).random((5, 4)).astype(np.float32)
    out = clf.class_gradient(x)
    assert isinstance(out, np.ndarray) and out.shape == (5, 3, 4)
    np.testing.assert_allclose(out, np.broadcast_to(w.T, (5, 3, 4)), rtol=1e-6)  # linear: W
    t = clf.loss_gradient(torch.as_tensor(x, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == (5, 4)
    z = torch.as_tensor(x) @ torch.as_tensor(w)
    ref = torch.func.grad(
        lambda v: torch.nn.functional.cross_entropy(
            v @ torch.as_tensor(w), torch.tensor([0, 1, 2, 0, 1]), reduction="sum"
        )
    )(torch.as_tensor(x))
    np.testing.assert_allclose(t.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.logits(x), z.numpy(), rtol=1e-5, atol=1e-6)


@NEEDS_JAX
def test_jax_probability_output_gives_log_probabilities(x64):
    import jax

    from bastion.estimators import JaxClassifier

    base = _jax_mlp()
    probs = JaxClassifier(
        lambda p, x: jax.nn.softmax(base.apply_fn(p, x)),
        base.params,
        input_shape=(8,),
        nb_classes=3,
        clip_values=(0, 1),
        output="probabilities",
    )
    x, y = data((8,))
    np.testing.assert_allclose(probs.predict(x), base.predict(x), atol=1e-12)
    # log-softmax differs from the logits by a per-sample constant: same loss gradient
    np.testing.assert_allclose(probs.loss_gradient(x, y), base.loss_gradient(x, y), atol=1e-10)


@NEEDS_JAX
def test_jax_pickles_and_dlpack_is_zero_copy():
    import pickle

    from bastion.estimators._dlpack import jax_to_torch, torch_to_jax

    clf = _jax_mlp()
    x = data((8,))[0]
    twin = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(twin.predict(x), clf.predict(x))
    t = torch.rand(4, 8)
    a = torch_to_jax(t)
    assert a.unsafe_buffer_pointer() == t.data_ptr()  # torch -> JAX without a copy
    assert jax_to_torch(a, torch.device("cpu")).data_ptr() == t.data_ptr()


def test_missing_framework_names_the_extra(monkeypatch):
    from bastion.estimators import JaxClassifier, KerasClassifier, TensorFlowClassifier

    for module, cls, args, extra in (
        ("jax", JaxClassifier, (lambda p, x: x, {}), "jax"),
        ("keras", KerasClassifier, (object(),), "keras"),
        ("tensorflow", TensorFlowClassifier, (lambda x: x,), "tensorflow"),
    ):
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(EstimatorError, match=rf"pip install 'bastion\[{extra}\]'"):
            cls(*args, input_shape=(8,), nb_classes=3)


def test_import_bastion_imports_no_other_framework():
    code = (
        "import sys, bastion, bastion.estimators\n"
        "from bastion.estimators import JaxClassifier, KerasClassifier, TensorFlowClassifier\n"
        "bad = [m for m in ('jax', 'flax', 'keras', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------- TensorFlow


def _tf_module(net, conv):
    import tensorflow as tf

    from bastion.estimators import TensorFlowClassifier

    w = [tf.Variable(p) for p in _state(net)]

    class Mlp(tf.Module):
        def __call__(self, x):
            return tf.nn.relu(x @ tf.transpose(w[0]) + w[1]) @ tf.transpose(w[2]) + w[3]

    class Conv(tf.Module):
        def __call__(self, x):
            h = tf.nn.conv2d(
                tf.transpose(x, (0, 2, 3, 1)),
                tf.transpose(w[0], (2, 3, 1, 0)),
                strides=1,
                padding="VALID",
            )
            h = tf.transpose(tf.nn.relu(h + w[1]), (0, 3, 1, 2))
            return tf.reshape(h, (tf.shape(h)[0], -1)) @ tf.transpose(w[2]) + w[3]

    module = Conv() if conv else Mlp()
    module.w = w
    shape = (1, 6, 6) if conv else (8,)
    return TensorFlowClassifier(module, input_shape=shape, nb_classes=3, clip_values=(0, 1))


@NEEDS_TF
@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "conv"])
def test_tensorflow_equals_torch_twin(conv):
    clf = _tf_module(torch_conv() if conv else torch_mlp(), conv)
    assert clf.dtype == torch.float64
    shape = (1, 6, 6) if conv else (8,)
    _check_equal(compare(clf, torch_conv() if conv else torch_mlp(), shape))
    x, y = data(shape, n=8)
    check_estimator(Problem(clf, x.astype(np.float32), y, x.astype(np.float32), y))


@NEEDS_TF
def test_tensorflow_function_and_dlpack():
    import tensorflow as tf

    from bastion.estimators import TensorFlowClassifier
    from bastion.estimators._dlpack import tf_to_torch, torch_to_tf

    w = tf.constant(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    fn = tf.function(lambda x: tf.matmul(x, w))
    clf = TensorFlowClassifier(fn, input_shape=(4,), nb_classes=3)
    assert clf.dtype == torch.float32
    x = np.random.default_rng(1).random((5, 4)).astype(np.float32)
    np.testing.assert_allclose(clf.class_gradient(x, label=1), np.tile(w.numpy()[:, 1], (5, 1)))
    t = torch.rand(4, 8)
    back = tf_to_torch(torch_to_tf(t), torch.device("cpu"))
    torch.testing.assert_close(back, t)


# ---------------------------------------------------------------------------- Keras 3

KERAS_SCRIPT = TWINS + textwrap.dedent(
    """
    import json
    import keras
    from bastion.estimators import KerasClassifier
    from bastion.testing import Problem, check_estimator

    def keras_mlp(net):
        model = keras.Sequential([
            keras.Input((8,), dtype="float64"),
            keras.layers.Dense(16, activation="relu", dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ])
        w1, b1, w2, b2 = [p.detach().numpy() for p in net.parameters()]
        model.set_weights([w1.T, b1, w2.T, b2])
        return model

    def keras_conv(net):
        model = keras.Sequential([
            keras.Input((1, 6, 6), dtype="float64"),
            keras.layers.Permute((2, 3, 1), dtype="float64"),  # NCHW to NHWC
            keras.layers.Conv2D(4, 3, activation="relu", dtype="float64"),
            keras.layers.Permute((3, 1, 2), dtype="float64"),  # back, to flatten as torch
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ])
        cw, cb, lw, lb = [p.detach().numpy() for p in net.parameters()]
        model.set_weights([cw.transpose(2, 3, 1, 0), cb, lw.T, lb])
        return model

    out = {"backend": keras.config.backend()}
    for name, make, net, shape in (
        ("mlp", keras_mlp, torch_mlp(), (8,)),
        ("conv", keras_conv, torch_conv(), (1, 6, 6)),
    ):
        clf = KerasClassifier(keras_model := make(net), clip_values=(0, 1))
        out[name] = compare(clf, net, shape)
        out[name + "_dtype"] = str(clf.dtype)
        x, y = data(shape, n=8)
        if clf.dtype == torch.float64:  # float32 finite differences cross the ReLU kinks
            out[name + "_checks"] = check_estimator(
                Problem(clf, x.astype("float32"), y, x.astype("float32"), y)
            )
    layers = clf.layer_names  # the conv model's: activations of a functional model
    x = data((1, 6, 6))[0]
    acts = clf.get_activations(x, layers[2])  # the ReLU conv, permuted back to NCHW
    ref = torch.relu(net[0](torch.as_tensor(x))).detach().numpy()
    out["activations"] = float(np.abs(acts - ref).max())
    out["layer_types"] = clf.layer_types
    soft = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    out["softmax_output"] = KerasClassifier(soft).output
    print("RESULT" + json.dumps(out))
    """
)


def run_keras(backend: str) -> dict:
    """Run the Keras twins on ``backend`` in a subprocess; its measurements."""
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1", JAX_ENABLE_X64="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    done = subprocess.run(
        [sys.executable, "-c", KERAS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT") :])


_KERAS_BACKENDS = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}


@pytest.mark.skipif(_missing("keras"), reason="Keras not installed: pip install 'bastion[keras]'")
@pytest.mark.parametrize("backend", list(_KERAS_BACKENDS))
def test_keras_backend_equals_torch_twin(backend):
    if _missing(_KERAS_BACKENDS[backend]):
        pytest.skip(reason=f"{backend} not installed: pip install 'bastion[{backend}]'")
    out = run_keras(backend)
    assert out["backend"] == backend
    for name in ("mlp", "conv"):
        if backend == "torch" and out[name + "_dtype"] == "torch.float32":
            # Keras 3.15's torch backend computes float64 matmuls in float32 (its result_type
            # of two torch float64 dtypes is float32): the estimator says float32.
            _check_equal(out[name], float32=True)
            continue
        assert out[name + "_dtype"] == "torch.float64"
        assert {"check_loss_gradient", "check_class_gradient"} <= set(out[name + "_checks"])
        _check_equal(out[name])
    assert out["softmax_output"] == "probabilities"
    assert out["activations"] < 1e-5 and out["layer_types"]["conv2d"] == "Conv2D"


def test_pgd_runs_on_every_available_framework_in_float32():
    """The float32 twins (the conformance examples) agree with torch to float32 precision."""
    from bastion.testing._problems import torch_problem

    base = torch_problem(8)
    ref = PGD(base.estimator, eps=0.1, eps_step=0.02, max_iter=5, random_state=0)
    x_ref = ref.generate(base.x, base.y)
    ran = 0
    for name in ("jax", "tensorflow"):
        if _missing(name):
            continue
        from bastion.testing import _problems

        problem = getattr(_problems, f"{name}_problem")(8)
        x_adv = PGD(problem.estimator, eps=0.1, eps_step=0.02, max_iter=5, random_state=0)
        # float32 sums in another order differ by ~1e-7 per logit; a PGD step takes the sign
        # of the gradient, so a coordinate can flip only where a gradient is ~0: allow a few.
        diff = np.abs(x_adv.generate(base.x, base.y) - x_ref)
        assert (diff > 1e-5).mean() < 0.01, (name, (diff > 1e-5).mean())
        ran += 1
    if not ran:
        pytest.skip(reason="neither JAX nor TensorFlow installed: pip install 'bastion[jax]'")
    assert isinstance(TorchClassifier, type)


@NEEDS_JAX
def test_bad_parameters_are_named():
    from bastion.estimators import JaxClassifier
    from bastion.exceptions import InvalidParameterError

    ok = dict(input_shape=(8,), nb_classes=3)
    for args, kw, name in (
        ((3, {}), ok, "apply_fn"),
        ((_mlp_apply, {}), dict(ok, output="scores"), "output"),
        ((_mlp_apply, {}), dict(ok, nb_classes=1), "nb_classes"),
        ((_mlp_apply, {}), dict(ok, input_shape=(0,)), "input_shape"),
        ((_mlp_apply, {}), dict(ok, clip_values=(1, 0)), "clip_values"),
        ((_mlp_apply, {}), dict(ok, loss="ce"), "loss"),
    ):
        with pytest.raises(InvalidParameterError, match=name):
            JaxClassifier(*args, **kw)


@NEEDS_TF
def test_tensorflow_bad_dtype_is_named():
    from bastion.estimators import TensorFlowClassifier
    from bastion.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="dtype"):
        TensorFlowClassifier(lambda x: x, input_shape=(3,), nb_classes=3, dtype="float16")


KERAS_TRACE_SCRIPT = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    from bastion.estimators import KerasClassifier
    from bastion.exceptions import InvalidParameterError

    calls = []

    class Counted(keras.layers.Layer):  # Python side effect: one entry per Python call
        def call(self, x):
            calls.append(1)
            return x

    def make():
        model = keras.Sequential([keras.Input((8,), dtype="float64"), Counted(dtype="float64"),
                                  keras.layers.Dense(16, activation="tanh", dtype="float64"),
                                  keras.layers.Dense(3, dtype="float64")])
        rng = np.random.default_rng(0)
        model.set_weights([rng.normal(size=(8, 16)), np.zeros(16),
                           rng.normal(size=(16, 3)), np.zeros(3)])
        return model

    out = {"backend": keras.config.backend()}
    if out["backend"] != "tensorflow":
        try:
            KerasClassifier(make(), trace=True)
            out["raised"] = False
        except InvalidParameterError as err:
            out["raised"] = "trace" in str(err)
    else:
        x = np.random.default_rng(2).random((6, 8))
        y = np.array([0, 1, 2, 0, 1, 2])
        model = make()
        eager = KerasClassifier(model, clip_values=(0, 1))
        traced = KerasClassifier(model, clip_values=(0, 1), trace=True)
        out["not_bool_raises"] = False
        try:
            KerasClassifier(model, trace=1)
        except InvalidParameterError:
            out["not_bool_raises"] = True
        calls.clear()
        ref = [eager.predict(x), eager.loss_gradient(x, y), eager.class_gradient(x)]
        out["eager_calls"] = len(calls)
        got = [traced.predict(x), traced.loss_gradient(x, y), traced.class_gradient(x)]
        calls.clear()
        got = [traced.predict(x), traced.loss_gradient(x, y), traced.class_gradient(x)]
        out["traced_calls_after_warmup"] = len(calls)
        out["diff"] = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
        model.layers[-1].bias.assign(np.ones(3))  # the traced call reads current values
        out["diff_after_update"] = float(np.abs(eager.predict(x) - traced.predict(x)).max())
        out["repr"] = repr(traced)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.skipif(_missing("keras"), reason="Keras not installed: pip install 'bastion[keras]'")
@pytest.mark.parametrize("backend", list(_KERAS_BACKENDS))
def test_keras_trace_is_opt_in_and_equal(backend):
    """``trace=True`` (TensorFlow only) gives the eager results; eagerly, the model's Python
    code runs once per forward pass, traced only at trace time."""
    if _missing(_KERAS_BACKENDS[backend]):
        pytest.skip(reason=f"{backend} not installed: pip install 'bastion[{backend}]'")
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1", JAX_ENABLE_X64="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    done = subprocess.run(
        [sys.executable, "-c", KERAS_TRACE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT") :])
    if backend != "tensorflow":
        assert out["raised"] is True
        return
    assert out["not_bool_raises"] is True
    assert out["eager_calls"] == 3  # predict, loss gradient, class gradients: one pass each
    assert out["traced_calls_after_warmup"] == 0
    assert out["diff"] < 1e-12
    assert out["diff_after_update"] < 1e-12
    assert "trace=True" in out["repr"]
