"""Randomised input transformations: Gaussian noise, random resizing and padding, and total
variance minimisation of a randomly masked image."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bastion._validation import NONE, RANDOM_STATE, Constraint, Interval, Options
from bastion.defenses.preprocessing._base import CLIP_VALUES, Preprocessor
from bastion.exceptions import InputError

__all__ = ["GaussianNoise", "RandomResizePad", "TotalVarianceMinimization"]


class GaussianNoise(Preprocessor):
    """Add Gaussian noise ``N(0, sigma^2)`` to every value, then clip to ``clip_values``.

    The clipping to the data range is part of the defence (the model only ever sees valid
    inputs), not a change of the user's data: inputs outside ``clip_values`` are refused.
    Randomised (each call draws new noise from the generator) and differentiable (the
    gradient is the identity where no value was clipped); an adaptive attacker averages
    gradients over the noise (expectation over transformation, Athalye et al. 2018). The
    inference-time analogue of Gaussian data augmentation (Zantedeschi et al. 2017) and the
    noise of randomized smoothing (Cohen et al. 2019). Works on batches of any shape.

    Parameters
    ----------
    sigma : float, default 0.1
        Standard deviation of the noise (>= 0), in the units of the data.
    clip_values : (float, float), default (0.0, 1.0)
        The data range.
    random_state : None, int or torch.Generator
        Seeds the noise; the generator is created at the first call, then advances
        (:meth:`reset` restarts an int seed's stream).

    References
    ----------
    Zantedeschi, Nicolae and Rawat, "Efficient Defenses Against Adversarial Attacks", AISec
    2017. https://arxiv.org/abs/1707.06728

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.preprocessing import GaussianNoise
    >>> noise = GaussianNoise(sigma=0.05, random_state=0)
    >>> x = torch.full((2, 4), 0.5)
    >>> first = noise(x)
    >>> noise.reset()
    >>> torch.equal(noise(x), first), bool((first - x).abs().max() < 0.3)
    (True, True)
    """

    differentiable = True
    randomized = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "sigma": [Interval(float, 0, None)],
        "clip_values": CLIP_VALUES,
        "random_state": RANDOM_STATE,
    }

    def __init__(
        self,
        *,
        sigma: float = 0.1,
        clip_values: tuple[float, float] = (0.0, 1.0),
        random_state: Any = None,
    ) -> None:
        self.sigma = sigma
        self.clip_values = clip_values
        self.random_state = random_state

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range()
        gen = self._rng(x.device)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(lo, hi)


class RandomResizePad(Preprocessor):
    """Random resizing and random padding of images ``(N, C, H, W)`` (Xie et al. 2018).

    Each image is resized to a random height ``s`` in ``[H, max_size)`` (the width in
    proportion), placed at a random offset on a ``max_size``-high canvas (the width in
    proportion) filled with ``clip_values[0]`` (zero for the usual ``(0, 1)`` range), and
    the canvas is resized back to ``H x W``: **bastion returns the input's size**, so the same
    model applies (Xie et al. feed the larger canvas to the network). The three steps are one
    affine map, sampled once with bilinear interpolation (``grid_sample``): every image gets
    its own draw, the batch is transformed at once, and the result is differentiable in
    ``x``. ``max_size=None`` uses Xie et al.'s ratio 331 / 299 (at least ``H + 1``).

    Threat model: randomisation against white-box attacks; broken by expectation over
    transformation (Athalye et al. 2018).

    Parameters
    ----------
    max_size : int or None, default None
        Height of the padded canvas (> H).
    clip_values : (float, float), default (0.0, 1.0)
        The data range.
    random_state : None, int or torch.Generator
        Seeds the sizes and offsets (see :class:`GaussianNoise`).

    References
    ----------
    Xie, Wang, Zhang, Ren and Yuille, "Mitigating Adversarial Effects Through
    Randomization", ICLR 2018. https://arxiv.org/abs/1711.01991

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.preprocessing import RandomResizePad
    >>> out = RandomResizePad(max_size=40, random_state=0)(torch.rand(2, 3, 32, 32))
    >>> out.shape
    torch.Size([2, 3, 32, 32])
    """

    differentiable = True
    randomized = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_size": [Interval(int, 2, None), NONE],
        "clip_values": CLIP_VALUES,
        "random_state": RANDOM_STATE,
    }

    def __init__(
        self,
        *,
        max_size: int | None = None,
        clip_values: tuple[float, float] = (0.0, 1.0),
        random_state: Any = None,
    ) -> None:
        self.max_size = max_size
        self.clip_values = clip_values
        self.random_state = random_state

    def _canvas(self, h: int) -> int:
        if self.max_size is None:
            return max(h + 1, round(h * 331 / 299))
        return int(self.max_size)

    def _check_shape(self, t: torch.Tensor) -> None:
        self._check_images(t)
        if self._canvas(t.shape[2]) <= t.shape[2]:
            raise InputError(
                f"RandomResizePad: max_size={self.max_size} must exceed the image height "
                f"{t.shape[2]} (shape {tuple(t.shape)})."
            )

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        lo, _ = self._range()
        n, c, h, w = x.shape
        canvas_h = self._canvas(h)
        canvas_w = max(w + 1, round(w * canvas_h / h))
        u = torch.rand((n, 3), generator=self._rng(x.device), device=x.device)
        u = u.to(torch.float64)
        size_h = h + torch.floor(u[:, 0] * (canvas_h - h))
        size_w = torch.round(size_h * w / h).clamp(max=canvas_w)
        top = torch.floor(u[:, 1] * (canvas_h - size_h + 1))
        left = torch.floor(u[:, 2] * (canvas_w - size_w + 1))
        # output (normalised, align_corners=False) -> canvas -> resized image -> input
        theta = torch.zeros((n, 2, 3), dtype=torch.float64, device=x.device)
        theta[:, 0, 0] = canvas_w / size_w
        theta[:, 0, 2] = (canvas_w - 2 * left) / size_w - 1
        theta[:, 1, 1] = canvas_h / size_h
        theta[:, 1, 2] = (canvas_h - 2 * top) / size_h - 1
        grid = F.affine_grid(theta.to(x.dtype), [n, c, h, w], align_corners=False)
        shifted = x - lo
        out = F.grid_sample(
            shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out + lo


class TotalVarianceMinimization(Preprocessor):
    """Random pixel dropout, then total-variation reconstruction (Guo et al. 2018).

    Each pixel of images ``(N, C, H, W)`` is kept with probability ``prob`` (one Bernoulli
    mask per pixel, shared by its channels); the dropped pixels start at the mean of the kept
    ones of their image and channel, and the image ``z`` minimises, channel by channel,

    ``sum(mask * (z - x)**2) + lamb * sum(|z[i+1, j] - z[i, j]|**norm + |z[i, j+1] -
    z[i, j]|**norm)``

    (``|d|`` smoothed to ``sqrt(d**2 + 1e-6 * (hi - lo)**2)`` for ``norm=1``) by
    ``max_iter`` iterations of L-BFGS with a strong-Wolfe line search over the whole batch at
    once (the objective is a sum over images, so each image's minimiser is its own; the
    shared line search only couples the step lengths), then clipped to ``clip_values``. ART
    solves the same problem (with the square root of the data term) image by image with
    SciPy.

    Threat model: randomised, non-differentiable reconstruction; broken by BPDA with the
    identity plus expectation over the mask (Athalye et al. 2018).

    Parameters
    ----------
    prob : float, default 0.3
        Probability of keeping a pixel, in ``(0, 1]``.
    norm : {1, 2}, default 2
        Exponent of the total variation.
    lamb : float, default 0.5
        Weight of the total variation (>= 0).
    max_iter : int, default 10
        L-BFGS iterations (>= 1).
    clip_values : (float, float), default (0.0, 1.0)
        The data range.
    random_state : None, int or torch.Generator
        Seeds the masks (see :class:`GaussianNoise`).

    References
    ----------
    Guo, Rana, Cissé and van der Maaten, "Countering Adversarial Images using Input
    Transformations", ICLR 2018. https://arxiv.org/abs/1711.00117

    Examples
    --------
    >>> import torch
    >>> from bastion.defenses.preprocessing import TotalVarianceMinimization
    >>> x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> out = TotalVarianceMinimization(prob=0.5, random_state=0)(x)
    >>> out.shape, bool(out.min() >= 0 and out.max() <= 1)
    (torch.Size([2, 1, 8, 8]), True)
    """

    randomized = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "prob": [Interval(float, 0, 1, closed="right")],
        "norm": [Options([1, 2])],
        "lamb": [Interval(float, 0, None)],
        "max_iter": [Interval(int, 1, None)],
        "clip_values": CLIP_VALUES,
        "random_state": RANDOM_STATE,
    }

    def __init__(
        self,
        *,
        prob: float = 0.3,
        norm: int = 2,
        lamb: float = 0.5,
        max_iter: int = 10,
        clip_values: tuple[float, float] = (0.0, 1.0),
        random_state: Any = None,
    ) -> None:
        self.prob = prob
        self.norm = norm
        self.lamb = lamb
        self.max_iter = max_iter
        self.clip_values = clip_values
        self.random_state = random_state

    def _check_shape(self, t: torch.Tensor) -> None:
        self._check_images(t)

    def _energy(self, z: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range()
        dv = z[:, :, 1:, :] - z[:, :, :-1, :]
        dh = z[:, :, :, 1:] - z[:, :, :, :-1]
        if self.norm == 1:
            eps = 1e-6 * (hi - lo) ** 2
            tv = (dv**2 + eps).sqrt().sum() + (dh**2 + eps).sqrt().sum()
        else:
            tv = (dv**2).sum() + (dh**2).sum()
        return (keep * (z - x) ** 2).sum() + self.lamb * tv

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range()
        n, _, h, w = x.shape
        draw = torch.rand((n, 1, h, w), generator=self._rng(x.device), device=x.device)
        keep = (draw < self.prob).to(x.dtype)
        target = x.detach()
        kept = keep.sum(dim=(2, 3), keepdim=True)
        fill = (keep * target).sum(dim=(2, 3), keepdim=True) / kept.clamp_min(1.0)
        fill = torch.where(kept > 0, fill, torch.full_like(fill, (lo + hi) / 2))
        z = (keep * target + (1 - keep) * fill).requires_grad_(True)
        opt = torch.optim.LBFGS([z], max_iter=int(self.max_iter), line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self._energy(z, target, keep)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return z.detach().clamp(lo, hi)
