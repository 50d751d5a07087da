"""Small, fast, deterministic problems and example estimators for the conformance suite."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.estimators import BlackBoxClassifier, Classifier, SklearnClassifier, TorchClassifier


@dataclass(frozen=True)
class Problem:
    """A classification task with a trained estimator: what a check needs."""

    estimator: Classifier
    x: np.ndarray  # float32 (N, *input_shape), inside clip_values
    y: np.ndarray  # int64 (N,)
    x_train: np.ndarray  # a few hundred samples covering every class, for fit checks
    y_train: np.ndarray


@functools.lru_cache(maxsize=1)
def _digits8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    return x, data.target.astype(np.int64)


def _mlp(dtype: torch.dtype, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    hidden = nn.Linear(64, 32, device="meta").to_empty(device="cpu")
    out = nn.Linear(32, 10, device="meta").to_empty(device="cpu")
    with torch.no_grad():  # seeded init without the global RNG
        for layer in (hidden, out):
            bound = 1.0 / layer.in_features**0.5
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.uniform_(-bound, bound, generator=gen)
    return nn.Sequential(nn.Flatten(), hidden, nn.Tanh(), out).to(dtype)


@functools.lru_cache(maxsize=4)
def _trained_torch(dtype: torch.dtype) -> TorchClassifier:
    x, y = _digits8()
    clf = TorchClassifier(_mlp(dtype, 0), input_shape=(1, 8, 8), nb_classes=10)
    clf.fit(x[:1200], y[:1200], epochs=8, batch_size=64, learning_rate=1e-2, random_state=0)
    return clf


def torch_problem(n: int = 24, *, dtype: torch.dtype = torch.float32) -> Problem:
    """A tanh MLP trained on scikit-learn's 8x8 digits (about 95% test accuracy).

    The estimator is shared between calls (cached); callers must not retrain it.
    """
    x, y = _digits8()
    clf = _trained_torch(dtype)
    clf.reset_counts()
    return Problem(clf, x[1200 : 1200 + n], y[1200 : 1200 + n], x[:200], y[:200])


@functools.lru_cache(maxsize=1)
def _sklearn_models() -> dict[str, Any]:
    from sklearn.exceptions import ConvergenceWarning

    x, y = _digits8()
    flat = x[:1200].reshape(1200, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _fit_sklearn(flat, y[:1200])


def _fit_sklearn(flat: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler
    from sklearn.svm import SVC, LinearSVC

    return {
        "logistic": LogisticRegression(max_iter=300).fit(flat, y),
        "mlp": MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(flat, y),
        "forest": RandomForestClassifier(n_estimators=10, random_state=0).fit(flat, y),
        # Smoothing of a tenth of the largest variance: the always-blank pixels would otherwise
        # get variances near 1e-10 and log-likelihoods near -1e9 (probabilities of 0 and 1).
        "gaussian_nb": GaussianNB(var_smoothing=0.1).fit(flat, y),
        "linear_svc": LinearSVC(C=0.1).fit(flat, y),
        "svc_rbf": SVC(kernel="rbf", C=3.0).fit(flat, y),
        "svc_poly": SVC(kernel="poly", degree=3, coef0=1.0).fit(flat, y),
        "pipeline": make_pipeline(
            StandardScaler(), PCA(n_components=20, whiten=True), LogisticRegression(max_iter=300)
        ).fit(flat, y),
        "pipeline_svc": make_pipeline(MaxAbsScaler(), PCA(n_components=20), SVC()).fit(flat, y),
    }


def sklearn_problem(
    kind: str = "logistic", n: int = 24, *, dtype: torch.dtype = torch.float32
) -> Problem:
    """A scikit-learn model on 8x8 digits: ``"logistic"``, ``"mlp"``, ``"forest"``,
    ``"gaussian_nb"``, ``"linear_svc"``, ``"svc_rbf"``, ``"svc_poly"``, ``"pipeline"``
    (standardisation, whitened PCA to 20 components, logistic regression) or ``"pipeline_svc"``
    (max-abs scaling, PCA to 20 components, RBF SVC); the twin computes in ``dtype``."""
    x, y = _digits8()
    clf = SklearnClassifier(
        _sklearn_models()[kind], input_shape=(1, 8, 8), clip_values=(0, 1), dtype=dtype
    )
    return Problem(clf, x[1200 : 1200 + n], y[1200 : 1200 + n], x[:200], y[:200])


def blackbox_problem(n: int = 24, *, labels_only: bool = False) -> Problem:
    """The trained torch MLP behind a NumPy prediction function."""
    base = torch_problem(n)
    net = base.estimator

    def api(batch: np.ndarray) -> np.ndarray:
        probs = net.predict(batch)
        return probs.argmax(axis=1) if labels_only else probs

    clf = BlackBoxClassifier(
        api, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1), labels_only=labels_only
    )
    return Problem(clf, base.x, base.y, base.x_train, base.y_train)


def onnx_problem(n: int = 24, *, gradients: bool = False) -> Problem:
    """The trained torch MLP exported to ONNX, run by ONNX Runtime (needs the ``onnx``
    extra: ``pip install 'bastion[onnx]'``); ``gradients=True`` adds the checked torch twin."""
    import tempfile
    from pathlib import Path

    from bastion.estimators.onnx import OnnxClassifier

    base = torch_problem(n)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        path = Path(folder) / "mlp.onnx"
        torch.onnx.export(
            base.estimator.torch_module(),
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
            dynamo=False,
        )
        graph = path.read_bytes()
    clf = OnnxClassifier(graph, clip_values=(0, 1), gradients=gradients)
    return Problem(clf, base.x, base.y, base.x_train, base.y_train)


def eot_problem(n: int = 24, *, noise: float = 0.0) -> Problem:
    """The trained torch MLP behind an expectation-over-transformation wrapper (Gaussian input
    noise of standard deviation ``noise``; 0 makes it the plain model, which finite-difference
    checks need)."""
    from bastion.estimators.wrappers import ExpectationOverTransformation

    base = torch_problem(n)

    def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + noise * torch.randn(x.shape, generator=generator, device=x.device)

    clf = ExpectationOverTransformation(
        base.estimator, nb_samples=3, transform=jitter, random_state=0
    )
    return Problem(clf, base.x, base.y, base.x_train, base.y_train)


class _Contrast:
    """A differentiable preprocessor (the contract of :mod:`bastion.defenses.preprocessing`):
    ``x -> 0.8 x + 0.1``, inside ``[0, 1]``."""

    differentiable = True
    randomized = False
    clip_values = (0.0, 1.0)

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return 0.8 * x + 0.1

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Clip(_Contrast):
    """A preprocessor declared non-differentiable whose BPDA surrogate (the identity) is exact
    inside ``[0, 1]``: clipping to the valid range."""

    differentiable = False

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


def defended_problem(n: int = 24, *, gradients: str = "bpda", postprocess: bool = False) -> Problem:
    """The trained torch MLP behind a :class:`~bastion.estimators.DefendedEstimator`: with
    ``gradients="bpda"``, a clipping preprocessor (whose straight-through gradient is exact
    inside the box, so finite-difference checks hold); with ``"exact"``, a contrast change,
    and with ``postprocess``, a reverse-sigmoid postprocessor differentiated as implemented."""
    from bastion.defenses.postprocessing import ReverseSigmoid
    from bastion.estimators.defended import DefendedEstimator

    base = torch_problem(n)
    pre = _Clip() if gradients == "bpda" else _Contrast()
    post = [ReverseSigmoid(beta=0.3, gamma=0.5)] if postprocess else []
    clf = DefendedEstimator(
        base.estimator, preprocessors=[pre], postprocessors=post, gradients=gradients
    )
    return Problem(clf, base.x, base.y, base.x_train, base.y_train)


@dataclass(frozen=True)
class PoisonProblem:
    """A training set with known backdoor poison and the model trained on it."""

    estimator: Classifier  # trained on (x, y), poison included
    x: np.ndarray  # float32 (N, 1, 8, 8) in [0, 1]: the suspect training set
    y: np.ndarray  # int64 (N,), the poison labelled with ``target``
    is_poison: np.ndarray  # bool (N,): the ground truth
    target: int
    x_clean: np.ndarray  # held-out clean inputs (calibration, reverse engineering, validation)
    y_clean: np.ndarray
    sources: np.ndarray  # int (N,): a provenance id per sample (3 sources, interleaved)


@functools.lru_cache(maxsize=1)
def poison_problem() -> PoisonProblem:
    """600 of the 8x8 digits, 5% of every class but 0 patched (2x2) and relabelled 0 (27
    poisoned samples, a third of the samples labelled 0), and a :class:`~bastion.zoo.SmallCNN`
    trained on them for 10 epochs (the backdoor succeeds on over 90% of triggered test inputs,
    clean accuracy about 95%). Built once per process (about 1.5 s); do not retrain it.
    """
    from bastion.attacks.poisoning import BackdoorAttack, PatchTrigger
    from bastion.datasets import load_digits
    from bastion.zoo import SmallCNN, train_classifier

    (x, y), (x_te, y_te) = load_digits(size=8, random_state=0)
    attack = BackdoorAttack(PatchTrigger(size=2), target=0, fraction=0.05, random_state=0)
    x_p, y_p, mask = attack.poison(x[:600], y[:600])
    model = SmallCNN(input_size=8, random_state=0)
    train_classifier(model, x_p, y_p, epochs=10, learning_rate=3e-3, random_state=0)
    clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0))
    return PoisonProblem(
        estimator=clf,
        x=x_p,
        y=y_p,
        is_poison=np.asarray(mask, dtype=bool),
        target=0,
        x_clean=x_te[:100],
        y_clean=y_te[:100],
        sources=np.arange(len(y_p)) % 3,
    )


@dataclass(frozen=True)
class PoisoningProblem:
    """What a poisoning-attack check needs: a clean training set to poison and the model (or
    learner) the attack is built on."""

    estimator: Any  # a trained Classifier, or a scikit-learn learner (SVMPoisoning)
    x: np.ndarray  # float32, the clean training set to poison
    y: np.ndarray  # int64 (N,)
    x_val: np.ndarray  # other clean samples (target images, the attacker's validation set)
    y_val: np.ndarray
    trigger: Any = None  # the trigger to plant, where the attack takes one
    clip_values: tuple[float, float] = (0.0, 1.0)  # where every sample lies


@functools.lru_cache(maxsize=1)
def poisoning_problem() -> PoisoningProblem:
    """48 clean held-out 8x8 digits to poison, 52 more as targets/validation, the
    :class:`~bastion.zoo.SmallCNN` of :func:`poison_problem` (cached) and a 2x2 white patch in
    the bottom-right corner as the trigger."""
    from bastion.attacks.poisoning import PatchTrigger

    base = poison_problem()
    x, y = base.x_clean, base.y_clean
    return PoisoningProblem(
        base.estimator, x[:48], y[:48], x[48:], y[48:], PatchTrigger(size=2, value=1.0)
    )


@functools.lru_cache(maxsize=1)
def svm_poisoning_problem() -> PoisoningProblem:
    """Digits 0 versus 1 (64 features in [0, 1]): 40 training and 40 validation samples and an
    unfitted linear :class:`sklearn.svm.SVC` (the learner the attack retrains)."""
    from sklearn.svm import SVC

    x, y = _digits8()
    keep = np.flatnonzero(y < 2)[:80]
    flat = x[keep].reshape(len(keep), -1)
    return PoisoningProblem(
        SVC(kernel="linear", C=1.0), flat[:40], y[keep][:40], flat[40:], y[keep][40:]
    )


@dataclass(frozen=True)
class ExtractionProblem:
    """What a model-extraction check needs: a victim to steal, the attacker's unlabelled data,
    held-out inputs to measure fidelity on and a way to build a fresh thief."""

    victim: Classifier  # the model whose prediction API is queried (never retrained)
    x_pool: np.ndarray  # the attacker's unlabelled data (inside the victim's clip_values)
    x_test: np.ndarray  # held-out inputs, for fidelity (agreement with the victim)
    make_thief: Callable[[int], Any] | None = None  # seed -> a fresh thief of the victim's shape


def _digits_thief(seed: int) -> TorchClassifier:
    return TorchClassifier(_mlp(torch.float32, seed + 1), input_shape=(1, 8, 8), nb_classes=10)


def extraction_problem() -> ExtractionProblem:
    """The tanh MLP of :func:`torch_problem` (cached, about 95% accuracy on 8x8 digits) as the
    victim, 200 held-out digits as the attacker's pool, 197 more for fidelity, and fresh
    seeded MLPs of the same shape as thieves."""
    x, _ = _digits8()
    return ExtractionProblem(_trained_torch(torch.float32), x[1400:1600], x[1600:], _digits_thief)


@functools.lru_cache(maxsize=1)
def relu_extraction_problem() -> ExtractionProblem:
    """A float64 one-hidden-layer ReLU network ``Linear(8, 4), ReLU, Linear(4, 3)`` with seeded
    random weights (the victim functionally equivalent extraction assumes), standard normal
    pool and test inputs; no thief (the attack builds its own model)."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).to(torch.float64)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64))
    victim = TorchClassifier(net, input_shape=(8,), nb_classes=3, clip_values=None)
    rng = np.random.default_rng(0)
    return ExtractionProblem(victim, rng.standard_normal((20, 8)), rng.standard_normal((200, 8)))


