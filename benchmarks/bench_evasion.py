"""Time bastion's white-box evasion attacks against IBM ART, torchattacks and Foolbox.

Every library attacks the same trained SmallCNN (digits, 28x28, bounds [0, 1], eval mode) on
the same N correctly classified test images with matched hyper-parameters (the mapping of each
attack's parameters onto each library is documented in ``attack_specs`` below). For each
(attack, library) the script reports the wall-clock time (median of ``--repeats`` runs after a
warm-up), the success rate (untargeted: prediction != label; JSMA: prediction == target) and
the mean and median perturbation norm (Linf, L2, L1 or L0 depending on the attack; for
minimum-norm attacks over the successful samples, and also over the samples on which every
library succeeded). The libraries' runs are interleaved and their order rotates at every repeat,
so background load affects all of them alike.

It needs the comparison venv (``bash benchmarks/setup_compare.sh``)::

    benchmarks/.venv-compare/bin/python benchmarks/bench_evasion.py --n 256 --repeats 3 \\
        --json benchmarks/results/evasion_cpu.json

The trained model is cached under ``benchmarks/.cache`` (git-ignored; shared with
``bench_pgd.py``). A library missing from the venv is skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import inspect
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.attacks.evasion.auto_pgd import AutoProjectedGradientDescent
from bastion.attacks.evasion.carlini_wagner import CarliniWagnerL2, CarliniWagnerLinf
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.elastic_net import ElasticNet
from bastion.attacks.evasion.fast_gradient import FastGradientMethod
from bastion.attacks.evasion.fast_minimum_norm import FastMinimumNorm
from bastion.attacks.evasion.iterative import BasicIterativeMethod, MomentumIterativeMethod
from bastion.attacks.evasion.newtonfool import NewtonFool
from bastion.attacks.evasion.projected_gradient import ProjectedGradientDescent
from bastion.attacks.evasion.saliency_map import SaliencyMapMethod
from bastion.attacks.evasion.virtual_adversarial import VirtualAdversarialMethod
from bastion.datasets import load_digits
from bastion.estimators import TorchClassifier
from bastion.zoo import SmallCNN, train_classifier

BastionFAB: Any
try:  # FAB is being written; it joins the benchmark as soon as the module lands.
    from bastion.attacks.evasion.fab import FAB as BastionFAB
except ImportError:
    BastionFAB = None

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SEED = 0
TRAIN_EPOCHS = 5
LIBS = ("bastion", "art", "torchattacks", "foolbox")

Tensor = torch.Tensor
Runner = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------- set-up


def trained_model(x_train: torch.Tensor, y_train: torch.Tensor) -> nn.Module:
    """SmallCNN trained (seeded, on the CPU) on the digits-28 training split; cached (the same
    file as bench_pgd.py)."""
    path = CACHE / f"smallcnn_digits28_seed{SEED}_epochs{TRAIN_EPOCHS}.pt"
    model = SmallCNN(in_channels=1, nb_classes=10, input_size=28, random_state=SEED)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        train_classifier(model, x_train, y_train, epochs=TRAIN_EPOCHS, random_state=SEED)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in os.getloadavg()]
    except OSError:
        return None


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model_name(),
        "torch_num_threads": torch.get_num_threads(),
        "loadavg_start": loadavg(),
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "bastion": version("bastion"),
            "adversarial-robustness-toolbox": version("adversarial-robustness-toolbox"),
            "torchattacks": version("torchattacks"),
            "foolbox": version("foolbox"),
            "eagerpy": version("eagerpy"),
        },
    }


@dataclass
class Context:
    """The model, wrapped once per library. A library that is not installed is None."""

    model: nn.Module
    clf: TorchClassifier
    batch_size: int
    art: Any = None  # module art.attacks.evasion
    art_clf: Any = None  # ART PyTorchClassifier on the logits
    art_clf_proba: Any = None  # ART PyTorchClassifier on softmax(logits), for the attacks that
    # are defined on probabilities (NewtonFool, JSMA, VAT); ART does not apply softmax itself
    ta: Any = None  # module torchattacks
    fb: Any = None  # module foolbox
    fmodel: Any = None  # foolbox PyTorchModel
    missing: dict[str, str] = field(default_factory=dict)


def user_and_bastion_models(
    model: nn.Module, same_layout: bool, hook_bastion: bool = True
) -> tuple[nn.Module, nn.Module]:
    """The model the other libraries get (as the user has it: NCHW weights) and the one
    bastion's TorchClassifier wraps (it stores convolution weights channels-last on the CPU,
    ``memory_format="auto"``); with ``same_layout`` one channels-last model for every library.
    Both count their forward passes in FORWARDS (on the first leaf module: ART's
    PyTorchClassifier calls the model's children one by one, so a hook on the model itself
    would miss its forward passes). With ``hook_bastion=False`` only the user's model is
    hooked: a hook makes bastion's estimator run its model eagerly (its frozen forward graph
    would skip the hook), so a caller that wants bastion's own inference path counts bastion's
    forward passes with the estimator's counters instead."""
    for p in model.parameters():
        p.requires_grad_(False)  # the attacks only need input gradients
    mine = model if same_layout else copy.deepcopy(model)
    if same_layout:
        model.to(memory_format=torch.channels_last)
    hooked = {id(model): model}
    if hook_bastion or same_layout:
        hooked[id(mine)] = mine
    for m in hooked.values():
        next(leaf for leaf in m.modules() if not list(leaf.children())).register_forward_pre_hook(
            FORWARDS
        )
    return model, mine


#: TorchClassifier settings of the bastion runs (``--bastion-settings``): the faithful
#: defaults, or the opt-in speed paths (channels-last weights converted in place, frozen
#: inference graphs) that bastion's earlier figures used.
BASTION_SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "fast": {"memory_format": "auto", "inference": "auto"},
}


