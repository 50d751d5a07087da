"""Sound logit bounds over input balls (IBP, CROWN, alpha-CROWN) and per-sample verification.

:class:`IntervalBounds` and :class:`CrownBounds` bound a torch model's logits over the Lp
ball around each sample intersected with the estimator's ``clip_values``; :func:`verify`
turns bounds on the margins ``z_y - z_j`` into verdicts, or solves the exact mixed-integer
program (``method="complete"``, :mod:`._milp`).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import ArrayKind, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    BUDGET,
    NONE,
    VERBOSE,
    Boolean,
    Constraint,
    Interval,
    Options,
    check_labels,
    check_x,
    validate_params,
)
from bastion.certification._bounds import BoundNetwork, InputDomain, box_domain, margin_spec
from bastion.certification._bounds._domain import competitors, eps_tensor, normalize_norm
from bastion.estimators.base import require_capabilities
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError

__all__ = ["CrownBounds", "IntervalBounds", "VerificationResult", "verify"]

_NORM: list[Constraint] = [Options(["inf", float("inf"), 2])]


def _require_module(estimator: Any, owner: str) -> None:
    """The ``module`` capability, or an error that suggests a predictions-only certificate."""
    try:
        require_capabilities(estimator, ["module"], owner)
    except EstimatorError as err:
        raise EstimatorError(
            f"{err} Bound propagation needs the model itself (torch_module()); "
            "RandomizedSmoothing certifies a model from its predictions only."
        ) from None


def _checked(
    estimator: Any, x: Any, eps: Any, norm: Any, owner: str
) -> tuple[torch.Tensor, ArrayKind, torch.Tensor, str | int]:
    """``x`` as a checked tensor, ``eps`` per sample, the norm."""
    norm = normalize_norm(norm, owner)
    validate_params(owner, {"eps": eps}, {"eps": BUDGET})
    dtype = getattr(estimator, "dtype", torch.float32)
    xt, kind = to_tensor(x, device=estimator.device, dtype=dtype)
    if not kind.floating:
        raise InputError(f"x must hold floating-point values; got dtype {kind.dtype}.")
    check_x(xt, input_shape=estimator.input_shape, clip_values=estimator.clip_values)
    try:
        e = eps_tensor(eps, int(xt.shape[0]), dtype=xt.dtype, device=xt.device)
    except InvalidParameterError as err:
        raise InvalidParameterError(str(err).replace("of bounds", f"of {owner}")) from None
    clip = estimator.clip_values
    if clip is not None and e.numel():
        span = float(clip[1]) - float(clip[0])
        if norm != "inf":
            span *= float(np.prod(estimator.input_shape)) ** 0.5
        if float(e.max()) > span:
            raise InvalidParameterError(
                f"The 'eps' parameter of {owner} must fit the estimator's clip_values "
                f"{tuple(clip)}: every point is within {span:g} of every other in the "
                f"L{norm} norm there, so a larger ball is the whole input range. Got "
                f"eps={float(e.max())!r} instead."
            )
    return xt, kind, e, norm


#: Traced networks by estimator: tracing costs milliseconds, as much as IBP on a small model.
_TRACED: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], BoundNetwork]] = (
    weakref.WeakKeyDictionary()
)


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """What a traced network depends on: the submodules and tensors (by identity)."""
    mods = tuple((name, id(m)) for name, m in module.named_modules() if name)
    tensors = tuple(id(t) for t in module.parameters()) + tuple(id(t) for t in module.buffers())
    return (type(module), mods, tensors)


def _network(estimator: Any, owner: str) -> BoundNetwork:
    """The traced ``torch_module()`` of the estimator, reused while it is the same model
    (same submodules and tensors: the traced operators read parameters live)."""
    module = estimator.torch_module()
    shape = tuple(estimator.input_shape)
    sig = (_signature(module), shape)
    try:
        cached = _TRACED.get(estimator)
    except TypeError:  # not weakly referenceable
        cached = None
    if cached is not None and cached[0] == sig:
        return cached[1]
    net = BoundNetwork(module, shape, owner)
    try:
        _TRACED[estimator] = (sig, net)
    except TypeError:
        pass
    return net


def _clip(estimator: Any) -> tuple[float, float] | None:
    cv = estimator.clip_values
    return None if cv is None else (float(cv[0]), float(cv[1]))


class _Bounds(Parametrized):
    """Shared machinery of the public bound classes: checks, batches, types."""

    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }

    estimator: Any
    batch_size: int
    verbose: bool

    def _batch_bounds(
        self, net: BoundNetwork, domain: InputDomain
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def bounds(self, x: Any, *, eps: Any, norm: Any = "inf") -> tuple[Any, Any]:
        """Lower and upper bounds of the logits over each sample's input set.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Inside the estimator's ``clip_values``.
        eps : float or array-like of shape (N,)
            Radius of the ball (>= 0).
        norm : {"inf", 2}
            The ball is intersected with the estimator's ``clip_values``.

        Returns
        -------
        lower, upper : same type as ``x``, shape (N, nb_classes)
        """
        owner = type(self).__name__
        self._validate()
        _require_module(self.estimator, owner)
        xt, kind, e, norm = _checked(self.estimator, x, eps, norm, owner)
        net = _network(self.estimator, owner)
        lows, ups = [], []
        n, bs = int(xt.shape[0]), int(self.batch_size)
        with (
            torch.no_grad(),
            tqdm(total=n, desc=owner, unit="sample", disable=not self.verbose) as bar,
        ):
            for i in range(0, n, bs):
                dom = box_domain(xt[i : i + bs], e[i : i + bs], norm, _clip(self.estimator))
                lo, up = self._batch_bounds(net, dom)
                lows.append(lo.detach())
                ups.append(up.detach())
                bar.update(min(bs, n - i))
        return kind.restore(torch.cat(lows)), kind.restore(torch.cat(ups))


class IntervalBounds(_Bounds):
    """Interval bound propagation (IBP) of a torch model's logits (Gowal et al. 2018).

    Each layer maps a box to a box: affine layers in centre/radius form (``W c`` and
    ``|W| r``), monotone layers (ReLU, max pooling) elementwise. Fast and sound, loose on deep
    networks unless trained for it (:class:`IBPTrainer`). The input set is the Lp ball around
    each sample intersected with ``clip_values`` (an L2 ball is bounded by its bounding box).

    Supported layers: Linear, Conv2d, ReLU, BatchNorm (running statistics), Flatten/reshape,
    AvgPool2d, MaxPool2d, Identity, Dropout (identity), residual additions and elementwise
    affine operations with constants (the estimator's normalisation).

    Parameters
    ----------
    estimator : TorchClassifier
        An estimator with the ``module`` capability.
    batch_size : int
    verbose : bool
        Show a progress bar.

    References
    ----------
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", 2018.

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.certification import IntervalBounds
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0.0, 1.0))
    >>> x = torch.full((2, 4), 0.5)
    >>> lower, upper = IntervalBounds(clf).bounds(x, eps=0.1)
    >>> bool((lower <= clf.logits(x)).all() and (clf.logits(x) <= upper).all())
    True
    """

    def __init__(self, estimator: Any, *, batch_size: int = 128, verbose: bool = False) -> None:
        self.estimator = estimator
        self.batch_size = batch_size
        self.verbose = verbose

    def _batch_bounds(
        self, net: BoundNetwork, domain: InputDomain
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return net.interval(domain)


class CrownBounds(_Bounds):
    """CROWN (Zhang et al. 2018) and alpha-CROWN (Xu et al. 2021) bounds of a torch model's
    logits.

    CROWN propagates linear bounds backward from the output to the input: each unstable ReLU
    (``l < 0 < u``) is relaxed by the line ``u / (u - l) (x - l)`` above and ``alpha x`` below,
    with CROWN's adaptive slope (``alpha = 1`` when ``u >= -l``, else 0). Pre-activation bounds
    are computed by CROWN itself, layer after layer, keeping the tighter of CROWN and IBP per
    neuron, so the bounds are never looser than :class:`IntervalBounds`. The linear bound is
    then minimised exactly over the Linf box, and over the L2 ball intersected with the clip box
    by a Lagrangian dual (sound for every multiplier, tight at the best).

    With ``alpha=True``, the lower ReLU slopes become free parameters in [0, 1] (one per
    neuron, sample and bounded quantity, for the final bounds and for every intermediate
    bound's backward pass), optimised jointly by projected Adam on the sum of the final lower
    bounds, starting from CROWN's; intermediate bounds are recomputed at each step and kept at
    their tightest, and each final bound keeps its best value: never looser than CROWN.

    Parameters
    ----------
    estimator : TorchClassifier
        An estimator with the ``module`` capability.
    alpha : bool
        Optimise the slopes (alpha-CROWN).
    alpha_iter : int
        Adam steps of alpha-CROWN.
    alpha_learning_rate : float
        Adam's learning rate for the slopes.
    batch_size : int
        Samples bounded at once (memory grows with the layer widths squared).
    verbose : bool
        Show a progress bar.

    References
    ----------
    Zhang et al., "Efficient Neural Network Robustness Certification with General Activation
    Functions", NeurIPS 2018. Xu et al., "Fast and Complete: Enabling Complete Neural Network
    Verification with Rapid and Massively Parallel Incomplete Verifiers", ICLR 2021.

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.certification import CrownBounds, IntervalBounds
    >>> g = torch.Generator().manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
    ...                           torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=3, clip_values=(0.0, 1.0))
    >>> x = torch.rand(5, 4, generator=g)
    >>> lo_i, up_i = IntervalBounds(clf).bounds(x, eps=0.05)
    >>> lo_c, up_c = CrownBounds(clf).bounds(x, eps=0.05)
    >>> lo_a, up_a = CrownBounds(clf, alpha=True).bounds(x, eps=0.05)
    >>> bool((up_i - lo_i >= up_c - lo_c - 1e-6).all())
    True
    >>> bool((up_c - lo_c >= up_a - lo_a - 1e-6).all())
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **_Bounds._parameter_constraints,
        "alpha": [Boolean()],
        "alpha_iter": [Interval(int, 1, None)],
        "alpha_learning_rate": [Interval(float, 0, None, closed="neither")],
    }

    def __init__(
        self,
        estimator: Any,
        *,
        alpha: bool = False,
        alpha_iter: int = 20,
        alpha_learning_rate: float = 0.1,
        batch_size: int = 32,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.alpha = alpha
        self.alpha_iter = alpha_iter
        self.alpha_learning_rate = alpha_learning_rate
        self.batch_size = batch_size
        self.verbose = verbose

    def _batch_bounds(
        self, net: BoundNetwork, domain: InputDomain
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return net.crown(
            domain,
            alpha=bool(self.alpha),
            alpha_iter=int(self.alpha_iter),
            alpha_lr=float(self.alpha_learning_rate),
        )


# ---------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerificationResult:
    """Per-sample verdicts of :func:`verify`.

    Attributes
    ----------
    verified : bool array (same kind as ``x``), shape (N,)
        Whether no input of the set changes the prediction away from ``y`` (proved).
    margin_lower : float array (same kind as ``x``), shape (N,)
        A lower bound of ``min_{j != y} (z_y - z_j)`` over the set (> 0 means verified). For
        a misclassified clean sample it is at most the sample's own (non-positive) margin.
    status : numpy array of str, shape (N,)
        ``"verified"``, ``"falsified"`` (a counterexample of the set, checked by a forward pass
        of the model: the clean sample itself when it is misclassified, or the MILP's
        optimum) or ``"unknown"`` (the bounds are too loose, or the MILP timed out).
    counterexample : array (same kind as ``x``), shape (N, *input_shape)
        The counterexample of each falsified sample; NaN rows where none.
    method, eps, norm, seconds
        The method and budget used, and the wall time of the whole call.
    """

    verified: Any
    margin_lower: Any
    status: np.ndarray
    counterexample: Any
    method: str
    eps: Any
    norm: str | int
    seconds: float


_VERIFY_CONSTRAINTS: dict[str, list[Constraint]] = {
    "eps": BUDGET,
    "method": [Options(["ibp", "crown", "alpha-crown", "complete"])],
    "batch_size": BATCH_SIZE,
    "alpha_iter": [Interval(int, 1, None)],
    "alpha_learning_rate": [Interval(float, 0, None, closed="neither")],
    "time_limit": [Interval(float, 0, None, closed="neither"), NONE],
    "verbose": VERBOSE,
}


def _confirm_counterexamples(
    estimator: Any, counter: torch.Tensor, y: torch.Tensor, status: np.ndarray, rows: list[int]
) -> None:
    """Check the MILP's counterexamples with the estimator's own forward pass, in its dtype
    (the program is solved in float64): one that does not change the prediction there is
    dropped, its sample "unknown"."""
    rows = [i for i in rows if status[i] == "falsified"]
    if not rows:
        return
    with torch.no_grad():
        z = estimator.logits(counter[rows])
    z = torch.as_tensor(z).to(counter.device)
    yr = y[rows]
    others = z.scatter(1, yr.unsqueeze(1), float("-inf")).amax(1)
    holds = (torch.gather(z, 1, yr.unsqueeze(1)).squeeze(1) - others) < 0
    for i, ok in zip(rows, holds.tolist(), strict=True):
        if not ok:
            status[i] = "unknown"
            counter[i] = float("nan")


def verify(
    estimator: Any,
    x: Any,
    y: Any = None,
    *,
    eps: Any,
    norm: Any = "inf",
    method: str = "crown",
    time_limit: float | None = None,
    alpha_iter: int = 20,
    alpha_learning_rate: float = 0.1,
    batch_size: int = 32,
    verbose: bool = False,
) -> VerificationResult:
    """Verify that the prediction of each sample is ``y`` everywhere in its input set.

    The input set is the Lp ball of radius ``eps`` around the sample intersected with the
    estimator's ``clip_values``. Incomplete methods bound the margins ``z_y - z_j`` (``"ibp"``:
    :class:`IntervalBounds`; ``"crown"``, ``"alpha-crown"``: :class:`CrownBounds`): a positive
    lower bound proves the sample, otherwise its status is ``"unknown"``. ``"complete"``
    (Linf only) first runs CROWN and skips the samples it proves, then solves for each other
    sample the mixed-integer program of Tjeng et al. (2019) with SciPy's HiGHS, which gives
    the exact answer: ``"verified"``, or ``"falsified"`` with a counterexample checked by a
    forward pass, or ``"unknown"`` when ``time_limit`` (seconds per sample) runs out. Small
    ReLU networks only: the program has one binary variable per unstable ReLU.

    A sample that the model already misclassifies is ``"falsified"`` whatever the method, with
    itself as counterexample and ``margin_lower`` at most its actual margin.

    Parameters
    ----------
    estimator : TorchClassifier
        An estimator with the ``module`` capability.
    x : array-like or torch.Tensor, shape (N, *input_shape)
    y : array-like, shape (N,) or one-hot, optional
        True labels; default the model's predictions.
    eps : float or array-like of shape (N,)
    norm : {"inf", 2}
    method : {"ibp", "crown", "alpha-crown", "complete"}
    time_limit : float, optional
        Seconds per sample for ``"complete"`` (default: no limit).
    alpha_iter, alpha_learning_rate : int, float
        alpha-CROWN's optimisation.
    batch_size : int
    verbose : bool

    Returns
    -------
    VerificationResult

    References
    ----------
    Tjeng, Xiao and Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
    Programming", ICLR 2019.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.certification import verify
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.linspace(-1, 1, 16).reshape(8, 2))
    ...     _ = net[2].weight.copy_(torch.linspace(-1, 1, 16).reshape(2, 8))
    >>> clf = TorchClassifier(net, input_shape=(2,), nb_classes=2, clip_values=(0.0, 1.0))
    >>> x = np.array([[0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
    >>> y = clf.predict(x).argmax(1)
    >>> verify(clf, x, y, eps=0.05, method="crown").status.tolist()
    ['verified', 'verified']
    >>> verify(clf, x, y, eps=0.05, method="complete").verified.tolist()
    [True, True]
    """
    start = time.perf_counter()
    owner = "verify"
    validate_params(
        owner,
        {
            "eps": eps,
            "method": method,
            "batch_size": batch_size,
            "alpha_iter": alpha_iter,
            "alpha_learning_rate": alpha_learning_rate,
            "time_limit": time_limit,
            "verbose": verbose,
        },
        _VERIFY_CONSTRAINTS,
    )
    norm = normalize_norm(norm, owner)
    if method == "complete" and norm == 2:
        raise InvalidParameterError(
            "verify(method='complete') needs norm='inf': the L2 ball is not a polyhedron, so "
            "it has no mixed-integer linear program; use method='crown' or 'alpha-crown' for "
            "norm=2."
        )
    _require_module(estimator, owner)
    xt, kind, e, norm = _checked(estimator, x, eps, norm, owner)
    n = int(xt.shape[0])
    k = int(estimator.nb_classes)
    net = _network(estimator, owner)
    module = net.module

    def forward(rows: torch.Tensor) -> torch.Tensor:
        if len(rows) == 0:
            return torch.empty((0, k), dtype=rows.dtype, device=rows.device)
        with torch.no_grad():
            return torch.cat(
                [net.forward(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
            )

    logits: torch.Tensor | None = None
    if y is None:
        logits = forward(xt)
        yt = logits.argmax(1)
    else:
        y_raw, _ = to_tensor(y, device=xt.device, dtype=None)
        yt = check_labels(y_raw, n=n, nb_classes=k)
    clip = _clip(estimator)
    margin_lower = torch.empty(n, dtype=xt.dtype, device=xt.device)
    rows_lower = torch.empty((n, max(k - 1, 0)), dtype=xt.dtype, device=xt.device)
    inc = {"ibp": "ibp", "crown": "crown", "alpha-crown": "alpha", "complete": "crown"}[method]
    with (
        torch.no_grad(),
        tqdm(total=n, desc=f"verify ({method})", unit="sample", disable=not verbose) as bar,
    ):
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            dom = box_domain(xt[sl], e[sl], norm, clip)
            if inc == "ibp":
                # The IBP bound of z_y - z_j is l_y - u_j.
                lo, up = net.interval(dom)
                lo, up = lo.reshape(lo.shape[0], -1), up.reshape(up.shape[0], -1)
                rivals = competitors(yt[sl], k)
                rl = lo.gather(1, yt[sl].unsqueeze(1)) - up.gather(1, rivals)
            else:
                rl, _ = net.crown(
                    dom,
                    spec=margin_spec(yt[sl], k, dtype=xt.dtype, device=xt.device),
                    alpha=inc == "alpha",
                    alpha_iter=int(alpha_iter),
                    alpha_lr=float(alpha_learning_rate),
                )
            rows_lower[sl] = rl
            bar.update(min(batch_size, n - i))
    margin_lower = (
        rows_lower.min(1).values
        if k > 1
        else torch.full((n,), float("inf"), dtype=xt.dtype, device=xt.device)
    )
    status = np.array(["unknown"] * n, dtype=object)
    status[(margin_lower > 0).cpu().numpy()] = "verified"
    counter = torch.full_like(xt, float("nan"))
    # The clean sample is its own counterexample when the model misclassifies it (a verified
    # sample is classified correctly: it lies in its own ball).
    unsure = (margin_lower <= 0).nonzero().squeeze(1)
    if logits is None:
        rows_logits = forward(xt[unsure])
    else:
        rows_logits = logits[unsure]
    y_unsure = yt[unsure]
    clean = torch.gather(rows_logits, 1, y_unsure.unsqueeze(1)).squeeze(1)
    others = rows_logits.scatter(1, y_unsure.unsqueeze(1), float("-inf"))
    clean_margin = clean - others.amax(1) if k > 1 else torch.full_like(clean, float("inf"))
    wrong_rows = unsure[clean_margin < 0]
    if wrong_rows.numel():
        lowered = torch.minimum(margin_lower[wrong_rows], clean_margin[clean_margin < 0])
        margin_lower = margin_lower.index_put((wrong_rows,), lowered)
        counter[wrong_rows] = xt[wrong_rows]
        status[wrong_rows.cpu().numpy()] = "falsified"
    if method == "complete":
        from bastion.certification._milp import MilpVerifier

        solver = MilpVerifier(module, tuple(estimator.input_shape), owner=owner)
        todo = [i for i in range(n) if status[i] == "unknown"]
        for i in tqdm(todo, desc="verify (MILP)", unit="sample", disable=not verbose):
            res = solver.solve(
                xt[i],
                int(yt[i]),
                float(e[i]),
                clip,
                time_limit=time_limit,
                crown_lower=rows_lower[i],
            )
            status[i] = res.status
            margin_lower[i] = max(float(margin_lower[i]), res.margin_lower)
            if res.counterexample is not None:
                counter[i] = torch.as_tensor(res.counterexample, dtype=xt.dtype)
        _confirm_counterexamples(estimator, counter, yt, status, todo)
    verified = torch.as_tensor(status == "verified", device=xt.device)
    return VerificationResult(
        verified=verified.cpu().numpy() if not kind.is_tensor else verified.to(kind.device),
        margin_lower=kind.restore(margin_lower),
        status=status.astype(str),
        counterexample=kind.restore(counter),
        method=method,
        eps=eps,
        norm=norm,
        seconds=time.perf_counter() - start,
    )
