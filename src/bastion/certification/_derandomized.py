"""Derandomized smoothing against adversarial patches (Levine and Feizi 2020)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from bastion._params import Parametrized
from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Options,
    check_labels,
    check_x,
    invalid_parameter,
    validate_params,
)
from bastion.estimators.base import require_capabilities
from bastion.exceptions import InputError, InvalidParameterError

__all__ = ["DerandomizedSmoothing"]


class DerandomizedSmoothing(Parametrized):
    """Certified defence against square adversarial patches by structured ablation.

    Levine and Feizi, "(De)Randomized Smoothing for Certifiable Defense against Patch
    Attacks", NeurIPS 2020 (https://arxiv.org/abs/2002.10733).

    The base classifier sees only a small part of the image at a time: a band of
    ``ablation_size`` adjacent columns (``ablation="column"``) or an ``ablation_size x
    ablation_size`` block (``ablation="block"``), every other pixel being ablated. The
    smoothed classifier evaluates *every* ablation position (deterministically, hence
    "derandomized"): the ``W`` column bands starting at columns ``0 .. W-1``, or the ``H * W``
    blocks with top-left corners at every pixel, both wrapping around the image borders. An
    ablation votes for each class whose probability (the estimator's ``predict``) exceeds
    ``threshold`` (the paper's theta: an ablation may vote for several classes or none); the
    smoothed prediction is the class with the most votes, ties going to the smallest class
    index.

    **Certificate.** An ``m x m`` patch anywhere in the image touches at most
    ``Delta = m + s - 1`` column bands of width ``s`` (``(m + s - 1)^2`` blocks of side ``s``),
    capped at the number of positions, so it moves each class's count by at most ``Delta``.
    The prediction ``c`` is certified when, for every other class ``c'``,
    ``n_c - n_c' >= 2 Delta`` if ``c < c'`` and ``n_c - n_c' > 2 Delta`` if ``c' < c``
    (the paper's certificate, with its tie-break to the smallest index): no patch can then make
    ``c'`` win. The certificate is exact arithmetic on counts, not a probabilistic bound.

    **Encoding.** Ablated pixels must be distinguishable from black ones, so, as in the paper,
    each of the ``C`` channels of an image in ``[0, 1]`` becomes two: ``x`` and ``1 - x`` on
    the kept pixels, ``0`` and ``0`` on the ablated ones. The base estimator therefore takes
    inputs of shape ``(2C, H, W)`` (channels ``0..C-1`` hold ``x``, ``C..2C-1`` hold ``1 - x``)
    and the data ``x`` given to this class has shape ``(N, C, H, W)`` with values in ``[0, 1]``;
    :meth:`encode` gives the ablated encoding of one position.

    **Training.** The base classifier must be trained on ablated images: :meth:`fit` draws a
    uniformly random ablation position per image and epoch (as the paper does) and trains the
    estimator with its own ``fit`` capability.

    Threat model: an ``m x m`` patch of arbitrary content placed anywhere in the image (the
    L0-bounded contiguous attacker of the paper); the certificate needs only ``predict``.

    Parameters
    ----------
    estimator : Classifier
        The base classifier, with ``predict`` (``fit`` for :meth:`fit`); its ``input_shape``
        must be ``(2C, H, W)`` (the encoding above) and its ``clip_values``, if set, must
        contain ``[0, 1]``.
    ablation : {"column", "block"}, default "column"
        The shape of the retained region.
    ablation_size : int, default 4
        Width ``s`` of a column band, or side of a block; at most the image width (and height,
        for blocks).
    threshold : float, default 0.3
        An ablation votes for every class whose probability exceeds it, in ``[0, 1)`` (the
        paper uses 0.3 on CIFAR-10).
    batch_size : int, default 256
        Ablated images per call to the estimator.
    verbose : bool, default False
        Show a progress bar over the ablated batches.

    References
    ----------
    .. [1] A. Levine and S. Feizi, "(De)Randomized Smoothing for Certifiable Defense against
       Patch Attacks", NeurIPS 2020. https://arxiv.org/abs/2002.10733

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.certification import DerandomizedSmoothing
    >>> from bastion.zoo import SmallCNN
    >>> gen = torch.Generator().manual_seed(0)
    >>> model = SmallCNN(2, input_size=8, random_state=0)  # 2 channels encode 1 grey one
    >>> clf = TorchClassifier(model, input_shape=(2, 8, 8), nb_classes=10, clip_values=(0, 1))
    >>> ds = DerandomizedSmoothing(clf, ablation="column", ablation_size=2, threshold=0.3)
    >>> x = torch.rand(4, 1, 8, 8, generator=gen)
    >>> pred, certified = ds.certify(x, patch_size=2)
    >>> pred.shape, certified.dtype
    (torch.Size([4]), torch.bool)
    >>> ds.nb_affected(patch_size=2)  # a 2x2 patch touches 2 + 2 - 1 column bands
    3
    """

    _not_params: ClassVar[tuple[str, ...]] = ("estimator",)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "ablation": [Options(["column", "block"])],
        "ablation_size": [Interval(int, 1, None)],
        "threshold": [Interval(float, 0, 1, closed="left")],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: Any,
        *,
        ablation: str = "column",
        ablation_size: int = 4,
        threshold: float = 0.3,
        batch_size: int = 256,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.ablation = ablation
        self.ablation_size = ablation_size
        self.threshold = threshold
        self.batch_size = batch_size
        self.verbose = verbose

    # ------------------------------------------------------------------ checks

    def _image_shape(self) -> tuple[int, int, int]:
        """Validate the parameters and the estimator; the shape ``(C, H, W)`` of the data."""
        self._validate()
        owner = type(self).__name__
        require_capabilities(self.estimator, ["predict"], owner)
        shape = tuple(getattr(self.estimator, "input_shape", None) or ())
        if len(shape) != 3 or shape[0] % 2 != 0:
            raise InvalidParameterError(
                f"{owner} needs an image estimator whose input_shape is (2C, H, W): the paper's "
                f"encoding doubles the C channels of an image (x and 1 - x, both 0 where "
                f"ablated); got input_shape={shape}."
            )
        c, h, w = shape[0] // 2, int(shape[1]), int(shape[2])
        limit = w if self.ablation == "column" else min(h, w)
        if self.ablation_size > limit:
            side = "width" if self.ablation == "column" else "smaller side"
            raise invalid_parameter(
                "ablation_size",
                owner,
                f"an int in [1, {limit}] (the image {side})",
                self.ablation_size,
            )
        clip = self.estimator.clip_values
        if clip is not None and (float(clip[0]) > 0 or float(clip[1]) < 1):
            raise InvalidParameterError(
                f"{owner}: the ablation encoding lies in [0, 1], but the estimator's clip_values "
                f"are {tuple(clip)}; wrap the base model with clip_values=(0, 1) (or None)."
            )
        return c, h, w

    def _input(self, x: Any) -> tuple[torch.Tensor, Any]:
        shape = self._image_shape()
        xt, kind = to_tensor(x, device=self.estimator.device, dtype=self.estimator.dtype)
        if xt.ndim == 0:
            raise InputError("x must be a batch of images (N, C, H, W); got a scalar.")
        if not kind.floating:
            raise InputError(f"x must hold floating-point values, got dtype {kind.dtype}.")
        check_x(xt, input_shape=shape, clip_values=(0.0, 1.0))
        return xt, kind

    # ------------------------------------------------------------------ ablation

    @property
    def nb_positions(self) -> int:
        """The number of ablation positions: ``W`` for columns, ``H * W`` for blocks."""
        _, h, w = self._image_shape()
        return w if self.ablation == "column" else h * w

    def nb_affected(self, patch_size: int) -> int:
        """``Delta``: the most ablations a ``patch_size x patch_size`` patch can intersect.

        ``m + s - 1`` column bands or ``(m + s - 1)^2`` blocks (``m = patch_size``, ``s =
        ablation_size``), capped at the number of positions (and ``m + s - 1`` at the image
        side, since positions wrap around).
        """
        validate_params(
            type(self).__name__,
            {"patch_size": patch_size},
            {"patch_size": [Interval(int, 1, None)]},
        )
        _, h, w = self._image_shape()
        if patch_size > min(h, w):
            raise invalid_parameter(
                "patch_size", type(self).__name__, f"an int in [1, {min(h, w)}]", patch_size
            )
        span = patch_size + self.ablation_size - 1
        if self.ablation == "column":
            return min(span, w)
        return min(span, h) * min(span, w)

    def _masks(self, positions: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The kept pixels of the given positions, ``(len(positions), H, W)`` booleans
        (wrapping around); built per batch, so block ablation of large images never holds
        all ``H * W`` masks at once."""
        s = self.ablation_size
        device = positions.device
        cols = torch.arange(w, device=device)
        if self.ablation == "column":
            keep_w = (cols[None, :] - positions[:, None]) % w < s  # (P, W)
            return keep_w[:, None, :].expand(len(positions), h, w)
        rows = torch.arange(h, device=device)
        keep_h = (rows[None, :] - (positions // w)[:, None]) % h < s  # (P, H)
        keep_w = (cols[None, :] - (positions % w)[:, None]) % w < s  # (P, W)
        return keep_h[:, :, None] & keep_w[:, None, :]

    @staticmethod
    def _encode_masked(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) under kept-pixel masks (N, H, W): ``(N, 2C, H, W)``."""
        k = keep[:, None].to(x.dtype)
        return torch.cat([x * k, (1 - x) * k], dim=1)

    def encode(self, x: Any, position: int) -> Any:
        """The base classifier's input for ``x`` ablated at ``position``.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Images in ``[0, 1]``.
        position : int
            In ``[0, nb_positions)``: the first kept column (columns ``position ..
            position + s - 1`` modulo ``W``), or for blocks ``row * W + col`` of the block's
            top-left pixel (rows and columns wrapping around).

        Returns
        -------
        array-like or torch.Tensor, shape (N, 2C, H, W)
            ``x`` and ``1 - x`` on the kept pixels, ``0`` elsewhere; same type as ``x``.
        """
        xt, kind = self._input(x)
        _, h, w = xt.shape[1:]
        p = self.nb_positions
        validate_params(
            type(self).__name__,
            {"position": position},
            {"position": [Interval(int, 0, p - 1)]},
        )
        keep = self._masks(torch.tensor([int(position)], device=xt.device), h, w)
        out = self._encode_masked(xt, keep.expand(xt.shape[0], h, w))
        return kind.restore(out)

    # ------------------------------------------------------------------ votes

    def _votes_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Vote counts ``(N, nb_classes)`` (int64) over every ablation position."""
        n, _, h, w = x.shape
        p = w if self.ablation == "column" else h * w
        votes = torch.zeros(n * p, self.estimator.nb_classes, dtype=torch.int64, device=x.device)
        total = n * p
        starts = range(0, total, self.batch_size)
        for i in tqdm(starts, desc="ablations", disable=not self.verbose, leave=False):
            idx = torch.arange(i, min(i + self.batch_size, total), device=x.device)
            batch = self._encode_masked(x[idx // p], self._masks(idx % p, h, w))
            with torch.no_grad():
                probs = self.estimator.predict_tensor(batch.to(self.estimator.dtype))
            votes[idx] = (probs > self.threshold).to(torch.int64).to(x.device)
        return votes.reshape(n, p, -1).sum(dim=1)

    def votes(self, x: Any) -> Any:
        """How many ablation positions vote for each class.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Images in ``[0, 1]``.

        Returns
        -------
        array-like or torch.Tensor, shape (N, nb_classes)
            Integer counts in ``[0, nb_positions]`` (int64; same type as ``x``).
        """
        xt, kind = self._input(x)
        return kind.restore(self._votes_tensor(xt), keep_dtype=True)

    def predict(self, x: Any) -> Any:
        """The smoothed prediction: the class with the most votes (ties: smallest index).

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Images in ``[0, 1]``.

        Returns
        -------
        array-like or torch.Tensor, shape (N,)
            Class indices (int64; same type as ``x``).
        """
        xt, kind = self._input(x)
        pred, _ = self.certify_votes(self._votes_tensor(xt), 0)
        return kind.restore(pred, keep_dtype=True)

    def certify(self, x: Any, patch_size: int) -> tuple[Any, Any]:
        """Smoothed predictions and whether each is certified against any ``m x m`` patch.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Images in ``[0, 1]``.
        patch_size : int
            Side ``m`` of the adversarial square patch, in ``[1, min(H, W)]``.

        Returns
        -------
        prediction : array-like or torch.Tensor, shape (N,)
            Class indices (int64).
        certified : array-like or torch.Tensor, shape (N,)
            ``True`` where no ``m x m`` patch placed anywhere can change the prediction
            (bool). Both of the type of ``x``.
        """
        delta = self.nb_affected(patch_size)
        xt, kind = self._input(x)
        pred, certified = self.certify_votes(self._votes_tensor(xt), delta)
        return kind.restore(pred, keep_dtype=True), kind.restore(certified, keep_dtype=True)

    @staticmethod
    def certify_votes(votes: torch.Tensor, delta: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction and certificate from vote counts (the paper's certificate).

        Parameters
        ----------
        votes : torch.Tensor, shape (N, K)
            Vote counts.
        delta : int
            The most ablations the patch can touch (:meth:`nb_affected`).

        Returns
        -------
        prediction : torch.Tensor, shape (N,)
            ``argmax`` of the votes, ties to the smallest class index.
        certified : torch.Tensor, shape (N,)
            ``n_c >= n_c' + 2 delta`` for every class ``c' > c`` and ``n_c > n_c' + 2 delta``
            for every ``c' < c``: after any patch, ``c`` keeps the most votes or ties with a
            larger index only.
        """
        votes = votes.to(torch.int64)
        pred = votes.argmax(dim=1)  # the first maximum: ties go to the smallest index
        k = votes.shape[1]
        top = votes.gather(1, pred[:, None])
        classes = torch.arange(k, device=votes.device)
        # A class below c wins ties, so it needs one vote less to overtake c.
        needed = votes + 2 * int(delta) + (classes[None, :] < pred[:, None]).to(torch.int64)
        others = classes[None, :] != pred[:, None]
        ok = (top >= needed) | ~others
        return pred, ok.all(dim=1)

    # ------------------------------------------------------------------ training

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        epochs: int = 1,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> DerandomizedSmoothing:
        """Train the base classifier on randomly ablated images.

        Every epoch ablates each training image at a fresh uniformly random position (a column
        band or a block, with the encoding of :meth:`encode`) and runs one epoch of the
        estimator's own ``fit`` on them (continuing the same optimiser across epochs).

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
            Training images in ``[0, 1]``.
        y : array-like or torch.Tensor
            Class indices ``(N,)`` or one-hot rows.
        epochs : int, default 1
        batch_size : int, default 128
        learning_rate : float, default 1e-3
            Passed to the estimator's ``fit`` (its default optimiser).
        random_state : None, int or torch.Generator
            Seeds the ablation positions and the shuffling.
        verbose : bool, default False
            Show a progress bar over the epochs.

        Returns
        -------
        self
        """
        owner = f"{type(self).__name__}.fit"
        validate_params(
            owner,
            {
                "epochs": epochs,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "random_state": random_state,
                "verbose": verbose,
            },
            {
                "epochs": [Interval(int, 1, None)],
                "batch_size": BATCH_SIZE,
                "learning_rate": [Interval(float, 0, None, closed="neither")],
                "random_state": RANDOM_STATE,
                "verbose": VERBOSE,
            },
        )
        xt, _ = self._input(x)
        require_capabilities(self.estimator, ["fit"], type(self).__name__)
        yt, _ = to_tensor(y, device=xt.device, dtype=None)
        labels = check_labels(yt, n=xt.shape[0], nb_classes=self.estimator.nb_classes)
        gen = resolve_random_state(random_state, "cpu")
        n, _, h, w = xt.shape
        p = w if self.ablation == "column" else h * w
        for epoch in tqdm(range(epochs), desc="fit", disable=not verbose, leave=False):
            where = torch.randint(p, (n,), generator=gen).to(xt.device)
            ablated = self._encode_masked(xt, self._masks(where, h, w))
            self.estimator.fit(
                ablated,
                labels,
                epochs=1,
                batch_size=batch_size,
                learning_rate=learning_rate,
                warm_start=epoch > 0,
                random_state=gen,
            )
        return self
