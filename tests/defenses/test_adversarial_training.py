"""Adversarial training: each recipe's algorithm against a hand computation or bastion's own
attacks, the loop's determinism (resume, streaming, global RNG), checkpoints, and bad input."""

from __future__ import annotations

import math
import pathlib
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.evasion import FGSM, PGD
from bastion.defenses.training import (
    AdversarialTrainer,
    FastFGSMTrainer,
    FreeAdversarialTrainer,
    MadryPGDTrainer,
    MARTTrainer,
    TRADESTrainer,
    TrainingEvaluation,
)
from bastion.defenses.training.adversarial._inner import derive_seed, global_noise
from bastion.defenses.training.adversarial._pgd import mart_loss, trades_loss
from bastion.defenses.training.adversarial._schedules import learning_rate_at
from bastion.defenses.training.adversarial._state import _Batch
from bastion.estimators import TorchClassifier
from bastion.exceptions import InputError, InvalidParameterError, ModelError


def _net(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(dropout))
    net.append(nn.Linear(12, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net


def _clf(seed: int = 0, dropout: float = 0.0, **kw) -> TorchClassifier:
    return TorchClassifier(
        _net(seed, dropout), input_shape=(1, 4, 4), nb_classes=3, clip_values=(0, 1), **kw
    )


def _data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    y = (x.reshape(n, -1)[:, :3].argmax(1)).long()
    return x, y


def _params(clf: TorchClassifier) -> list[torch.Tensor]:
    return [p.detach().clone() for p in clf.torch_module().parameters()]


FAST = {"epochs": 2, "batch_size": 16, "validation_attack": None, "random_state": 0}
SMALL_PGD = {"eps": 0.1, "eps_step": 0.04, "max_iter": 3}


# --------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("norm", ["inf", 2])
def test_madry_inner_pgd_equals_bastion_pgd(norm):
    clf = _clf()
    x, y = _data(20)
    eps, step = (0.1, 0.03) if norm == "inf" else (0.5, 0.2)
    trainer = MadryPGDTrainer(
        clf, eps=eps, eps_step=step, max_iter=7, norm=norm, num_random_init=0, **FAST
    )
    run = trainer._start(False)
    ours = trainer._make_adversarial(run, x, y, _Batch(0, 0, 20, None, 0))
    ref = PGD(clf, eps=eps, eps_step=step, max_iter=7, norm=norm, num_random_init=0).generate(x, y)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert not torch.equal(ours, x)


def test_random_starts_of_a_shard_are_the_global_batchs_rows():
    full = global_noise(
        "ball",
        7,
        (10, 1, 4, 4),
        None,
        eps=0.2,
        norm="inf",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    pos = torch.arange(1, 10, 2)
    shard = global_noise(
        "ball",
        7,
        (10, 1, 4, 4),
        pos,
        eps=0.2,
        norm="inf",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert torch.equal(shard, full[pos])
    assert float(full.abs().max()) <= 0.2
    normal = global_noise(
        "normal",
        7,
        (10, 16),
        None,
        eps=0.2,
        norm="inf",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert 0.0005 < float(normal.std()) < 0.002  # 0.001 * N(0, 1): the TRADES start


def test_trades_loss_is_the_papers_formula():
    gen = torch.Generator().manual_seed(0)
    z, z_adv = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    y = torch.tensor([0, 2, 1, 1, 0])
    got = trades_loss(z, z_adv, y, beta=6.0)
    p, q = np.exp(z.numpy()), np.exp(z_adv.numpy())
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    ce = -np.log(p[np.arange(5), y.numpy()])
    kl = (p * (np.log(p) - np.log(q))).sum(1)
    np.testing.assert_allclose(got.numpy(), ce + 6.0 * kl, rtol=1e-5)


def test_mart_loss_is_the_papers_formula():
    gen = torch.Generator().manual_seed(1)
    z, z_adv = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    got = mart_loss(z, z_adv, y, beta=5.0)
    p, q = np.exp(z.numpy()), np.exp(z_adv.numpy())
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    rows = np.arange(6)
    other = np.where(q.argsort(1)[:, -1] == y.numpy(), q.argsort(1)[:, -2], q.argsort(1)[:, -1])
    bce = -np.log(q[rows, y.numpy()]) - np.log(1.0001 - q[rows, other] + 1e-12)
    kl = (p * (np.log(p) - np.log(q + 1e-12))).sum(1)
    expected = bce + 5.0 * kl * (1.0000001 - p[rows, y.numpy()])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_trades_inner_maximisation_increases_the_kl_from_a_tiny_gaussian_start():
    clf = _clf()
    x, y = _data(16)
    trainer = TRADESTrainer(clf, eps=0.2, eps_step=0.05, max_iter=5, **FAST)
    run = trainer._start(False)
    module = clf.torch_module().eval()
    x_adv = trainer._make_adversarial(run, x, y, _Batch(0, 0, 16, None, 0))
    with torch.no_grad():
        p = F.softmax(module(x), 1)
        kl = F.kl_div(F.log_softmax(module(x_adv), 1), p, reduction="none").sum(1)
    assert float(kl.min()) > 1e-4
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_awp_perturbs_each_weight_by_gamma_of_its_norm_and_restores_it_exactly():
    clf = _clf()
    x, y = _data(16)
    trainer = MadryPGDTrainer(clf, awp_gamma=0.05, **SMALL_PGD, **FAST)
    run = trainer._start(False)
    module = clf.torch_module()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    x_adv = trainer._make_adversarial(run, x, y, _Batch(0, 0, 16, None, 0))
    module.train()
    restore = trainer._perturb_weights(run, x, y, x_adv, 0.05)
    for name, p in module.named_parameters():
        if p.ndim > 1:  # weights: moved by gamma * ||w||
            rel = float((p.detach() - before[name]).norm() / before[name].norm())
            assert math.isclose(rel, 0.05, rel_tol=1e-4), name
        else:  # biases are not perturbed
            assert torch.equal(p, before[name])
    restore()
    for name, p in module.named_parameters():
        assert torch.equal(p, before[name])


def test_awp_step_applies_the_gradient_at_the_perturbed_weights_to_the_exact_ones():
    clf = _clf()
    x, y = _data(16)
    gamma, lr = 0.05, 0.1
    trainer = MadryPGDTrainer(
        clf,
        awp_gamma=gamma,
        **SMALL_PGD,
        **FAST,
        optimizer="sgd",
        learning_rate=lr,
        momentum=0.0,
        weight_decay=0.0,
        schedule=None,
    )
    run = trainer._start(False)
    module = clf.torch_module()
    batch = _Batch(0, 0, 16, None, 0)
    module.eval()
    x_adv = trainer._make_adversarial(run, x, y, batch)
    # By hand: the direction, the perturbed weights, the gradient there.
    twin = _net()
    twin.load_state_dict(module.state_dict())
    w = [p for p in twin.parameters() if p.ndim > 1]
    g = torch.autograd.grad(F.cross_entropy(twin(x_adv), y, reduction="sum"), w)
    start = [p.detach().clone() for p in twin.parameters()]
    with torch.no_grad():
        for p, gi in zip(w, g, strict=True):
            p.add_(gamma * p.norm() / gi.norm() * gi)
    grads = torch.autograd.grad(F.cross_entropy(twin(x_adv), y), list(twin.parameters()))
    expected = [s - lr * gr for s, gr in zip(start, grads, strict=True)]
    trainer._train_step(run, x, y, batch)
    for p, e in zip(module.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, atol=1e-6, rtol=1e-5)


def test_awp_waits_for_its_warmup_epochs():
    """AWP from the first step can hold a model trained from scratch at chance (on the
    digits CNN at gamma 0.01 the loss stays at log 10): ``awp_warmup`` epochs train
    without it, and the first epoch of such a run is the run without AWP."""
    x, y = _data(32)
    runs = []
    for gamma in (0.0, 0.5):
        clf, snapshots = _clf(), {}
        trainer = MadryPGDTrainer(clf, awp_gamma=gamma, awp_warmup=1, **SMALL_PGD, **FAST)
        trainer.fit(x, y, callback=lambda t, e, r, s=snapshots, c=clf: s.update({e: _params(c)}))
        runs.append(snapshots)
    assert [trainer._awp_gamma(e) for e in (0, 1, 2)] == [0.0, 0.5, 0.5]
    for p, q in zip(runs[0][0], runs[1][0], strict=True):  # epoch 0: identical
        assert torch.equal(p, q)
    assert not all(torch.equal(p, q) for p, q in zip(runs[0][1], runs[1][1], strict=True))


@pytest.mark.parametrize("trainer_cls", [MadryPGDTrainer, TRADESTrainer, MARTTrainer])
def test_eps_warmup_ramps_the_training_budget_linearly_step_by_step(trainer_cls):
    clf = _clf()
    x, y = _data(32)
    trainer = trainer_cls(clf, eps_warmup=2, **SMALL_PGD, **FAST)  # 2 batches per epoch
    seen: list[tuple[float, float]] = []
    make = trainer._make_adversarial

    def spy(run, xb, yb, batch):
        x_adv = make(run, xb, yb, batch)
        seen.append((batch.progress, float((x_adv - xb).abs().max())))
        return x_adv

    trainer._make_adversarial = spy
    trainer.fit(x, y, validation_data=(x[:8], y[:8]))
    assert [p for p, _ in seen] == [0.5, 1.0, 1.5, 2.0]
    for progress, dist in seen:  # eps 0.1 * progress / 2, eps_step 0.04 * progress / 2
        frac = progress / 2
        eps, step = trainer._train_budget(_Batch(0, 0, 16, None, 0, progress=progress))
        assert math.isclose(eps, 0.1 * frac) and math.isclose(step, 0.04 * frac)
        assert dist <= 0.1 * frac + 1e-6
    assert seen[-1][1] > 0.1 * 0.75  # the full budget is used once the ramp is over
    assert trainer._train_budget(_Batch(5, 0, 16, None, 0, progress=5.5)) == (0.1, 0.04)
    assert trainer._budget()[0] == 0.1  # validation and evaluate: the full eps


def test_free_training_keeps_its_perturbation_across_replays_and_batches():
    clf = _clf()
    x, y = _data(16)
    eps, lr, m = 0.1, 0.05, 3
    trainer = FreeAdversarialTrainer(
        clf,
        eps=eps,
        replays=m,
        optimizer="sgd",
        learning_rate=lr,
        momentum=0.0,
        weight_decay=0.0,
        schedule=None,
        **FAST,
    )
    run = trainer._start(False)
    twin = _net()
    twin.load_state_dict(clf.torch_module().state_dict())
    opt = torch.optim.SGD(twin.parameters(), lr=lr)
    delta = torch.zeros_like(x)
    for b in range(2):  # two batches: the perturbation carries over
        for _ in range(m):
            xa = (x + delta).clamp(0, 1).requires_grad_(True)
            loss = F.cross_entropy(twin(xa), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            delta = (delta + eps * xa.grad.sign()).clamp(-eps, eps)
        trainer._train_step(run, x, y, _Batch(0, b, 16, None, 0))
        torch.testing.assert_close(run.extra["delta"], delta)
    assert float(delta.abs().max()) == pytest.approx(eps)
    for p, q in zip(clf.torch_module().parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=1e-5)


def test_fast_fgsm_takes_one_step_of_one_and_a_quarter_eps_from_a_random_start():
    clf = _clf()
    x, y = _data(16)
    trainer = FastFGSMTrainer(clf, eps=0.1, **FAST)
    run = trainer._start(False)
    batch = _Batch(0, 0, 16, None, 0)
    x_adv = trainer._make_adversarial(run, x, y, batch)
    start = (
        x
        + global_noise(
            "ball",
            batch.seed("start"),
            x.shape,
            None,
            eps=0.1,
            norm="inf",
            device=x.device,
            dtype=x.dtype,
        )
    ).clamp(0, 1)
    start.requires_grad_(True)
    F.cross_entropy(clf.torch_module().eval()(start), y, reduction="sum").backward()
    step = start.detach() + 0.125 * start.grad.sign()
    expected = torch.min(torch.max(step, x - 0.1), x + 0.1).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)


@pytest.mark.parametrize(
    ("schedule", "points"),
    [
        ("piecewise", [(0, 0.1), (4.9, 0.1), (5, 0.01), (7.4, 0.01), (7.5, 0.001), (10, 0.001)]),
        ("cosine", [(0, 0.1), (5, 0.05), (10, 0.0)]),
        ("cyclic", [(0, 0.0), (2, 0.05), (4, 0.1), (7, 0.05), (10, 0.0)]),
        (None, [(0, 0.1), (9.9, 0.1)]),
    ],
)
def test_learning_rate_schedules(schedule, points):
    for t, lr in points:
        assert learning_rate_at(schedule, 0.1, t, 10) == pytest.approx(lr, abs=1e-12), t


def test_the_cyclic_rate_is_set_every_step():
    clf = _clf()
    x, y = _data(64)
    trainer = FastFGSMTrainer(clf, eps=0.1, **{**FAST, "epochs": 5})
    seen = []
    original = trainer._train_step

    def spy(run, xb, yb, batch):
        seen.append(run.optimizer.param_groups[0]["lr"])
        return original(run, xb, yb, batch)

    trainer._train_step = spy
    trainer.fit(x, y)
    expected = [learning_rate_at("cyclic", 5e-3, e + b / 4, 5) for e in range(5) for b in range(4)]
    assert seen == pytest.approx(expected)


# --------------------------------------------------------------------------- the loop


def _fit(trainer_cls, clf, x, y, **kw):
    params = {**FAST, **SMALL_PGD, **kw} if trainer_cls is not FastFGSMTrainer else {**FAST, **kw}
    return trainer_cls(clf, **params).fit(x, y)


@pytest.mark.parametrize("trainer_cls", [MadryPGDTrainer, TRADESTrainer])
def test_an_interrupted_run_resumed_ends_bit_identical(tmp_path, trainer_cls):
    x, y = _data(40)
    settings = {"epochs": 3, "checkpoint_dir": tmp_path / "a", "awp_gamma": 0.01}
    whole = _clf(dropout=0.2)
    _fit(trainer_cls, whole, x, y, **settings)

    def stop_after_first(trainer, epoch, record):
        if epoch == 0:
            raise KeyboardInterrupt

    part = _clf(dropout=0.2)
    settings["checkpoint_dir"] = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        trainer_cls(part, **{**FAST, **SMALL_PGD, **settings}).fit(x, y, callback=stop_after_first)
    assert (tmp_path / "b" / "last.pt").exists()
    fresh = _clf(seed=5, dropout=0.2)  # other initial weights: all comes from the checkpoint
    resumed = trainer_cls(fresh, **{**FAST, **SMALL_PGD, **settings}).fit(x, y, resume=True)
    assert len(resumed.history_) == 3
    for p, q in zip(_params(whole), _params(fresh), strict=True):
        assert torch.equal(p, q)


def test_streaming_batches_give_the_model_arrays_give():
    x, y = _data(40)
    by_arrays = _clf(dropout=0.2)
    trainer = _fit(MadryPGDTrainer, by_arrays, x, y)

    class Epochs:
        """Yields, each epoch, the batches the array path draws (re-iterable)."""

        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return 3

        def __iter__(self):
            seed = derive_seed(0, self.epoch, "shuffle")
            order = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
            self.epoch += 1
            for s in range(0, 40, 16):
                idx = order[s : s + 16]
                yield x[idx].numpy(), y[idx].numpy()

    by_loader = _clf(dropout=0.2)
    MadryPGDTrainer(by_loader, **FAST, **SMALL_PGD).fit(Epochs())
    for p, q in zip(_params(by_arrays), _params(by_loader), strict=True):
        assert torch.equal(p, q)
    assert len(trainer.history_) == 2


def test_a_dataloader_is_streamed_and_validated_per_epoch():
    x, y = _data(48)
    ds = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(
        ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = torch.utils.data.DataLoader(ds, batch_size=32)
    clf = _clf()
    trainer = MadryPGDTrainer(clf, **SMALL_PGD, **{**FAST, "validation_attack": "pgd-5"})
    trainer.fit(train, validation_data=val)
    rec = trainer.history_[-1]
    assert {"val_clean_accuracy", "val_robust_accuracy", "seconds", "learning_rate"} <= set(rec)
    assert 0 <= rec["val_robust_accuracy"] <= rec["val_clean_accuracy"] + 1e-9


def test_fit_leaves_the_global_rng_and_the_modules_mode_alone():
    x, y = _data(32)
    clf = _clf(dropout=0.3)
    module = clf.torch_module()
    module.train()
    state = torch.get_rng_state()
    FastFGSMTrainer(clf, eps=0.1, **FAST).fit(x, y)
    MadryPGDTrainer(clf, **SMALL_PGD, **FAST).fit(x, y, validation_data=(x, y))
    assert torch.equal(torch.get_rng_state(), state)
    assert module.training


def test_the_best_epoch_by_validation_robust_accuracy_is_restored(tmp_path):
    x, y = _data(40)
    clf = _clf()
    snapshots = {}

    def keep(trainer, epoch, record):
        snapshots[epoch] = _params(clf)

    trainer = MadryPGDTrainer(
        clf,
        **SMALL_PGD,
        **{**FAST, "epochs": 4, "validation_attack": "pgd-3"},
        learning_rate=0.5,
        checkpoint_dir=tmp_path,
    )
    trainer.fit(x, y, validation_data=(x[:20], y[:20]), callback=keep)
    scores = [r["val_robust_accuracy"] for r in trainer.history_]
    assert trainer.best_epoch_ == int(np.argmax(scores))
    for p, q in zip(_params(clf), snapshots[trainer.best_epoch_], strict=True):
        assert torch.equal(p, q)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == trainer.best_epoch_


def test_without_validation_data_the_last_epoch_is_kept():
    x, y = _data(32)
    trainer = _fit(MARTTrainer, _clf(), x, y)
    assert trainer.best_epoch_ == 1
    assert set(trainer.history_[0]) >= {"loss", "train_clean_accuracy", "train_robust_accuracy"}


def test_adversarial_trainer_mixes_attacked_and_clean_samples():
    x, y = _data(32)
    clf = _clf()
    seen = []
    attack = FGSM(clf, eps=0.1)
    original = attack.generate

    def spy(xb, yb=None, **kw):
        seen.append(xb.shape[0])
        return original(xb, yb, **kw)

    attack.generate = spy
    AdversarialTrainer(clf, attack, ratio=0.25, **FAST).fit(x, y)
    assert seen == [4, 4] * 2  # a quarter of each batch of 16, two batches, two epochs


def test_evaluate_runs_autoattack_at_the_training_budget():
    x, y = _data(12)
    clf = _clf()
    trainer = _fit(MadryPGDTrainer, clf, x, y)
    result = trainer.evaluate(x, y)
    assert isinstance(result, TrainingEvaluation)
    assert (result.eps, result.norm, result.nb_samples) == (0.1, "inf", 12)
    assert 0 <= result.robust_accuracy <= result.clean_accuracy <= 1


# --------------------------------------------------------------------------- failures


class _NaNAfter(nn.Module):
    """Logits that turn NaN after ``calls`` forward passes."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.net, self.calls, self.left = _net(), calls, calls

    def forward(self, x):
        self.left -= 1
        out = self.net(x)
        return out * float("nan") if self.left < 0 else out


def test_a_nan_loss_names_epoch_and_batch_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = _data(32)
    # Madry with 3 PGD steps from x: per batch 3 attack and 1 training forward passes; 2
    # batches per epoch: 8 calls an epoch; NaN from the 9th call: epoch 1, batch 0.
    clf = TorchClassifier(_NaNAfter(8), input_shape=(1, 4, 4), nb_classes=3)
    trainer = MadryPGDTrainer(
        clf, **SMALL_PGD, **{**FAST, "epochs": 3}, num_random_init=0, checkpoint_dir=tmp_path
    )
    with pytest.raises(ModelError, match=r"epoch 1 .*batch 0"):
        trainer.fit(x, y)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 0
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())


def test_a_planted_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    (tmp_path / "last.pt").write_bytes(pickle.dumps({"format": Payload()}))
    x, y = _data(16)
    trainer = MadryPGDTrainer(_clf(), **SMALL_PGD, **FAST, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="data only"):
        trainer.fit(x, y, resume=True)
    assert not marker.exists()


def test_a_checkpoint_of_another_model_or_recipe_is_refused(tmp_path):
    x, y = _data(16)
    MadryPGDTrainer(_clf(), **SMALL_PGD, **FAST, checkpoint_dir=tmp_path).fit(x, y)
    wider = TorchClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), input_shape=(1, 4, 4), nb_classes=3
    )
    with pytest.raises(InputError, match="another model"):
        MadryPGDTrainer(wider, **SMALL_PGD, **FAST, checkpoint_dir=tmp_path).fit(x, y, resume=True)
    with pytest.raises(InputError, match="another model"):
        TRADESTrainer(_clf(), **SMALL_PGD, **FAST, checkpoint_dir=tmp_path).fit(x, y, resume=True)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda c: MadryPGDTrainer(c, eps=2.0), InvalidParameterError, "clip_values"),
        (lambda c: MadryPGDTrainer(c, eps=4.5, norm=2), InvalidParameterError, "clip_values"),
        (lambda c: MadryPGDTrainer(c, eps=-0.1), InvalidParameterError, "'eps'"),
        (lambda c: MadryPGDTrainer(c, schedule="step"), InvalidParameterError, "schedule"),
        (
            lambda c: MadryPGDTrainer(c, validation_attack="pgd"),
            InvalidParameterError,
            "validation_attack",
        ),
        (lambda c: MadryPGDTrainer(c, amp=True), InvalidParameterError, "CUDA"),
        (lambda c: FreeAdversarialTrainer(c, replays=0), InvalidParameterError, "replays"),
        (
            lambda c: AdversarialTrainer(c, FGSM(_clf(), eps=0.1)),
            InvalidParameterError,
            "own estimator",
        ),
        (lambda c: AdversarialTrainer(c, "fgsm"), InvalidParameterError, "attack"),
    ],
)
def test_bad_settings_raise_clear_errors(make, error, match):
    x, y = _data(16)
    with pytest.raises(error, match=match):
        make(_clf()).fit(x, y)


def test_bad_data_raises_clear_errors():
    x, y = _data(16)
    trainer = MadryPGDTrainer(_clf(), **SMALL_PGD, **FAST)
    with pytest.raises(InputError, match="shape"):
        trainer.fit(x[:, :, :3], y)
    with pytest.raises(InputError, match="outside"):
        trainer.fit(x, y + 3)
    with pytest.raises(InputError, match=r"\(x, y\) pairs"):
        trainer.fit([(x, y, y)])
    with pytest.raises(InputError, match="without labels"):
        trainer.fit(x)
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        trainer.fit(x, y, resume=True)


def test_lr_is_accepted_as_the_old_name_of_learning_rate():
    with pytest.warns(DeprecationWarning, match="learning_rate"):
        trainer = MadryPGDTrainer(_clf(), lr=0.05)
    assert trainer.learning_rate == 0.05


# --------------------------------------------------------------------------- on the digits CNN


@pytest.mark.slow
def test_fast_fgsm_detects_catastrophic_overfitting_and_restores_the_last_good_epoch(digits28):
    """Plain FGSM (no random start) with a step of 2 eps at eps 0.3: the textbook recipe for
    catastrophic overfitting (Wong et al. 2020, fig. 1). On 640 digits it sets in by the 4th
    epoch: the FGSM accuracy climbs while the PGD accuracy stays at 0 (about 30 s)."""
    from bastion.zoo import SmallCNN

    (x, y), _ = digits28
    clf = TorchClassifier(SmallCNN(random_state=0), input_shape=(1, 28, 28), nb_classes=10)
    snapshots = {}
    trainer = FastFGSMTrainer(
        clf,
        eps=0.3,
        eps_step=0.6,
        num_random_init=0,
        epochs=4,
        batch_size=64,
        validation_attack=None,
        stop_on_overfit=True,
    )
    with pytest.warns(RuntimeWarning, match="catastrophic overfitting at epoch 3"):
        trainer.fit(x[:640], y[:640], callback=lambda t, e, r: snapshots.update({e: _params(clf)}))
    last = trainer.history_[-1]
    assert last["overfit"] and not any(r["overfit"] for r in trainer.history_[:-1])
    assert last["check_fgsm_accuracy"] - last["check_pgd_accuracy"] > 0.5
    for p, q in zip(_params(clf), snapshots[2], strict=True):  # the last good epoch's weights
        assert torch.equal(p, q)


@pytest.mark.slow
def test_madry_training_lifts_pgd_robustness_of_the_digits_cnn(digits28, digits_cnn):
    """From ~0 (the clean-trained CNN: 0.0 measured) to about twice chance under PGD-20 at eps
    0.2 (0.19 measured, clean 0.80), in 4 epochs of 3-step PGD training from scratch (35 s on
    a quiet core, 80 s on a loaded one). Few epochs buy little robustness on this data: the
    AutoAttack numbers of longer runs are in benchmarks/adversarial_training_digits.py."""
    from bastion.zoo import SmallCNN

    (x, y), (x_test, y_test) = digits28
    x_test, y_test = x_test[:200], y_test[:200]

    def robust(clf):
        x_adv = PGD(clf, eps=0.2, eps_step=0.02, max_iter=20, random_state=0).generate(
            x_test, y_test
        )
        return float(np.mean(clf.predict(x_adv).argmax(1) == y_test))

    assert robust(digits_cnn) < 0.05
    clf = TorchClassifier(SmallCNN(random_state=0), input_shape=(1, 28, 28), nb_classes=10)
    MadryPGDTrainer(
        clf,
        eps=0.2,
        eps_step=0.1,
        max_iter=3,
        epochs=4,
        batch_size=32,
        optimizer="adam",
        learning_rate=2e-3,
        schedule="cosine",
        weight_decay=0.0,
        validation_attack=None,
        random_state=0,
    ).fit(x, y)
    clean = float(np.mean(clf.predict(x_test).argmax(1) == y_test))
    assert robust(clf) > 0.15
    assert clean > 0.7
