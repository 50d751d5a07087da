"""Poisoning attack against support vector machines (Biggio, Nelson and Laskov, 2012).

Attack points are moved by gradient ascent on the SVM's hinge loss over a validation set. The
gradient of that loss with respect to an attack point goes through the retrained SVM: the KKT
conditions of the margin support vectors stay satisfied while the point moves, which gives the
derivatives of the dual coefficients and bias in closed form (an implicit gradient).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._tensor import RandomStateLike
from bastion._validation import (
    NONE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Satisfies,
    invalid_parameter,
)
from bastion.attacks.poisoning._base import _CLIP, PoisoningAttack
from bastion.exceptions import EstimatorError, InputError

__all__ = ["SVMPoisoning"]

_KERNELS = ("linear", "rbf")


def _svc_of(learner: Any) -> Any:
    """``learner`` if it is a scikit-learn SVC (the learning algorithm the attack retrains)."""
    from sklearn.svm import SVC

    if isinstance(learner, SVC):
        return learner
    hint = (
        " A bastion estimator hides the SVC's dual coefficients the attack needs: pass the "
        "scikit-learn SVC itself (it is cloned, never modified)."
        if hasattr(learner, "capabilities")
        else ""
    )
    raise EstimatorError(
        f"SVMPoisoning needs a scikit-learn SVC, got {type(learner).__name__}.{hint}"
    )


def _kernel(a: torch.Tensor, b: torch.Tensor, kind: str, gamma: float) -> torch.Tensor:
    if kind == "linear":
        return a @ b.T
    return torch.exp(-gamma * torch.cdist(a, b).pow(2))


def _kernel_grad(x: torch.Tensor, u: torch.Tensor, kind: str, gamma: float) -> torch.Tensor:
    """d K(x_i, u) / du for every row x_i: shape (n, d)."""
    if kind == "linear":
        return x
    k = _kernel(x, u.unsqueeze(0), kind, gamma)  # (n, 1)
    return 2.0 * gamma * k * (x - u)


class SVMPoisoning(PoisoningAttack):
    """Biggio et al. poisoning of an SVM: gradient ascent on the validation hinge loss.

    Each attack point starts as a copy of a randomly chosen training point **with its label
    flipped** and *replaces* that point in the training set. The point ``u`` is then moved by
    steps of fixed length, ``u <- proj_box(u + eps_step * g / ||g||)``, where ``g`` is the
    gradient of the validation hinge loss ``L(u) = sum_k max(0, 1 - y_k f_u(x_k))`` of the SVC
    retrained with ``u``. The gradient follows the paper: with ``S`` the margin support
    vectors (``0 < alpha < C``), the KKT conditions give the derivatives of their dual
    coefficients and of the bias by solving

    ``[[0, y_S^T], [y_S, Q_SS]] [db/du; dalpha_S/du] = -[0; alpha_c dQ_Sc/du]``,

    and ``dL/du = -sum_{k: g_k < 0} (Q_kS dalpha_S/du + alpha_c dQ_kc/du + y_k db/du)``. The
    SVC is retrained after every step; a point stops when its step raises ``L`` by less than
    ``tol`` (the best point visited is kept). Several attack points are optimised one after
    the other, each in the training set poisoned by the previous ones.

    Threat model: data poisoning (the adversary inserts labelled points in the training set)
    with knowledge of the learning algorithm, of the training data and of a validation set
    drawn from the same distribution. Binary classification; linear and RBF kernels.

    ``poison(x, y)`` takes feature vectors ``(N, d)`` (inside ``clip_values`` where given) and
    labels of exactly two distinct values, of any numeric type (kept in ``y_p``).

    Parameters
    ----------
    estimator : sklearn.svm.SVC
        The learning algorithm (its hyper-parameters ``C``, ``kernel``, ``gamma``), fitted or
        not: retrained copies are made, the SVC itself is not modified. The attack needs the
        dual coefficients of every retrained SVC, which no estimator protocol exposes, so it
        takes the scikit-learn model itself rather than a bastion estimator.
    x_val : array-like, shape (M, d)
        Validation samples used by the attacker.
    y_val : array-like, shape (M,)
        Their labels (the same two values as the training labels).
    nb_points : int, default=1
        Number of attack points.
    eps_step : float, default=0.1
        Length of each step (Euclidean).
    max_iter : int, default=50
        Maximum steps per attack point.
    tol : float, default=1e-4
        Stop when a step increases the validation loss by less than this.
    clip_values : (float, float) or None, default=None
        Box the attack points stay in, and the training data must lie in; ``None``: the
        range of the training data.
    random_state : None, int or torch.Generator, default=None
        Chooses the training points the attack points start from.
    verbose : bool, default=False

    Attributes
    ----------
    poison_indices_ : numpy.ndarray of int
        Training points replaced by attack points.
    loss_history_ : list of list of float
        Validation hinge loss along the optimisation of each attack point.
    classes_ : numpy.ndarray
        The two label values, sorted; ``classes_[1]`` is the SVC's positive class.

    References
    ----------
    B. Biggio, B. Nelson, P. Laskov. "Poisoning Attacks against Support Vector Machines."
    ICML 2012. https://arxiv.org/abs/1206.6389

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.svm import SVC
    >>> from bastion.attacks.poisoning.svm import SVMPoisoning
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(-1, 1, (20, 2)), rng.normal(1, 1, (20, 2))]
    >>> y = np.repeat([0, 1], 20)
    >>> attack = SVMPoisoning(SVC(kernel="linear"), x_val=x, y_val=y, nb_points=2,
    ...                       eps_step=0.5, random_state=0)
    >>> x_p, y_p, mask = attack.poison(x, y)
    >>> int(mask.sum()), bool((y_p[mask] != y[mask]).all())
    (2, True)
    >>> attack.loss_history_[0][-1] >= attack.loss_history_[0][0]
    True
    """

    _renamed: ClassVar[dict[str, Any]] = {"step_size": "eps_step"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "x_val": [Satisfies(lambda v: np.asarray(v).ndim == 2, "a 2-d array (M, d)")],
        "y_val": [Satisfies(lambda v: np.asarray(v).ndim == 1, "a 1-d array (M,)")],
        "nb_points": [Interval(int, 1, None)],
        "eps_step": [Interval(float, 0, None, closed="neither")],
        "max_iter": [Interval(int, 0, None)],
        "tol": [Interval(float, 0, None)],
        "clip_values": [NONE, *_CLIP],
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _sample_ndim = 1  # feature vectors (N, d)

    def __init__(
        self,
        estimator: Any,  # a scikit-learn SVC: no estimator protocol exposes its dual
        *,
        x_val: Any,
        y_val: Any,
        nb_points: int = 1,
        eps_step: float = 0.1,
        max_iter: int = 50,
        tol: float = 1e-4,
        clip_values: tuple[float, float] | None = None,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.x_val = x_val
        self.y_val = y_val
        self.nb_points = nb_points
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.tol = tol
        self.clip_values = clip_values
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ helpers

    def _learner(self, x: np.ndarray) -> tuple[Any, str, float]:
        from sklearn.base import clone

        svc = _svc_of(self.estimator)
        kind = svc.kernel
        if kind not in _KERNELS:
            raise EstimatorError(
                f"SVMPoisoning supports the kernels {_KERNELS}; the SVC uses {kind!r}."
            )
        gamma = svc.gamma
        if gamma == "scale":
            var = float(x.var())
            gamma = 1.0 / (x.shape[1] * var) if var > 0 else 1.0
        elif gamma == "auto":
            gamma = 1.0 / x.shape[1]
        # gamma is fixed once, so that it does not move with the attack point.
        return clone(svc).set_params(gamma=float(gamma)), kind, float(gamma)

    def _fit(self, learner: Any, x: np.ndarray, s: np.ndarray) -> Any:
        from sklearn.base import clone

        return clone(learner).fit(x, s)

    @staticmethod
    def _val_loss(svc: Any, xv: np.ndarray, sv: np.ndarray) -> float:
        return float(np.maximum(0.0, 1.0 - sv * svc.decision_function(xv)).sum())

    def _gradient(
        self,
        svc: Any,
        x: torch.Tensor,
        s: torch.Tensor,
        c: int,
        xv: torch.Tensor,
        sv: torch.Tensor,
        kind: str,
        gamma: float,
    ) -> torch.Tensor:
        """Implicit gradient of the validation hinge loss w.r.t. training point ``c``."""
        C = float(svc.C)
        alpha = torch.zeros(x.shape[0], dtype=x.dtype)
        support = torch.as_tensor(svc.support_, dtype=torch.long)
        alpha[support] = torch.as_tensor(np.abs(svc.dual_coef_[0]), dtype=x.dtype)
        alpha_c = float(alpha[c])
        if alpha_c <= 0:
            return torch.zeros(x.shape[1], dtype=x.dtype)
        u = x[c]
        eps = 1e-6 * C
        margin = torch.nonzero((alpha > eps) & (alpha < C - eps)).flatten()
        margin = margin[margin != c]
        b = torch.as_tensor(svc.intercept_, dtype=x.dtype)[0]
        k_vt = _kernel(xv, x, kind, gamma)  # (M, N)
        f_val = k_vt @ (alpha * s) + b
        viol = (sv * f_val - 1.0) < 0
        if not bool(viol.any()):
            return torch.zeros(x.shape[1], dtype=x.dtype)
        dk_val = _kernel_grad(xv[viol], u, kind, gamma)  # (V, d)
        y_v, y_c = sv[viol], s[c]
        grad_g = alpha_c * (y_v * y_c).unsqueeze(1) * dk_val  # alpha_c dQ_kc/du
        if margin.numel():
            xs, ys = x[margin], s[margin]
            q_ss = ys.unsqueeze(1) * ys.unsqueeze(0) * _kernel(xs, xs, kind, gamma)
            m = torch.zeros(margin.numel() + 1, margin.numel() + 1, dtype=x.dtype)
            m[0, 1:], m[1:, 0], m[1:, 1:] = ys, ys, q_ss
            rhs = torch.zeros(margin.numel() + 1, x.shape[1], dtype=x.dtype)
            rhs[1:] = -alpha_c * (ys * y_c).unsqueeze(1) * _kernel_grad(xs, u, kind, gamma)
            sol = torch.linalg.lstsq(m, rhs).solution
            db, dalpha = sol[0], sol[1:]
            q_vs = y_v.unsqueeze(1) * ys.unsqueeze(0) * k_vt[viol][:, margin]
            grad_g = grad_g + q_vs @ dalpha + y_v.unsqueeze(1) * db
        return -grad_g.sum(dim=0)

    # ------------------------------------------------------------------ attack

    def _bounds(self) -> tuple[None, tuple[float, float] | None]:
        return None, self.clip_values

    def _encode_labels(self, y: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
        """Codes 0 / 1 for the two label values (1: ``classes_[1]``, sklearn's positive
        class)."""
        name = type(self).__name__
        if y.ndim != 1 or y.shape[0] != n:
            raise InputError(f"{name}: y must be labels (N,) matching x; got {tuple(y.shape)}.")
        classes, codes = torch.unique(y.cpu(), return_inverse=True)
        if classes.numel() != 2:
            raise InputError(f"{name}: y must hold exactly two classes; got {classes.tolist()}.")
        self.classes_ = classes.numpy()
        return codes.to(torch.int64), 2

    def _decode_labels(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.classes_)[codes]

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        x_np = x.detach().cpu().double().numpy()
        xv = np.asarray(self.x_val, dtype=np.float64)
        yv = np.asarray(self.y_val)
        if xv.shape[1] != x_np.shape[1] or yv.shape[0] != xv.shape[0]:
            raise invalid_parameter(
                "x_val",
                name,
                f"a validation set (M, {x_np.shape[1]}) with the features of x and one row per "
                "label of y_val",
                f"shape {xv.shape}",
            )
        if not np.isin(yv, self.classes_).all():
            raise invalid_parameter(
                "y_val",
                name,
                f"labels in {self.classes_.tolist()} (the two values of y)",
                np.unique(yv).tolist(),
            )
        if self.nb_points > x_np.shape[0]:
            raise invalid_parameter(
                "nb_points", name, f"an int in [1, {x_np.shape[0]}]", self.nb_points
            )
        lo, hi = self.clip_values if self.clip_values is not None else (x_np.min(), x_np.max())
        learner, kern, gamma = self._learner(x_np)
        # Signs: +1 for the class sklearn treats as positive (classes_[1]).
        s_np = 2.0 * y.double().numpy() - 1.0
        sv_np = np.where(yv == self.classes_[1], 1.0, -1.0)
        xv_t, sv_t = torch.from_numpy(xv), torch.from_numpy(sv_np)
        order = torch.randperm(x_np.shape[0], generator=generator)[: self.nb_points]
        chosen = torch.sort(order).values.numpy()
        x_cur, s_cur = x_np.copy(), s_np.copy()
        self.loss_history_ = []
        for c in tqdm(chosen.tolist(), desc=name, disable=not self.verbose):
            s_cur[c] = -s_cur[c]  # clone of a training point, label flipped
            svc = self._fit(learner, x_cur, s_cur)
            loss = self._val_loss(svc, xv, sv_np)
            history = [loss]
            for _ in range(self.max_iter):
                g = self._gradient(
                    svc,
                    torch.from_numpy(x_cur),
                    torch.from_numpy(s_cur),
                    c,
                    xv_t,
                    sv_t,
                    kern,
                    gamma,
                )
                norm = float(g.norm())
                if norm == 0 or not math.isfinite(norm):
                    break
                old = x_cur[c].copy()
                x_cur[c] = np.clip(old + self.eps_step * g.numpy() / norm, lo, hi)
                svc_new = self._fit(learner, x_cur, s_cur)
                new = self._val_loss(svc_new, xv, sv_np)
                if new - loss < self.tol:
                    if new < loss:
                        x_cur[c] = old  # keep the best point visited
                    else:
                        history.append(new)
                    break
                svc, loss = svc_new, new
                history.append(new)
            self.loss_history_.append(history)
        idx = torch.from_numpy(chosen)
        return idx, torch.from_numpy(x_cur[chosen]), torch.from_numpy(s_cur[chosen] > 0).long()
