"""Neural Cleanse's trigger reverse engineering (Wang et al. 2019), as named steps.

For every class ``t`` at once, Adam minimises ``CE(f((1 - m) * x + m * p), t) + lambda_t *
|m|_1`` over the ``tanh`` parameters of a mask ``m`` and a pattern ``p``, with the paper's
schedule for ``lambda_t``, the best successful mask kept, and early stopping (see
:class:`~bastion.defenses.poisoning.NeuralCleanse`). One epoch is :meth:`TriggerSearch.epoch`;
after it come :meth:`~TriggerSearch.keep_best`, :meth:`~TriggerSearch.early_stop` and
:meth:`~TriggerSearch.adjust_cost`.

The model is reached through ``objective_gradient_tensor`` only: it gives the gradient of the
cross-entropy with respect to the stamped inputs, and the chain rule to the mask and pattern
parameters is applied here.

B. Wang, Y. Yao, S. Shan, H. Li, B. Viswanath, H. Zheng, B. Y. Zhao. "Neural Cleanse:
Identifying and Mitigating Backdoor Attacks in Neural Networks." IEEE S&P 2019.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bastion.attacks._optim import adam_step
from bastion.estimators.base import SupportsClassGradient

if TYPE_CHECKING:
    from bastion.defenses.poisoning.neural_cleanse import NeuralCleanse

__all__ = ["TanhBox", "TriggerSearch"]

_EPS = 1e-7  # keeps atanh finite at the ends of the tanh parametrisation
#: Adam's betas on the trigger parameters, as in the paper's code.
_BETAS = (0.5, 0.9)


@dataclass(frozen=True)
class TanhBox:
    """The ``tanh`` parametrisation: a mask in ``[0, 1]`` and a pattern in ``[lo, hi]``."""

    lo: float
    hi: float

    @staticmethod
    def raw(u: torch.Tensor) -> torch.Tensor:
        """The parameter of a value ``u`` in ``[0, 1]``."""
        return torch.atanh((u - 0.5) * (2 - _EPS) * (1 - 1e-6))

    @staticmethod
    def unit(raw: torch.Tensor) -> torch.Tensor:
        return torch.tanh(raw) / (2 - _EPS) + 0.5

    def mask(self, raw: torch.Tensor) -> torch.Tensor:
        return self.unit(raw).clamp(0, 1)  # clamp: float rounding

    def pattern(self, raw: torch.Tensor) -> torch.Tensor:
        return (self.lo + (self.hi - self.lo) * self.unit(raw)).clamp(self.lo, self.hi)


@dataclass
class TriggerSearch:
    """The state of the search, one row per class.

    Start it with :meth:`start`, run :meth:`epoch` and the three updates after it while
    :meth:`active_classes` is not empty, then read the triggers with :meth:`triggers`.
    """

    box: TanhBox
    m_raw: torch.Tensor  # (K, *mask_shape)
    p_raw: torch.Tensor  # (K, *input_shape)
    adam_m: list[torch.Tensor]
    adam_v: list[torch.Tensor]
    adam_t: torch.Tensor  # Adam's step count per class: a stopped class stays frozen
    cost: torch.Tensor  # lambda per class
    reg_best: torch.Tensor  # smallest L1 of a successful mask (inf: none yet)
    es_best: torch.Tensor  # the reference of early stopping
    best_success: torch.Tensor
    best_m: torch.Tensor
    best_p: torch.Tensor
    up_count: torch.Tensor
    down_count: torch.Tensor
    set_count: torch.Tensor
    es_count: torch.Tensor
    up_flag: torch.Tensor  # lambda has gone up at least once
    down_flag: torch.Tensor
    active: torch.Tensor
    epochs: torch.Tensor

    @classmethod
    def start(
        cls,
        nb_classes: int,
        mask_shape: tuple[int, ...],
        input_shape: tuple[int, ...],
        box: TanhBox,
        init_cost: float,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype,
    ) -> TriggerSearch:
        """Random masks and patterns (from ``generator``), lambda at ``init_cost``."""
        k, dev = nb_classes, device
        m_raw = box.raw(torch.rand((k, *mask_shape), generator=generator, dtype=dtype)).to(dev)
        p_raw = box.raw(torch.rand((k, *input_shape), generator=generator, dtype=dtype)).to(dev)

        def kvec(value: float) -> torch.Tensor:
            return torch.full((k,), value, dtype=torch.float64, device=dev)

        def counter() -> torch.Tensor:
            return torch.zeros(k, dtype=torch.long, device=dev)

        def flag(value: bool) -> torch.Tensor:
            return torch.full((k,), value, dtype=torch.bool, device=dev)

        return cls(
            box=box,
            m_raw=m_raw,
            p_raw=p_raw,
            adam_m=[torch.zeros_like(m_raw), torch.zeros_like(p_raw)],
            adam_v=[torch.zeros_like(m_raw), torch.zeros_like(p_raw)],
            adam_t=torch.zeros(k, device=dev),
            cost=kvec(init_cost),
            reg_best=kvec(math.inf),
            es_best=kvec(math.inf),
            best_success=kvec(math.nan),
            best_m=box.mask(m_raw).clone(),
            best_p=box.pattern(p_raw).clone(),
            up_count=counter(),
            down_count=counter(),
            set_count=counter(),
            es_count=counter(),
            up_flag=flag(False),
            down_flag=flag(False),
            active=flag(True),
            epochs=counter(),
        )

    def active_classes(self) -> torch.Tensor:
        return torch.nonzero(self.active).flatten()

    # ------------------------------------------------------------------ one epoch

    def gradients(
        self, estimator: SupportsClassGradient, xb: torch.Tensor, ids: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """Gradients of each class's loss on the batch ``xb`` with respect to its mask and
        pattern parameters, with the logits and the mask norms ``(grads, logits, reg)``.

        The batch is stamped with the trigger of every class in ``ids`` (one model call);
        the estimator gives the input gradient of the mean cross-entropy, chained here
        through the stamping and the ``tanh`` parametrisation.
        """
        na, b = ids.numel(), xb.shape[0]
        leaves = [self.m_raw[ids].detach().requires_grad_(True)]
        leaves.append(self.p_raw[ids].detach().requires_grad_(True))
        with torch.enable_grad():
            m, p = self.box.mask(leaves[0]), self.box.pattern(leaves[1])
            x_adv = (1 - m).unsqueeze(1) * xb.unsqueeze(0) + (m * p).unsqueeze(1)
            reg = m.abs().flatten(1).sum(dim=1)
        target = ids.repeat_interleave(b)

        def mean_cross_entropy(z: torch.Tensor) -> torch.Tensor:  # per sample: its share
            return F.cross_entropy(z, target, reduction="none") / b

        g_x, _, logits = estimator.objective_gradient_tensor(
            x_adv.detach().reshape(na * b, *xb.shape[1:]), mean_cross_entropy
        )
        # loss = CE + lambda * |m|_1: lambda is the weight of the norm's gradient
        grads = torch.autograd.grad(
            (x_adv, reg), leaves, (g_x.view_as(x_adv), self.cost[ids].to(reg.dtype))
        )
        return grads, logits, reg.detach()

    def adam(self, ids: torch.Tensor, grads: tuple[torch.Tensor, ...], lr: float) -> None:
        """One Adam step on the parameters of the classes ``ids``."""
        self.adam_t[ids] += 1
        for j, (params, g) in enumerate(zip((self.m_raw, self.p_raw), grads, strict=True)):
            t = self.adam_t[ids].view((ids.numel(),) + (1,) * (g.ndim - 1))
            params[ids], self.adam_m[j][ids], self.adam_v[j][ids] = adam_step(
                params[ids], g, self.adam_m[j][ids], self.adam_v[j][ids], t, lr, betas=_BETAS
            )

    def epoch(
        self,
        estimator: SupportsClassGradient,
        x: torch.Tensor,
        ids: torch.Tensor,
        batch_size: int,
        lr: float,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over ``x`` in a random order: an Adam step per mini-batch for the classes
        ``ids``. Returns their attack success and mean mask norm over the epoch."""
        n, na = x.shape[0], ids.numel()
        order = torch.randperm(n, generator=generator).to(x.device)
        acc_sum = torch.zeros(na, dtype=torch.float64, device=x.device)
        reg_sum = torch.zeros(na, dtype=torch.float64, device=x.device)
        for s in range(math.ceil(n / batch_size)):
            xb = x[order[s * batch_size : (s + 1) * batch_size]]
            b = xb.shape[0]
            grads, logits, reg = self.gradients(estimator, xb, ids)
            self.adam(ids, grads, lr)
            hits = logits.argmax(dim=1) == ids.repeat_interleave(b)
            acc_sum += hits.view(na, b).to(torch.float64).mean(dim=1) * b
            reg_sum += reg.to(torch.float64) * b
        self.epochs[ids] += 1
        return acc_sum / n, reg_sum / n

    # ------------------------------------------------------------------ after an epoch

    def keep_best(
        self, ids: torch.Tensor, acc: torch.Tensor, reg: torch.Tensor, success: torch.Tensor
    ) -> None:
        """Keep the masks that succeeded with a smaller norm than the best so far."""
        better = success & (reg < self.reg_best[ids])
        if bool(better.any()):
            upd = ids[better]
            self.best_m[upd] = self.box.mask(self.m_raw[upd])
            self.best_p[upd] = self.box.pattern(self.p_raw[upd])
            self.reg_best[upd] = reg[better]
            self.best_success[upd] = acc[better]

    def early_stop(self, ids: torch.Tensor, threshold: float, patience: int) -> torch.Tensor:
        """Which classes of ``ids`` stop: their best norm has not fallen below ``threshold``
        times the reference for ``patience`` epochs, after lambda went both up and down."""
        rb = self.reg_best[ids]
        has = torch.isfinite(rb)
        stall = has & (rb >= threshold * self.es_best[ids])
        self.es_count[ids] = torch.where(
            stall, self.es_count[ids] + 1, torch.where(has, 0, self.es_count[ids])
        )
        self.es_best[ids] = torch.minimum(rb, self.es_best[ids])
        return self.up_flag[ids] & self.down_flag[ids] & (self.es_count[ids] >= patience)

    def adjust_cost(self, ids: torch.Tensor, success: torch.Tensor, nc: NeuralCleanse) -> None:
        """The paper's schedule of lambda: reset when it sits at zero while successful; up by
        ``cost_multiplier`` after ``patience`` successful epochs, down by its 1.5th power
        after ``patience`` failed ones."""
        c = self.cost[ids]
        set_c = torch.where((c == 0) & success, self.set_count[ids] + 1, 0)
        reset = set_c >= nc.patience
        c = torch.where(reset, float(nc.init_cost), c)
        self.set_count[ids] = torch.where(reset, 0, set_c)
        up_c = torch.where(success, self.up_count[ids] + 1, 0)
        down_c = torch.where(success, 0, self.down_count[ids] + 1)
        up_c, down_c = torch.where(reset, 0, up_c), torch.where(reset, 0, down_c)
        uf, df = self.up_flag[ids] & ~reset, self.down_flag[ids] & ~reset
        go_up = up_c >= nc.patience
        go_down = ~go_up & (down_c >= nc.patience)
        mult_up, mult_down = float(nc.cost_multiplier), float(nc.cost_multiplier) ** 1.5
        self.cost[ids] = torch.where(go_up, c * mult_up, torch.where(go_down, c / mult_down, c))
        self.up_count[ids] = torch.where(go_up, 0, up_c)
        self.down_count[ids] = torch.where(go_down, 0, down_c)
        self.up_flag[ids], self.down_flag[ids] = uf | go_up, df | go_down

    # ------------------------------------------------------------------ the whole search

    @classmethod
    def run(cls, nc: NeuralCleanse, x: torch.Tensor, generator: torch.Generator) -> TriggerSearch:
        """The search for every class of ``nc.estimator`` on the clean inputs ``x``."""
        from tqdm.auto import trange

        est = nc.estimator
        lo, hi = est.clip_values if est.clip_values is not None else (x.min(), x.max())
        shape = tuple(est.input_shape)
        search = cls.start(
            est.nb_classes,
            (1, *shape[1:]) if len(shape) == 3 else shape,  # one mask value per pixel
            shape,
            TanhBox(float(lo), float(hi)),
            float(nc.init_cost),
            generator,
            est.device,
            est.dtype,
        )
        batch_size = min(nc.batch_size, x.shape[0])
        threshold = float(nc.attack_success_threshold)
        for _ in trange(nc.max_epochs, desc="NeuralCleanse", disable=not nc.verbose):
            ids = search.active_classes()
            if ids.numel() == 0:
                break
            acc, reg = search.epoch(est, x, ids, batch_size, float(nc.learning_rate), generator)
            success = acc >= threshold
            search.keep_best(ids, acc, reg, success)
            if nc.early_stop:
                done = search.early_stop(
                    ids, float(nc.early_stop_threshold), int(nc.early_stop_patience)
                )
                search.active[ids[done]] = False
            search.adjust_cost(ids, success, nc)
        return search

    def triggers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The best mask and pattern of every class (the last ones of a class that never
        reached the success threshold)."""
        never = ~torch.isfinite(self.reg_best)
        if bool(never.any()):
            self.best_m[never] = self.box.mask(self.m_raw[never])
            self.best_p[never] = self.box.pattern(self.p_raw[never])
        return self.best_m.detach(), self.best_p.detach()