@functools.lru_cache(maxsize=1)
def _digits_endpoint() -> Any:
    """The trained torch MLP served on 127.0.0.1 (an ephemeral port, a daemon thread): one
    server per process, shared by every remote example (each request picks its answer format
    by its path, so the server keeps no state between them) and closed at exit."""
    import atexit

    from bastion.testing._endpoint import LocalEndpoint

    module = _trained_torch(torch.float32).torch_module()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(module(torch.as_tensor(x)), dim=1).numpy()

    service = LocalEndpoint(predict, (1, 8, 8))
    atexit.register(service.close)
    return service


def remote_problem(n: int = 24, *, output: str = "probabilities") -> Problem:
    """The trained torch MLP behind a local HTTP JSON endpoint (``RemoteClassifier``), which
    answers probabilities, labels or logits."""
    from bastion.estimators import RemoteClassifier

    base = torch_problem(n)
    clf = RemoteClassifier(
        f"{_digits_endpoint().url}/{output}",
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0, 1),
        output=output,
        batch_size=16,
        timeout=10.0,
    )
    return Problem(clf, base.x, base.y, base.x_train, base.y_train)


# --- estimators of other frameworks (JAX, Keras 3, TensorFlow): twins of the trained torch MLP,
# skipped (unittest.SkipTest, which pytest reports as a skip) where the framework is missing.


