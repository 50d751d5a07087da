"""Universal adversarial perturbations (Moosavi-Dezfooli et al. 2017)."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from tqdm.auto import tqdm

from bastion._validation import BATCH_SIZE, NORM, VERBOSE, Constraint, Interval, Satisfies
from bastion.attacks._lp import canonical_norm, project_lp
from bastion.attacks.base import EvasionAttack, FixedBudgetAttack, checked_input
from bastion.estimators.base import SupportsClassGradient, SupportsPredict
from bastion.exceptions import NotFittedError

__all__ = ["UniversalPerturbation"]


class UniversalPerturbation(FixedBudgetAttack):
    """Universal adversarial perturbation: one perturbation ``v`` with ``||v||_p <= eps`` that
    fools the model on most inputs.

    Passes over the data: for every sample still classified as on its clean input, an inner
    minimum-perturbation attack (DeepFool by default, any evasion attack can be given) finds
    the extra perturbation ``dv`` that sends ``x + v`` across the boundary, and ``v`` becomes
    the projection of ``v + dv`` onto the eps-ball. It stops when the fooling rate (the share of
    samples whose predicted label changes) reaches ``1 - delta``, or after ``max_iter`` passes.
    The fooling rate is not monotone in the passes (a later pass can undo an earlier one), so
    the perturbation kept is the one with the highest fooling rate at the end of a pass (the
    paper returns the last one; this costs no extra queries).

    Samples are processed in mini-batches of ``batch_size``: the inner attack sees ``v`` as it
    was at the start of the mini-batch, and the ``dv`` are then folded into ``v`` one by one.
    ``batch_size=1`` is the paper's sequential algorithm; larger batches are much faster.

    ``generate(x)`` computes ``v`` on ``x`` and returns ``x + v`` (inside ``clip_values``);
    ``fit(x)`` only computes it, and ``apply(x_new)`` adds it to new inputs.

    Threat model: white-box through the inner attack; one input-agnostic perturbation.
    Norms: inf, 2, 1.

    Parameters
    ----------
    estimator : estimator with ``predict`` (and what the inner attack needs)
    attacker : EvasionAttack or None, default None
        Inner attack on the same estimator; ``None`` means ``DeepFool(estimator)``.
    eps : float, default 0.3
        Radius of the universal perturbation.
    norm : {"inf", 2, 1}, default "inf"
    delta : float in [0, 1), default 0.2
        Stop once the fooling rate reaches ``1 - delta``.
    max_iter : int, default 10
        Passes over the data.
    batch_size : int, default 32
    verbose : bool, default False

    Attributes
    ----------
    perturbation_ : torch.Tensor, shape ``input_shape``
        The universal perturbation (after ``fit`` or ``generate``): of all passes, the one
        whose end had the highest fooling rate.
    fooling_rate_ : float
        Its fooling rate on the data it was computed on.
    n_passes_ : int
        Passes over the data that were made.

    References
    ----------
    Moosavi-Dezfooli, Fawzi, Fawzi and Frossard, "Universal adversarial perturbations",
    CVPR 2017. https://arxiv.org/abs/1610.08401

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion import UniversalPerturbation
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0, 1))
    >>> uap = UniversalPerturbation(clf, eps=0.2, max_iter=2)
    >>> x_adv = uap.generate(torch.rand(8, 4))
    >>> uap.perturbation_.shape
    torch.Size([4])
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "attacker": [
            Satisfies(lambda a: a is None or isinstance(a, EvasionAttack), "an EvasionAttack"),
        ],
        "eps": [Interval(float, 0, None)],
        "norm": [NORM],
        "delta": [Interval(float, 0, 1, closed="left")],
        "max_iter": [Interval(int, 1, None)],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict",)
    targeted = False

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        attacker: EvasionAttack | None = None,
        eps: float = 0.3,
        norm: Any = "inf",
        delta: float = 0.2,
        max_iter: int = 10,
        batch_size: int = 32,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.attacker = attacker
        self.eps = eps
        self.norm = norm
        self.delta = delta
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.verbose = verbose

    def _inner(self) -> EvasionAttack:
        if self.attacker is not None:
            return self.attacker
        from bastion.attacks.evasion.deepfool import DeepFool

        # DeepFool checks the class_gradient capability it needs when it runs.
        return DeepFool(cast(SupportsClassGradient, self.estimator), batch_size=self.batch_size)

    def _fit_tensor(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        est = self.estimator
        norm = canonical_norm(self.norm)
        eps = torch.tensor(self.eps, device=x.device, dtype=x.dtype)
        clip = est.clip_values
        clean = self._predicted_labels(x)
        v = torch.zeros_like(x[:1])
        inner = self._inner()
        fooling = 0.0
        best_v, best_fooling = v, 0.0
        passes = 0
        bar = tqdm(total=self.max_iter, desc=type(self).__name__, disable=not self.verbose)
        for _pass in range(self.max_iter):
            passes += 1
            for i in range(0, x.shape[0], self.batch_size):
                xb = x[i : i + self.batch_size]
                yb = clean[i : i + self.batch_size]
                xv = xb + v if clip is None else (xb + v).clamp(*clip)
                with torch.no_grad():
                    todo = est.predict_tensor(xv).argmax(dim=1) == yb
                if not bool(todo.any()):
                    continue
                dv = inner.generate(xv[todo], yb[todo]) - xv[todo]
                if mask is not None:
                    dv = dv * mask
                for row in dv:  # fold each sample's step in turn, as the paper does
                    v = project_lp(v + row.unsqueeze(0), eps, norm)
            adv = self._predicted_labels(x + v if clip is None else (x + v).clamp(*clip))
            fooling = float((adv != clean).to(torch.float32).mean())
            if fooling > best_fooling:
                best_v, best_fooling = v.clone(), fooling
            bar.update(1)
            bar.set_postfix(fooling_rate=f"{fooling:.3f}")
            if fooling >= 1 - self.delta:
                break
        bar.close()
        self.perturbation_ = best_v[0]
        self.fooling_rate_ = best_fooling
        self.n_passes_ = passes
        return best_v[0]

    def fit(self, x: Any, y: Any = None, *, mask: Any = None) -> UniversalPerturbation:
        """Compute the universal perturbation on ``x`` (labels are the model's predictions;
        ``y`` is ignored). Returns ``self``."""
        self._validate()
        xt, _ = checked_input(self.estimator, x)
        self._fit_tensor(xt, self._resolve_mask(mask, xt))
        return self

    def apply(self, x: Any) -> Any:
        """``x`` plus the fitted universal perturbation, inside ``clip_values``."""
        if not hasattr(self, "perturbation_"):
            raise NotFittedError("call fit (or generate) before apply.")
        est = self.estimator
        xt, kind = checked_input(est, x)
        out = xt + self.perturbation_
        out = out.clamp(*est.clip_values) if est.clip_values is not None else out
        return kind.restore(out, unchanged=xt)

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        # Runs once on all samples before the template's batches: v is computed here, and the
        # batches only add it. (``y`` given to ``generate`` is ignored: the model's own clean
        # predictions define success.)
        self._fit_tensor(x, mask)
        return super()._prepare(x, mask)

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        eps: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        return x + self.perturbation_
