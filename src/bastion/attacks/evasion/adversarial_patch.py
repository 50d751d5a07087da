"""Adversarial Patch (Brown, Mane, Roy, Abadi and Gilmer 2017)."""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bastion._tensor import resolve_random_state
from bastion._validation import (
    BATCH_SIZE,
    NONE,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Options,
    Satisfies,
    invalid_parameter,
)
from bastion.attacks._optim import adam_step
from bastion.attacks.base import EvasionAttack, checked_input
from bastion.estimators.base import SupportsLossGradient
from bastion.exceptions import EstimatorError, NotFittedError

__all__ = ["AdversarialPatch"]


def _is_patch_shape(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
        and all(int(v) >= 1 for v in value)
    )


class AdversarialPatch(EvasionAttack):
    """Adversarial patch: one image-independent patch that, pasted anywhere onto an image at
    any scale and rotation, makes the model predict the ``target`` class.

    The patch ``p`` is trained with expectation over transformation (EOT): every step draws, for
    every training image, a scale in ``[scale_min, scale_max]``, a rotation in
    ``[-rotation_max, rotation_max]`` degrees and a location where the (unrotated) patch lies
    inside the image, builds the transformed patch ``T(p)`` and its mask ``m`` with one batched
    affine transform (``affine_grid`` + bilinear ``grid_sample``), pastes it,
    ``x' = (1 - m) * x + m * T(p)``, and takes a step on the average loss: it minimises the
    cross-entropy of ``target`` (or, with ``target=None``, maximises the loss of the true label).
    The gradient comes from the estimator's ``loss_gradient_tensor`` at ``x'`` and is carried
    back to ``p`` through the paste; ``p`` stays inside ``clip_values``.

    Each step uses all images given to :meth:`fit`, in chunks of ``batch_size`` whose gradients
    are summed, so ``batch_size`` trades memory for speed without changing the result (give
    :meth:`fit` a subsample of a large data set: one step costs one pass over it).

    ``fit(x)`` learns the patch, ``apply(x_new, ...)`` pastes it onto new images, and
    ``generate(x)`` fits a patch on ``x`` and returns ``x`` with the patch pasted at a random
    location of every image, at the default scale (see :meth:`apply`).

    Threat model: white-box (needs loss gradients), physical-world style: no Lp budget, the
    adversary controls every pixel of a region covering a share ``scale**2`` of the image and
    nothing outside it. The patch is universal (one for all images) and targeted.

    Parameters
    ----------
    estimator : estimator with ``loss_gradient``, inputs of shape ``(C, H, W)``
    target : int or None, default None
        Class the patch should make the model predict; ``None`` makes it untargeted (maximise
        the loss of the true labels ``y``, or of the model's predictions when ``y`` is omitted).
    patch_shape : (C, h, w) or None, default None
        Resolution of the patch. ``None``: a square of side ``round(scale_max * min(H, W))``
        with the images' channels, so that the largest paste shows each patch pixel about once
        (never upsampled). The paste's size is set by the scale, not by this shape.
    scale_min, scale_max : float in (0, 1], default 0.1 and 1.0
        Range of the pasted patch's size: its longer side covers ``scale * min(H, W)`` pixels
        (the patch's aspect ratio is kept), so a square patch on a square image covers a share
        ``scale**2`` of it.
    rotation_max : float in [0, 180], default 22.5
        Largest rotation in degrees drawn during training.
    shape : {"square", "circle"}, default "square"
        The patch's outline (the circle is the disk inscribed in the patch).
    learning_rate : float > 0, default 0.05
        Step size of the optimizer, for a patch whose values span ``clip_values``.
    max_iter : int, default 200
        Optimisation steps (each over all images given to :meth:`fit`).
    optimizer : {"adam", "sgd"}, default "adam"
        Adam (Kingma and Ba, betas 0.9 and 0.999) or plain gradient descent on the average loss.
    batch_size : int, default 128
        Images per forward/backward pass.
    random_state : None, int or torch.Generator
        Seeds the initial patch and the transformations.
    verbose : bool, default False

    Attributes
    ----------
    patch_ : torch.Tensor, shape ``patch_shape``
        The learned patch, inside ``clip_values``.
    patch_mask_ : torch.Tensor, shape ``patch_shape``
        1 on the patch's outline (square or disk), 0 outside it.
    success_rate_ : float
        Share of the training images on which the last step's random pastes reached the goal
        (the target class, or a wrong label when untargeted), read from that step's logits.
    n_iter_ : int
        Steps made.

    Notes
    -----
    The mask is computed exactly from the affine map (a pixel is covered when its centre falls
    inside the transformed outline), so it is binary and its area is ``scale**2 * H * W`` up to
    the pixels on the outline; the patch's values are interpolated bilinearly. There is no
    per-sample early stopping: all images share one patch. The paper trains on ImageNet with
    scales 0.1-1.0 (and its figures show patches covering about 10% of the image); on small
    images, a narrower range such as 0.3-0.4 trains much faster.

    ``mask`` given to :meth:`fit` or :meth:`generate` (1: may change) is multiplied into the
    paste mask, so frozen features keep their values in training and in the output.

    References
    ----------
    Brown, Mane, Roy, Abadi and Gilmer, "Adversarial Patch", NIPS 2017 workshop on machine
    learning and computer security. https://arxiv.org/abs/1712.09665

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.evasion.adversarial_patch import AdversarialPatch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> clf = TorchClassifier(net, input_shape=(1, 8, 8), nb_classes=3, clip_values=(0, 1))
    >>> attack = AdversarialPatch(clf, target=2, scale_min=0.4, scale_max=0.5, max_iter=5,
    ...                           random_state=0)
    >>> attack = attack.fit(torch.rand(16, 1, 8, 8))
    >>> attack.patch_.shape
    torch.Size([1, 4, 4])
    >>> x_adv = attack.apply(torch.rand(4, 1, 8, 8), scale=0.5, location=(0, 0))
    >>> torch.allclose(x_adv[:, :, :4, :4], attack.patch_.expand(4, 1, 4, 4), atol=1e-6)
    True
    """

    estimator: SupportsLossGradient

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target": [NONE, Interval(int, 0, None)],
        "patch_shape": [NONE, Satisfies(_is_patch_shape, "a tuple (C, h, w) of positive ints")],
        "scale_min": [Interval(float, 0, 1, closed="right")],
        "scale_max": [Interval(float, 0, 1, closed="right")],
        "rotation_max": [Interval(float, 0, 180)],
        "shape": [Options(["square", "circle"])],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "max_iter": [Interval(int, 1, None)],
        "optimizer": [Options(["adam", "sgd"])],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("loss_gradient",)

    def __init__(
        self,
        estimator: SupportsLossGradient,
        *,
        target: int | None = None,
        patch_shape: tuple[int, int, int] | None = None,
        scale_min: float = 0.1,
        scale_max: float = 1.0,
        rotation_max: float = 22.5,
        shape: str = "square",
        learning_rate: float = 0.05,
        max_iter: int = 200,
        optimizer: str = "adam",
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.target = target
        self.patch_shape = patch_shape
        self.scale_min = scale_min
        self.scale_max = scale_max
        self.rotation_max = rotation_max
        self.shape = shape
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ validation

    def _validate(self) -> None:
        super()._validate()
        name = type(self).__name__
        if self.scale_min > self.scale_max:
            raise invalid_parameter(
                "scale_min", name, f"at most scale_max={self.scale_max!r}", self.scale_min
            )
        nb = self.estimator.nb_classes
        if self.target is not None and self.target >= nb:
            raise invalid_parameter("target", name, f"None or an int in [0, {nb})", self.target)
        shape = tuple(self.estimator.input_shape)
        if len(shape) != 3:
            raise EstimatorError(f"{name} needs image inputs of shape (C, H, W); got {shape}.")
        if self.patch_shape is not None and int(self.patch_shape[0]) != shape[0]:
            raise invalid_parameter(
                "patch_shape",
                name,
                f"a tuple with {shape[0]} channels (as the images)",
                self.patch_shape,
            )

    def _resolved_patch_shape(self) -> tuple[int, int, int]:
        if self.patch_shape is not None:
            c, h, w = (int(v) for v in self.patch_shape)
            return c, h, w
        c, h, w = self.estimator.input_shape
        side = max(1, round(self.scale_max * min(h, w)))
        return c, side, side

    def _inputs(self, x: Any, mask: Any) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        xt, kind = checked_input(self.estimator, x)
        return xt, kind, self._resolve_mask(mask, xt)

    # ------------------------------------------------------------------ geometry

    def _patch_outline(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """1 on the patch's outline at its own resolution, ``(h, w)``."""
        if self.shape == "square":
            return torch.ones(h, w, device=device)
        ys = (torch.arange(h, device=device) + 0.5) / (h / 2) - 1
        xs = (torch.arange(w, device=device) + 0.5) / (w / 2) - 1
        return ((ys[:, None] ** 2 + xs[None, :] ** 2) <= 1).to(torch.float32)

    def _pasted_size(
        self, scale: torch.Tensor, patch_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pasted height and width in pixels for each scale (aspect ratio of the patch kept)."""
        _, h_img, w_img = self.estimator.input_shape
        hp, wp = patch_hw
        pixels = scale * min(h_img, w_img) / max(hp, wp)
        return pixels * hp, pixels * wp

    def _random_centres(
        self, h_pix: torch.Tensor, w_pix: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Centres (pixels from the image centre, ``(N, 2)`` as x, y), uniform over the places
        where the unrotated paste lies inside the image. The range does not depend on the
        rotation (a rotated square's corners may be cut by the border), so that every location
        is trained equally often whatever ``rotation_max``."""
        _, h_img, w_img = self.estimator.input_shape
        room = torch.stack([(w_img - w_pix).clamp(min=0), (h_img - h_pix).clamp(min=0)], 1) / 2
        u = torch.rand(room.shape, generator=gen, device=gen.device, dtype=room.dtype)
        return (2 * u.to(room.device) - 1) * room

    def _transform(
        self,
        patch: torch.Tensor,
        scale: torch.Tensor,
        angle: torch.Tensor,
        centre: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch placed on an image-sized canvas, and its binary mask, for every sample.

        ``scale``, ``angle`` (radians, counter-clockwise as displayed) and ``centre`` (pixels from
        the image centre, x then y) are per sample. ``affine_grid`` maps each output pixel to
        the patch's normalised coordinates; the patch is sampled bilinearly, and the mask is
        1 where that point falls inside the outline (exact area, no blurred edge).
        """
        c_img, h_img, w_img = self.estimator.input_shape
        n = scale.shape[0]
        h_pix, w_pix = self._pasted_size(scale, (patch.shape[-2], patch.shape[-1]))
        cos, sin = angle.cos(), angle.sin()
        tx, ty = centre[:, 0], centre[:, 1]
        # output pixel offsets (X, Y) = (x_n * W/2, y_n * H/2); patch coordinates are the
        # inverse rotation of (X - tx, Y - ty), divided by the pasted half-sizes.
        theta = torch.stack(
            [
                torch.stack(
                    [cos * w_img / w_pix, -sin * h_img / w_pix, -2 * (cos * tx - sin * ty) / w_pix],
                    1,
                ),
                torch.stack(
                    [sin * w_img / h_pix, cos * h_img / h_pix, -2 * (sin * tx + cos * ty) / h_pix],
                    1,
                ),
            ],
            1,
        ).to(patch.dtype)
        grid = F.affine_grid(theta, [n, c_img, h_img, w_img], align_corners=False)
        canvas = F.grid_sample(
            patch.unsqueeze(0).expand(n, *patch.shape),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        if self.shape == "square":
            inside = grid.abs().amax(dim=-1) <= 1
        else:
            inside = grid.pow(2).sum(dim=-1) <= 1
        return canvas, inside.unsqueeze(1).to(patch.dtype)

    def _paste(
        self,
        x: torch.Tensor,
        patch: torch.Tensor,
        scale: torch.Tensor,
        angle: torch.Tensor,
        centre: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        canvas, m = self._transform(patch, scale, angle, centre)
        if mask is not None:
            m = m * mask
        clip = self.estimator.clip_values
        if clip is not None:  # bilinear weights may overshoot the patch's range by rounding
            canvas = canvas.clamp(*clip)
        # (1 - m) * x + m * T(p) for a binary m, written so frozen pixels stay bit-exact.
        return torch.where(m > 0, canvas, x)

    # ------------------------------------------------------------------ training

    def _fit_tensor(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, gen: torch.Generator
    ) -> None:
        est = self.estimator
        n = x.shape[0]
        c, hp, wp = self._resolved_patch_shape()
        self.patch_mask_ = self._patch_outline(hp, wp, x.device).to(x.dtype).repeat(c, 1, 1)
        if est.clip_values is not None:
            lo, hi = (float(v) for v in est.clip_values)
        else:
            lo, hi = float(x.min()), float(x.max())
        span = hi - lo if hi > lo else 1.0
        u = torch.rand((c, hp, wp), generator=gen, device=gen.device, dtype=x.dtype)
        patch = lo + span * u.to(x.device)
        # the goal label per image: the target (minimise its loss) or the true label (maximise)
        sign = 1.0 if self.target is None else -1.0
        goal = y if self.target is None else torch.full_like(y, self.target)
        lr = self.learning_rate * span
        m1 = torch.zeros_like(patch)
        m2 = torch.zeros_like(patch)
        hit = torch.zeros(n, dtype=torch.bool, device=x.device)
        bar = tqdm(total=self.max_iter, desc=type(self).__name__, disable=not self.verbose)
        for step in range(1, self.max_iter + 1):
            # one draw of transformations for all images, so batching does not change them
            scale = self._uniform(n, self.scale_min, self.scale_max, gen, x)
            rot = math.radians(self.rotation_max)
            angle = self._uniform(n, -rot, rot, gen, x)
            h_pix, w_pix = self._pasted_size(scale, (hp, wp))
            centre = self._random_centres(h_pix, w_pix, gen)
            grad = torch.zeros_like(patch)
            for i in range(0, n, self.batch_size):
                sl = slice(i, i + self.batch_size)
                p = patch.detach().requires_grad_(True)
                mb = None if mask is None else (mask[sl] if mask.shape[0] > 1 else mask)
                with torch.enable_grad():
                    x_patched = self._paste(x[sl], p, scale[sl], angle[sl], centre[sl], mb)
                    g, _, logits = est.loss_gradient_tensor(
                        x_patched.detach(), goal[sl], return_outputs=True
                    )
                    (gp,) = torch.autograd.grad(x_patched, p, grad_outputs=g.to(x_patched.dtype))
                grad += gp
                pred = logits.argmax(dim=1)
                hit[sl] = pred == goal[sl] if self.target is not None else pred != goal[sl]
            grad = sign * grad / n  # ascent direction on the average objective
            if self.optimizer == "adam":  # a descent step on the negated objective
                patch, m1, m2 = adam_step(patch, -grad, m1, m2, step, lr)
            else:
                patch = patch + lr * grad
            if est.clip_values is not None:
                patch = patch.clamp(lo, hi)
            bar.update(1)
        bar.close()
        self.patch_ = patch.detach()
        self.success_rate_ = float(hit.to(torch.float32).mean())
        self.n_iter_ = self.max_iter

    @staticmethod
    def _uniform(
        n: int, low: float, high: float, gen: torch.Generator, like: torch.Tensor
    ) -> torch.Tensor:
        u = torch.rand(n, generator=gen, device=gen.device, dtype=like.dtype).to(like.device)
        return low + (high - low) * u

    def _labels_for(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        if y is None and self.target is not None:
            return torch.full((x.shape[0],), self.target, dtype=torch.long, device=x.device)
        return self._resolve_labels(x, y)

    def fit(self, x: Any, y: Any = None, *, mask: Any = None) -> AdversarialPatch:
        """Learn the patch on images ``x``.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
        y : array-like or torch.Tensor, optional
            True labels, used when ``target`` is None (default: the model's predictions);
            checked but unused for a targeted patch.
        mask : array-like or torch.Tensor, optional
            Which features the patch may cover (1) and which it may not (0).

        Returns
        -------
        self
        """
        self._validate()
        xt, _, mt = self._inputs(x, mask)
        yt = self._labels_for(xt, y)
        gen = resolve_random_state(self.random_state, self.estimator.device)
        self._fit_tensor(xt, yt, mt, gen)
        return self

    # ------------------------------------------------------------------ pasting

    def _placement(
        self,
        n: int,
        scale: float | None,
        location: Any,
        rotation: float,
        gen: torch.Generator | None,
        like: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        owner = f"{type(self).__name__}.apply"
        if scale is None:
            scale = (self.scale_min + self.scale_max) / 2
        if not Interval(float, 0, 1, closed="right").is_satisfied_by(scale):
            raise invalid_parameter("scale", owner, "None or a float in (0, 1]", scale)
        if not Interval(float, None, None).is_satisfied_by(rotation):
            raise invalid_parameter("rotation", owner, "a float (degrees)", rotation)
        _, h_img, w_img = self.estimator.input_shape
        # an integral number of pixels, so a fixed location covers whole pixels exactly
        side = max(1.0, float(round(scale * min(h_img, w_img))))
        s = torch.full((n,), side / min(h_img, w_img), dtype=like.dtype, device=like.device)
        angle = torch.full_like(s, math.radians(rotation))
        h_pix, w_pix = self._pasted_size(s, (self.patch_.shape[-2], self.patch_.shape[-1]))
        if isinstance(location, str) and location == "random":
            gen = gen if gen is not None else resolve_random_state(self.random_state, like.device)
            return s, angle, self._random_centres(h_pix, w_pix, gen)
        hp, wp = float(h_pix[0]), float(w_pix[0])
        if location is None:
            row, col = float((h_img - round(hp)) // 2), float((w_img - round(wp)) // 2)
        else:
            ok = (
                isinstance(location, (tuple, list))
                and len(location) == 2
                and all(Interval(int, 0, None).is_satisfied_by(v) for v in location)
            )
            row, col = (float(v) for v in location) if ok else (-1.0, -1.0)
            if not ok or row + hp > h_img + 1e-6 or col + wp > w_img + 1e-6:
                raise invalid_parameter(
                    "location",
                    owner,
                    f'None, "random" or (row, col) ints with the {hp:g}x{wp:g} patch inside '
                    f"the {h_img}x{w_img} image",
                    location,
                )
        centre = torch.tensor(
            [col + wp / 2 - w_img / 2, row + hp / 2 - h_img / 2], dtype=like.dtype
        ).to(like.device)
        return s, angle, centre.expand(n, 2)

    def _apply_tensor(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float | None,
        location: Any,
        rotation: float,
        gen: torch.Generator | None,
    ) -> torch.Tensor:
        s, angle, centre = self._placement(x.shape[0], scale, location, rotation, gen, x)
        patch = self.patch_.to(x.device, x.dtype)
        out = torch.empty_like(x)
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            mb = None if mask is None else (mask[sl] if mask.shape[0] > 1 else mask)
            with torch.no_grad():
                out[sl] = self._paste(x[sl], patch, s[sl], angle[sl], centre[sl], mb)
        return out

    def apply(
        self,
        x: Any,
        *,
        scale: float | None = None,
        location: Any = None,
        rotation: float = 0.0,
        random_state: Any = None,
    ) -> Any:
        """Paste the learned patch onto images ``x``.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
        scale : float in (0, 1] or None, default None
            Size of the paste (its longer side covers ``round(scale * min(H, W))`` pixels);
            ``None`` is the middle of the training range, ``(scale_min + scale_max) / 2``.
        location : None, "random" or (row, col), default None
            ``None``: centred; ``"random"``: a random place per image where the unrotated
            paste lies inside it; ``(row, col)``: the top-left corner of the unrotated paste.
        rotation : float, default 0.0
            Degrees, counter-clockwise as displayed, about the paste's centre.
        random_state : None, int or torch.Generator
            For ``location="random"``; ``None`` uses the attack's ``random_state``.

        Returns
        -------
        x_patched : same type, device, dtype and shape as ``x``
        """
        if not hasattr(self, "patch_"):
            raise NotFittedError("call fit (or generate) before apply.")
        xt, kind, _ = self._inputs(x, None)
        rs = self.random_state if random_state is None else random_state
        is_random = isinstance(location, str) and location == "random"
        gen = resolve_random_state(rs, self.estimator.device) if is_random else None
        out = self._apply_tensor(xt, None, scale, location, rotation, gen)
        return kind.restore(out, unchanged=xt)

    def generate(self, x: Any, y: Any = None, *, mask: Any = None) -> Any:
        """Fit a patch on ``x`` and return ``x`` with it pasted at a random location of every
        image (default scale, no rotation).

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, C, H, W)
        y : array-like or torch.Tensor, optional
            True labels for an untargeted patch (default: the model's predictions); checked
            but unused when ``target`` is set.
        mask : array-like or torch.Tensor, optional
            Which features may change (1) and which may not (0).

        Returns
        -------
        x_adv : same type, device, dtype and shape as ``x``
        """
        self._validate()
        xt, kind, mt = self._inputs(x, mask)
        yt = self._labels_for(xt, y)
        gen = resolve_random_state(self.random_state, self.estimator.device)
        self._fit_tensor(xt, yt, mt, gen)
        return kind.restore(self._apply_tensor(xt, mt, None, "random", 0.0, gen), unchanged=xt)