def build_context(
    model: nn.Module, batch_size: int, bastion_model: nn.Module, settings: str = "fast"
) -> Context:
    clf = TorchClassifier(
        bastion_model,
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        **BASTION_SETTINGS[settings],
    )
    ctx = Context(model=model, clf=clf, batch_size=batch_size)
    try:
        import art.attacks.evasion as art_evasion
        from art.estimators.classification import PyTorchClassifier

        def art_wrap(module: nn.Module) -> Any:
            return PyTorchClassifier(
                module,
                loss=nn.CrossEntropyLoss(),
                input_shape=(1, 28, 28),
                nb_classes=10,
                clip_values=(0.0, 1.0),
                device_type="cpu",
            )

        ctx.art = art_evasion
        ctx.art_clf = art_wrap(model)
        ctx.art_clf_proba = art_wrap(nn.Sequential(model, nn.Softmax(dim=1)).eval())
    except ImportError as exc:
        ctx.missing["art"] = str(exc)
    try:
        # torchattacks 3.5.1 declares torchvision but never imports it (checked: no
        # `torchvision` anywhere in its sources), so no stub module is needed.
        import torchattacks

        ctx.ta = torchattacks
    except ImportError as exc:
        ctx.missing["torchattacks"] = str(exc)
    try:
        import foolbox

        ctx.fb = foolbox
        ctx.fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
    except ImportError as exc:
        ctx.missing["foolbox"] = str(exc)
    return ctx


# ---------------------------------------------------------------------------- adapters


def run_art(attack: Any, x: Tensor, y: Tensor) -> Tensor:
    return torch.from_numpy(np.asarray(attack.generate(x.numpy(), y.numpy()))).float()


def run_ta(attack: Any, x: Tensor, y: Tensor) -> Tensor:
    return attack(x, y).detach().float()


def run_fb(ctx: Context, attack: Any, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
    _raw, clipped, _success = attack(ctx.fmodel, x, y, epsilons=eps)
    return clipped.detach().float()


def accepted(cls: Any, **candidates: Any) -> dict[str, Any]:
    """The keyword arguments of ``candidates`` that ``cls.__init__`` takes."""
    names = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in candidates.items() if k in names}


# ---------------------------------------------------------------------------- attacks


@dataclass
class Spec:
    name: str
    kind: str  # "budget" (fixed budget), "minnorm" (minimum norm) or "targeted" (JSMA)
    norm: str  # the norm reported: "inf", "2", "1" or "0"
    params: str  # the shared hyper-parameters, for the table and the JSON
    runners: dict[str, Runner]
    mapping: dict[str, str] = field(default_factory=dict)  # per-library notes
    subset: bool = False  # run on the --jsma-n subset only
    # maps the benchmark's images to this row's inputs (every library gets the same ones)
    transform: Callable[[Tensor], Tensor] | None = None


def interior(x: Tensor) -> Tensor:
    """The images squeezed into [0.01, 0.99]: no pixel on the box edge, where torchattacks'
    CW (atanh of +-1 is infinite, with zero gradient) cannot move it."""
    return 0.01 + 0.98 * x


