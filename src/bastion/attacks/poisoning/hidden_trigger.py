"""Hidden-trigger backdoor (Saha, Subramanya and Pirsiavash, 2020).

The poisons are correctly labelled target-class images, slightly perturbed so that their
features coincide with those of *triggered* source-class images. The trigger never appears in
the training data; a model fine-tuned on the poisons nevertheless maps triggered source
images to the target class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bastion._tensor import RandomStateLike
from bastion._validation import (
    LAYER,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    invalid_parameter,
)
from bastion.attacks.poisoning._base import _pick, _resolve_layer, _share
from bastion.attacks.poisoning.triggers import TRIGGER, Trigger, _TriggerAttack
from bastion.estimators.base import SupportsActivationGradientAndPredict

__all__ = ["HiddenTriggerBackdoor"]


def _distance_to(paired: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample squared feature distance to the paired triggered source features."""

    def distance(feat: torch.Tensor) -> torch.Tensor:
        return (feat.flatten(1) - paired).pow(2).sum(dim=1)

    return distance


class HiddenTriggerBackdoor(_TriggerAttack):
    """Hidden-trigger backdoor: target-class poisons that collide with triggered source images.

    ``K`` target-class training images ``t_k`` (a ``fraction`` of that class) become poisons
    ``z_k`` solving

    ``min_z sum_k ||f(z_k) - f(s~_a(k))||^2  s.t.  ||z_k - t_k||_inf <= eps``,

    where ``f`` is the output of ``layer`` and ``s~`` are source-class training images with
    the trigger stamped on them. As in the paper's algorithm, every ``reassign_every`` steps a
    fresh set of ``K`` source images is drawn and triggered, and each poison is paired with a
    distinct triggered source image so that the total feature distance is minimal (the
    assignment ``a``, solved exactly); each step is ``z <- z - lr * grad`` followed by the
    projection onto the eps-ball around ``t`` and ``clip_values``, and the learning rate is
    multiplied by ``decay`` every ``reassign_every`` steps. Labels are never changed and the
    trigger is not stamped on any training image.

    Threat model: clean-label backdoor for transfer learning; white-box access to the feature
    extractor the victim fine-tunes from. At test time the trigger (:meth:`apply_trigger`) on
    a source-class image should give the target class.

    ``poison(x, y)`` takes images ``(N, *input_shape)`` (channel-first, ``(C, H, W)``) inside
    the estimator's ``clip_values``, with samples of both the target and the source class;
    it returns ``y`` unchanged.

    Parameters
    ----------
    estimator : estimator with ``activations`` and ``activation_gradient``
        The feature extractor the victim fine-tunes from (e.g. a
        :class:`~bastion.estimators.TorchClassifier`).
    trigger : Trigger
        The secret trigger (the paper pastes a random patch at a random location).
    target : int
        Class of the poisons; triggered source images should be classified as it.
    source : int
        Class whose triggered images should go to the target class.
    layer : str or int, default=-2
        Feature layer (name or index of ``estimator.layer_names``).
    fraction : float, default=0.5
        Fraction of the target-class training images turned into poisons, in ``(0, 1]``.
    eps : float, default=16/255
        Linf bound of the perturbation of each poison.
    learning_rate : float, default=0.01
        Initial gradient step.
    max_iter : int, default=200
    decay : float, default=0.95
        Learning-rate factor applied every ``reassign_every`` steps, in ``(0, 1]``.
    reassign_every : int, default=10
        Steps between two draws of triggered source images and re-pairings.
    random_state : None, int or torch.Generator, default=None
        Chooses the poisons, the source images and trigger positions.
    verbose : bool, default=False

    Attributes
    ----------
    poison_indices_ : numpy.ndarray of int
    loss_history_ : list of float
        Mean squared feature distance between poisons and their paired triggered sources.

    References
    ----------
    A. Saha, A. Subramanya, H. Pirsiavash. "Hidden Trigger Backdoor Attacks." AAAI 2020.
    https://arxiv.org/abs/1910.00033

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.poisoning import PatchTrigger
    >>> from bastion.attacks.poisoning.hidden_trigger import HiddenTriggerBackdoor
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 2))
    >>> clf = TorchClassifier(net, input_shape=(1, 4, 4), nb_classes=2)
    >>> x, y = torch.rand(20, 1, 4, 4) * 0.5, torch.arange(20) % 2
    >>> attack = HiddenTriggerBackdoor(clf, PatchTrigger(size=2), target=1, source=0,
    ...                                eps=0.1, max_iter=20, random_state=0)
    >>> x_p, y_p, mask = attack.poison(x, y)
    >>> int(mask.sum()), bool(torch.equal(y_p, y)), bool(((x_p - x).abs() <= 0.1 + 1e-6).all())
    (5, True, True)
    """

    estimator: SupportsActivationGradientAndPredict

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "trigger": TRIGGER,
        "target": [Interval(int, 0, None)],
        "source": [Interval(int, 0, None)],
        "layer": LAYER,
        "fraction": [Interval(float, 0, 1, closed="right")],
        "eps": [Interval(float, 0, None, closed="neither")],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "max_iter": [Interval(int, 0, None)],
        "decay": [Interval(float, 0, 1, closed="right")],
        "reassign_every": [Interval(int, 1, None)],
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("activations", "activation_gradient")
    _class_parameters = ("target", "source")

    def __init__(
        self,
        estimator: SupportsActivationGradientAndPredict,
        trigger: Trigger,
        *,
        target: int,
        source: int,
        layer: str | int = -2,
        fraction: float = 0.5,
        eps: float = 16 / 255,
        learning_rate: float = 0.01,
        max_iter: int = 200,
        decay: float = 0.95,
        reassign_every: int = 10,
        random_state: RandomStateLike = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.trigger = trigger
        self.target = target
        self.source = source
        self.layer = layer
        self.fraction = fraction
        self.eps = eps
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.decay = decay
        self.reassign_every = reassign_every
        self.random_state = random_state
        self.verbose = verbose

    def _why_nothing(self) -> str:
        return f"no sample of the target class {self.target} or of the source class {self.source}"

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        from scipy.optimize import linear_sum_assignment

        name = type(self).__name__
        if self.source == self.target:
            raise invalid_parameter("source", name, "a class other than target", self.source)
        est = self.estimator
        layer = _resolve_layer(est, self.layer, name)
        target = int(self.target)
        idx = _pick(y, target, _share(y, target, float(self.fraction)), generator)
        sources = torch.nonzero(y == int(self.source)).flatten()
        self.loss_history_: list[float] = []
        if idx.numel() == 0 or sources.numel() == 0:
            return idx[:0], x[:0], None

        t = x[idx.to(x.device)].to(device=est.device, dtype=est.dtype)
        x_src = x[sources.to(x.device)].to(device=est.device, dtype=est.dtype)
        k, eps = t.shape[0], float(self.eps)
        lo, hi = est.clip_values if est.clip_values is not None else (-np.inf, np.inf)
        z = t.clone()
        lr = float(self.learning_rate)
        paired = t  # placeholder, set at step 0
        for step in tqdm(range(self.max_iter), desc=name, disable=not self.verbose):
            if step % self.reassign_every == 0:
                if step:
                    lr *= float(self.decay)
                draw = torch.randint(sources.numel(), (k,), generator=generator)
                s_trig = self.trigger._apply_tensor(x_src[draw.to(x_src.device)], generator)
                with torch.no_grad():
                    f_s = est.activations_tensor(s_trig, layer).flatten(1)
                    f_z = est.activations_tensor(z, layer).flatten(1)
                cost = torch.cdist(f_z, f_s).cpu().numpy()
                _, cols = linear_sum_assignment(cost)
                paired = f_s[torch.as_tensor(cols, device=f_s.device)]
            grad, value, _ = est.activation_gradient_tensor(z, layer, _distance_to(paired))
            self.loss_history_.append(float(value.mean()))
            z = torch.minimum(torch.maximum(z - lr * grad, t - eps), t + eps).clamp(lo, hi)
        return idx, z, None
