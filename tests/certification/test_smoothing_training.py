"""The trainers of randomized smoothing: Gaussian noise augmentation (Cohen et al. 2019) and
SmoothAdv (Salman et al. 2019)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bastion.certification import (
    GaussianNoiseTrainer,
    RandomizedSmoothing,
    SmoothAdvTrainer,
    SmoothingEvaluation,
)
from bastion.certification._smoothing_training import smooth_adv_pgd, soft_smoothed_log_probs
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.metrics import certified_accuracy
from bastion.testing._bad_inputs_smoothing import smoothing_trainer_cases
from bastion.zoo import MLP

SIGMA = 0.5


@pytest.fixture(scope="module")
def digits():
    return load_digits(size=8)


def _clf(seed: int = 0) -> TorchClassifier:
    return TorchClassifier(
        MLP(64, 10, hidden=(64,), random_state=seed), input_shape=(1, 8, 8), nb_classes=10
    )


_FAST = {"batch_size": 64, "optimizer": "adam", "learning_rate": 3e-3, "schedule": None}


def test_noise_training_certifies_more_than_normal_training(digits):
    """At sigma 0.5, the model trained on noise certifies more test digits at radii 0.25 and
    0.5 than the same model trained on clean digits (same epochs and optimiser)."""
    (x, y), (xt, yt) = digits
    plain = _clf()
    plain.fit(x, y, epochs=15, batch_size=64, learning_rate=3e-3, random_state=0)
    noisy = _clf()
    GaussianNoiseTrainer(noisy, sigma=SIGMA, epochs=15, random_state=0, **_FAST).fit(x, y)
    scores = {}
    for name, clf in (("plain", plain), ("noisy", noisy)):
        rs = RandomizedSmoothing(clf, sigma=SIGMA, random_state=0)
        pred, radius = rs.certify(xt[:100], n0=50, n=500, alpha=0.001)
        scores[name] = [certified_accuracy(pred, radius, yt[:100], radius=r) for r in (0.25, 0.5)]
    assert scores["noisy"][0] > scores["plain"][0] + 0.1, scores
    assert scores["noisy"][1] > scores["plain"][1] + 0.1, scores


@pytest.mark.parametrize("cls", [GaussianNoiseTrainer, SmoothAdvTrainer])
def test_resume_is_bit_identical_and_history(cls, digits, tmp_path):
    (x, y), (xt, yt) = digits
    x, y = x[:256], y[:256]
    extra = {"eps": 0.25, "max_iter": 2, "nb_noise_samples": 2} if cls is SmoothAdvTrainer else {}

    def make(clf, **kw):
        return cls(clf, sigma=0.25, epochs=3, random_state=4, **_FAST, **extra, **kw)

    full = _clf()
    t_full = make(full).fit(x, y, validation_data=(xt[:64], yt[:64]))
    hist = t_full.history_
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    for h in hist:
        assert {
            "loss",
            "train_robust_accuracy",
            "val_clean_accuracy",
            "val_robust_accuracy",
        } <= set(h)
        assert math.isnan(h["train_clean_accuracy"])
        assert 0 <= h["val_robust_accuracy"] <= 1 and np.isfinite(h["loss"])
    assert hist[-1]["loss"] < hist[0]["loss"]

    class Stop(Exception):
        pass

    def interrupt(trainer, epoch, record):
        if epoch == 1:
            raise Stop

    part = _clf()
    with pytest.raises(Stop):
        make(part, checkpoint_dir=tmp_path).fit(
            x, y, validation_data=(xt[:64], yt[:64]), callback=interrupt
        )
    resumed = make(part, checkpoint_dir=tmp_path).fit(
        x, y, validation_data=(xt[:64], yt[:64]), resume=True
    )
    assert [h["epoch"] for h in resumed.history_] == [0, 1, 2]
    for a, b in zip(
        full.torch_module().parameters(), part.torch_module().parameters(), strict=True
    ):
        assert torch.equal(a, b)
    assert resumed.best_epoch_ == t_full.best_epoch_


def test_gaussian_trainer_trains_on_unclipped_noise_of_sigma(digits):
    """The training inputs are x + N(0, sigma^2): their difference to x has the right
    standard deviation and leaves [0, 1]."""
    (x, y), _ = digits
    trainer = GaussianNoiseTrainer(_clf(), sigma=0.3, epochs=1, random_state=0, **_FAST)
    seen = []
    original = trainer._make_adversarial

    def spy(run, xb, yb, batch):
        out = original(run, xb, yb, batch)
        seen.append((out - xb).detach())
        return out

    trainer._make_adversarial = spy  # type: ignore[method-assign]
    trainer.fit(x[:256], y[:256])
    noise = torch.cat(seen)
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.mean().item()) < 0.01


def test_soft_smoothed_classifier_and_its_attack():
    """``soft_smoothed_log_probs`` is log of the mean softmax over the noise draws (brute
    force); SmoothAdv's PGD stays in the L2 ball and [0, 1] and raises the soft smoothed
    classifier's loss."""
    gen = torch.Generator().manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.rand((4, 6), generator=gen)
    noise = 0.3 * torch.randn((4, 5, 6), generator=gen)
    got = soft_smoothed_log_probs(module, x, noise)
    for i in range(4):
        probs = torch.stack([F.softmax(module(x[i : i + 1] + noise[i, j]), 1)[0] for j in range(5)])
        torch.testing.assert_close(got[i], probs.mean(0).log())
    y = got.argmax(1)
    x_adv = smooth_adv_pgd(
        module, x, y, noise, eps=0.5, eps_step=0.25, max_iter=5, clip_values=(0.0, 1.0)
    )
    assert torch.all((x_adv - x).norm(dim=1) <= 0.5 + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    before = F.nll_loss(soft_smoothed_log_probs(module, x, noise), y, reduction="none")
    after = F.nll_loss(soft_smoothed_log_probs(module, x_adv, noise), y, reduction="none")
    assert torch.all(after > before)


def test_smoothadv_trains_and_evaluates(digits):
    (x, y), (xt, yt) = digits
    clf = _clf()
    trainer = SmoothAdvTrainer(
        clf,
        sigma=0.25,
        eps=0.25,
        max_iter=2,
        nb_noise_samples=2,
        eps_warmup=2,
        epochs=6,
        random_state=0,
        **_FAST,
    ).fit(x, y)
    result = trainer.evaluate(xt[:60], yt[:60], n0=50, n=300, radii=(0.0, 0.25, 0.5))
    assert isinstance(result, SmoothingEvaluation)
    assert result.clean_accuracy > 0.8
    acc = [result.certified_accuracy[r] for r in (0.0, 0.25, 0.5)]
    assert acc[0] >= acc[1] >= acc[2] and acc[1] > 0.5
    assert (result.n0, result.n, result.nb_samples, result.sigma) == (50, 300, 60, 0.25)
    # Warm-up: the budget ramps with the training progress.
    from bastion.defenses.training.adversarial._state import _Batch

    b = _Batch(0, 0, 1, None, 0, progress=0.5)
    assert trainer._train_budget(b) == pytest.approx((0.25 * 0.25, 0.25 * 0.25))
    b.progress = 3.0
    assert trainer._train_budget(b) == pytest.approx((0.25, 0.25))


def test_params_and_repr():
    t = SmoothAdvTrainer(_clf(), sigma=0.5, eps=1.0)
    assert t.get_params()["nb_noise_samples"] == 2
    assert "sigma=0.5" in repr(t) and "eps=1.0" in repr(t)
    assert "validation_attack" not in t.get_params()
    with pytest.warns(DeprecationWarning, match="nb_noise_samples"):
        old = SmoothAdvTrainer(_clf(), num_noise_samples=4)
    assert old.nb_noise_samples == 4


@pytest.mark.parametrize(
    "case",
    smoothing_trainer_cases(GaussianNoiseTrainer) + smoothing_trainer_cases(SmoothAdvTrainer),
    ids=lambda c: c.id,
)
def test_bad_input(case):
    case.run()