def _framework(module: str, extra: str) -> Any:
    import importlib
    import unittest

    try:
        return importlib.import_module(module)
    except ImportError:
        raise unittest.SkipTest(
            f"{module} is not installed: pip install 'bastion[{extra}]'"
        ) from None


def _mlp_weights() -> list[np.ndarray]:
    """The trained torch MLP's weights ``[W1, b1, W2, b2]`` (``W`` as (in, out))."""
    net: Any = _trained_torch(torch.float32).model
    hidden, out = net[1], net[3]
    return [
        t.detach().cpu().numpy().copy()
        for t in (hidden.weight.T, hidden.bias, out.weight.T, out.bias)
    ]


def jax_problem(n: int = 24) -> Problem:
    """The trained torch MLP as a plain JAX function (needs ``pip install 'bastion[jax]'``)."""
    jnp = _framework("jax.numpy", "jax")
    from bastion.estimators.jax import JaxClassifier

    def apply_fn(p: Any, x: Any) -> Any:
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ p[0] + p[1])
        return h @ p[2] + p[3]

    base = torch_problem(n)
    params = [jnp.asarray(w) for w in _mlp_weights()]
    clf = JaxClassifier(apply_fn, params, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1))
    return Problem(clf, base.x, base.y, base.x_train, base.y_train)


