"""Training-data reconstruction by an informed adversary (Balle, Cherubin & Hayes, 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bastion._params import Parametrized
from bastion._tensor import to_tensor
from bastion._validation import check_labels, check_x
from bastion.exceptions import EstimatorError, InputError

__all__ = ["DatabaseReconstruction"]


class DatabaseReconstruction(Parametrized):
    """Reconstruct the one training record an informed adversary does not know.

    The adversary holds the released model, trained on ``D ∪ {z}``, and every record of ``D``;
    it recovers the target ``z = (x_t, y_t)`` in closed form from the model's parameters:

    * **GaussianNB**: the class whose sample count exceeds its count in ``D`` by one is
      ``y_t``; its stored mean is ``(sum of its x in D + x_t) / n``, so
      ``x_t = n * theta - sum_D x``. Exact up to floating-point rounding.
    * **LogisticRegression** (L2 penalty, multinomial or binary, with intercept): the fitted
      parameters are a stationary point of ``C * sum_i loss_i + ||W||^2 / 2``. The
      intercept's condition gives the target's residual ``g = p(x_t) - onehot(y_t)`` (the only
      negative entry is its class), and the weights' condition gives
      ``g (x) x_t = -(sum_D (p_i - y_i) (x) x_i + W / C)``, solved for ``x_t`` by least squares
      over the classes. Exact when the solver converged; the error grows with its tolerance.

    This is the paper's white-box informed-adversary attack for convex models, solved in closed
    form instead of by the paper's general optimisation (or ART's refitting of the model inside
    an L-BFGS search), so it runs in milliseconds and is exact.

    Threat model: white-box (model parameters) with knowledge of all training records but one.

    Parameters
    ----------
    estimator : SklearnClassifier or fitted scikit-learn model
        A fitted ``GaussianNB`` or ``LogisticRegression`` (``penalty="l2"``, ``fit_intercept``).

    References
    ----------
    B. Balle, G. Cherubin, J. Hayes. "Reconstructing Training Data with Informed
    Adversaries." IEEE S&P 2022. https://arxiv.org/abs/2201.04845

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.naive_bayes import GaussianNB
    >>> from bastion.attacks.inference.reconstruction import DatabaseReconstruction
    >>> x, y = load_iris(return_X_y=True)
    >>> model = GaussianNB().fit(x, y)  # trained on all rows
    >>> x_t, y_t = DatabaseReconstruction(model).reconstruct(x[1:], y[1:])  # row 0 unknown
    >>> bool(np.allclose(x_t[0], x[0])), int(y_t.argmax())
    (True, 0)
    """

    # A fitted GaussianNB or LogisticRegression, or a SklearnClassifier around one: the attack
    # reads the model's parameters, which no estimator protocol offers.
    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    @classmethod
    def _param_names(cls) -> list[str]:
        return []

    def reconstruct(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Recover the missing training record.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, n_features)
            The known training records (all but the target).
        y : array-like or torch.Tensor, shape (N,)
            Their labels, as indices ``0 .. K-1`` in the order of the model's ``classes_``.

        Returns
        -------
        x_target : shape (1, n_features), same type as ``x``
        y_target : one-hot, shape (1, K), same type as ``x``

        Raises
        ------
        EstimatorError
            Unless the model is a fitted GaussianNB or LogisticRegression.
        InputError
            For records that are not a non-empty, finite, numeric ``(N, n_features)`` array,
            labels outside the model's classes or of the wrong number, or records that are
            not the training set minus one.
        """
        model = getattr(self.estimator, "model", self.estimator)
        name = type(model).__name__
        if name not in ("GaussianNB", "LogisticRegression") or not hasattr(model, "classes_"):
            raise EstimatorError(
                f"{type(self).__name__} reconstructs from the parameters of a fitted GaussianNB "
                f"or LogisticRegression (or a SklearnClassifier around one); got {name}."
            )
        is_tensor = isinstance(x, torch.Tensor)
        xt, _ = to_tensor(x, dtype=torch.float64)
        n_features = int(getattr(model, "n_features_in_", xt.shape[-1] if xt.ndim else 0))
        if xt.ndim != 2:
            raise InputError(f"x must have shape (N, {n_features}); got {tuple(xt.shape)}.")
        check_x(xt, input_shape=(n_features,), clip_values=None)
        xa = xt.cpu().numpy()
        k = len(model.classes_)
        yt, _ = to_tensor(y, dtype=None)
        ya_np = check_labels(yt.cpu(), n=xa.shape[0], nb_classes=k).numpy()
        if name == "GaussianNB":
            x_t, y_t = self._gaussian_nb(model, xa, ya_np)
        else:
            x_t, y_t = self._logistic_regression(model, xa, ya_np)
        onehot = np.zeros((1, k))
        onehot[0, y_t] = 1.0
        x_out = x_t[None, :]
        if is_tensor:
            return (
                torch.as_tensor(x_out, dtype=x.dtype, device=x.device),
                torch.as_tensor(onehot, dtype=x.dtype, device=x.device),
            )
        return x_out, onehot

    @staticmethod
    def _gaussian_nb(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
        k = len(model.classes_)
        extra = np.rint(model.class_count_).astype(np.int64) - np.bincount(y, minlength=k)
        if sorted(extra.tolist()) != [0] * (k - 1) + [1]:
            raise InputError(
                "The known records must be the model's training set minus exactly one record: "
                f"per-class count differences are {extra.tolist()}."
            )
        c = int(np.argmax(extra))
        n_c = model.class_count_[c]
        return n_c * model.theta_[c] - x[y == c].sum(axis=0), c

    @staticmethod
    def _logistic_regression(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
        if getattr(model, "penalty", "l2") not in ("l2", "deprecated") or not model.fit_intercept:
            raise EstimatorError(
                "DatabaseReconstruction needs LogisticRegression(penalty='l2', fit_intercept=True)."
            )
        if getattr(model, "l1_ratio", None) not in (None, 0, 0.0):
            raise EstimatorError("DatabaseReconstruction needs a pure L2 penalty (l1_ratio=0).")
        w, b, k = model.coef_, model.intercept_, len(model.classes_)
        z = x @ w.T + b
        if w.shape[0] == 1:  # binary: one sigmoid score
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            res = (p - (y == 1))[:, None]
        else:
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            res = p - np.eye(k)[y]
        # Stationarity: C * (sum_D res_i x_i + g x_t) + W = 0 and sum_D res_i + g = 0.
        g = -res.sum(axis=0)
        r = -(res.T @ x + w / model.C)
        x_t = (g @ r) / (g @ g)
        if w.shape[0] == 1:
            y_t = 1 if g[0] < 0 else 0
        else:
            y_t = int(np.argmin(g))
        return x_t, y_t
