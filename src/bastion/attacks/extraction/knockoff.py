"""Knockoff Nets: random or adaptive (gradient-bandit) query selection, soft-label training."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bastion._clustering import kmeans
from bastion._tensor import to_tensor
from bastion._validation import Boolean, Constraint, Interval, Options
from bastion.attacks.extraction._base import THIEF_CONSTRAINTS, ExtractionAttack
from bastion.estimators.base import SupportsFit, SupportsLogits, SupportsPredict
from bastion.exceptions import InputError

__all__ = ["KnockoffNets"]


class _SupportsLogitsAndFit(SupportsLogits, SupportsFit, Protocol):
    """The thief of KnockoffNets: trained, and scored with its logits."""


class KnockoffNets(ExtractionAttack):
    """Knockoff Nets (Orekondy et al. 2019): steal functionality with a transfer set.

    The attacker queries the victim with images from its own pool and trains the thief on the
    victim's probability vectors (soft cross-entropy). Two query strategies:

    * ``sampling="random"``: ``nb_queries`` pool samples drawn uniformly without replacement;
    * ``sampling="adaptive"``: a gradient-bandit policy over *actions* (the pool's coarse
      labels ``y_pool`` when given, otherwise ``nb_actions`` k-means clusters of the pool)
      learns which parts of the pool are worth querying. At each step a batch of actions is
      drawn from ``softmax(H)``, one unqueried sample per action is sent to the victim, the
      thief takes one training step on them, and each sample's reward (certainty +
      diversity + loss, each standardised by its running mean and variance, as in the paper)
      updates the preferences ``H`` with the REINFORCE / gradient-bandit rule with a running
      reward baseline. The thief is finally trained on everything queried.

    Threat model: black-box, score-based (probabilities help; ``use_probabilities=False``
    trains on top-1 labels, e.g. against a labels-only API). Cost: ``nb_queries`` queries.

    Parameters
    ----------
    victim : estimator
        The model to steal (``predict``).
    thief : TorchClassifier
        The attacker's fresh model; trained in place.
    nb_queries : int, default 1000
        Victim queries (at most the pool size).
    sampling : {"random", "adaptive"}, default "random"
    reward : {"all", "cert", "div", "loss"}, default "all"
        Adaptive reward: certainty (top-1 minus top-2 probability), diversity (how far the
        output lies above the running mean output), loss (the thief's cross-entropy against
        the victim's output, before training on it), or the mean of the three standardised.
    nb_actions : int, default 10
        Number of k-means clusters used as actions when ``y_pool`` is not given.
    policy_learning_rate : float, default 0.1
        Step size of the gradient-bandit update of the preferences.
    query_batch_size : int, default 16
        Actions drawn (samples queried) per adaptive step.
    epochs : int, default 10
        Epochs of the final training on the transfer set.
    batch_size : int, default 64
        Training batch size.
    learning_rate : float, default 1e-3
        Adam's learning rate.
    use_probabilities : bool, default True
        Train on the victim's probabilities (the paper), or on its top-1 labels.
    random_state : None, int or torch.Generator
    verbose : bool, default False

    Attributes
    ----------
    queries_ : int
        Victim queries spent by the last :meth:`extract`.
    x_queried_, y_queried_ : torch.Tensor
        The transfer set: queried samples and the victim's outputs.
    actions_ : torch.Tensor
        Action (cluster or coarse label) of each queried sample (adaptive sampling).
    policy_ : torch.Tensor
        Final action probabilities ``softmax(H)`` (adaptive sampling).

    References
    ----------
    Orekondy, Schiele and Fritz, "Knockoff nets: Stealing functionality of black-box models",
    CVPR 2019. https://arxiv.org/abs/1812.02766

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.attacks.extraction import KnockoffNets
    >>> make = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> victim = TorchClassifier(make(), input_shape=(4,), nb_classes=3)
    >>> thief = TorchClassifier(make(), input_shape=(4,), nb_classes=3)
    >>> attack = KnockoffNets(victim, thief=thief, nb_queries=40, sampling="adaptive",
    ...                       nb_actions=4, epochs=2, random_state=0)
    >>> stolen = attack.extract(torch.rand(100, 4))
    >>> attack.queries_
    40
    """

    thief: _SupportsLogitsAndFit

    #: The adaptive strategy scores each query batch with the thief's logits.
    _thief_requirements: ClassVar[tuple[str, ...]] = ("predict", "logits", "fit")
    _renamed: ClassVar[dict[str, Any]] = {
        "lr": "learning_rate",
        "policy_lr": "policy_learning_rate",
    }
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **THIEF_CONSTRAINTS,
        "sampling": [Options(["random", "adaptive"])],
        "reward": [Options(["all", "cert", "div", "loss"])],
        "nb_actions": [Interval(int, 2, None)],
        "policy_learning_rate": [Interval(float, 0, None, closed="neither")],
        "query_batch_size": [Interval(int, 1, None)],
        "use_probabilities": [Boolean()],
    }

    def __init__(
        self,
        victim: SupportsPredict,
        *,
        thief: _SupportsLogitsAndFit,
        nb_queries: int = 1000,
        sampling: str = "random",
        reward: str = "all",
        nb_actions: int = 10,
        policy_learning_rate: float = 0.1,
        query_batch_size: int = 16,
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        use_probabilities: bool = True,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.victim = victim
        self.thief = thief
        self.nb_queries = nb_queries
        self.sampling = sampling
        self.reward = reward
        self.nb_actions = nb_actions
        self.policy_learning_rate = policy_learning_rate
        self.query_batch_size = query_batch_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.use_probabilities = use_probabilities
        self.random_state = random_state
        self.verbose = verbose

    def extract(self, x_pool: Any, y_pool: Any = None) -> Any:  # type: ignore[override]
        """Steal the victim with the pool ``x_pool``; return the trained thief.

        Parameters
        ----------
        x_pool : array-like or torch.Tensor, shape (N, *input_shape)
            The attacker's natural data.
        y_pool : array-like of int, shape (N,), optional
            Coarse labels of the pool (the paper's label hierarchy), used as the actions of
            adaptive sampling; without them the pool is clustered with k-means.

        Returns
        -------
        thief : estimator
            The thief estimator, trained in place.
        """
        return super().extract(x_pool, y_pool=y_pool)

    def _extract(self, x_pool: torch.Tensor, generator: torch.Generator, **kwargs: Any) -> Any:
        n = min(self.nb_queries, x_pool.shape[0])
        if self.sampling == "random":
            pick = torch.randperm(x_pool.shape[0], generator=generator)[:n].to(x_pool.device)
            x, probs = x_pool[pick], self._query(x_pool[pick])
        else:
            x, probs = self._adaptive(x_pool, n, kwargs.get("y_pool"), generator)
        y = probs if self.use_probabilities else probs.argmax(1)
        self.x_queried_, self.y_queried_ = x, y
        self._train_thief(
            x,
            y,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            generator=generator,
        )
        return self.thief

    # ------------------------------------------------------------------ adaptive

    def _actions(
        self, x_pool: torch.Tensor, y_pool: Any, generator: torch.Generator
    ) -> torch.Tensor:
        if y_pool is not None:
            yt, _ = to_tensor(y_pool, dtype=None)
            if yt.ndim != 1 or yt.shape[0] != x_pool.shape[0] or yt.is_floating_point():
                raise InputError(
                    "y_pool must hold one integer coarse label per pool sample; got shape "
                    f"{tuple(yt.shape)} and dtype {yt.dtype} for {x_pool.shape[0]} samples."
                )
            _, labels = torch.unique(yt, return_inverse=True)
            return labels.to(x_pool.device)
        flat = x_pool.detach().reshape(x_pool.shape[0], -1).to("cpu", torch.float32)
        k = min(self.nb_actions, x_pool.shape[0])
        # one k-means++ start, at most 25 Lloyd iterations: coarse actions are enough
        labels = kmeans(flat.numpy(), k, generator=generator, n_init=1, max_iter=25)
        return torch.from_numpy(labels).to(x_pool.device)

    def _adaptive(
        self, x_pool: torch.Tensor, n: int, y_pool: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = x_pool.device
        actions = self._actions(x_pool, y_pool, generator)
        k = int(actions.max()) + 1
        # per action, its samples in a random order; a pointer says how many were used
        order = torch.randperm(x_pool.shape[0], generator=generator).to(dev)
        order = order[torch.argsort(actions[order], stable=True)]
        sizes = torch.bincount(actions, minlength=k)
        starts = torch.cumsum(sizes, 0) - sizes
        used = torch.zeros(k, dtype=torch.long, device=dev)
        prefs = torch.zeros(k, device=dev)
        baseline = torch.zeros((), device=dev)
        stats_n = 0
        stats_sum = torch.zeros(3, device=dev)
        stats_sq = torch.zeros(3, device=dev)
        y_mean = torch.zeros(self.victim.nb_classes, device=dev)
        xs, ps, acts = [], [], []
        done = 0
        bar = tqdm(total=n, desc="KnockoffNets", disable=not self.verbose)
        while done < n:
            left = sizes - used
            policy = torch.softmax(prefs, 0) * (left > 0)
            b = min(self.query_batch_size, n - done)
            # draw b actions, never more from one action than it has samples left
            chosen = torch.multinomial(
                policy.cpu() / policy.sum().cpu(), b, replacement=True, generator=generator
            ).to(dev)
            chosen = chosen[_rank_within(chosen, k) < left[chosen]]
            counts = torch.bincount(chosen, minlength=k)
            idx = order[starts[chosen] + used[chosen] + _rank_within(chosen, k)]
            used += counts
            xb = x_pool[idx]
            pb = self._query(xb)
            with torch.no_grad():
                thief_logits = self.thief.logits_tensor(xb.to(self.thief.device)).to(dev)
            raw = _rewards(pb, thief_logits, y_mean, done)
            y_mean = y_mean + (pb.sum(0) - pb.shape[0] * y_mean) / (done + pb.shape[0])
            # running standardisation of each reward (sums and sums of squares)
            stats_n += pb.shape[0]
            stats_sum = stats_sum + raw.sum(0)
            stats_sq = stats_sq + (raw * raw).sum(0)
            mean = stats_sum / stats_n
            std = (stats_sq / stats_n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-8)
            z = (raw - mean) / std if stats_n > 1 else raw.clamp(0, 1)
            pick = {"cert": [0], "div": [1], "loss": [2], "all": [0, 1, 2]}[self.reward]
            r = z[:, pick].mean(1)
            # gradient bandit: H += policy_learning_rate * (r - baseline) * (onehot(a) - pi)
            pi = torch.softmax(prefs, 0)
            adv = r - baseline
            grad = (adv.unsqueeze(1) * (F.one_hot(chosen, k).float() - pi)).mean(0)
            prefs = prefs + self.policy_learning_rate * grad
            baseline = baseline + (r.sum() - r.shape[0] * baseline) / (done + r.shape[0])
            # one online training step of the thief on the new samples (as in the paper)
            target = pb if self.use_probabilities else pb.argmax(1)
            self._train_thief(
                xb,
                target,
                epochs=1,
                batch_size=xb.shape[0],
                learning_rate=self.learning_rate,
                generator=generator,
                warm_start=done > 0,
            )
            xs.append(xb)
            ps.append(pb)
            acts.append(chosen)
            done += xb.shape[0]
            bar.update(xb.shape[0])
        bar.close()
        self.actions_ = torch.cat(acts)
        self.policy_ = torch.softmax(prefs, 0)
        return torch.cat(xs), torch.cat(ps)


def _rank_within(chosen: torch.Tensor, k: int) -> torch.Tensor:
    """For each entry, how many earlier entries hold the same action (0, 1, 2 ...)."""
    onehot = F.one_hot(chosen, k)
    return ((onehot.cumsum(0) - 1) * onehot).sum(1)


def _rewards(
    probs: torch.Tensor, thief_logits: torch.Tensor, y_mean: torch.Tensor, seen: int
) -> torch.Tensor:
    """Per-sample (certainty, diversity, loss) rewards, shape (b, 3)."""
    top2 = probs.topk(2, dim=1).values
    cert = top2[:, 0] - top2[:, 1]
    # diversity against the running mean of the outputs seen before this batch
    div = (probs - y_mean).clamp_min(0).sum(1) if seen > 0 else torch.ones_like(cert)
    loss = -(probs * F.log_softmax(thief_logits, dim=1)).sum(1)
    return torch.stack([cert, div, loss], 1)