def keras_problem(n: int = 24) -> Problem:
    """The trained torch MLP as a Keras 3 model, on whichever backend Keras was imported with
    (needs ``pip install 'bastion[keras]'`` and that backend)."""
    _framework("keras", "keras")
    try:
        import keras
    except ImportError as err:  # Keras is there, its backend is not
        import unittest

        raise unittest.SkipTest(f"Keras cannot load its backend ({err})") from None
    from bastion.estimators.keras import KerasClassifier

    base = torch_problem(n)
    model = keras.Sequential(
        [
            keras.Input((1, 8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="tanh"),
            keras.layers.Dense(10),
        ]
    )
    model.set_weights(_mlp_weights())
    clf = KerasClassifier(model, clip_values=(0, 1))
    return Problem(clf, base.x, base.y, base.x_train, base.y_train)


def tensorflow_problem(n: int = 24) -> Problem:
    """The trained torch MLP as a ``tf.Module`` (needs ``pip install 'bastion[tensorflow]'``)."""
    tf = _framework("tensorflow", "tensorflow")
    from bastion.estimators.tensorflow import TensorFlowClassifier

    class Mlp(tf.Module):  # type: ignore[name-defined]
        def __init__(self, weights: list[np.ndarray]) -> None:
            super().__init__()
            self.w = [tf.Variable(w) for w in weights]

        def __call__(self, x: Any) -> Any:
            h = tf.tanh(tf.reshape(x, (tf.shape(x)[0], -1)) @ self.w[0] + self.w[1])
            return h @ self.w[2] + self.w[3]

    base = torch_problem(n)
    clf = TensorFlowClassifier(
        Mlp(_mlp_weights()), input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1)
    )
    return Problem(clf, base.x, base.y, base.x_train, base.y_train)


