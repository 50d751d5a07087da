"""DefendedEstimator: preprocessors and postprocessors around an estimator, BPDA and exact
gradients, random order, EOT composition, training and bad parameters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bastion.attacks.evasion import PGD
from bastion.defenses.postprocessing import LabelsOnly, PostprocessedClassifier, ReverseSigmoid
from bastion.estimators import EOT, DefendedEstimator, TorchClassifier
from bastion.exceptions import EstimatorError, InvalidParameterError
from bastion.testing._problems import blackbox_problem, torch_problem

# --------------------------------------------------------------------------- tiny preprocessors
# They follow the contract of bastion.defenses.preprocessing: apply_tensor (the real op), bpda
# (its differentiable surrogate, identity by default), differentiable, randomized, clip_values.


class _Pre:
    differentiable = True
    randomized = False

    def __init__(self, clip_values=(0.0, 1.0)):
        self.clip_values = clip_values

    def apply_tensor(self, x):
        raise NotImplementedError

    def bpda(self, x):
        return x

    def reset(self):
        pass


class Identity(_Pre):
    def apply_tensor(self, x):
        return x


class Affine(_Pre):
    """x -> 0.5 x + 0.25 (differentiable)."""

    def apply_tensor(self, x):
        return 0.5 * x + 0.25


class Square(_Pre):
    """x -> x**2: does not commute with Affine."""

    def apply_tensor(self, x):
        return x * x


class Quantize(_Pre):
    """Round to 2 levels, {0, 1}: gradient zero almost everywhere."""

    differentiable = False

    def apply_tensor(self, x):
        return torch.round(x)


class SmoothQuantize(Quantize):
    """A quantiser whose BPDA surrogate is x**2 (not the identity)."""

    def bpda(self, x):
        return x * x


class Noise(_Pre):
    """Additive Gaussian noise from its own generator (randomised)."""

    randomized = True

    def __init__(self, scale=0.1, seed=0):
        super().__init__()
        self.scale, self.seed = scale, seed
        self.reset()

    def reset(self):
        self._generator = torch.Generator().manual_seed(self.seed)

    def apply_tensor(self, x):
        noise = torch.randn(x.shape, generator=self._generator, dtype=x.dtype)
        return x + self.scale * noise


# --------------------------------------------------------------------------- helpers


def _problem(dtype=torch.float32, n=6):
    p = torch_problem(n, dtype=dtype)
    x = torch.as_tensor(p.x, dtype=dtype)
    y = torch.as_tensor(p.y)
    return p.estimator, x, y


def _finite_difference_loss_gradient(d, x, y, h=1e-5):
    """Central differences of the defended per-sample loss, coordinate by coordinate."""
    n, flat = x.shape[0], x[0].numel()
    eye = torch.eye(flat, dtype=x.dtype).reshape(flat, *x.shape[1:])
    grad = torch.empty_like(x)
    for i in range(n):
        xs = x[i : i + 1] + torch.cat([h * eye, -h * eye])
        ys = y[i].repeat(2 * flat)
        _, loss, _ = d.loss_gradient_tensor(xs, ys, return_outputs=True)
        grad[i] = ((loss[:flat] - loss[flat:]) / (2 * h)).reshape(x.shape[1:])
    return grad


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("gradients", ["bpda", "exact"])
def test_identity_preprocessor_gives_the_inner_estimator_exactly(gradients):
    clf, x, y = _problem()
    d = DefendedEstimator(clf, preprocessors=[Identity()], gradients=gradients)
    assert torch.equal(d.predict(x), clf.predict(x))
    assert torch.equal(d.logits(x), clf.logits(x))
    assert torch.equal(d.loss_gradient(x, y), clf.loss_gradient(x, y))
    assert torch.equal(d.class_gradient(x), clf.class_gradient(x))
    assert torch.equal(d.class_gradient(x, label=y), clf.class_gradient(x, label=y))
    assert torch.equal(d.get_activations(x, 0), clf.get_activations(x, 0))
    assert d.layer_names == clf.layer_names


# --------------------------------------------------------------------------- gradients


def test_exact_gradient_of_a_differentiable_preprocessor_matches_finite_differences():
    clf, x, y = _problem(torch.float64, n=3)
    d = DefendedEstimator(clf, preprocessors=[Affine()], gradients="exact")
    got = d.loss_gradient(x, y)
    torch.testing.assert_close(got, _finite_difference_loss_gradient(d, x, y), atol=1e-6, rtol=1e-5)
    # Chain rule by hand: d/dx f(0.5 x + 0.25) = 0.5 f'(.).
    torch.testing.assert_close(got, 0.5 * clf.loss_gradient(0.5 * x + 0.25, y))
    torch.testing.assert_close(d.class_gradient(x), 0.5 * clf.class_gradient(0.5 * x + 0.25))


def test_bpda_with_the_identity_surrogate_is_the_inner_gradient_at_the_preprocessed_point():
    clf, x, y = _problem()
    d = DefendedEstimator(clf, preprocessors=[Affine()])
    xp = 0.5 * x + 0.25
    torch.testing.assert_close(d.loss_gradient(x, y), clf.loss_gradient(xp, y))
    torch.testing.assert_close(d.class_gradient(x), clf.class_gradient(xp))
    torch.testing.assert_close(d.predict(x), clf.predict(xp))


def test_a_quantiser_masks_exact_gradients_and_bpda_passes_straight_through():
    clf, x, y = _problem()
    exact = DefendedEstimator(clf, preprocessors=[Quantize()], gradients="exact")
    bpda = DefendedEstimator(clf, preprocessors=[Quantize()], gradients="bpda")
    assert torch.equal(exact.loss_gradient(x, y), torch.zeros_like(x))
    assert torch.equal(exact.class_gradient(x), torch.zeros(x.shape[0], 10, *x.shape[1:]))
    g = bpda.loss_gradient(x, y)
    assert torch.equal(g, clf.loss_gradient(torch.round(x), y))
    assert g.abs().sum() > 0
    g, _, z = exact.objective_gradient_tensor(x, lambda z: z[:, 0])
    assert torch.equal(g, torch.zeros_like(x))
    torch.testing.assert_close(z, clf.logits(torch.round(x)))


def test_pgd_runs_unchanged_and_bpda_is_the_stronger_attacker():
    p = torch_problem(60)
    clf = p.estimator
    x, y = torch.as_tensor(p.x), torch.as_tensor(p.y)
    exact = DefendedEstimator(clf, preprocessors=[Quantize()], gradients="exact")
    bpda = DefendedEstimator(clf, preprocessors=[Quantize()], gradients="bpda")

    def accuracy(est, xs):
        return float((est.predict(xs).argmax(1) == y).float().mean())

    clean = accuracy(bpda, x)
    assert clean > 0.6  # the model still works on binarised digits
    attack = {"eps": 0.3, "eps_step": 0.05, "max_iter": 20, "random_state": 0}
    x_exact = PGD(exact, **attack).generate(x, y)
    x_bpda = PGD(bpda, **attack).generate(x, y)
    assert (x_bpda - x).abs().max() <= 0.3 + 1e-6
    acc_exact, acc_bpda = accuracy(bpda, x_exact), accuracy(bpda, x_bpda)
    assert acc_bpda < acc_exact - 0.2, (clean, acc_exact, acc_bpda)


def test_a_custom_surrogate_is_chained_by_its_vector_jacobian_product():
    clf, x, y = _problem(torch.float64)
    d = DefendedEstimator(clf, preprocessors=[SmoothQuantize()])
    # Forward: the real quantiser; backward: d(x**2)/dx = 2x times the inner gradient there.
    xq = torch.round(x)
    torch.testing.assert_close(d.loss_gradient(x, y), 2 * x * clf.loss_gradient(xq, y))
    want = 2 * x.unsqueeze(1) * clf.class_gradient(xq)
    torch.testing.assert_close(d.class_gradient(x), want)
    # Two preprocessors: the surrogates' products compose, each at its own input.
    d2 = DefendedEstimator(clf, preprocessors=[Affine(), SmoothQuantize()])
    xa = 0.5 * x + 0.25
    want2 = 2 * xa * clf.loss_gradient(torch.round(xa), y)  # Affine's surrogate: identity
    torch.testing.assert_close(d2.loss_gradient(x, y), want2)


def test_objective_gradient_is_chained_like_the_loss_gradient():
    clf, x, _ = _problem(torch.float64)
    d = DefendedEstimator(clf, preprocessors=[Affine()], gradients="exact")
    g, v, z = d.objective_gradient_tensor(x, lambda z: z[:, 1] - z[:, 2])
    gi, vi, zi = clf.objective_gradient_tensor(0.5 * x + 0.25, lambda z: z[:, 1] - z[:, 2])
    torch.testing.assert_close(g, 0.5 * gi)
    torch.testing.assert_close(v, vi)
    torch.testing.assert_close(z, zi)


# --------------------------------------------------------------------------- postprocessors


def test_postprocessors_change_predictions_and_logits_consistently():
    clf, x, y = _problem()
    post = ReverseSigmoid(beta=0.5, gamma=0.5)
    d = DefendedEstimator(clf, postprocessors=[post])
    torch.testing.assert_close(d.predict(x), post.apply_tensor(clf.predict(x)))
    torch.testing.assert_close(torch.softmax(d.logits(x), dim=1), d.predict(x))
    # BPDA: postprocessors are the identity backwards; the logits returned are the defended.
    g, loss, z = d.loss_gradient_tensor(x, y, return_outputs=True)
    gi, lossi, _ = clf.loss_gradient_tensor(x, y, return_outputs=True)
    torch.testing.assert_close(g, gi)
    torch.testing.assert_close(loss, lossi)
    torch.testing.assert_close(z, d.logits(x))
    assert d.capabilities == clf.capabilities & {
        "predict",
        "logits",
        "loss_gradient",
        "class_gradient",
        "activations",
        "fit",
    }


def test_exact_gradients_differentiate_the_postprocessors():
    clf, x, y = _problem(torch.float64, n=2)
    post = ReverseSigmoid(beta=0.5, gamma=0.5)
    d = DefendedEstimator(clf, preprocessors=[Affine()], postprocessors=[post], gradients="exact")
    got = d.loss_gradient(x, y)
    torch.testing.assert_close(got, _finite_difference_loss_gradient(d, x, y), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, 0.5 * clf.loss_gradient(0.5 * x + 0.25, y))
    # Class gradients of the defended logits: one row per class, each matching its objective.
    jac, z = d.class_gradient_and_logits_tensor(x)
    assert jac.shape == (2, 10, *x.shape[1:])
    g3, _, _ = d.objective_gradient_tensor(x, lambda s: s[:, 3])
    torch.testing.assert_close(jac[:, 3], g3)
    torch.testing.assert_close(d.class_gradient(x, label=3), g3)
    torch.testing.assert_close(d.class_gradient(x, label=y), jac[torch.arange(2), y])
    torch.testing.assert_close(z, d.logits(x))
    # Labels only: the graph is cut, the gradient is zero (the masked gradient), no error.
    masked = DefendedEstimator(clf, postprocessors=[LabelsOnly()], gradients="exact")
    assert torch.equal(masked.loss_gradient(x, y), torch.zeros_like(x))


def test_postprocessed_classifier_is_a_predict_only_defended_estimator():
    clf, x, _ = _problem()
    api = PostprocessedClassifier(clf, postprocessors=[ReverseSigmoid()])
    assert isinstance(api, DefendedEstimator)
    assert api.capabilities == {"predict"}
    torch.testing.assert_close(api.predict(x), ReverseSigmoid().apply_tensor(clf.predict(x)))
    with pytest.raises(EstimatorError, match="loss_gradient"):
        api.loss_gradient(x, torch.zeros(len(x), dtype=torch.long))


# --------------------------------------------------------------------------- randomness


def test_random_order_is_seeded_and_permutes():
    clf, x, _ = _problem()

    def run(seed):
        d = DefendedEstimator(
            clf, preprocessors=[Affine(), Square()], order="random", random_state=seed
        )
        return [d.predict(x) for _ in range(10)]

    a, b = run(3), run(3)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    ab = clf.predict((0.5 * x + 0.25) ** 2)  # Affine then Square
    ba = clf.predict(0.5 * x**2 + 0.25)  # Square then Affine
    assert not torch.allclose(ab, ba)
    seen = {0 if torch.allclose(p, ab) else 1 if torch.allclose(p, ba) else 2 for p in a}
    assert seen == {0, 1}
    fixed = DefendedEstimator(clf, preprocessors=[Affine(), Square()])
    torch.testing.assert_close(fixed.predict(x), ab)


def test_eot_averages_over_fresh_draws_of_a_randomised_preprocessor():
    clf, x, y = _problem()
    d = DefendedEstimator(clf, preprocessors=[Noise(seed=5)])
    eot = EOT(d, nb_samples=8)
    probs = eot.predict(x)
    grad = eot.loss_gradient(x, y)
    replay = Noise(seed=5)
    draws = [replay.apply_tensor(x) for _ in range(8)]
    torch.testing.assert_close(probs, sum(clf.predict_tensor(v) for v in draws) / 8)
    draws = [replay.apply_tensor(x) for _ in range(8)]  # the next eight draws
    torch.testing.assert_close(grad, sum(clf.loss_gradient_tensor(v, y) for v in draws) / 8)
    assert not torch.allclose(probs, clf.predict_tensor(draws[0]))


# --------------------------------------------------------------------------- training


def test_fit_trains_the_inner_estimator_on_preprocessed_inputs():
    p = torch_problem(4)
    x, y = torch.as_tensor(p.x_train), torch.as_tensor(p.y_train)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    twin = copy.deepcopy(net)
    kwargs = {"input_shape": (1, 8, 8), "nb_classes": 10, "clip_values": (0.0, 1.0)}
    inner = TorchClassifier(net, **kwargs)
    pre = Affine()
    state = dict(vars(pre))
    before = net[1].weight.detach().clone()
    x_before = x.clone()
    d = DefendedEstimator(inner, preprocessors=[pre])
    assert d.fit(x, y, epochs=2, random_state=0) is d
    assert not torch.equal(net[1].weight, before)
    assert torch.equal(x, x_before) and vars(pre) == state
    # Same as training the inner estimator on the preprocessed data by hand.
    TorchClassifier(twin, **kwargs).fit(0.5 * x + 0.25, y, epochs=2, random_state=0)
    torch.testing.assert_close(net[1].weight, twin[1].weight)


# --------------------------------------------------------------------------- capabilities, counts


def test_a_predict_only_estimator_gives_a_predict_only_defence():
    bb = blackbox_problem(4)
    d = DefendedEstimator(bb.estimator, preprocessors=[Affine()])
    assert d.capabilities == {"predict"}
    x = bb.x
    np.testing.assert_allclose(d.predict(x), bb.estimator.predict(0.5 * x + 0.25), rtol=1e-6)
    with pytest.raises(EstimatorError, match="loss_gradient"):
        d.loss_gradient(x, bb.y)


def test_queries_are_counted_once_on_the_wrapper_and_once_on_the_inner_estimator():
    clf, x, y = _problem()
    d = DefendedEstimator(clf, preprocessors=[Affine()], postprocessors=[ReverseSigmoid()])
    clf.reset_counts()
    d.predict(x)
    d.logits(x)
    assert d.query_count == clf.query_count == 2 * len(x)
    d.loss_gradient(x, y)
    d.class_gradient(x)
    assert d.gradient_count == clf.gradient_count == 2 * len(x)
    assert d.query_count == clf.query_count == 2 * len(x)


class Duplicate(_Pre):
    """Doubles the channels (like ThermometerEncoding, which multiplies them)."""

    differentiable = False

    def apply_tensor(self, x):
        return torch.cat([x.round(), x.round()], dim=1)

    def bpda(self, x):
        return torch.cat([x, x], dim=1)


def test_a_preprocessor_that_changes_the_shape_needs_the_raw_input_shape():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 64, 10))
    clf = TorchClassifier(net, input_shape=(2, 8, 8), nb_classes=10, clip_values=(0.0, 1.0))
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    d = DefendedEstimator(clf, preprocessors=[Duplicate()], input_shape=(1, 8, 8))
    assert d.input_shape == (1, 8, 8)
    xp = torch.cat([x.round(), x.round()], dim=1)
    torch.testing.assert_close(d.predict(x), clf.predict(xp))
    g = clf.loss_gradient(xp, y)
    torch.testing.assert_close(d.loss_gradient(x, y), g[:, :1] + g[:, 1:])
    jac = clf.class_gradient(xp)
    torch.testing.assert_close(d.class_gradient(x), jac[:, :, :1] + jac[:, :, 1:])
    exact = DefendedEstimator(
        clf, preprocessors=[Duplicate()], input_shape=(1, 8, 8), gradients="exact"
    )
    assert torch.equal(exact.loss_gradient(x, y), torch.zeros_like(x))
    with pytest.raises(InvalidParameterError, match="'input_shape'"):
        DefendedEstimator(clf, input_shape=(0, 8))


# --------------------------------------------------------------------------- bad parameters


def test_bad_parameters_raise_typed_errors():
    clf, _, _ = _problem()
    with pytest.raises(InvalidParameterError, match=r"'gradients'.*'adam'"):
        DefendedEstimator(clf, gradients="adam")
    with pytest.raises(InvalidParameterError, match="'order'"):
        DefendedEstimator(clf, order="shuffled")
    with pytest.raises(InvalidParameterError, match="'random_state'"):
        DefendedEstimator(clf, random_state=-1)
    with pytest.raises(InvalidParameterError, match="'preprocessors'"):
        DefendedEstimator(clf, preprocessors=[object()])
    with pytest.raises(InvalidParameterError, match="'preprocessors'"):
        DefendedEstimator(clf, preprocessors=[np.round])
    with pytest.raises(InvalidParameterError, match=r"\(0\.0, 255\.0\).*\(0\.0, 1\.0\)"):
        DefendedEstimator(clf, preprocessors=[Affine(clip_values=(0.0, 255.0))])
    with pytest.raises(InvalidParameterError, match="'postprocessors'"):
        DefendedEstimator(clf, postprocessors=[np.round])
    with pytest.raises(EstimatorError, match="TorchClassifier"):
        DefendedEstimator(torch.nn.Linear(2, 2))
    # A preprocessor without clip values, and a single one, are accepted.
    DefendedEstimator(clf, preprocessors=Affine(clip_values=None))
