"""The loop every adversarial trainer shares: data (arrays or any iterable of batches),
optimiser and schedule, per-epoch validation, best-checkpoint selection, checkpoints and resume,
mixed precision, progress, data parallelism. A recipe writes only its hooks: how the training
batch's adversarial examples are made (:meth:`AdversarialTrainingLoop._make_adversarial`) and
the per-sample loss (:meth:`AdversarialTrainingLoop._losses`); Free adversarial training, whose
step is a different shape, overrides :meth:`AdversarialTrainingLoop._train_step`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import RandomStateLike, resolve_random_state
from bastion._validation import (
    Constraint,
    invalid_parameter,
)
from bastion.attacks._lp import canonical_norm
from bastion.defenses.training.adversarial._checkpoint import (
    fingerprint,
    load_checkpoint,
    restore_run,
    run_state,
    save_checkpoint,
)
from bastion.defenses.training.adversarial._data import TrainingData
from bastion.defenses.training.adversarial._distributed import DataParallel
from bastion.defenses.training.adversarial._inner import (
    awp_perturbation,
    ce_objective,
    derive_seed,
    global_noise,
    pgd,
    weights_to_perturb,
)
from bastion.defenses.training.adversarial._schedules import (
    learning_rate_at,
    make_optimizer,
)
from bastion.defenses.training.adversarial._state import (
    BUDGET_CONSTRAINTS,
    LOOP_CONSTRAINTS,
    NB_SUMS,
    PGD_SPEC,
    TrainingEvaluation,
    _Batch,
    _Run,
    _step_sums,
    copy_state,
    rates,
)
from bastion.estimators.base import SupportsTorchModuleAndPredict, require_capabilities
from bastion.exceptions import InvalidParameterError, ModelError

__all__ = ["AdversarialTrainingLoop", "TrainingEvaluation"]


class AdversarialTrainingLoop(Parametrized):
    """The loop shared by bastion's adversarial trainers (see the recipes' docstrings).

    Subclasses set their hyper-parameters in ``__init__`` and implement
    :meth:`_make_adversarial` and :meth:`_losses` (or :meth:`_train_step`).
    """

    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)
    _renamed: ClassVar[dict[str, Any]] = {"lr": "learning_rate"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **LOOP_CONSTRAINTS,
        **BUDGET_CONSTRAINTS,
    }

    estimator: SupportsTorchModuleAndPredict
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    schedule: str | None
    validation_attack: Any
    checkpoint_dir: Any
    random_state: RandomStateLike
    verbose: bool
    amp: bool
    channels_last: bool

    history_: list[dict[str, Any]]
    best_epoch_: int

    # ------------------------------------------------------------------ recipe hooks

    def _make_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        raise NotImplementedError

    def _losses(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(per-sample loss, adversarial logits, clean logits or None)``, through
        ``run.train_forward`` (the module is in train mode)."""
        raise NotImplementedError

    def _end_epoch(self, run: _Run, epoch: int, record: dict[str, Any]) -> None:
        """Called after each epoch's training and validation (Fast-FGSM's overfitting check)."""

    def _awp_gamma(self, epoch: int) -> float:
        return 0.0

    def _begin(self, run: _Run) -> None:
        """Called once the run is set up (and resumed), before the first epoch."""

    def _training_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """What the data-parallel wrapper wraps (``run.net``): the model itself. Certified
        trainers wrap it in a module whose forward pass computes the whole training loss."""
        return module

    def _validation_score(self, record: dict[str, Any]) -> float:
        """The epoch's score for the best checkpoint (NaN: this epoch cannot be the best): the
        validation robust accuracy, else the clean one."""
        score = record.get("val_robust_accuracy", math.nan)
        if math.isnan(score):
            score = record.get("val_clean_accuracy", math.nan)
        return float(score)

    # ------------------------------------------------------------------ checks

    def _budget(self) -> tuple[float, str]:
        """The training budget ``(eps, norm)`` (the norm canonical: ``"inf"`` or ``"2"``)."""
        return float(getattr(self, "eps")), canonical_norm(getattr(self, "norm"))  # noqa: B009

    def _check_setup(self) -> None:
        name = type(self).__name__
        self._validate()
        require_capabilities(self.estimator, ["predict", "module"], name)
        clip = self.estimator.clip_values
        eps, norm = self._budget()
        if clip is not None and not math.isnan(eps):
            span = clip[1] - clip[0]
            if norm == "2":
                span *= math.sqrt(math.prod(self.estimator.input_shape))
            if eps > span:
                raise InvalidParameterError(
                    f"The 'eps' parameter of {name} must fit the estimator's clip_values "
                    f"{tuple(clip)}: every point is within {span:g} of every other in the "
                    f"L{norm} norm there. Got eps={eps!r} instead."
                )
        if math.isnan(eps) and self.validation_attack is not None and self._attack_spec():
            raise InvalidParameterError(
                f"The 'validation_attack' parameter of {name} cannot be a 'pgd-K' spec: the "
                "training attack has no eps to run it at. Give a bastion attack or None."
            )
        cuda = self.estimator.device.type == "cuda"
        for flag in ("amp", "channels_last"):
            if getattr(self, flag) and not cuda:
                raise InvalidParameterError(
                    f"The {flag!r} parameter of {name} needs an estimator on a CUDA device "
                    f"(mixed precision and channels_last pay off on GPUs only); this estimator "
                    f"is on {self.estimator.device}. Got {flag}=True instead."
                )
        attack = self.validation_attack
        if not isinstance(attack, (str, type(None))) and attack.estimator is not self.estimator:
            raise InvalidParameterError(
                f"The 'validation_attack' parameter of {name} must attack the trainer's own "
                "estimator (the model being trained); its attack was built on another one."
            )

    def _config(self) -> dict[str, Any]:
        skip = {"checkpoint_dir", "verbose"}
        out: dict[str, Any] = {}
        for key, value in self.get_params().items():
            if key in skip:
                continue
            if isinstance(value, torch.Generator):
                value = "generator"
            out[key] = value if isinstance(value, (int, float, str, type(None))) else repr(value)
        return {"trainer": type(self).__name__, **out}

    # ------------------------------------------------------------------ set-up

    def _start(self, resume: bool) -> _Run:
        est = self.estimator
        module = est.torch_module()
        if next(module.parameters(), None) is None:
            raise InvalidParameterError(
                f"{type(self).__name__}: the estimator's module has no parameters to train."
            )
        if self.channels_last:
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        dp = DataParallel.current()
        if isinstance(self.random_state, int):
            base_seed = int(self.random_state)
        else:
            gen = resolve_random_state(self.random_state, "cpu")
            base_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        opt = make_optimizer(
            module.parameters(),
            self.optimizer,
            self.learning_rate,
            self.momentum,
            self.weight_decay,
        )
        amp = self.amp

        def autocast() -> Any:
            if amp:
                return torch.autocast(device_type="cuda", dtype=torch.float16)
            return contextlib.nullcontext()

        run = _Run(
            module=module,
            net=dp.wrap(self._training_module(module), est.device),
            optimizer=opt,
            scaler=torch.amp.GradScaler("cuda") if amp else None,
            dp=dp,
            base_seed=base_seed,
            device=est.device,
            dtype=est.dtype,
            autocast=autocast,
            config_hash=fingerprint(module, self._config()),
        )
        if resume:
            self._resume(run)
        return run

    def _paths(self) -> tuple[Path, Path] | None:
        if self.checkpoint_dir is None:
            return None
        root = Path(self.checkpoint_dir)
        return root / "last.pt", root / "best.pt"

    def _resume(self, run: _Run) -> None:
        paths = self._paths()
        if paths is None:
            raise InvalidParameterError(
                f"{type(self).__name__}.fit(resume=True) needs a checkpoint_dir to resume from."
            )
        if paths[0].exists():  # else a fresh start: resume=True is safe on a first run
            state = load_checkpoint(paths[0], run.config_hash, type(self).__name__)
            restore_run(run, state)

    def _save(self, run: _Run, epoch: int, improved: bool) -> None:
        paths = self._paths()
        if paths is None or not run.dp.is_main:
            return
        save_checkpoint(run_state(run, epoch), paths[0])
        if improved:
            best = {"fingerprint": run.config_hash, "epoch": epoch, "model": run.best_state}
            save_checkpoint(best, paths[1])

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        validation_data: Any = None,
        resume: bool = False,
        callback: Callable[[Any, int, dict[str, Any]], None] | None = None,
    ) -> Any:
        """Train the estimator's model in place; returns the trainer.

        Parameters
        ----------
        x : array-like, torch.Tensor or iterable of (x, y) batches
            Training samples (with ``y``), or a :class:`torch.utils.data.DataLoader` (any
            re-iterable of ``(x, y)`` batches: each is one global batch; ``batch_size`` is then
            the loader's). A loader is iterated once per epoch and never materialised; to
            resume bit-identically it must yield the same batches per epoch (a seeded sampler,
            or one with ``set_epoch``, which is called with the epoch).
        y : array-like or torch.Tensor, optional
            Labels, with arrays ``x``.
        validation_data : (x_val, y_val) or iterable of batches, optional
            Measured after each epoch: clean and robust (``validation_attack``) accuracy. The
            epoch with the highest validation robust accuracy is restored at the end (the
            clean one without a validation attack). Without validation data the last epoch is
            kept.
        resume : bool, default False
            Continue from ``checkpoint_dir/last.pt`` when it exists (a fresh start otherwise).
            The checkpoint must come from the same model and trainer settings.
        callback : callable, optional
            ``callback(trainer, epoch, record)`` after each epoch (after its checkpoint is
            written); an exception raised there interrupts the training.

        Returns
        -------
        self
        """
        self._check_setup()
        if not isinstance(resume, bool):
            raise invalid_parameter("resume", f"{type(self).__name__}.fit", "a bool", resume)
        data = TrainingData(self, x, y, "training data")
        val = None
        if validation_data is not None:
            vx, vy = _split_validation(validation_data)
            val = TrainingData(self, vx, vy, "validation data")
        run = self._start(resume)
        self._begin(run)
        modes = [m.training for m in run.module.modules()]
        try:
            for epoch in range(run.start_epoch, self.epochs):
                self._epoch(run, data, val, epoch, callback)
                if run.stop:
                    break
        finally:
            for m, training in zip(run.module.modules(), modes, strict=True):
                m.training = training
        if val is not None and run.best_state is not None:
            run.module.load_state_dict(run.best_state)
        elif run.history:
            run.best_epoch = int(run.history[-1]["epoch"])
        self.history_ = run.history
        self.best_epoch_ = run.best_epoch
        return self

    def _epoch(
        self,
        run: _Run,
        data: TrainingData,
        val: TrainingData | None,
        epoch: int,
        callback: Callable[[Any, int, dict[str, Any]], None] | None,
    ) -> None:
        start = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch}
        record.update(self._train_epoch(run, data, epoch))
        if val is not None:
            record.update(self._validate_epoch(run, val, epoch))
        self._end_epoch(run, epoch, record)
        record["seconds"] = time.perf_counter() - start
        run.history.append(record)
        score = self._validation_score(record)
        improved = not math.isnan(score) and score > run.best_score
        if improved:
            run.best_score, run.best_epoch = score, epoch
            run.best_state = copy_state(run.module)
        self._save(run, epoch, improved)
        if self.verbose and run.dp.is_main:
            tqdm.write(
                f"{type(self).__name__} epoch {epoch + 1}/{self.epochs}: "
                + ", ".join(
                    f"{k} {v:.4g}"
                    for k, v in record.items()
                    if isinstance(v, float) and k != "epoch"
                )
            )
        if callback is not None:
            callback(self, epoch, record)

    def _epoch_order(self, data: TrainingData, run: _Run, epoch: int) -> torch.Tensor | None:
        if data.loader is not None:
            sampler = getattr(data.loader, "sampler", None)
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)  # type: ignore[union-attr]
            return None
        gen = torch.Generator().manual_seed(derive_seed(run.base_seed, epoch, "shuffle"))
        return torch.randperm(data.x.shape[0], generator=gen)

    def _train_epoch(self, run: _Run, data: TrainingData, epoch: int) -> dict[str, float]:
        order = self._epoch_order(data, run, epoch)
        nb = len(data) if data.sized else None
        sums = torch.zeros(NB_SUMS, device=run.device, dtype=torch.float64)
        bar = tqdm(
            data.batches(order),
            total=nb,
            desc=f"{type(self).__name__} epoch {epoch + 1}/{self.epochs}",
            disable=not (self.verbose and run.dp.is_main),
            leave=False,
        )
        lr = self.learning_rate
        for b, (xg, yg) in enumerate(bar):
            n_global = int(xg.shape[0])
            batch = _Batch(epoch, b, n_global, run.dp.shard(n_global, xg.device), run.base_seed)
            batch.progress = epoch + ((b + 1) / nb if nb else 1.0)
            pos = batch.positions
            x, y = (xg, yg) if pos is None else (xg[pos], yg[pos])
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if b == 0:
                run.first_batch = (x, y)
            # Unsized iterables: the rate changes per epoch only (their length is unknown).
            t = epoch + (b / nb if nb else 0.0)
            lr = learning_rate_at(self.schedule, self.learning_rate, t, self.epochs)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            with self._forked_rng(run, batch):
                step = self._train_step(run, x, y, batch)
            # Every rank must agree to stop: the loss summed over the ranks is checked.
            loss = step[0:1] if run.dp.world_size == 1 else run.dp.sum(step[0:1].clone())
            if not bool(torch.isfinite(loss).all()):
                raise ModelError(
                    f"{type(self).__name__}: the training loss became {float(loss[0])} at epoch "
                    f"{epoch} (0-based), batch {b}: training diverged (lower the learning rate). "
                    "The model holds the diverged weights; the last good checkpoint (the end of "
                    "the previous epoch) stays in checkpoint_dir."
                )
            sums += step
            if self.verbose and run.dp.is_main:
                bar.set_postfix(rates(sums))
        run.dp.sum(sums)
        return {**rates(sums, prefix="train_"), "learning_rate": lr}

    @contextlib.contextmanager
    def _forked_rng(self, run: _Run, batch: _Batch) -> Iterator[None]:
        """Layers with their own randomness (dropout) draw from torch's global generator:
        seed it per (epoch, batch) inside a fork, so the caller's RNG state is unchanged."""
        cuda = run.device.type == "cuda"
        devices = [run.device.index or 0] if cuda else []
        with torch.random.fork_rng(devices=devices):
            seed = batch.seed("layers")
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(run.device):
                    torch.cuda.manual_seed(seed)
            yield

    # ------------------------------------------------------------------ one step

    def _train_step(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        """One optimiser step; returns ``[loss sum, clean correct, adversarial correct, n]``."""
        run.module.eval()
        x_adv = self._make_adversarial(run, x, y, batch)
        run.module.train()
        scale = run.dp.loss_scale(batch.n_global)
        gamma = self._awp_gamma(batch.epoch)
        restore = self._perturb_weights(run, x, y, x_adv, gamma) if gamma > 0 else None
        per_sample, adv_logits, clean_logits = self._losses(run, x, y, x_adv)
        loss_sum = per_sample.sum()
        run.optimizer.zero_grad(set_to_none=True)
        self._backward(run, loss_sum * scale)
        if restore is not None:
            restore()
        self._optimizer_step(run)
        return _step_sums(loss_sum, clean_logits, adv_logits, y)

    def _backward(self, run: _Run, loss: torch.Tensor) -> None:
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _optimizer_step(self, run: _Run) -> None:
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()

    def _perturb_weights(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, gamma: float
    ) -> Callable[[], None]:
        """Adversarial weight perturbation (Wu et al. 2020): move each weight by
        ``gamma * ||w|| * g / ||g||`` along the gradient ``g`` of the training loss (summed over
        the global batch), and return the function that puts the exact weights back (called
        after the backward pass, before the optimiser step: the step uses the gradient taken at
        the perturbed weights and applies it to the unperturbed ones)."""
        weights = weights_to_perturb(run.module)
        saved_net, run.net = run.net, run.module  # the direction needs no gradient sync
        try:
            per_sample, _, _ = self._losses(run, x, y, x_adv)
            grads = list(torch.autograd.grad(per_sample.sum(), weights))
        finally:
            run.net = saved_net
        run.dp.sum_all(grads)
        deltas = awp_perturbation(weights, grads, gamma)
        saved = [w.detach().clone() for w in weights]
        with torch.no_grad():
            for w, d in zip(weights, deltas, strict=True):
                w.add_(d)

        def restore() -> None:
            with torch.no_grad():
                for w, s in zip(weights, saved, strict=True):
                    w.copy_(s)

        return restore

    # ------------------------------------------------------------------ validation

    def _attack_spec(self) -> int | None:
        spec = self.validation_attack
        if isinstance(spec, str):
            m = PGD_SPEC.match(spec)
            return int(m.group(1)) if m else None
        return None

    def _validation_adversarial(
        self, run: _Run, x: torch.Tensor, y: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        steps = self._attack_spec()
        if steps is None:
            return self.validation_attack.generate(x, y)
        eps, norm = self._budget()
        start = x + global_noise(
            "ball",
            batch.seed("validation"),
            (batch.n_global, *x.shape[1:]),
            batch.positions,
            eps=eps,
            norm=norm,
            device=x.device,
            dtype=x.dtype,
        )
        return pgd(
            run.forward,
            x,
            start,
            ce_objective(y),
            eps=eps,
            eps_step=2.5 * eps / steps,
            max_iter=steps,
            norm=norm,
            clip_values=self.estimator.clip_values,
        )

    def _validate_epoch(self, run: _Run, val: TrainingData, epoch: int) -> dict[str, float]:
        run.module.eval()
        sums = torch.zeros(3, device=run.device, dtype=torch.float64)  # clean, robust, n
        for b, (xg, yg) in enumerate(val.batches(None)):
            batch = _Batch(epoch, b, int(xg.shape[0]), None, run.base_seed)
            batch.positions = run.dp.shard(batch.n_global, xg.device)
            pos = batch.positions
            x, y = (xg, yg) if pos is None else (xg[pos], yg[pos])
            with torch.no_grad():
                sums[0] += (run.forward(x).argmax(1) == y).sum()
            if self.validation_attack is not None:
                x_adv = self._validation_adversarial(run, x, y, batch)
                with torch.no_grad():
                    sums[1] += (run.forward(x_adv).argmax(1) == y).sum()
            sums[2] += x.shape[0]
        run.dp.sum(sums)
        n = max(float(sums[2]), 1.0)
        robust = float(sums[1]) / n if self.validation_attack is not None else math.nan
        return {"val_clean_accuracy": float(sums[0]) / n, "val_robust_accuracy": robust}

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, x: Any, y: Any, *, batch_size: int = 500, random_state: RandomStateLike = 0
    ) -> TrainingEvaluation:
        """Clean accuracy and robust accuracy under AutoAttack (``version="standard"``) at the
        training ``eps`` and ``norm``: the number the field trusts, measured with attacks the
        training never saw.

        Parameters
        ----------
        x, y : array-like or torch.Tensor
            Test samples and labels.
        batch_size : int, default 500
        random_state : None, int or torch.Generator, default 0

        Returns
        -------
        TrainingEvaluation
        """
        from bastion.attacks.evasion import AutoAttack

        eps, norm = self._budget()
        if math.isnan(eps):
            raise InvalidParameterError(
                f"{type(self).__name__}.evaluate runs AutoAttack at the training eps, and the "
                "training attack has none; run AutoAttack yourself at the budget you mean."
            )
        aa = AutoAttack(
            self.estimator,  # type: ignore[arg-type]
            eps=eps,
            norm=norm,
            version="standard",
            batch_size=batch_size,
            random_state=random_state,
        )
        result = aa.evaluate(x, y)
        return TrainingEvaluation(
            clean_accuracy=float(result.clean_accuracy),
            robust_accuracy=float(result.robust_accuracy),
            eps=eps,
            norm=norm,
            nb_samples=len(result.robust),
        )


def _split_validation(data: Any) -> tuple[Any, Any]:
    if isinstance(data, tuple) and len(data) == 2:
        return data
    return data, None