#: Example instances for every public estimator class (a test checks none is missing).
ESTIMATOR_EXAMPLES: dict[str, list[Callable[[], Problem]]] = {
    "TorchClassifier": [torch_problem, functools.partial(torch_problem, dtype=torch.float64)],
    "SklearnClassifier": [
        functools.partial(sklearn_problem, "logistic"),
        functools.partial(sklearn_problem, "mlp"),
        functools.partial(sklearn_problem, "forest"),
        functools.partial(sklearn_problem, "gaussian_nb", dtype=torch.float64),
        functools.partial(sklearn_problem, "linear_svc"),
        functools.partial(sklearn_problem, "svc_rbf"),
        functools.partial(sklearn_problem, "svc_poly", dtype=torch.float64),
        functools.partial(sklearn_problem, "pipeline", dtype=torch.float64),
        functools.partial(sklearn_problem, "pipeline_svc"),
    ],
    "BlackBoxClassifier": [
        blackbox_problem,
        functools.partial(blackbox_problem, labels_only=True),
    ],
    "OnnxClassifier": [onnx_problem, functools.partial(onnx_problem, gradients=True)],
    "JaxClassifier": [jax_problem],
    "KerasClassifier": [keras_problem],
    "TensorFlowClassifier": [tensorflow_problem],
    "RemoteClassifier": [
        remote_problem,
        functools.partial(remote_problem, output="labels"),
        functools.partial(remote_problem, output="logits"),
    ],
    "ExpectationOverTransformation": [eot_problem],
    "DefendedEstimator": [
        defended_problem,
        functools.partial(defended_problem, gradients="exact"),
        functools.partial(defended_problem, gradients="exact", postprocess=True),
    ],
}