def attack_specs(ctx: Context) -> list[Spec]:
    """All attacks, with each library's call and the mapping of the shared hyper-parameters.

    Conventions: every attack gets the whole input as one batch (bastion and ART take a
    ``batch_size``; torchattacks and Foolbox always process what they are given). Attack
    objects are built inside the timed call (ART's APGD, for one, builds a new estimator there).
    """
    clf, model, bs = ctx.clf, ctx.model, ctx.batch_size
    art, ta, fb = ctx.art, ctx.ta, ctx.fb
    specs: list[Spec] = []

    def add(spec: Spec, **optional: Callable[[], Runner] | None) -> None:
        for lib, make in optional.items():
            if make is not None:
                spec.runners[lib] = make()
        specs.append(spec)

    # FGSM: one signed-gradient step of eps in Linf. ART FastGradientMethod(norm=inf, eps) with
    # no random init; torchattacks FGSM(eps); Foolbox LinfFastGradientAttack(random_start=False).
    eps = 0.1
    add(
        Spec(
            "FGSM",
            "budget",
            "inf",
            "Linf eps=0.1",
            {
                "bastion": lambda x, y: FastGradientMethod(
                    clf, eps=eps, norm="inf", batch_size=bs
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.FastGradientMethod(ctx.art_clf, norm=np.inf, eps=eps, batch_size=bs), x, y
                )
            )
        ),
        torchattacks=ta and (lambda: lambda x, y: run_ta(ta.FGSM(model, eps=eps), x, y)),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx, fb.attacks.LinfFastGradientAttack(random_start=False), x, y, eps
                )
            )
        ),
    )

    # PGD Linf: eps 0.1, step 0.01, 40 steps, one uniform random start in the eps-ball.
    # ART ProjectedGradientDescent(norm=inf, eps, eps_step, max_iter, num_random_init=1) (it
    # dispatches to its PyTorch implementation); torchattacks PGD(eps, alpha=eps_step, steps,
    # random_start=True); Foolbox LinfPGD(abs_stepsize=eps_step, steps, random_start=True).
    step, iters = 0.01, 40
    add(
        Spec(
            "PGD",
            "budget",
            "inf",
            "Linf eps=0.1 step=0.01 iter=40 random start",
            {
                "bastion": lambda x, y: ProjectedGradientDescent(
                    clf,
                    eps=eps,
                    eps_step=step,
                    max_iter=iters,
                    norm="inf",
                    num_random_init=1,
                    batch_size=bs,
                    random_state=SEED,
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.ProjectedGradientDescent(
                        ctx.art_clf,
                        norm=np.inf,
                        eps=eps,
                        eps_step=step,
                        max_iter=iters,
                        num_random_init=1,
                        batch_size=bs,
                        verbose=False,
                    ),
                    x,
                    y,
                )
            )
        ),
        torchattacks=ta
        and (
            lambda: (
                lambda x, y: run_ta(
                    ta.PGD(model, eps=eps, alpha=step, steps=iters, random_start=True), x, y
                )
            )
        ),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx,
                    fb.attacks.LinfPGD(abs_stepsize=step, steps=iters, random_start=True),
                    x,
                    y,
                    eps,
                )
            )
        ),
    )

    # BIM: PGD without the random start. ART BasicIterativeMethod(eps, eps_step, max_iter);
    # torchattacks BIM(eps, alpha, steps); Foolbox LinfBasicIterativeAttack(abs_stepsize, steps).
    add(
        Spec(
            "BIM",
            "budget",
            "inf",
            "Linf eps=0.1 step=0.01 iter=40",
            {
                "bastion": lambda x, y: BasicIterativeMethod(
                    clf, eps=eps, eps_step=step, max_iter=iters, batch_size=bs
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.BasicIterativeMethod(
                        ctx.art_clf,
                        eps=eps,
                        eps_step=step,
                        max_iter=iters,
                        batch_size=bs,
                        verbose=False,
                    ),
                    x,
                    y,
                )
            )
        ),
        torchattacks=ta
        and (lambda: lambda x, y: run_ta(ta.BIM(model, eps=eps, alpha=step, steps=iters), x, y)),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx,
                    fb.attacks.LinfBasicIterativeAttack(abs_stepsize=step, steps=iters),
                    x,
                    y,
                    eps,
                )
            )
        ),
    )

    # MIM (MI-FGSM), the paper's setting: 10 steps of eps/10, decay 1. ART
    # MomentumIterativeMethod(norm=inf, eps, eps_step, decay, max_iter); torchattacks
    # MIFGSM(eps, alpha, steps, decay); Foolbox LinfMomentumIterativeFastGradientMethod(
    # momentum=decay, abs_stepsize, steps, random_start=False).
    mim_iters = 10
    add(
        Spec(
            "MIM",
            "budget",
            "inf",
            "Linf eps=0.1 step=0.01 iter=10 decay=1",
            {
                "bastion": lambda x, y: MomentumIterativeMethod(
                    clf,
                    eps=eps,
                    eps_step=step,
                    max_iter=mim_iters,
                    decay=1.0,
                    norm="inf",
                    batch_size=bs,
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.MomentumIterativeMethod(
                        ctx.art_clf,
                        norm=np.inf,
                        eps=eps,
                        eps_step=step,
                        decay=1.0,
                        max_iter=mim_iters,
                        batch_size=bs,
                        verbose=False,
                    ),
                    x,
                    y,
                )
            )
        ),
        torchattacks=ta
        and (
            lambda: (
                lambda x, y: run_ta(
                    ta.MIFGSM(model, eps=eps, alpha=step, steps=mim_iters, decay=1.0), x, y
                )
            )
        ),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx,
                    fb.attacks.LinfMomentumIterativeFastGradientMethod(
                        momentum=1.0, abs_stepsize=step, steps=mim_iters, random_start=False
                    ),
                    x,
                    y,
                    eps,
                )
            )
        ),
    )

    # APGD-CE and APGD-DLR, Linf eps 0.1, 100 iterations, one random start (one restart).
    # ART AutoProjectedGradientDescent(norm=inf, eps, eps_step=2*eps, max_iter, nb_random_init=1,
    # loss_type="cross_entropy" | "difference_logits_ratio"): ART's eps_step is the initial step
    # size, which the paper (and bastion and torchattacks) fix at 2 * eps. torchattacks
    # APGD(norm="Linf", eps, steps, n_restarts=1, loss="ce" | "dlr", rho=0.75, seed=0).
    # Foolbox has no APGD.
    apgd_iters = 100
    for loss, art_loss in (("ce", "cross_entropy"), ("dlr", "difference_logits_ratio")):

        def bastion_apgd(x: Tensor, y: Tensor, loss: str = loss) -> Tensor:
            return AutoProjectedGradientDescent(
                clf,
                eps=eps,
                norm="inf",
                max_iter=apgd_iters,
                loss=loss,
                num_random_init=1,
                batch_size=bs,
                random_state=SEED,
            ).generate(x, y)

        def art_apgd(x: Tensor, y: Tensor, art_loss: str = art_loss) -> Tensor:
            attack = art.AutoProjectedGradientDescent(
                ctx.art_clf,
                norm=np.inf,
                eps=eps,
                eps_step=2 * eps,
                max_iter=apgd_iters,
                nb_random_init=1,
                loss_type=art_loss,
                batch_size=bs,
                verbose=False,
            )
            return run_art(attack, x, y)

        def ta_apgd(x: Tensor, y: Tensor, loss: str = loss) -> Tensor:
            attack = ta.APGD(
                model,
                norm="Linf",
                eps=eps,
                steps=apgd_iters,
                n_restarts=1,
                loss=loss,
                rho=0.75,
                seed=SEED,
            )
            return run_ta(attack, x, y)

        add(
            Spec(
                f"APGD-{loss.upper()}",
                "budget",
                "inf",
                "Linf eps=0.1 iter=100 restarts=1",
                {"bastion": bastion_apgd},
            ),
            art=art and (lambda f=art_apgd: f),
            torchattacks=ta and (lambda f=ta_apgd: f),
        )

    # CW-L2, two rows. "CW-L2": 5 binary-search steps x 100 iterations, learning rate 0.01,
    # confidence 0, initial c 0.1, early abort. ART CarliniL2Method(confidence, learning_rate,
    # binary_search_steps, max_iter, initial_const) (ART optimises with a line search, not Adam,
    # and has no abort_early switch). Foolbox L2CarliniWagnerAttack(binary_search_steps, steps,
    # stepsize, confidence, initial_const, abort_early=True) is the paper's algorithm.
    # torchattacks CW(c, kappa, steps, lr) has NO binary search over c, so it has its own row,
    # "CW-L2 fixed c": one c = 1 (its default) for 500 Adam steps, which every library runs with
    # binary_search_steps=1 and initial_const=1.
    def cw_row(
        name: str,
        params: str,
        cw: dict[str, float],
        with_ta: bool,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        def bastion_cw(x: Tensor, y: Tensor) -> Tensor:
            return CarliniWagnerL2(
                clf,
                confidence=0.0,
                learning_rate=cw["lr"],
                binary_search_steps=int(cw["bss"]),
                max_iter=int(cw["iters"]),
                initial_const=cw["c0"],
                abort_early=True,
                batch_size=bs,
            ).generate(x, y)

        add(
            Spec(name, "minnorm", "2", params, {"bastion": bastion_cw}, transform=transform),
            art=art
            and (
                lambda: (
                    lambda x, y: run_art(
                        art.CarliniL2Method(
                            ctx.art_clf,
                            confidence=0.0,
                            learning_rate=cw["lr"],
                            binary_search_steps=int(cw["bss"]),
                            max_iter=int(cw["iters"]),
                            initial_const=cw["c0"],
                            batch_size=bs,
                            verbose=False,
                        ),
                        x,
                        y,
                    )
                )
            ),
            torchattacks=(ta if with_ta else None)
            and (
                lambda: (
                    lambda x, y: run_ta(
                        ta.CW(model, c=cw["c0"], kappa=0.0, steps=int(cw["iters"]), lr=cw["lr"]),
                        x,
                        y,
                    )
                )
            ),
            foolbox=fb
            and (
                lambda: (
                    lambda x, y: run_fb(
                        ctx,
                        fb.attacks.L2CarliniWagnerAttack(
                            binary_search_steps=int(cw["bss"]),
                            steps=int(cw["iters"]),
                            stepsize=cw["lr"],
                            confidence=0.0,
                            initial_const=cw["c0"],
                            abort_early=True,
                        ),
                        x,
                        y,
                        None,
                    )
                )
            ),
        )

    cw_row(
        "CW-L2",
        "5 binary steps x 100 iter, lr=0.01, kappa=0, c0=0.1",
        {"bss": 5, "iters": 100, "lr": 0.01, "c0": 0.1},
        with_ta=False,
    )
    cw_row(
        "CW-L2-fixed-c",
        "no binary search: c=1, 500 iter, lr=0.01, kappa=0",
        {"bss": 1, "iters": 500, "lr": 0.01, "c0": 1.0},
        with_ta=True,
    )
    # The same on images without a pixel at exactly 0 or 1: torchattacks' CW maps such pixels
    # to w = +-inf and never moves them (31.5% of the digits' pixels), so on the plain images it
    # solves a smaller problem than the others; here every library solves the same one.
    cw_row(
        "CW-L2-fixed-c-interior",
        "as CW-L2-fixed-c, images mapped to [0.01, 0.99] (no pixel on the box edge)",
        {"bss": 1, "iters": 500, "lr": 0.01, "c0": 1.0},
        with_ta=True,
        transform=interior,
    )

    # CW-Linf: 100 iterations per round, learning rate 0.01, tau decrease 0.9, c from 0.01
    # doubling up to 20. Only ART has it: CarliniLInfMethod(learning_rate, max_iter,
    # decrease_factor=tau_decrease, initial_const, largest_const, const_factor). (bastion's
    # variant differs from the paper; see its docstring.)
    cwi = {"lr": 0.01, "iters": 100, "tau": 0.9, "c0": 0.01, "cmax": 20.0, "cf": 2.0}
    add(
        Spec(
            "CW-Linf",
            "minnorm",
            "inf",
            "100 iter/round, lr=0.01, tau x0.9, c 0.01..20 x2",
            {
                "bastion": lambda x, y: CarliniWagnerLinf(
                    clf,
                    learning_rate=cwi["lr"],
                    max_iter=int(cwi["iters"]),
                    tau_decrease=cwi["tau"],
                    initial_const=cwi["c0"],
                    largest_const=cwi["cmax"],
                    const_factor=cwi["cf"],
                    batch_size=bs,
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.CarliniLInfMethod(
                        ctx.art_clf,
                        learning_rate=cwi["lr"],
                        max_iter=int(cwi["iters"]),
                        decrease_factor=cwi["tau"],
                        initial_const=cwi["c0"],
                        largest_const=cwi["cmax"],
                        const_factor=cwi["cf"],
                        batch_size=bs,
                        verbose=False,
                    ),
                    x,
                    y,
                )
            )
        ),
    )

    # DeepFool L2: 50 iterations, overshoot 0.02, all 10 classes. ART DeepFool(max_iter,
    # epsilon=overshoot, nb_grads=10); torchattacks DeepFool(steps, overshoot) (always all
    # classes, one Jacobian per image); Foolbox L2DeepFoolAttack(steps, candidates=10,
    # overshoot, loss="logits").
    df = {"iters": 50, "overshoot": 0.02, "classes": 10}
    add(
        Spec(
            "DeepFool",
            "minnorm",
            "2",
            "L2, 50 iter, overshoot=0.02, 10 classes",
            {
                "bastion": lambda x, y: DeepFool(
                    clf,
                    norm=2,
                    max_iter=int(df["iters"]),
                    nb_grads=int(df["classes"]),
                    overshoot=df["overshoot"],
                    batch_size=bs,
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.DeepFool(
                        ctx.art_clf,
                        max_iter=int(df["iters"]),
                        epsilon=df["overshoot"],
                        nb_grads=int(df["classes"]),
                        batch_size=bs,
                        verbose=False,
                    ),
                    x,
                    y,
                )
            )
        ),
        torchattacks=ta
        and (
            lambda: (
                lambda x, y: run_ta(
                    ta.DeepFool(model, steps=int(df["iters"]), overshoot=df["overshoot"]), x, y
                )
            )
        ),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx,
                    fb.attacks.L2DeepFoolAttack(
                        steps=int(df["iters"]),
                        candidates=int(df["classes"]),
                        overshoot=df["overshoot"],
                        loss="logits",
                    ),
                    x,
                    y,
                    None,
                )
            )
        ),
    )

    # EAD (elastic net, EN decision rule): beta 1e-3, 5 binary steps x 100 iterations, initial
    # step 0.01, c0 0.1, FISTA. ART ElasticNet(confidence, learning_rate, binary_search_steps,
    # max_iter, beta, initial_const, decision_rule="EN"); torchattacks EADEN(kappa, lr,
    # binary_search_steps, max_iterations, abort_early=True, initial_const, beta); Foolbox
    # EADAttack(binary_search_steps, steps, initial_stepsize, confidence, initial_const,
    # regularization=beta, decision_rule="EN", abort_early=True). bastion aborts a sample
    # after two stalled windows (see ElasticNet).
    # Reported norm: L1.
    ead = {"beta": 1e-3, "bss": 5, "iters": 100, "lr": 0.01, "c0": 0.1}
    add(
        Spec(
            "EAD",
            "minnorm",
            "1",
            "EN rule, beta=1e-3, 5 binary steps x 100 iter, lr=0.01, c0=0.1",
            {
                "bastion": lambda x, y: ElasticNet(
                    clf,
                    beta=ead["beta"],
                    learning_rate=ead["lr"],
                    max_iter=int(ead["iters"]),
                    binary_search_steps=int(ead["bss"]),
                    initial_const=ead["c0"],
                    decision_rule="EN",
                    batch_size=bs,
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.ElasticNet(
                        ctx.art_clf,
                        confidence=0.0,
                        learning_rate=ead["lr"],
                        binary_search_steps=int(ead["bss"]),
                        max_iter=int(ead["iters"]),
                        beta=ead["beta"],
                        initial_const=ead["c0"],
                        decision_rule="EN",
                        batch_size=bs,
                        verbose=False,
                    ),
                    x,
                    y,
                )
            )
        ),
        torchattacks=ta
        and (
            lambda: (
                lambda x, y: run_ta(
                    ta.EADEN(
                        model,
                        kappa=0,
                        lr=ead["lr"],
                        binary_search_steps=int(ead["bss"]),
                        max_iterations=int(ead["iters"]),
                        abort_early=True,
                        initial_const=ead["c0"],
                        beta=ead["beta"],
                    ),
                    x,
                    y,
                )
            )
        ),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx,
                    fb.attacks.EADAttack(
                        binary_search_steps=int(ead["bss"]),
                        steps=int(ead["iters"]),
                        initial_stepsize=ead["lr"],
                        confidence=0.0,
                        initial_const=ead["c0"],
                        regularization=ead["beta"],
                        decision_rule="EN",
                        abort_early=True,
                    ),
                    x,
                    y,
                    None,
                )
            )
        ),
    )

    # JSMA, targeted at the class each model ranks second on the clean input (bastion's own
    # untargeted choice, passed explicitly to everyone: ART picks random targets when y is
    # None, torchattacks (y + 1) % 10). theta 1 (increase features), gamma 0.1 (at most 10% of
    # the 784 pixels). ART SaliencyMapMethod(theta, gamma) on the softmax outputs (the paper's
    # F; bastion uses the probabilities too); torchattacks JSMA(theta, gamma) in
    # targeted-by-label mode (it loops over images and uses the logits' Jacobian). Foolbox 3
    # has no JSMA. Run on the --jsma-n subset. Reported norm: L0 (pixels changed).
    def ta_jsma(x: Tensor, t: Tensor) -> Tensor:
        attack = ta.JSMA(model, theta=1.0, gamma=0.1)
        attack.set_mode_targeted_by_label(quiet=True)
        return run_ta(attack, x, t)

    add(
        Spec(
            "JSMA",
            "targeted",
            "0",
            "theta=1, gamma=0.1, target = runner-up class",
            {
                "bastion": lambda x, t: SaliencyMapMethod(
                    clf, theta=1.0, gamma=0.1, targeted=True, batch_size=bs
                ).generate(x, t)
            },
            subset=True,
        ),
        art=art
        and (
            lambda: (
                lambda x, t: run_art(
                    art.SaliencyMapMethod(
                        ctx.art_clf_proba, theta=1.0, gamma=0.1, batch_size=bs, verbose=False
                    ),
                    x,
                    t,
                )
            )
        ),
        torchattacks=ta and (lambda: ta_jsma),
    )

    # FAB Linf, 100 iterations, no random restart (minimum norm). torchattacks FAB(norm="Linf",
    # eps=1.0, steps, n_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9, seed=0): torchattacks
    # only returns points within eps, so eps=1 (the whole box) makes it unbounded. ART and
    # Foolbox have no FAB. bastion's FAB gets the same values under the parameter names its
    # __init__ accepts (max_iter/steps, alpha_max, eta, beta).
    if BastionFAB is not None:
        fab_kw = accepted(
            BastionFAB,
            norm="inf",
            max_iter=100,
            steps=100,
            num_random_init=0,
            alpha_max=0.1,
            eta=1.05,
            beta=0.9,
            batch_size=bs,
            random_state=SEED,
        )
        add(
            Spec(
                "FAB",
                "minnorm",
                "inf",
                "Linf, 100 iter, alpha_max=0.1 eta=1.05 beta=0.9, no restart",
                {"bastion": lambda x, y: BastionFAB(clf, **fab_kw).generate(x, y)},
                mapping={"bastion": f"kwargs {fab_kw}"},
            ),
            torchattacks=ta
            and (
                lambda: (
                    lambda x, y: run_ta(
                        ta.FAB(
                            model,
                            norm="Linf",
                            eps=1.0,
                            steps=100,
                            n_restarts=1,
                            alpha_max=0.1,
                            eta=1.05,
                            beta=0.9,
                            seed=SEED,
                            n_classes=10,
                        ),
                        x,
                        y,
                    )
                )
            ),
        )

    # FMN Linf: 100 steps, step size cosine-annealed from 1.0 to 0.01, eps step gamma 0.05 ->
    # 0.001, no starting points. Foolbox LInfFMNAttack(steps, max_stepsize=1.0, gamma=0.05)
    # (min_stepsize defaults to max/100 and the final gamma is 0.001, bastion's defaults).
    # ART and torchattacks have no FMN.
    add(
        Spec(
            "FMN",
            "minnorm",
            "inf",
            "Linf, 100 iter, alpha 1->0.01, gamma 0.05->0.001",
            {
                "bastion": lambda x, y: FastMinimumNorm(
                    clf,
                    norm="inf",
                    max_iter=100,
                    alpha_init=1.0,
                    gamma_init=0.05,
                    gamma_final=0.001,
                    batch_size=bs,
                ).generate(x, y)
            },
        ),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx,
                    fb.attacks.LInfFMNAttack(steps=100, max_stepsize=1.0, gamma=0.05),
                    x,
                    y,
                    None,
                )
            )
        ),
    )

    # NewtonFool: 100 iterations, eta 0.01. ART NewtonFool(max_iter, eta) on the softmax
    # outputs (it needs probabilities; it has no early stop and always runs max_iter steps);
    # Foolbox NewtonFoolAttack(steps, stepsize=eta). torchattacks has none.
    add(
        Spec(
            "NewtonFool",
            "minnorm",
            "2",
            "100 iter, eta=0.01",
            {
                "bastion": lambda x, y: NewtonFool(
                    clf, max_iter=100, eta=0.01, batch_size=bs
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.NewtonFool(
                        ctx.art_clf_proba, max_iter=100, eta=0.01, batch_size=bs, verbose=False
                    ),
                    x,
                    y,
                )
            )
        ),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx, fb.attacks.NewtonFoolAttack(steps=100, stepsize=0.01), x, y, None
                )
            )
        ),
    )

    # Virtual adversarial perturbation: L2 radius 2.0, one power iteration, xi 1e-3. ART
    # VirtualAdversarialMethod(max_iter, finite_diff=xi, eps) on the softmax outputs; Foolbox
    # VirtualAdversarialAttack(steps, xi) with epsilons=2.0. torchattacks has none.
    vat_eps = 2.0
    add(
        Spec(
            "VAT",
            "budget",
            "2",
            "L2 eps=2.0, 1 power iteration, xi=1e-3",
            {
                "bastion": lambda x, y: VirtualAdversarialMethod(
                    clf, eps=vat_eps, max_iter=1, xi=1e-3, batch_size=bs, random_state=SEED
                ).generate(x, y)
            },
        ),
        art=art
        and (
            lambda: (
                lambda x, y: run_art(
                    art.VirtualAdversarialMethod(
                        ctx.art_clf_proba,
                        max_iter=1,
                        finite_diff=1e-3,
                        eps=vat_eps,
                        batch_size=bs,
                        verbose=False,
                    ),
                    x,
                    y,
                )
            )
        ),
        foolbox=fb
        and (
            lambda: (
                lambda x, y: run_fb(
                    ctx, fb.attacks.VirtualAdversarialAttack(steps=1, xi=1e-3), x, y, vat_eps
                )
            )
        ),
    )
    # UniversalPerturbation is left out: it crafts one perturbation for a data set, and only
    # ART has it, with a different inner attack loop.
    return specs


