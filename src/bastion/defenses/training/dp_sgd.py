"""Differentially private training (DP-SGD) through Opacus.

bastion does not reimplement DP-SGD: per-sample gradients, clipping, noise and the privacy
accountant come from `Opacus <https://opacus.ai>`_, a maintained library. This module wraps it in
bastion's conventions (validated parameters, explicit ``random_state``, NumPy or tensors in) and
reports the privacy budget actually spent.

Opacus is optional: it is imported only when training starts. Install it without letting pip
replace the installed torch::

    pip install --no-deps opacus==1.6.0 opt-einsum
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import trange

from bastion._params import Parametrized, renamed_keywords
from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    NONE,
    RANDOM_STATE,
    VERBOSE,
    Interval,
    Options,
    check_labels,
    check_trained,
    check_x,
    invalid_parameter,
    probe_classes,
)
from bastion.exceptions import EstimatorError

__all__ = ["DPSGDTrainer", "train_dp_sgd"]

_INSTALL = "pip install --no-deps opacus==1.6.0 opt-einsum"


def _import_opacus() -> Any:
    try:
        import opacus
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"DP-SGD training needs the optional package Opacus. Install it with `{_INSTALL}` "
            "(--no-deps keeps the installed torch)."
        ) from exc
    return opacus


class DPSGDTrainer(Parametrized):
    """Train a classifier with differentially private SGD (Abadi et al., 2016), via Opacus.

    Each step samples a Poisson batch (each sample kept with probability
    ``batch_size / n``), clips every per-sample gradient to L2 norm ``max_grad_norm``, adds
    Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` and takes an
    optimiser step. The noise multiplier is calibrated by Opacus so that ``epochs`` passes spend
    the target ``(target_epsilon, target_delta)`` budget; after training, ``epsilon_`` is the
    budget the accountant reports as actually spent (at most ``target_epsilon``, up to the
    accountant's tolerance).

    Differential privacy bounds what any membership- or attribute-inference attack can learn
    about one training sample: with ``(epsilon, delta)``-DP, an attack's true-positive rate at
    false-positive rate ``a`` is at most ``exp(epsilon) * a + delta``, and in practice much lower.

    Parameters
    ----------
    target_epsilon : float, default=3.0
        Target privacy budget, > 0.
    target_delta : float or None, default=None
        Target ``delta`` in (0, 1); ``None`` uses ``1 / (10 n)`` for ``n`` training samples
        (well below ``1 / n``, as DP requires).
    max_grad_norm : float, default=1.0
        Clipping bound of each per-sample gradient (L2).
    epochs : int, default=10
        Passes over the data (in expectation, with Poisson sampling).
    batch_size : int, default=64
        Expected batch size (the sampling rate is ``batch_size / n``).
    learning_rate : float, default=0.5
        Learning rate.
    optimizer : {"sgd", "adam"}, default="sgd"
        Optimiser that receives the clipped, noised gradients.
    momentum : float, default=0.0
        Momentum of SGD (ignored by Adam).
    accountant : {"prv", "rdp", "gdp"}, default="prv"
        Opacus privacy accountant used to calibrate the noise and report ``epsilon_``.
    random_state : None, int or torch.Generator, default=None
        Seeds the Poisson sampling and the noise (private generators; the global RNGs are left
        alone). Not a cryptographically secure source: for a deployed model use Opacus's
        ``secure_mode`` directly.
    device : str or torch.device, optional
        Where to train; ``None`` uses the device of the model's parameters.
    verbose : bool, default=False
        Progress bar over epochs.

    Attributes
    ----------
    epsilon_ : float
        Privacy budget spent, as reported by the accountant.
    delta_ : float
        The ``delta`` used.
    noise_multiplier_ : float
        Noise standard deviation relative to ``max_grad_norm``.
    steps_ : int
        Optimisation steps taken.

    References
    ----------
    M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar, L. Zhang. "Deep
    Learning with Differential Privacy." CCS 2016. https://arxiv.org/abs/1607.00133

    A. Yousefpour et al. "Opacus: User-Friendly Differential Privacy Library in PyTorch."
    https://arxiv.org/abs/2109.12298

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import DPSGDTrainer
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> trainer = DPSGDTrainer(target_epsilon=4.0, epochs=2, random_state=0)
    >>> model = trainer.fit(MLP(64, 10, random_state=0), x, y)
    >>> bool(trainer.epsilon_ <= 4.0 + 1e-3)
    True
    """

    _renamed: ClassVar[dict[str, Any]] = {
        "epsilon": "target_epsilon",
        "delta": "target_delta",
        "lr": "learning_rate",
    }
    _parameter_constraints = {  # noqa: RUF012
        "target_epsilon": [Interval(float, 0, None, closed="neither")],
        "target_delta": [NONE, Interval(float, 0, 1, closed="neither")],
        "max_grad_norm": [Interval(float, 0, None, closed="neither")],
        "epochs": [Interval(int, 1, None)],
        "batch_size": BATCH_SIZE,
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "optimizer": [Options(["sgd", "adam"])],
        "momentum": [Interval(float, 0, 1, closed="left")],
        "accountant": [Options(["prv", "rdp", "gdp"])],
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    epsilon_: float
    delta_: float
    noise_multiplier_: float
    steps_: int

    def __init__(
        self,
        *,
        target_epsilon: float = 3.0,
        target_delta: float | None = None,
        max_grad_norm: float = 1.0,
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 0.5,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        accountant: str = "prv",
        random_state: RandomStateLike = None,
        device: str | torch.device | None = None,
        verbose: bool = False,
    ) -> None:
        self.target_epsilon = target_epsilon
        self.target_delta = target_delta
        self.max_grad_norm = max_grad_norm
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.momentum = momentum
        self.accountant = accountant
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, model: nn.Module, x: Any, y: Any) -> nn.Module:
        """Train ``model`` in place with DP-SGD and return it (in eval mode).

        Parameters
        ----------
        model : torch.nn.Module
            A classifier mapping a batch of ``x`` to logits. Its layers must be supported by
            Opacus (Linear, Conv, GroupNorm, embeddings ...; not BatchNorm).
        x : numpy.ndarray or torch.Tensor
            Training samples, batch first.
        y : numpy.ndarray or torch.Tensor
            Class indices ``(N,)`` or one-hot labels.

        Returns
        -------
        torch.nn.Module
            ``model``, trained, in eval mode, with no Opacus hooks left on it.
        """
        self._validate()
        name = type(self).__name__
        if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
            raise invalid_parameter("model", name, "a torch.nn.Module with parameters", model)
        opacus = _import_opacus()
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise EstimatorError(
                f"{name}: Opacus cannot compute per-sample gradients for this model: "
                f"{errors[0]}. Replace BatchNorm by GroupNorm "
                "(opacus.validators.ModuleValidator.fix(model))."
            )
        param = next(model.parameters())
        dev = param.device if self.device is None else torch.device(self.device)
        model.to(dev)
        dtype = next(model.parameters()).dtype
        x_t, _ = to_tensor(x, dtype=dtype)
        check_x(x_t, input_shape=None, clip_values=None)
        y_t, _ = to_tensor(y, dtype=None)
        nb_classes = probe_classes(model, x_t[:1].to(dev), name)
        y_t = check_labels(y_t, n=x_t.shape[0], nb_classes=nb_classes)
        n = x_t.shape[0]
        delta = 1.0 / (10 * n) if self.target_delta is None else float(self.target_delta)

        gen = resolve_random_state(self.random_state, "cpu")
        seeds = torch.randint(0, 2**62, (2,), generator=gen).tolist()
        sampling_gen = torch.Generator().manual_seed(seeds[0])
        noise_gen = torch.Generator(device=dev)
        noise_gen.manual_seed(seeds[1])

        dataset = torch.utils.data.TensorDataset(x_t, y_t)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=min(self.batch_size, n), generator=sampling_gen
        )
        if self.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                model.parameters(), lr=self.learning_rate, momentum=self.momentum
            )
        else:
            opt = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        model.train()
        with warnings.catch_warnings():
            # Documented above: seeded (not cryptographically secure) noise, and the
            # accountant's note on its order grid; neither is actionable for the user here.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            engine = opacus.PrivacyEngine(accountant=self.accountant)
            hooks, dp_opt, dp_loader = engine.make_private_with_epsilon(
                module=model,
                optimizer=opt,
                data_loader=loader,
                target_epsilon=float(self.target_epsilon),
                target_delta=delta,
                epochs=self.epochs,
                max_grad_norm=float(self.max_grad_norm),
                noise_generator=noise_gen,
                wrap_model=False,
            )
        steps = 0
        try:
            for _ in trange(self.epochs, desc=name, unit="epoch", disable=not self.verbose):
                for xb, yb in dp_loader:
                    dp_opt.zero_grad(set_to_none=True)
                    if xb.shape[0] == 0:
                        # An empty Poisson batch (rare): skipping it is post-processing, and
                        # the accountant only counts steps taken.
                        continue
                    loss = F.cross_entropy(model(xb.to(dev)), yb.to(dev))
                    with warnings.catch_warnings():
                        # Opacus hooks fire on module outputs when x needs no gradient.
                        warnings.filterwarnings("ignore", message="Full backward hook")
                        loss.backward()
                    dp_opt.step()
                    steps += 1
        finally:
            hooks.cleanup()
            for p in model.parameters():
                for attr in ("grad_sample", "_forward_counter", "summed_grad"):
                    if hasattr(p, attr):
                        delattr(p, attr)
        self.delta_ = delta
        self.noise_multiplier_ = float(dp_opt.noise_multiplier)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            self.epsilon_ = float(engine.get_epsilon(delta))
        self.steps_ = steps
        return check_trained(model, name).eval()


@renamed_keywords(epsilon="target_epsilon", delta="target_delta", lr="learning_rate")
def train_dp_sgd(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    target_epsilon: float = 3.0,
    target_delta: float | None = None,
    max_grad_norm: float = 1.0,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 0.5,
    random_state: RandomStateLike = None,
) -> tuple[nn.Module, float]:
    """Train ``model`` with DP-SGD; return ``(model, epsilon_spent)``.

    A functional shortcut for :class:`DPSGDTrainer` (see there for the parameters).

    Examples
    --------
    >>> from bastion.datasets import load_digits
    >>> from bastion.defenses.training import train_dp_sgd
    >>> from bastion.zoo import MLP
    >>> (x, y), _ = load_digits(size=8)
    >>> model, eps = train_dp_sgd(MLP(64, 10, random_state=0), x, y, target_epsilon=2.0, epochs=1,
    ...                           random_state=0)
    >>> bool(0 < eps <= 2.0 + 1e-3)
    True
    """
    trainer = DPSGDTrainer(
        target_epsilon=target_epsilon,
        target_delta=target_delta,
        max_grad_norm=max_grad_norm,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        random_state=random_state,
    )
    model = trainer.fit(model, x, y)
    return model, trainer.epsilon_