@dataclass(frozen=True)
class InferenceProblem:
    """What an inference-attack check needs: the target, the inputs ``infer`` takes (a dict of
    arrays, one row per sample, e.g. ``x`` and ``y``), the data ``fit`` takes (the attacker's
    population or complete records; empty when the attack needs no fit) and the ground truth
    the attack should recover."""

    estimator: Any  # the target (a fitted bastion estimator or scikit-learn model)
    inputs: dict[str, np.ndarray]  # keyword arguments of infer, one row per sample
    truth: np.ndarray  # membership (bool), hidden values, target classes or the missing record
    fit_inputs: dict[str, np.ndarray] = field(default_factory=dict)  # keyword arguments of fit
    trainer: Callable[..., Any] | None = None  # (x, y, random_state) -> a model like the target
    values: np.ndarray | None = None  # the hidden attribute's known values
    attack_feature: int = 0  # the hidden attribute's column
    truth_label: int | None = None  # the missing record's label (reconstruction)


def _membership_trainer(x: Any, y: Any, random_state: int = 0) -> SklearnClassifier:
    from sklearn.linear_model import LogisticRegression

    xa = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    ya = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    model = LogisticRegression(C=100.0, max_iter=2000).fit(xa.reshape(len(xa), -1), ya)
    return SklearnClassifier(model, clip_values=(0.0, 1.0))


@functools.lru_cache(maxsize=1)
def membership_problem() -> InferenceProblem:
    """Random binary labels on 40 uniform features in [0, 1], which only memorisation fits:
    a logistic regression (C=100, the target) trained on 32 members fits them all and is at
    chance on 32 non-members. Candidates: the 64 (members first, ``truth`` says which); the
    attacker's population: those 64 and 96 more (LiRA's online setting); ``trainer`` trains a
    reference or shadow model like the target (a few milliseconds)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(160, 40)).astype(np.float32)
    y = rng.integers(0, 2, 160).astype(np.int64)
    target = _membership_trainer(x[:32], y[:32])
    return InferenceProblem(
        target,
        {"x": x[:64], "y": y[:64]},
        np.arange(64) < 32,
        {"x": x, "y": y},
        trainer=_membership_trainer,
    )


@functools.lru_cache(maxsize=1)
def attribute_problem() -> InferenceProblem:
    """Tabular records ``(z0, h, z1)`` with a hidden attribute ``h`` in {1, 3} (column 1) that
    ``z1`` predicts about 90% of the time, labels ``y = [h = 3] xor [z0 > 0]`` and a decision
    tree (depth 8, the target) trained on all 300 records: the model's output reveals ``h``
    given ``z0``; the majority value covers 54% of the attacked records. Inputs: 100 of the
    training records without column 1, their labels and the model's probabilities; ``fit``:
    the 200 other complete records (the attacker's)."""
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    n = 300
    z0, z1 = rng.normal(size=n), rng.normal(size=n)
    bit = (z1 + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    values = np.array([1.0, 3.0])
    x = np.c_[z0, values[bit], z1].astype(np.float32)
    y = (bit ^ (z0 > 0)).astype(np.int64)
    tree = DecisionTreeClassifier(max_depth=8, random_state=0).fit(x, y)
    target = SklearnClassifier(tree)
    known = np.delete(x[:100], 1, axis=1)
    pred = np.asarray(target.predict(x[:100]))
    return InferenceProblem(
        target,
        {"x": known, "y": y[:100], "pred": pred},
        x[:100, 1],
        {"x": x[100:]},
        values=values,
        attack_feature=1,
    )


def inversion_problem() -> InferenceProblem:
    """The tanh MLP of :func:`torch_problem` (cached) to invert: 10 held-out digits as
    starting points, each with the next class as its target."""
    x, y = _digits8()
    clf = _trained_torch(torch.float32)
    clf.reset_counts()
    target = (y[1200:1210] + 1) % 10
    return InferenceProblem(clf, {"x": x[1200:1210], "y": target}, target)


@functools.lru_cache(maxsize=1)
def reconstruction_problem() -> InferenceProblem:
    """A Gaussian naive Bayes (the target) trained on scikit-learn's iris; the informed
    adversary knows every record but the first (the truth)."""
    from sklearn.datasets import load_iris
    from sklearn.naive_bayes import GaussianNB

    x, y = load_iris(return_X_y=True)
    model = GaussianNB().fit(x, y)
    return InferenceProblem(
        model,
        {"x": x[1:], "y": y[1:].astype(np.int64)},
        x[:1],
        truth_label=int(y[0]),
    )


# --------------------------------------------------------------------------- tree models


@functools.lru_cache(maxsize=1)
def _digits_tree() -> Any:
    from sklearn.tree import DecisionTreeClassifier

    x, y = _digits8()
    tree = DecisionTreeClassifier(max_depth=8, random_state=0)
    return tree.fit(x[:1200].reshape(1200, -1), y[:1200])


def tree_problem(n: int = 24) -> Problem:
    """A scikit-learn decision tree (depth 8) on the 8x8 digits of :func:`torch_problem` (the
    same samples): the problem of the attacks that read trees (the ``"trees"`` capability)."""
    x, y = _digits8()
    clf = SklearnClassifier(_digits_tree(), input_shape=(1, 8, 8), clip_values=(0, 1))
    return Problem(clf, x[1200 : 1200 + n], y[1200 : 1200 + n], x[:200], y[:200])


def _boosting_problem(n: int, module: str) -> Problem:
    lib = _framework(module, "boosting")
    x, y = _digits8()
    flat = x[:1200].reshape(1200, -1)
    if module == "xgboost":
        from bastion.estimators.boosting import XGBoostClassifier

        model = lib.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1, random_state=0)
        clf: Classifier = XGBoostClassifier(
            model.fit(flat, y[:1200]), input_shape=(1, 8, 8), clip_values=(0, 1)
        )
    else:
        from bastion.estimators.boosting import LightGBMClassifier

        model = lib.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1, random_state=0)
        clf = LightGBMClassifier(
            model.fit(flat, y[:1200]), input_shape=(1, 8, 8), clip_values=(0, 1)
        )
    return Problem(clf, x[1200 : 1200 + n], y[1200 : 1200 + n], x[:200], y[:200])


