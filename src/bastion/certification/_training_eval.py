"""What the certified trainers share with their evaluation: margin bounds, worst-case logits,
and clean / PGD / verified accuracy of a trained estimator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bastion._tensor import RandomStateLike, to_tensor
from bastion._validation import check_labels, check_x
from bastion.certification._bounds import BoundNetwork, box_domain, margin_spec
from bastion.estimators.base import require_capabilities

__all__ = [
    "CertifiedTrainingEvaluation",
    "evaluate_certified",
    "margin_lower",
    "worst_case_logits",
]

#: Samples per bound pass of the CROWN verification (CROWN bounds every intermediate neuron
#: with a backward pass of two rows per neuron: its memory grows with the batch).
CROWN_CHUNK = 16


@dataclass(frozen=True)
class CertifiedTrainingEvaluation:
    """Clean, PGD and verified accuracy of a certifiably trained estimator (the certified
    trainers' ``evaluate``).

    A verified sample is classified correctly on its whole eps-ball, so both verified
    accuracies are at most ``pgd_accuracy`` (an attack's, an upper bound of the true robust
    accuracy), itself at most ``clean_accuracy``. CROWN's margin bounds are intersected with
    IBP's, so it verifies every sample IBP does.

    Attributes
    ----------
    clean_accuracy : float
    pgd_accuracy : float
    ibp_verified_accuracy : float
    crown_verified_accuracy : float
        CROWN with CROWN intermediate bounds (each never looser than IBP's); NaN when
        ``evaluate`` was asked not to run it.
    eps : float
    norm : str
    nb_samples : int
    ibp_verified, crown_verified, pgd_robust : numpy.ndarray of bool, shape (nb_samples,)
        The per-sample verdicts (``crown_verified`` all False when CROWN was not run).
    """

    clean_accuracy: float
    pgd_accuracy: float
    ibp_verified_accuracy: float
    crown_verified_accuracy: float
    eps: float
    norm: str
    nb_samples: int
    ibp_verified: np.ndarray
    crown_verified: np.ndarray
    pgd_robust: np.ndarray


def worst_case_logits(margin_lower: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The worst-case logits of Gowal et al. in the specification form: ``z_hat_y = 0`` and
    ``z_hat_j = -lower(z_y - z_j)`` for ``j != y``.

    Parameters
    ----------
    margin_lower : torch.Tensor, shape (N, K - 1)
        Lower bounds of the margins, rows in the order of ``margin_spec`` (``j`` ascending,
        ``j != y``).
    y : torch.Tensor of int, shape (N,)

    Returns
    -------
    torch.Tensor, shape (N, K)
        Their cross-entropy bounds the cross-entropy of every point of the ball from above,
        and their argmax is ``y`` when every margin is verified (lower bound > 0).
    """
    n, k = int(y.shape[0]), int(margin_lower.shape[1]) + 1
    classes = torch.arange(k, device=y.device).expand(n, k)
    others = classes[classes != y.unsqueeze(1)].reshape(n, k - 1)
    out = torch.zeros((n, k), dtype=margin_lower.dtype, device=margin_lower.device)
    return out.scatter(1, others, -margin_lower)


def margin_lower(
    net: BoundNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: Any,
    clip: Any,
    method: str,
) -> torch.Tensor:
    """Lower bounds of the margins ``z_y - z_j`` (``j != y``) over each sample's ball,
    shape ``(N, K - 1)``, differentiable w.r.t. the model's parameters.

    ``method``: ``"ibp"`` (interval bounds of the logits; the margin's bound is
    ``lower(z_y) - upper(z_j)``), ``"crown-ibp"`` (CROWN from the output, IBP intermediate
    bounds) or ``"crown"`` (CROWN intermediate bounds too).
    """
    dom = box_domain(x, eps, norm, clip)
    k = int(net.output_shape[-1])
    if method == "ibp":
        lo, up = net.interval(dom)
        spec = margin_spec(y, k, dtype=lo.dtype, device=lo.device)
        # The spec applied to the logits' box: positive coefficients take the lower bound.
        pos, neg = spec.clamp(min=0), spec.clamp(max=0)
        return (pos * lo.unsqueeze(1)).sum(-1) + (neg * up.unsqueeze(1)).sum(-1)
    spec = margin_spec(y, k, dtype=x.dtype, device=x.device)
    intermediate = "ibp" if method == "crown-ibp" else "crown"
    lower, _ = net.crown(dom, spec=spec, intermediate=intermediate)
    return lower


def evaluate_certified(
    estimator: Any,
    x: Any,
    y: Any,
    *,
    eps: float,
    norm: str,
    owner: str,
    batch_size: int = 500,
    max_iter: int = 40,
    num_random_init: int = 5,
    crown: bool = True,
    random_state: RandomStateLike = 0,
) -> CertifiedTrainingEvaluation:
    """Clean, PGD and IBP- and CROWN-verified accuracy of ``estimator`` at ``eps``."""
    from bastion.attacks.evasion import PGD

    require_capabilities(estimator, ["predict", "module"], owner)
    for name, value in (("batch_size", batch_size), ("max_iter", max_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            from bastion._validation import invalid_parameter

            raise invalid_parameter(name, f"{owner}.evaluate", "an int in [1, inf)", value)
    xt, _ = to_tensor(x, device=estimator.device, dtype=estimator.dtype)
    check_x(xt, input_shape=tuple(estimator.input_shape), clip_values=estimator.clip_values)
    yt, _ = to_tensor(y, device=estimator.device, dtype=None)
    yt = check_labels(yt, n=int(xt.shape[0]), nb_classes=int(estimator.nb_classes))
    clean = _predicted(estimator, xt, batch_size) == yt
    attack = PGD(
        estimator,
        eps=eps,
        eps_step=2.5 * eps / max_iter,
        max_iter=max_iter,
        norm=norm,
        num_random_init=num_random_init,
        batch_size=batch_size,
        random_state=random_state,
    )
    x_adv = attack.generate(xt, yt)
    robust = clean & (_predicted(estimator, x_adv, batch_size) == yt)
    net = BoundNetwork(estimator.torch_module(), tuple(estimator.input_shape), owner=owner)
    clip = estimator.clip_values
    ibp = _verified(net, xt, yt, eps, norm, clip, "ibp", batch_size)
    n = int(xt.shape[0])
    if crown:
        by_crown = _verified(net, xt, yt, eps, norm, clip, "crown", CROWN_CHUNK)
    else:
        by_crown = torch.zeros(n, dtype=torch.bool, device=xt.device)

    def rate(mask: torch.Tensor) -> float:
        return float(mask.float().mean()) if n else float("nan")

    return CertifiedTrainingEvaluation(
        clean_accuracy=rate(clean),
        pgd_accuracy=rate(robust),
        ibp_verified_accuracy=rate(ibp),
        crown_verified_accuracy=rate(by_crown) if crown else float("nan"),
        eps=float(eps),
        norm=str(norm),
        nb_samples=n,
        ibp_verified=ibp.cpu().numpy(),
        crown_verified=by_crown.cpu().numpy(),
        pgd_robust=robust.cpu().numpy(),
    )


def _predicted(estimator: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    probs, _ = to_tensor(estimator.predict(x, batch_size=batch_size), device=x.device)
    return probs.argmax(1)


def _verified(
    net: BoundNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: Any,
    clip: Any,
    method: str,
    chunk: int,
) -> torch.Tensor:
    out = torch.zeros(int(x.shape[0]), dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for s in range(0, int(x.shape[0]), chunk):
            lower = margin_lower(net, x[s : s + chunk], y[s : s + chunk], eps, norm, clip, method)
            out[s : s + chunk] = (lower > 0).all(1).to(out.device)
    return out