# ---------------------------------------------------------------------------- measuring


@torch.no_grad()
def predict(model: Callable[[Tensor], Tensor], x: Tensor, batch: int = 512) -> Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])


def norms(delta: Tensor, norm: str) -> Tensor:
    flat = delta.reshape(delta.shape[0], -1).double()
    if norm == "inf":
        return flat.abs().amax(1)
    if norm == "0":
        return (flat.abs() > 1e-6).sum(1).double()
    return flat.norm(p=float(norm), dim=1)


def stats(values: Tensor) -> dict[str, float | None]:
    if values.numel() == 0:
        return {"mean": None, "median": None, "max": None}
    return {
        "mean": float(values.mean()),
        "median": float(values.median()),
        "max": float(values.max()),
    }


def seed_everything() -> None:
    # Third-party random starts (ART, Foolbox, torchattacks' PGD) draw from the global RNGs;
    # reseeding before every run makes each run of a library repeat the same computation.
    torch.manual_seed(SEED)
    np.random.seed(SEED)  # noqa: NPY002 (ART draws its random starts from the global RNG)


class ForwardCounter:
    """Counts the images that go through the model's forward pass (a forward pre-hook on the
    first layer of the shared nn.Module, which every library calls). Unlike seconds, this
    measure of the work done does not depend on the load of the machine."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.images += int(args[0].shape[0])


FORWARDS = ForwardCounter()


def call(fn: Runner, x: Tensor, y: Tensor) -> tuple[float, Tensor]:
    FORWARDS.images = 0
    seed_everything()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = fn(x, y)
        seconds = time.perf_counter() - start
    return seconds, out


def bench_attack(
    spec: Spec,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    repeats: int,
    warmup_n: int,
    time_limit: float,
) -> dict[str, Any]:
    if spec.transform is not None:
        x = spec.transform(x)
    n = x.shape[0]
    row: dict[str, Any] = {
        "attack": spec.name,
        "kind": spec.kind,
        "norm": spec.norm,
        "params": spec.params,
        "mapping": spec.mapping,
        "n_samples": n,
        "libraries": {},
    }
    libs = [lib for lib in LIBS if lib in spec.runners]
    active: list[str] = []
    for lib in libs:  # warm-up on a slice; skip libraries projected to take too long
        res: dict[str, Any] = {"seconds": []}
        row["libraries"][lib] = res
        k = min(warmup_n, n)
        try:
            t_warm, _ = call(spec.runners[lib], x[:k], y[:k])
        except Exception as exc:  # report and go on: one broken call must not stop the rest
            res["error"] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        res["warmup_seconds"] = t_warm
        projected = t_warm * n / k
        res["projected_seconds"] = projected
        if lib != "bastion" and projected > time_limit:
            res["skipped"] = f"projected {projected:.0f} s > --time-limit {time_limit:.0f} s"
            continue
        active.append(lib)
    outputs: dict[str, Tensor] = {}
    for r in range(repeats):
        shift = r % max(len(active), 1)
        order = active[shift:] + active[:shift]
        for lib in order:
            res = row["libraries"][lib]
            if "error" in res or (res["seconds"] and res["seconds"][-1] > time_limit):
                continue  # a run over the limit is not repeated
            try:
                seconds, outputs[lib] = call(spec.runners[lib], x, y)
            except Exception as exc:
                res["error"] = f"{type(exc).__name__}: {exc}"[:500]
                continue
            res["seconds"].append(seconds)
            res["forward_images"] = FORWARDS.images

    success: dict[str, Tensor] = {}
    dist: dict[str, Tensor] = {}
    for lib, adv in outputs.items():
        res = row["libraries"][lib]
        res["median_s"] = statistics.median(res["seconds"])
        res["min_s"] = min(res["seconds"])
        # A sample with a NaN or inf anywhere (Foolbox's NewtonFool returns some) counts as a
        # failure, and its norm as 0: the model's argmax on NaN logits means nothing.
        finite = torch.isfinite(adv.reshape(n, -1)).all(1)
        adv = torch.where(finite.reshape(-1, *([1] * (adv.ndim - 1))), adv, x)
        pred = predict(model, adv)
        ok = (pred == y if spec.kind == "targeted" else pred != y) & finite
        if spec.kind == "minnorm":
            # Foolbox's Carlini-Wagner returns an all-zero image for the samples it never made
            # adversarial; a constant image is no perturbation of the input, so it counts as a
            # failure (reported as n_degenerate).
            flat = adv.reshape(n, -1)
            degenerate = (flat.amax(1) == flat.amin(1)) & (x.reshape(n, -1).std(1) > 0)
            ok &= ~degenerate
            res["n_degenerate"] = int(degenerate.sum())
        d = norms(adv - x, spec.norm)
        success[lib], dist[lib] = ok, d
        res["success_rate"] = float(ok.float().mean())
        res["n_success"] = int(ok.sum())
        res["n_nonfinite"] = int((~finite).sum())
        res["in_bounds"] = bool(adv.min() >= -1e-6 and adv.max() <= 1 + 1e-6)
        res["norm_all"] = stats(d)
        res["norm_success"] = stats(d[ok])
    if len(success) > 1 and spec.kind != "budget":
        common = torch.stack(list(success.values())).all(0)
        row["n_common_success"] = int(common.sum())
        for lib in success:
            row["libraries"][lib]["norm_common"] = stats(dist[lib][common])

    # bastion's time over the fastest other library: of the medians, and paired (median of the
    # per-repeat ratios, robust to slow drifts in machine load).
    others = [lib for lib in outputs if lib != "bastion"]
    if "bastion" in outputs and others:
        b = row["libraries"]["bastion"]
        fastest = min(others, key=lambda lib: row["libraries"][lib]["median_s"])
        row["fastest_other"] = fastest
        row["ratio_median"] = b["median_s"] / row["libraries"][fastest]["median_s"]
        paired = []
        for i, tb in enumerate(b["seconds"]):
            per_rep = [
                row["libraries"][lib]["seconds"][i]
                for lib in others
                if i < len(row["libraries"][lib]["seconds"])
            ]
            if per_rep:
                paired.append(tb / min(per_rep))
        row["ratio_paired"] = paired
        row["ratio_paired_median"] = statistics.median(paired) if paired else None
    return row


# ---------------------------------------------------------------------------- report


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def norm_label(norm: str) -> str:
    return {"inf": "Linf", "2": "L2", "1": "L1", "0": "L0"}[norm]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| attack | library | median s | fwd/img | success | norm | mean norm | median norm "
        "| mean norm (common) | bastion / fastest other |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        first = True
        for lib, res in row["libraries"].items():
            ratio = ""
            if first and row.get("ratio_median") is not None:
                ratio = f"**{row['ratio_median']:.2f}** (vs {row['fastest_other']})"
            first = False
            if "median_s" not in res:
                why = res.get("error") or res.get("skipped") or "not run"
                lines.append(f"| {row['attack']} | {lib} | - | - | - | - | {why} | | | |")
                continue
            key = "norm_all" if row["kind"] == "budget" else "norm_success"
            common = res.get("norm_common", {}).get("mean")
            lines.append(
                f"| {row['attack']} | {lib} | {res['median_s']:.3f} | "
                f"{res['forward_images'] / row['n_samples']:.0f} | "
                f"{res['success_rate']:.3f} | {norm_label(row['norm'])} | "
                f"{fmt(res[key]['mean'], '.4g')} | {fmt(res[key]['median'], '.4g')} | "
                f"{fmt(common, '.4g')} | {ratio} |"
            )
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], norm_tol: float) -> list[dict[str, Any]]:
    """The issue's targets, one PASS / FAIL line each (a target whose data is missing is
    reported as N/A)."""
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        out.append(
            {
                "target": name,
                "result": {True: "PASS", False: "FAIL", None: "N/A"}[ok],
                "detail": detail,
            }
        )

    def speedup(row: dict[str, Any], lib: str) -> float | None:
        # A library skipped for --time-limit is counted at its projected time (from the warm-up
        # slice, linear in the number of images), marked in the detail.
        libs = row["libraries"]
        theirs = libs.get(lib, {})
        t = theirs.get("median_s", theirs.get("projected_seconds"))
        if "median_s" not in libs.get("bastion", {}) or t is None:
            return None
        return float(t / libs["bastion"]["median_s"])

    def projected(row: dict[str, Any] | None, lib: str) -> str:
        res = {} if row is None else row["libraries"].get(lib, {})
        return " (projected from the warm-up; not run)" if "median_s" not in res else ""

    by_name = {row["attack"]: row for row in rows}
    for row in rows:
        ratio = row.get("ratio_median")
        add(
            f"{row['attack']}: bastion not slower than the fastest other",
            None if ratio is None else ratio <= 1.0,
            "no other library ran"
            if ratio is None
            else f"bastion / {row['fastest_other']} = {ratio:.2f} "
            f"(paired {fmt(row.get('ratio_paired_median'), '.2f')})",
        )
    for name in ("APGD-CE", "APGD-DLR"):
        s = speedup(by_name[name], "torchattacks") if name in by_name else None
        add(
            f"{name}: >= 1.5x faster than torchattacks",
            None if s is None else s >= 1.5,
            "missing"
            if s is None
            else f"torchattacks / bastion = {s:.2f}x{projected(by_name.get(name), 'torchattacks')}",
        )
    s = speedup(by_name["CW-L2"], "art") if "CW-L2" in by_name else None
    add(
        "CW-L2: >= 5x faster than ART",
        None if s is None else s >= 5.0,
        "missing"
        if s is None
        else f"ART / bastion = {s:.2f}x{projected(by_name.get('CW-L2'), 'art')}",
    )
    s = speedup(by_name["DeepFool"], "foolbox") if "DeepFool" in by_name else None
    add(
        "DeepFool: at least as fast as Foolbox",
        None if s is None else s >= 1.0,
        "missing"
        if s is None
        else f"Foolbox / bastion = {s:.2f}x{projected(by_name.get('DeepFool'), 'foolbox')}",
    )
    for row in rows:
        libs = {k: v for k, v in row["libraries"].items() if "success_rate" in v}
        if "bastion" not in libs or len(libs) < 2:
            continue
        ours = libs["bastion"]["n_success"]
        best = max((v["n_success"], k) for k, v in libs.items() if k != "bastion")
        add(
            f"{row['attack']}: success rate equal or higher",
            ours >= best[0],
            f"bastion {ours}/{row['n_samples']}, best other {best[1]} {best[0]}",
        )
        if row["kind"] == "budget":
            continue
        mine = libs["bastion"].get("norm_common", {}).get("mean")
        others = [
            (v.get("norm_common", {}).get("mean"), k) for k, v in libs.items() if k != "bastion"
        ]
        others = [(m, k) for m, k in others if m is not None]
        if mine is None or not others:
            continue
        best_norm, best_lib = min(others)
        add(
            f"{row['attack']}: mean minimal {norm_label(row['norm'])} equal or lower",
            mine <= best_norm * (1 + norm_tol),
            f"on the {row['n_common_success']} samples all libraries fooled: bastion "
            f"{mine:.4g}, best other {best_lib} {best_norm:.4g} (tolerance {norm_tol:.0%})",
        )
    return out


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="correctly classified test images")
    parser.add_argument("--jsma-n", type=int, default=32, help="images for JSMA (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument(
        "--warmup-n",
        type=int,
        default=8,
        help="images in the untimed warm-up run of each library (default 8); it also projects "
        "the full run's time for --time-limit",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument(
        "--same-layout",
        action="store_true",
        help="give every library bastion's channels-last model (default: the others get the "
        "user's NCHW model, bastion's TorchClassifier stores it channels-last)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="skip a non-bastion library whose projected run exceeds this many seconds, and do "
        "not repeat a run that took longer (default 300)",
    )
    parser.add_argument(
        "--norm-tol",
        type=float,
        default=0.01,
        help="relative tolerance of the 'equal or lower norm' target (0.01)",
    )
    parser.add_argument(
        "--bastion-settings",
        choices=sorted(BASTION_SETTINGS),
        default="fast",
        help="TorchClassifier settings for bastion: 'fast' = memory_format='auto', "
        "inference='auto' (the opt-in speed paths; default), 'default' = the faithful defaults",
    )
    parser.add_argument("--attacks", nargs="+", default=None, help="only these attacks")
    parser.add_argument("--libraries", nargs="+", default=list(LIBS), choices=LIBS)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.n < 1 or args.jsma_n < 1 or args.warmup_n < 1:
        parser.error("--repeats, --n, --jsma-n and --warmup-n must be >= 1")
    if "bastion" not in args.libraries:
        parser.error("--libraries must include bastion")
    torch.set_num_threads(args.threads)

    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=SEED)
    model, bastion_model = user_and_bastion_models(
        trained_model(torch.from_numpy(x_tr), torch.from_numpy(y_tr)), args.same_layout
    )
    x_all, y_all = torch.from_numpy(x_te), torch.from_numpy(y_te).long()
    correct = predict(model, x_all) == y_all
    clean_acc = float(correct.float().mean())
    x_ok, y_ok = x_all[correct], y_all[correct]
    if args.n > x_ok.shape[0]:
        parser.error(f"--n {args.n} > {x_ok.shape[0]} correctly classified test images")
    x, y = x_ok[: args.n].contiguous(), y_ok[: args.n].contiguous()
    n_jsma = min(args.jsma_n, args.n)
    x_j = x[:n_jsma].contiguous()
    with torch.no_grad():
        t_j = model(x_j).topk(2, dim=1).indices[:, 1].contiguous()  # runner-up class

    ctx = build_context(
        model, batch_size=args.n, bastion_model=bastion_model, settings=args.bastion_settings
    )
    specs = attack_specs(ctx)
    if args.attacks:
        wanted = {a.lower() for a in args.attacks}
        specs = [s for s in specs if s.name.lower() in wanted]
    info = machine_info()
    print(
        f"{args.n} correctly classified digits-28 test images (clean accuracy {clean_acc:.4f}), "
        f"JSMA on {n_jsma}; torch {torch.__version__}, {info['nproc']} CPUs "
        f"({info['cpu_model']}), torch threads {torch.get_num_threads()}; repeats "
        f"{args.repeats}, warm-up on {args.warmup_n} images"
    )
    print("versions:", ", ".join(f"{k} {v}" for k, v in info["versions"].items()))  # type: ignore[attr-defined]
    for lib, why in ctx.missing.items():
        print(f"{lib} not available: {why}")
    if BastionFAB is None:
        print("bastion FAB not available yet (bastion.attacks.evasion.fab): FAB skipped")

    rows = []
    for spec in specs:
        spec.runners = {k: v for k, v in spec.runners.items() if k in args.libraries}
        xs, ys = (x_j, t_j) if spec.subset else (x, y)
        start = time.perf_counter()
        row = bench_attack(
            spec,
            model,
            xs,
            ys,
            repeats=args.repeats,
            warmup_n=args.warmup_n,
            time_limit=args.time_limit,
        )
        rows.append(row)
        summary = ", ".join(
            f"{lib} {res['median_s']:.2f}s/{res['success_rate']:.2f}"
            if "median_s" in res
            else f"{lib} {'error' if 'error' in res else 'skipped'}"
            for lib, res in row["libraries"].items()
        )
        print(f"  {spec.name:10s} ({time.perf_counter() - start:6.1f} s): {summary}", flush=True)

    print()
    print(markdown_table(rows))
    print(
        "\nmedian s: median wall-clock seconds for all the images; success: untargeted success "
        "rate (JSMA: targeted); norms over all images for fixed-budget attacks, over the "
        "successful ones for minimum-norm attacks (a constant output image, which Foolbox's "
        "CW returns where it failed, is a failure); (common): over the images every library "
        "fooled; fwd/img: forward passes per image (work done, independent of machine load); "
        "bastion / fastest other: ratio of median times (< 1: bastion faster)."
    )
    checks = targets(rows, args.norm_tol)
    print()
    for c in checks:
        print(f"{c['result']:4s}  {c['target']}: {c['detail']}")
    for row in rows:
        for lib, res in row["libraries"].items():
            if "error" in res:
                print(f"error: {row['attack']} / {lib}: {res['error']}")

    if args.json is not None:
        payload = {
            "benchmark": "evasion",
            "data": {
                "name": "digits-28 test split, correctly classified images",
                "n_samples": args.n,
                "n_jsma": n_jsma,
                "clean_accuracy": clean_acc,
            },
            "settings": {
                "repeats": args.repeats,
                "warmup_n": args.warmup_n,
                "threads": torch.get_num_threads(),
                "time_limit_s": args.time_limit,
                "norm_tol": args.norm_tol,
                "batch_size": args.n,
                "seed": SEED,
                "bastion_settings": args.bastion_settings,
                "bastion_torch_classifier": BASTION_SETTINGS[args.bastion_settings],
            },
            "machine": info,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "loadavg_end": loadavg(),
            "results": rows,
            "targets": checks,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
