"""MI-Face model inversion (Fredrikson et al., 2015): a representative input for each class."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import to_tensor
from bastion._validation import BATCH_SIZE, VERBOSE, Interval, check_labels
from bastion.attacks.base import checked_input
from bastion.estimators.base import SupportsClassGradient, require_capabilities
from bastion.exceptions import InputError

__all__ = ["MIFace"]


class MIFace(Parametrized):
    """MI-Face: invert a classifier by gradient descent on ``1 - p_y(x)``.

    Starting from ``x`` (by default the middle of ``clip_values``, or zeros), each step moves
    every input along the gradient of its target class's probability and clips it back into
    ``clip_values`` (the paper's PROCESS step). A sample stops, independently of the others, when
    its cost ``c(x) = 1 - p_y(x)`` falls to ``threshold`` or when the latest cost is not below
    the largest of the ``window_length`` previous ones (no progress); after ``max_iter`` steps
    all stop. Each sample returns the iterate of lowest cost, a representative of its class as
    the model sees it (for a face recogniser, a recognisable face of the person).

    Threat model: white-box (class-score gradients). The returned inputs are "class
    representatives", not training records: the attack recovers what the model associates with a
    class, which leaks training data when a class is one person or one record.

    Parameters
    ----------
    estimator : Classifier
        Needs the ``class_gradient`` capability (gradients of the class scores).
    max_iter : int, default=10000
        At most this many gradient steps (alpha in the paper).
    window_length : int, default=100
        Stop a sample whose cost has not improved on the largest of its last ``window_length``
        costs (beta in the paper).
    threshold : float, default=0.99
        Stop a sample once its cost ``1 - p_y`` is at most ``threshold`` (gamma in the paper).
        The default stops as soon as the class probability reaches 1%; lower it (e.g. 0.01)
        for a confident representative.
    learning_rate : float, default=0.1
        Step size (lambda in the paper).
    batch_size : int, default=128
        Samples inverted together.
    verbose : bool, default=False
        Progress bar over batches.

    Attributes
    ----------
    n_iter_ : numpy.ndarray of int
        Steps taken by each sample in the last :meth:`infer`.
    cost_ : numpy.ndarray of float
        Final (lowest) cost ``1 - p_y`` of each sample.

    References
    ----------
    M. Fredrikson, S. Jha, T. Ristenpart. "Model Inversion Attacks that Exploit Confidence
    Information and Basic Countermeasures." CCS 2015. https://doi.org/10.1145/2810103.2813677

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.attacks.inference.model_inversion import MIFace
    >>> from bastion.datasets import load_digits
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.zoo import MLP, train_classifier
    >>> (x, y), _ = load_digits(size=8)
    >>> model = train_classifier(MLP(64, 10, random_state=0), x, y, epochs=10, random_state=0)
    >>> clf = TorchClassifier(model, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1))
    >>> attack = MIFace(clf, max_iter=200, threshold=0.05, learning_rate=1.0)
    >>> faces = attack.infer(None, np.arange(10))
    >>> bool((clf.predict(faces).argmax(1) == np.arange(10)).all())
    True
    """

    estimator: SupportsClassGradient

    _parameter_constraints = {  # noqa: RUF012
        "max_iter": [Interval(int, 1, None)],
        "window_length": [Interval(int, 1, None)],
        "threshold": [Interval(float, 0, 1)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsClassGradient,
        *,
        max_iter: int = 10000,
        window_length: int = 100,
        threshold: float = 0.99,
        learning_rate: float = 0.1,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.max_iter = max_iter
        self.window_length = window_length
        self.threshold = threshold
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.verbose = verbose

    @classmethod
    def _param_names(cls) -> list[str]:
        return [n for n in super()._param_names() if n != "estimator"]

    def infer(self, x: Any, y: Any) -> Any:
        """Invert the model for the classes ``y``.

        Parameters
        ----------
        x : array-like or torch.Tensor or None
            Starting points ``(N, *input_shape)``; ``None`` starts every sample at the middle of
            ``clip_values`` (zeros without clip values), returned as NumPy.
        y : array-like or torch.Tensor
            Target classes ``(N,)`` (or one-hot).

        Returns
        -------
        x_inverted : same type as ``x`` (NumPy when ``x`` is None)
        """
        self._validate()
        est = self.estimator
        require_capabilities(est, ("class_gradient",), type(self).__name__)
        dtype = getattr(est, "dtype", torch.float32)
        yt, _ = to_tensor(y, device=est.device, dtype=None)
        if yt.ndim == 0:
            raise InputError("y must be a batch of class indices (N,) or one-hot (N, K).")
        if x is None:
            n = yt.shape[0]
            lo, hi = est.clip_values if est.clip_values is not None else (0.0, 0.0)
            xt = torch.full((n, *est.input_shape), (lo + hi) / 2, device=est.device, dtype=dtype)
            _, kind = to_tensor(xt.cpu().numpy())
        else:
            xt, kind = checked_input(est, x)  # the inversion comes back in x's dtype
        yt = check_labels(yt, n=xt.shape[0], nb_classes=est.nb_classes)
        out = torch.empty_like(xt)
        n_iter = torch.zeros(xt.shape[0], dtype=torch.int64)
        cost = torch.zeros(xt.shape[0], dtype=torch.float64)
        bs = self.batch_size
        for i in tqdm(
            range(0, xt.shape[0], bs), desc="MIFace", unit="batch", disable=not self.verbose
        ):
            sl = slice(i, i + bs)
            out[sl], n_iter[sl], cost[sl] = self._invert(xt[sl], yt[sl])
        self.n_iter_ = n_iter.numpy()
        self.cost_ = cost.numpy()
        return kind.restore(out)

    def _invert(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        est, clip = self.estimator, self.estimator.clip_values
        b, w = x.shape[0], self.window_length
        rows = torch.arange(b, device=x.device)
        x = x.clone()
        best_x = x.clone()
        best_cost = torch.full((b,), float("inf"), device=x.device, dtype=torch.float64)
        # Costs of the last ``w`` iterates per sample; +inf until filled, so no sample stops
        # for lack of progress before it has ``w`` previous costs.
        history = torch.full((b, w), float("inf"), device=x.device, dtype=torch.float64)
        steps = torch.zeros(b, dtype=torch.int64, device=x.device)
        active = torch.ones(b, dtype=torch.bool, device=x.device)

        def cost_of(labels: torch.Tensor) -> Any:
            return lambda logits: logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)

        for it in range(self.max_iter + 1):
            idx = rows[active]
            # One forward/backward gives the cost of the current iterate and its gradient.
            grad, prob, _ = est.objective_gradient_tensor(x[idx], cost_of(y[idx]))
            c = 1.0 - prob.to(torch.float64)
            better = c < best_cost[idx]
            best_cost[idx] = torch.where(better, c, best_cost[idx])
            best_x[idx] = torch.where(_expand(better, x), x[idx], best_x[idx])
            no_progress = c >= history[idx].max(dim=1).values
            history[idx] = torch.cat([history[idx, 1:], c[:, None]], dim=1)
            done = (c <= self.threshold) | no_progress | (it == self.max_iter)
            still = idx[~done]
            if still.numel() == 0:
                break
            step = x[still] + self.learning_rate * grad[~done]
            x[still] = step.clamp(*clip) if clip is not None else step
            steps[still] += 1
            active[idx[done]] = False
        return best_x, steps.cpu(), best_cost.cpu()


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))
