"""Certified training (IBP, CROWN-IBP): the loss against a hand-written interval propagation,
the eps / kappa / beta schedules at known steps, the history, the best-epoch rule, resume,
the lift in verified accuracy over normal training, the soundness of the certificates under
PGD, and bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.certification import CertifiedTrainingEvaluation, CrownIBPTrainer, IBPTrainer
from bastion.certification._bounds import BoundNetwork
from bastion.certification._training_eval import margin_lower, worst_case_logits
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.exceptions import InputError, InvalidParameterError, ModelError
from bastion.testing._bad_inputs_certified_training import certified_trainer_cases


def _mlp(seed: int = 0, hidden: int = 12, inputs: int = 16, classes: int = 3) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net


def _clf(seed: int = 0, **kw) -> TorchClassifier:
    return TorchClassifier(
        _mlp(seed), input_shape=(1, 4, 4), nb_classes=3, clip_values=(0, 1), **kw
    )


def _data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    y = (x.reshape(n, -1)[:, :3].argmax(1)).long()
    return x, y


def _params(clf: TorchClassifier) -> list[torch.Tensor]:
    return [p.detach().clone() for p in clf.torch_module().parameters()]


FAST = {"epochs": 2, "batch_size": 16, "random_state": 0, "eps": 0.1}


def _hand_ibp(net: nn.Sequential, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """Interval arithmetic written out for Flatten / Linear / ReLU, in centre-radius form."""
    lo, up = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    c, r = (up + lo) / 2, (up - lo) / 2
    for layer in net:
        if isinstance(layer, nn.Flatten):
            c, r = layer(c), layer(r)
        elif isinstance(layer, nn.Linear):
            c, r = F.linear(c, layer.weight, layer.bias), F.linear(r, layer.weight.abs())
        else:
            lo, up = (c - r).relu(), (c + r).relu()
            c, r = (up + lo) / 2, (up - lo) / 2
    return c - r, c + r


# --------------------------------------------------------------------------- the loss


def test_worst_case_logits_are_the_specification_form():
    y = torch.tensor([0, 2])
    lower = torch.tensor([[1.0, -2.0], [0.5, 3.0]])  # rows: j != y, ascending
    z_hat = worst_case_logits(lower, y)
    assert torch.equal(z_hat, torch.tensor([[0.0, -1.0, 2.0], [-0.5, -3.0, 0.0]]))
    verified = (lower > 0).all(1)
    assert torch.equal(z_hat.argmax(1) == y, verified)


def test_ibp_margins_are_the_hand_computed_ones_and_sound_by_sampling():
    net = _mlp(1)
    x, y = _data(8)
    bounds = BoundNetwork(net, (1, 4, 4))
    lower = margin_lower(bounds, x, y, 0.1, "inf", (0, 1), "ibp")
    lo, up = _hand_ibp(net, x, 0.1)
    k = 3
    for i in range(x.shape[0]):
        others = [j for j in range(k) if j != int(y[i])]
        expected = lo[i, y[i]] - up[i, others]
        torch.testing.assert_close(lower[i], expected, rtol=1e-5, atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        pts = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * 0.1).clamp(0, 1)
        z = net(pts)
        margins = z.gather(1, y[:, None]) - z
        keep = torch.arange(k)[None, :] != y[:, None]
        assert bool((margins[keep].reshape(-1, k - 1) >= lower - 1e-5).all())


def test_one_ibp_step_is_sgd_on_gowals_loss():
    """One full-batch SGD step, eps and kappa at their final values from the first step: the
    update is the gradient of kappa * CE(z) + (1 - kappa) * CE(z_hat) with z_hat from a hand-
    written interval propagation."""
    x, y = _data(24)
    clf = _clf(3)
    reference = _mlp(3)
    lr, kappa, eps = 0.5, 0.3, 0.15
    IBPTrainer(
        clf,
        eps=eps,
        epochs=1,
        batch_size=24,
        optimizer="sgd",
        momentum=0.0,
        learning_rate=lr,
        schedule=None,
        warmup_epochs=0,
        ramp_epochs=0,
        kappa_start=1.0,
        kappa_end=kappa,
    ).fit(x, y)
    lo, up = _hand_ibp(reference, x, eps)
    z_hat = up - lo.gather(1, y[:, None])
    z_hat = z_hat.scatter(1, y[:, None], 0.0)
    loss = kappa * F.cross_entropy(reference(x), y) + (1 - kappa) * F.cross_entropy(z_hat, y)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for p, p0, g in zip(_params(clf), reference.parameters(), grads, strict=True):
        torch.testing.assert_close(p, p0.detach() - lr * g, rtol=1e-5, atol=1e-6)


def test_crown_ibp_mixes_the_two_bounds_by_beta_and_skips_crown_at_beta_zero(monkeypatch):
    x, y = _data(10)
    clf = _clf(2)
    bounds = BoundNetwork(clf.torch_module(), (1, 4, 4))
    trainer = CrownIBPTrainer(clf, eps=0.1)
    ibp = margin_lower(bounds, x, y, 0.1, "inf", (0, 1), "ibp")
    crown = margin_lower(bounds, x, y, 0.1, "inf", (0, 1), "crown-ibp")
    assert not torch.allclose(ibp, crown)  # the test distinguishes them
    mixed = trainer._training_margins(bounds, x, y, 0.1, 0.25)
    torch.testing.assert_close(mixed, 0.25 * crown + 0.75 * ibp)
    torch.testing.assert_close(trainer._training_margins(bounds, x, y, 0.1, 1.0), crown)
    calls = []
    original = BoundNetwork.crown
    monkeypatch.setattr(
        BoundNetwork, "crown", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    torch.testing.assert_close(trainer._training_margins(bounds, x, y, 0.1, 0.0), ibp)
    assert not calls


# --------------------------------------------------------------------------- schedules


def test_the_schedules_at_known_steps():
    ibp = IBPTrainer(None, eps=0.1, eps_train=0.2, warmup_epochs=2, ramp_epochs=4, kappa_end=0.5)
    assert ibp.schedule_at(2.0) == {"eps": 0.0, "kappa": 1.0, "beta": 0.0}
    at = ibp.schedule_at(3.0)
    assert math.isclose(at["eps"], 0.05) and math.isclose(at["kappa"], 0.875)
    assert ibp.schedule_at(6.0) == {"eps": 0.2, "kappa": 0.5, "beta": 0.0}
    assert ibp.schedule_at(60.0) == ibp.schedule_at(6.0)
    crown = CrownIBPTrainer(None, eps=0.1, warmup_epochs=1, ramp_epochs=2)
    at = crown.schedule_at(1.5)
    assert math.isclose(at["eps"], 0.025) and math.isclose(at["beta"], 0.75)
    assert math.isclose(at["kappa"], 0.75)
    assert crown.schedule_at(3.0) == {"eps": 0.1, "kappa": 0.0, "beta": 0.0}
    jump = IBPTrainer(None, eps=0.1, warmup_epochs=1, ramp_epochs=0)
    assert jump.schedule_at(1.0)["eps"] == 0.0 and jump.schedule_at(1.01)["eps"] == 0.1


def test_each_step_uses_the_schedule_at_its_end_and_the_warmup_bounds_nothing():
    x, y = _data(40)  # 4 batches of 10 per epoch

    seen: list[tuple[float, float]] = []

    class Recording(CrownIBPTrainer):
        def _training_margins(self, net, x, y, eps, beta):
            seen.append((eps, beta))
            return super()._training_margins(net, x, y, eps, beta)

    trainer = Recording(
        _clf(), eps=0.1, epochs=3, batch_size=10, warmup_epochs=1, ramp_epochs=1, random_state=0
    )
    trainer.fit(x, y)
    # Epoch 0 is the clean warm-up: no bounds. Epoch 1 ramps per step, epoch 2 is at the end.
    expected = [(0.1 * b / 4, 1 - b / 4) for b in (1, 2, 3, 4)] + [(0.1, 0.0)] * 4
    assert len(seen) == 8
    for (eps, beta), (e, b) in zip(seen, expected, strict=True):
        assert math.isclose(eps, e) and math.isclose(beta, b)
    assert [r["eps"] for r in trainer.history_] == [0.0, 0.1, 0.1]
    assert [r["beta"] for r in trainer.history_] == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------- the loop


def test_history_records_schedule_and_verified_accuracies():
    x, y = _data(40)
    trainer = IBPTrainer(_clf(), **FAST, warmup_epochs=0, ramp_epochs=1, kappa_end=0.0)
    trainer.fit(x, y, validation_data=(x[:20], y[:20]))
    for rec in trainer.history_:
        assert {
            "epoch",
            "eps",
            "kappa",
            "beta",
            "loss",
            "train_clean_accuracy",
            "train_verified_accuracy",
            "val_clean_accuracy",
            "val_verified_accuracy",
            "val_robust_accuracy",
            "seconds",
            "learning_rate",
        } <= set(rec)
        assert "train_robust_accuracy" not in rec
        assert 0 <= rec["train_verified_accuracy"] <= rec["train_clean_accuracy"] + 1e-9
        assert 0 <= rec["val_verified_accuracy"] <= rec["val_clean_accuracy"] + 1e-9
        assert math.isnan(rec["val_robust_accuracy"])  # no validation attack
    assert trainer.history_[-1]["kappa"] == 0.0


def test_a_validation_attack_is_recorded_beside_the_verified_accuracy():
    x, y = _data(40)
    trainer = IBPTrainer(
        _clf(), **{**FAST, "validation_attack": "pgd-5"}, warmup_epochs=0, ramp_epochs=1
    )
    trainer.fit(x, y, validation_data=(x, y))
    rec = trainer.history_[-1]
    assert rec["val_verified_accuracy"] <= rec["val_robust_accuracy"] + 1e-9


def test_the_best_epoch_is_the_best_verified_one_after_the_ramp(tmp_path):
    x, y = _data(40)
    clf = _clf()
    snapshots = {}

    def keep(trainer, epoch, record):
        snapshots[epoch] = _params(clf)

    trainer = IBPTrainer(
        clf,
        **{**FAST, "epochs": 6},
        eps_train=0.15,
        warmup_epochs=1,
        ramp_epochs=2,
        learning_rate=0.05,
        checkpoint_dir=tmp_path,
    )
    trainer.fit(x, y, validation_data=(x[:20], y[:20]), callback=keep)
    scores = [r["val_verified_accuracy"] for r in trainer.history_]
    assert trainer.best_epoch_ >= 2  # epochs 0 and 1 end before the ramp does
    assert trainer.best_epoch_ == 2 + int(np.argmax(scores[2:]))
    for p, q in zip(_params(clf), snapshots[trainer.best_epoch_], strict=True):
        assert torch.equal(p, q)
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == trainer.best_epoch_


def test_a_run_that_never_ends_its_ramp_keeps_the_last_epoch():
    x, y = _data(32)
    trainer = IBPTrainer(_clf(), **FAST, warmup_epochs=1, ramp_epochs=5)
    trainer.fit(x, y, validation_data=(x, y))
    assert trainer.best_epoch_ == 1


@pytest.mark.parametrize("trainer_cls", [IBPTrainer, CrownIBPTrainer])
def test_an_interrupted_run_resumed_ends_bit_identical(tmp_path, trainer_cls):
    x, y = _data(40)
    settings = {**FAST, "epochs": 3, "warmup_epochs": 0.5, "ramp_epochs": 1.5}
    whole = _clf()
    trainer_cls(whole, **settings, checkpoint_dir=tmp_path / "a").fit(
        x, y, validation_data=(x[:16], y[:16])
    )

    def stop_after_first(trainer, epoch, record):
        if epoch == 0:
            raise KeyboardInterrupt

    part = _clf()
    with pytest.raises(KeyboardInterrupt):
        trainer_cls(part, **settings, checkpoint_dir=tmp_path / "b").fit(
            x, y, validation_data=(x[:16], y[:16]), callback=stop_after_first
        )
    fresh = _clf(seed=5)  # other initial weights: all comes from the checkpoint
    resumed = trainer_cls(fresh, **settings, checkpoint_dir=tmp_path / "b").fit(
        x, y, validation_data=(x[:16], y[:16]), resume=True
    )
    assert len(resumed.history_) == 3
    for p, q in zip(_params(whole), _params(fresh), strict=True):
        assert torch.equal(p, q)


def test_fit_leaves_the_global_rng_and_the_modules_mode_alone():
    x, y = _data(32)
    clf = _clf()
    module = clf.torch_module()
    module.eval()
    state = torch.get_rng_state()
    CrownIBPTrainer(clf, **FAST, warmup_epochs=0, ramp_epochs=1).fit(x, y, validation_data=(x, y))
    assert torch.equal(torch.get_rng_state(), state)
    assert not module.training


_DDP_SCRIPT = """
import sys
import torch
from torch import nn
from bastion.certification import CrownIBPTrainer
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier

def main():
    distributed = len(sys.argv) > 2
    if distributed:
        torch.distributed.init_process_group(backend="gloo")
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    clf = TorchClassifier(net, input_shape=(1, 8, 8), nb_classes=10)
    (x, y), _ = load_digits(size=8, random_state=0)
    trainer = CrownIBPTrainer(clf, eps=0.1, epochs=2, batch_size=49, warmup_epochs=0.5,
                              ramp_epochs=1, learning_rate=0.01, random_state=0)
    trainer.fit(x[:150], y[:150], validation_data=(x[150:190], y[150:190]))
    if not distributed or torch.distributed.get_rank() == 0:
        torch.save({"model": net.state_dict(), "history": trainer.history_}, sys.argv[1])
    if distributed:
        torch.distributed.destroy_process_group()

main()
"""


@pytest.mark.slow
def test_two_processes_train_the_weights_one_process_does(tmp_path):
    """torchrun with 2 CPU ranks (gloo), uneven shards of 25 and 24 (and 2 and 1): the whole
    certified loss runs inside DistributedDataParallel, so the weights match one process."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for _ in range(2):  # torchrun picks a free port, then binds it: another job may take it
        two = subprocess.run(
            [*cmd, str(script), str(tmp_path / "two.pt"), "ddp"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if two.returncode == 0 or "address already in use" not in two.stderr.lower():
            break
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    b = torch.load(tmp_path / "two.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-5)
    for r1, r2 in zip(a["history"], b["history"], strict=True):
        for key in ("train_verified_accuracy", "val_verified_accuracy", "val_clean_accuracy"):
            assert r1[key] == pytest.approx(r2[key], abs=1e-9)
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)


# --------------------------------------------------------------------------- the lift


def _digits_cnn(seed: int = 0) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(256, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    with torch.no_grad():  # PyTorch's default initialisation, from a seeded generator
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1 / math.sqrt(m.weight[0].numel())
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.uniform_(-bound, bound, generator=gen)
    return net


@pytest.fixture(scope="module")
def digits8():
    return load_digits(size=8, random_state=0)


@pytest.fixture(scope="module")
def trained_pair(digits8):
    """The same CNN trained normally and with IBP (eps 0.1, same optimiser and epochs)."""
    (x, y), _ = digits8
    settings = {"batch_size": 64, "learning_rate": 5e-3, "schedule": "cosine", "random_state": 0}
    normal = TorchClassifier(_digits_cnn(), input_shape=(1, 8, 8), nb_classes=10)
    # eps never leaves 0 and kappa stays 1: the loop's plain clean training.
    IBPTrainer(normal, eps=0.1, epochs=6, warmup_epochs=6, ramp_epochs=0, **settings).fit(x, y)
    certified = TorchClassifier(_digits_cnn(), input_shape=(1, 8, 8), nb_classes=10)
    trainer = IBPTrainer(
        certified,
        eps=0.1,
        eps_train=0.12,
        epochs=20,
        warmup_epochs=1,
        ramp_epochs=8,
        kappa_end=0.0,
        **settings,
    ).fit(x, y)
    return normal, trainer


def test_ibp_training_lifts_verified_accuracy_far_above_normal_training(digits8, trained_pair):
    _, (x_test, y_test) = digits8
    normal, trainer = trained_pair
    bounds = BoundNetwork(normal.torch_module(), (1, 8, 8))
    xt, yt = torch.as_tensor(x_test), torch.as_tensor(y_test)
    with torch.no_grad():
        normal_verified = float(
            (margin_lower(bounds, xt, yt, 0.1, "inf", (0, 1), "ibp") > 0).all(1).float().mean()
        )
    clean = float((normal.predict(x_test).argmax(1) == y_test).mean())
    assert clean > 0.9 and normal_verified < 0.05  # accurate, and certified nowhere
    result = trainer.evaluate(x_test, y_test, crown=False, num_random_init=1, max_iter=20)
    assert isinstance(result, CertifiedTrainingEvaluation)
    assert result.ibp_verified_accuracy > 0.4  # 0.547 measured (normal training: 0.0)
    assert result.clean_accuracy > 0.8


def test_pgd_never_breaks_a_verified_sample(digits8, trained_pair):
    _, (x_test, y_test) = digits8
    _, trainer = trained_pair
    result = trainer.evaluate(x_test[:96], y_test[:96], max_iter=40, num_random_init=2)
    assert result.nb_samples == 96
    assert result.ibp_verified.sum() > 50 and result.crown_verified.sum() > 50
    assert not (result.ibp_verified & ~result.pgd_robust).any()
    assert not (result.crown_verified & ~result.pgd_robust).any()
    # CROWN's bounds are intersected with IBP's: it verifies every sample IBP does.
    assert not (result.ibp_verified & ~result.crown_verified).any()
    assert result.ibp_verified_accuracy <= result.pgd_accuracy <= result.clean_accuracy


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("trainer_cls", [IBPTrainer, CrownIBPTrainer])
def test_bad_input_rows(trainer_cls):
    rows = certified_trainer_cases(trainer_cls)
    assert len(rows) >= 10
    for row in rows:
        row.run()


def test_bad_settings_raise_clear_errors():
    x, y = _data(16)
    with pytest.raises(InvalidParameterError, match="kappa_end"):
        IBPTrainer(_clf(), eps=0.1, kappa_end=1.5).fit(x, y)
    with pytest.raises(InvalidParameterError, match="beta_start"):
        CrownIBPTrainer(_clf(), eps=0.1, beta_start=-0.1).fit(x, y)
    with pytest.raises(InvalidParameterError, match="eps_train"):
        IBPTrainer(_clf(), eps=0.1, eps_train=2.0).fit(x, y)
    with pytest.raises(InvalidParameterError, match="ramp_epochs"):
        IBPTrainer(_clf(), eps=0.1, ramp_epochs=-1).fit(x, y)
    with pytest.raises(InvalidParameterError, match="max_iter"):
        IBPTrainer(_clf(), eps=0.1).evaluate(x, y, max_iter=0)


def test_batchnorm_and_unsupported_layers_are_refused():
    x, y = _data(16)
    with_bn = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )
    clf = TorchClassifier(with_bn, input_shape=(1, 4, 4), nb_classes=3)
    with pytest.raises(ModelError, match="BatchNorm"):
        IBPTrainer(clf, eps=0.1, epochs=1).fit(x, y)
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    clf = TorchClassifier(tanh, input_shape=(1, 4, 4), nb_classes=3)
    with pytest.raises(ModelError, match="no bound rule"):
        CrownIBPTrainer(clf, eps=0.1, epochs=1).fit(x, y)
    with pytest.raises(InputError):
        IBPTrainer(_clf(), eps=0.1).evaluate(x[:, :, :2], y)
