"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019): CERTIFY and PREDICT by Monte Carlo.

The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` of any base classifier
``f`` (only its predictions are used: a black box is fine) is robust within the L2 radius
``sigma * Phi^-1(p_A)`` around ``x`` whenever the top class has probability ``p_A > 1/2`` under
the noise. The two procedures of the paper estimate it from noisy samples, with a failure
probability ``alpha`` each.

Noise streams: each sample draws its noise, phase by phase (``"selection"``,
``"estimation"``, ``"prediction"``), from its own generator seeded from ``(random_state, a hash
of the sample's values, phase, block)`` in blocks of ``min(1024, draws)`` draws, so the noise
a sample sees depends neither on ``batch_size`` nor on the other samples of the call nor on
its position in the batch; a forward pass packs the noisy copies of as many samples as fit in
``batch_size``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    RANDOM_STATE,
    VERBOSE,
    Boolean,
    Constraint,
    Interval,
    check_x,
    invalid_parameter,
    validate_params,
)
from bastion.defenses.training.adversarial._inner import derive_seed
from bastion.estimators.base import SupportsPredict, require_capabilities
from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["RandomizedSmoothing", "clopper_pearson_lower", "smoothing_radius"]

#: Draws per noise block of one sample's stream (fewer when fewer are needed): the unit the
#: seeds are derived for.
_BLOCK = 1024

#: The label of an abstention.
ABSTAIN = -1


def clopper_pearson_lower(successes: Any, trials: int, alpha: float) -> np.ndarray:
    """The one-sided Clopper-Pearson lower confidence bound on a binomial proportion.

    ``P(p >= bound) >= 1 - alpha``: the ``alpha`` quantile of ``Beta(k, n - k + 1)`` (0 for
    ``k = 0``), the lower end of the two-sided exact interval at level ``1 - 2 alpha``
    (SciPy's ``binomtest(k, n).proportion_ci(1 - 2 * alpha, method="exact").low``).

    Parameters
    ----------
    successes : int or array of int
        ``k``, in ``[0, trials]``.
    trials : int
        ``n >= 1``.
    alpha : float
        In ``(0, 1)``.

    Returns
    -------
    numpy.ndarray of float64
    """
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        from scipy import stats  # imported when used: scipy.stats takes 0.5 s to import

        low = stats.beta.ppf(alpha, k, trials - k + 1)
    return np.where(k > 0, low, 0.0)


def smoothing_radius(p_lower: Any, sigma: float) -> np.ndarray:
    """``sigma * Phi^-1(p_lower)``: the certified L2 radius of Cohen et al.'s Theorem 1 (with
    ``p_B = 1 - p_A``), 0 where ``p_lower <= 1/2``."""
    p = np.asarray(p_lower, dtype=np.float64)
    from scipy import stats

    return np.where(p > 0.5, sigma * stats.norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)


class _NoiseStreams:
    """``sigma * N(0, I)`` noise for each sample of a call, drawn in seeded blocks."""

    def __init__(
        self,
        base_seed: int,
        keys: list[str],
        phase: str,
        shape: tuple[int, ...],
        sigma: float,
        device: torch.device,
        dtype: torch.dtype,
        block: int,
    ) -> None:
        self.base_seed, self.keys, self.phase, self.shape = base_seed, keys, phase, shape
        self.block = block
        self.sigma, self.device, self.dtype = sigma, device, dtype
        self.gen = torch.Generator(device=device)
        # Per sample: (next block index, leftover draws of the current block).
        self.state: dict[int, tuple[int, torch.Tensor | None]] = {}

    def _block(self, i: int, b: int) -> torch.Tensor:
        seed = derive_seed(self.base_seed, "smoothing", self.phase, self.keys[i], b)
        self.gen.manual_seed(seed)
        noise = torch.randn(
            (self.block, *self.shape), generator=self.gen, device=self.device, dtype=self.dtype
        )
        return noise.mul_(self.sigma)

    def take(self, i: int, m: int) -> torch.Tensor:
        """The next ``m`` draws of sample ``i``'s stream."""
        b, left = self.state.get(i, (0, None))
        parts: list[torch.Tensor] = []
        need = m
        while need > 0:
            if left is None or left.shape[0] == 0:
                left, b = self._block(i, b), b + 1
            parts.append(left[:need])
            need -= parts[-1].shape[0]
            left = left[parts[-1].shape[0] :]
        self.state[i] = (b, left)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def drop_before(self, i: int) -> None:
        """Forget the streams of the samples before ``i`` (all their draws are taken)."""
        for j in [j for j in self.state if j < i]:
            del self.state[j]


def _sample_keys(x: torch.Tensor) -> list[str]:
    """A digest of each sample's values (as computed: the estimator's dtype), which seeds its
    noise: the same sample gets the same noise wherever it sits in a batch."""
    rows = x.detach().cpu().contiguous().reshape(x.shape[0], -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in rows]


def _chunks(n_samples: int, num: int, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Forward batches of ``batch_size`` noisy copies: lists of ``(sample, copies)``, in sample
    order, ``num`` copies per sample in all."""
    chunk: list[tuple[int, int]] = []
    room = batch_size
    for i in range(n_samples):
        left = num
        while left > 0:
            m = min(left, room)
            chunk.append((i, m))
            left -= m
            room -= m
            if room == 0:
                yield chunk
                chunk, room = [], batch_size
    if chunk:
        yield chunk


class RandomizedSmoothing(Parametrized):
    """Randomized smoothing (Cohen et al. 2019): certify and predict with the Gaussian-smoothed
    version of a classifier.

    The smoothed classifier returns the class the base classifier most likely predicts under
    isotropic Gaussian noise ``N(0, sigma^2 I)``. If that class has probability at least
    ``p_A > 1/2``, no L2 perturbation smaller than ``sigma * Phi^-1(p_A)`` changes the smoothed
    prediction (Theorem 1, with ``p_B = 1 - p_A``). Only the base classifier's predictions are
    used (the top class of ``predict``), so any estimator works, a black box included; every
    noisy copy counts in its ``query_count``.

    :meth:`certify` is the paper's CERTIFY: ``n0`` noisy samples select the top class ``c_A``,
    ``n`` fresh ones count it (``n_A``), ``p_A``'s one-sided Clopper-Pearson lower bound at
    level ``1 - alpha`` gives the radius ``sigma * Phi^-1(p_A)``, and the procedure abstains
    (class -1, radius 0) when that bound is below 1/2. With probability at least ``1 - alpha``
    a returned class is the smoothed classifier's and the radius holds.

    :meth:`predict` is the paper's PREDICT: the top two counts ``n_A, n_B`` of ``n`` noisy
    samples; it abstains unless the two-sided binomial test of ``n_A`` out of ``n_A + n_B`` at
    1/2 rejects at level ``alpha`` (``scipy.stats.binomtest``); a returned class differs from
    the smoothed classifier's with probability at most ``alpha``.

    Clipping: the noise is added to ``x`` and **not** clipped to the estimator's
    ``clip_values`` (``clip_noisy=False``, as in the paper, whose theorem concerns the base
    classifier on all of ``R^d``). ``clip_noisy=True`` clamps each noisy copy to
    ``clip_values`` before the base classifier: clamping is a deterministic map, so this
    certifies the composed classifier ``f(clip(.))`` and the guarantee holds just as well; it
    only changes which base classifier is smoothed (use it when the model was trained on
    clipped noise or breaks outside its input range).

    Randomness: each sample draws its noise from its own streams, seeded from
    ``random_state`` (an int; a generator or ``None`` gives one base seed per call), a hash of
    the sample's values and the phase (selection, estimation, prediction): results are
    deterministic for an int ``random_state``, and a sample's result depends neither on
    ``batch_size`` nor on the other samples of ``x`` (two equal samples get equal results).

    Parameters
    ----------
    estimator : estimator with ``predict``
        The base classifier ``f``.
    sigma : float, default 0.25
        The noise level (> 0), in the units of the estimator's inputs.
    clip_noisy : bool, default False
        Clamp the noisy copies to ``clip_values`` (see above).
    random_state : None, int or torch.Generator, default None
    verbose : bool, default False
        A progress bar over the noisy samples.

    References
    ----------
    Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019. https://arxiv.org/abs/1902.02918

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.certification import RandomizedSmoothing
    >>> from bastion.estimators import BlackBoxClassifier
    >>> def first_feature(x):  # class 1 where the first feature is positive
    ...     x = np.asarray(x).reshape(len(x), -1)
    ...     return np.stack([x[:, 0] <= 0, x[:, 0] > 0], 1).astype(np.float32)
    >>> clf = BlackBoxClassifier(first_feature, input_shape=(2,), nb_classes=2)
    >>> rs = RandomizedSmoothing(clf, sigma=0.5, random_state=0)
    >>> x = np.array([[2.0, 0.0], [-2.0, 0.0]], dtype=np.float32)
    >>> pred, radius = rs.certify(x, n0=100, n=2000, alpha=0.001)
    >>> pred.tolist()
    [1, 0]
    >>> bool(1.3 < radius[0] < 2.0)  # the exact radius is 2 (the distance to the boundary)
    True
    """

    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "sigma": [Interval(float, 0, None, closed="neither")],
        "clip_noisy": [Boolean()],
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        sigma: float = 0.25,
        clip_noisy: bool = False,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.sigma = sigma
        self.clip_noisy = clip_noisy
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks

    def _setup(self, x: Any) -> tuple[torch.Tensor, Any, int]:
        name = type(self).__name__
        self._validate()
        require_capabilities(self.estimator, ["predict"], name)
        est = self.estimator
        if self.clip_noisy and est.clip_values is None:
            raise InvalidParameterError(
                f"The 'clip_noisy' parameter of {name} needs an estimator with clip_values; "
                "this one has none. Got clip_noisy=True instead."
            )
        t, kind = to_tensor(x, device=est.device, dtype=None)
        check_x(t, input_shape=tuple(est.input_shape), clip_values=est.clip_values)
        t = t.to(est.dtype)
        if isinstance(self.random_state, int):
            base = int(self.random_state)
        else:
            gen = resolve_random_state(self.random_state, "cpu")
            base = int(torch.randint(0, 2**62, (1,), generator=gen))
        return t, kind, base

    @staticmethod
    def _check_call(method: str, **values: Any) -> None:
        owner = f"RandomizedSmoothing.{method}"
        validate_params(
            owner,
            values,
            {
                "n0": [Interval(int, 1, None)],
                "n": [Interval(int, 1, None)],
                "alpha": [Interval(float, 0, 1, closed="neither")],
                "batch_size": BATCH_SIZE,
            },
        )
        if "n0" in values and values["n0"] > values["n"]:
            raise invalid_parameter(
                "n0",
                owner,
                f"an int in [1, n] (n={values['n']}): the selection sample is the small one",
                values["n0"],
            )

    # ------------------------------------------------------------------ Monte Carlo

    def _counts(
        self,
        x: torch.Tensor,
        num: int,
        phase: str,
        base_seed: int,
        batch_size: int,
        bar: Any,
    ) -> torch.Tensor:
        """``(N, nb_classes)`` counts of the base classifier's top class over ``num`` noisy
        copies of each sample."""
        est = self.estimator
        n_samples, k = int(x.shape[0]), int(est.nb_classes)
        streams = _NoiseStreams(
            base_seed,
            _sample_keys(x),
            phase,
            tuple(x.shape[1:]),
            float(self.sigma),
            x.device,
            x.dtype,
            min(_BLOCK, num),
        )
        clip = est.clip_values if self.clip_noisy else None
        counts = torch.zeros(n_samples * k, dtype=torch.int64, device=x.device)
        with torch.no_grad():
            for chunk in _chunks(n_samples, num, batch_size):
                rows = torch.cat(
                    [torch.full((m,), i, dtype=torch.int64, device=x.device) for i, m in chunk]
                )
                noisy = x[rows] + torch.cat([streams.take(i, m) for i, m in chunk])
                if clip is not None:
                    noisy.clamp_(float(clip[0]), float(clip[1]))
                top = self._base_predict(noisy).argmax(dim=1)
                counts += torch.bincount(rows * k + top, minlength=n_samples * k)
                streams.drop_before(chunk[-1][0])
                bar.update(int(rows.shape[0]))
        return counts.view(n_samples, k)

    def _base_predict(self, noisy: torch.Tensor) -> torch.Tensor:
        try:
            return self.estimator.predict_tensor(noisy)
        except InputError as err:
            if self.clip_noisy or self.estimator.clip_values is None:
                raise
            raise InputError(
                f"{type(self).__name__}: the base classifier rejected the noisy copies ({err}). "
                "Gaussian noise leaves clip_values; pass clip_noisy=True to clamp the noisy "
                "copies to clip_values before the base classifier (the certificate then holds "
                "for the clamped classifier)."
            ) from err

    def _bar(self, total: int, what: str) -> Any:
        return tqdm(total=total, desc=f"{type(self).__name__} {what}", disable=not self.verbose)

    # ------------------------------------------------------------------ CERTIFY

    def certify(
        self,
        x: Any,
        *,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
    ) -> tuple[Any, Any]:
        """Cohen et al.'s CERTIFY: the smoothed prediction and its certified L2 radius.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            Inside the estimator's ``clip_values`` (the noisy copies need not be).
        n0 : int, default 100
            Noisy samples that select the top class (in ``[1, n]``).
        n : int, default 10000
            Fresh noisy samples that estimate its probability (the paper uses 100,000).
        alpha : float, default 0.001
            Failure probability, in ``(0, 1)``.
        batch_size : int, default 1000
            Noisy copies per forward pass (copies of several samples share a pass).

        Returns
        -------
        prediction : same kind as ``x``, int64, shape (N,)
            The certified class, or -1 (abstain).
        radius : same kind and floating dtype as ``x``, shape (N,)
            The certified L2 radius (0 where abstaining; exactly 0 also when ``p_A``'s bound
            is 1/2), computed in float64.
        """
        self._check_call("certify", n0=n0, n=n, alpha=alpha, batch_size=batch_size)
        t, kind, base = self._setup(x)
        with self._bar(t.shape[0] * (n0 + n), "certify") as bar:
            c_a = self._counts(t, n0, "selection", base, batch_size, bar).argmax(dim=1)
            counts = self._counts(t, n, "estimation", base, batch_size, bar)
        n_a = counts.gather(1, c_a[:, None])[:, 0].cpu().numpy()
        p_lower = clopper_pearson_lower(n_a, n, float(alpha))
        certified = p_lower >= 0.5
        radius = np.where(certified, smoothing_radius(p_lower, float(self.sigma)), 0.0)
        pred = torch.where(
            torch.as_tensor(certified, device=c_a.device), c_a, torch.full_like(c_a, ABSTAIN)
        )
        radius_t = torch.as_tensor(radius, dtype=torch.float64)
        return kind.restore(pred, keep_dtype=True), kind.restore(radius_t)

    # ------------------------------------------------------------------ PREDICT

    def predict(
        self, x: Any, *, n: int = 1000, alpha: float = 0.001, batch_size: int = 1000
    ) -> Any:
        """Cohen et al.'s PREDICT: the smoothed classifier's class, or -1 (abstain).

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
        n : int, default 1000
            Noisy samples per input.
        alpha : float, default 0.001
            The probability of returning a class other than the smoothed classifier's is at
            most ``alpha``.
        batch_size : int, default 1000
            Noisy copies per forward pass.

        Returns
        -------
        prediction : same kind as ``x``, int64, shape (N,)
        """
        self._check_call("predict", n=n, alpha=alpha, batch_size=batch_size)
        t, kind, base = self._setup(x)
        with self._bar(t.shape[0] * n, "predict") as bar:
            counts = self._counts(t, n, "prediction", base, batch_size, bar)
        if counts.shape[1] == 1:
            return kind.restore(torch.zeros_like(counts[:, 0]), keep_dtype=True)
        from scipy.stats import binomtest  # imported when used (0.5 s)

        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values.cpu().numpy().T
        pred = top2.indices[:, 0].clone()
        for i, (a, b) in enumerate(zip(n_a.tolist(), n_b.tolist(), strict=True)):
            if binomtest(a, a + b, 0.5).pvalue > alpha:
                pred[i] = ABSTAIN
        return kind.restore(pred, keep_dtype=True)

    def noisy_counts(self, x: Any, *, n: int = 1000, batch_size: int = 1000) -> Any:
        """The base classifier's top-class counts over ``n`` noisy copies of each sample,
        shape ``(N, nb_classes)``, int64: the counts :meth:`predict` tests (the same noise
        for the same ``random_state``).

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
        n : int, default 1000
        batch_size : int, default 1000

        Returns
        -------
        counts : same kind as ``x``
        """
        self._check_call("noisy_counts", n=n, batch_size=batch_size)
        t, kind, base = self._setup(x)
        with self._bar(t.shape[0] * n, "counts") as bar:
            counts = self._counts(t, n, "prediction", base, batch_size, bar)
        return kind.restore(counts, keep_dtype=True)