def xgboost_problem(n: int = 24) -> Problem:
    """Boosted trees of XGBoost on the 8x8 digits (needs ``pip install 'bastion[boosting]'``)."""
    return _boosting_problem(n, "xgboost")


def lightgbm_problem(n: int = 24) -> Problem:
    """Boosted trees of LightGBM on the 8x8 digits (needs ``pip install 'bastion[boosting]'``)."""
    return _boosting_problem(n, "lightgbm")


ESTIMATOR_EXAMPLES.update(
    {"XGBoostClassifier": [xgboost_problem], "LightGBMClassifier": [lightgbm_problem]}
)


def catboost_problem(n: int = 24) -> Problem:
    """Oblivious trees of CatBoost on the 8x8 digits (needs CatBoost: ``pip install -c
    constraints.txt --no-deps catboost`` and ``pip install -c constraints.txt pandas six``)."""
    import importlib
    import unittest

    try:
        lib = importlib.import_module("catboost")
    except ImportError:
        raise unittest.SkipTest(
            "catboost is not installed: pip install -c constraints.txt --no-deps catboost "
            "&& pip install -c constraints.txt pandas six"
        ) from None
    from bastion.estimators.boosting import CatBoostClassifier

    x, y = _digits8()
    flat = x[:1200].reshape(1200, -1)
    model = lib.CatBoostClassifier(
        iterations=10, depth=4, verbose=0, thread_count=1, random_seed=0, allow_writing_files=False
    )
    clf = CatBoostClassifier(model.fit(flat, y[:1200]), input_shape=(1, 8, 8), clip_values=(0, 1))
    return Problem(clf, x[1200 : 1200 + n], y[1200 : 1200 + n], x[:200], y[:200])


ESTIMATOR_EXAMPLES.update({"CatBoostClassifier": [catboost_problem]})
