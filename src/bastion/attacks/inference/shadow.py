"""Shadow-model membership inference (Shokri et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
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
)
from bastion.attacks.inference._base import MembershipInferenceAttack, log_scores
from bastion.estimators.base import SupportsPredict, require_capabilities
from bastion.exceptions import InputError

__all__ = ["ShadowModelAttack"]


def _default_attack_model(random_state: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=100, min_samples_leaf=3, n_jobs=1, random_state=random_state
    )


class ShadowModelAttack(MembershipInferenceAttack):
    """Shadow models: learn what the target's outputs look like on members.

    :meth:`fit` trains ``nb_shadow_models`` shadow models with ``shadow_trainer`` on the
    attacker's data, each on a random half of it (its IN samples; the other half is OUT), and
    fits an attack classifier that tells IN from OUT from a shadow model's probability
    vector: one attack model per class (``attack_model="per_class"``, as in the paper) or one
    for all classes, fed the probability vector and the one-hot label (``"global"``). The
    score of a candidate is the attack model's probability that it is a member.

    Threat model: black-box with scores; the attacker knows the training recipe and has data
    from the target's distribution (disjoint from the target's training set, ideally).

    Parameters
    ----------
    estimator : estimator with ``predict``
        The target model.
    shadow_trainer : callable ``(x, y, random_state) -> estimator``
        Trains one shadow model like the target and returns a fitted bastion estimator.
    nb_shadow_models : int, default 4
    attack_model : {"per_class", "global"}, default "per_class"
    attack_model_factory : callable ``random_state -> classifier``, optional
        An unfitted scikit-learn-style binary classifier (``fit``, ``predict_proba``); the
        default is a random forest of 100 trees.
    batch_size : int, default 256
    random_state : None, int or torch.Generator
        Seeds the halves and the seeds of the shadow and attack models.
    verbose : bool, default False
        Progress bar over the shadow models.

    Attributes
    ----------
    shadow_models_ : list of estimators
    attack_models_ : dict
        Class index (or ``"global"``) to fitted attack classifier (None where the shadow data
        had no sample of the class).

    References
    ----------
    Shokri, Stronati, Song and Shmatikov, "Membership Inference Attacks Against Machine
    Learning Models", IEEE S&P 2017. https://arxiv.org/abs/1610.05820

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from bastion.estimators import SklearnClassifier
    >>> from bastion.attacks.inference.shadow import ShadowModelAttack
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 10)).astype(np.float32)
    >>> y = rng.integers(0, 2, 200)
    >>> def train(x, y, random_state):
    ...     return SklearnClassifier(LogisticRegression(C=100, max_iter=1000).fit(x, y))
    >>> target = train(x[:40], y[:40], 0)  # members: the first 40; x[40:80] non-members
    >>> attack = ShadowModelAttack(target, shadow_trainer=train, attack_model="global",
    ...                            random_state=0).fit(x[80:], y[80:])
    >>> scores = attack.infer(x[:80], y[:80])
    >>> bool(scores[:40].mean() > scores[40:].mean())
    True
    """

    _needs_fit = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "shadow_trainer": [Satisfies(callable, "a callable"), NONE],
        "nb_shadow_models": [Interval(int, 1, None)],
        "attack_model": [Options(["per_class", "global"])],
        "attack_model_factory": [Satisfies(callable, "a callable"), NONE],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsPredict,
        *,
        shadow_trainer: Callable[..., Any] | None = None,
        nb_shadow_models: int = 4,
        attack_model: str = "per_class",
        attack_model_factory: Callable[[int], Any] | None = None,
        batch_size: int = 256,
        random_state: Any = None,
        verbose: bool = False,
    ):
        self.estimator = estimator
        self.shadow_trainer = shadow_trainer
        self.nb_shadow_models = nb_shadow_models
        self.attack_model = attack_model
        self.attack_model_factory = attack_model_factory
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def _features(self, estimator: SupportsPredict, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        probs = torch.softmax(log_scores(estimator, x, self.batch_size), dim=1)
        if self.attack_model == "global":
            onehot = torch.nn.functional.one_hot(y, probs.shape[1]).to(probs)
            probs = torch.cat([probs, onehot], dim=1)
        return probs.cpu().numpy()

    def fit(self, x: Any, y: Any) -> ShadowModelAttack:
        """Train the shadow models and the attack model(s) on the attacker's data ``(x, y)``.

        Returns
        -------
        self
        """
        self._validate()
        if self.shadow_trainer is None:
            raise InputError(
                "ShadowModelAttack needs shadow_trainer: a function (x, y, random_state) -> "
                "fitted estimator, to train its shadow models."
            )
        xt, yt, kind = self._inputs(x, y)
        n = xt.shape[0]
        if n < 4:
            raise InputError(f"ShadowModelAttack needs at least 4 samples to fit; got {n}.")
        gen = resolve_random_state(self.random_state, "cpu")
        seeds = torch.randint(0, 2**31 - 1, (self.nb_shadow_models + 1,), generator=gen).tolist()
        feats, labels, classes, models = [], [], [], []
        for i in tqdm(range(self.nb_shadow_models), desc="shadow models", disable=not self.verbose):
            order = torch.randperm(n, generator=gen).to(xt.device)
            half = n // 2
            tr, out = order[:half], order[half : 2 * half]
            y_tr = yt[tr] if kind.is_tensor else yt[tr].cpu().numpy()
            model = self.shadow_trainer(kind.restore(xt[tr]), y_tr, random_state=seeds[i])
            require_capabilities(model, ("predict",), "ShadowModelAttack (a shadow model)")
            models.append(model)
            both = torch.cat([tr, out])
            feats.append(self._features(model, xt[both], yt[both]))
            labels.append(np.r_[np.ones(half), np.zeros(half)])
            classes.append(yt[both].cpu().numpy())
        f, lab, cls = np.concatenate(feats), np.concatenate(labels), np.concatenate(classes)
        factory = self.attack_model_factory or _default_attack_model
        self.attack_models_: dict[Any, Any] = {}
        groups = (
            {"global": np.ones(len(lab), dtype=bool)}
            if self.attack_model == "global"
            else {k: cls == k for k in range(self.estimator.nb_classes)}
        )
        for key, sel in groups.items():
            if len(np.unique(lab[sel])) < 2:
                self.attack_models_[key] = None
                continue
            self.attack_models_[key] = factory(seeds[-1]).fit(f[sel], lab[sel])
        self.shadow_models_ = models
        self._fitted = True
        return self

    def _infer(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = self._features(self.estimator, x, y)
        scores = np.full(len(f), 0.5)
        yn = y.cpu().numpy()
        for key, model in self.attack_models_.items():
            if model is None:
                continue
            sel = np.ones(len(f), dtype=bool) if key == "global" else yn == key
            if sel.any():
                proba = model.predict_proba(f[sel])
                member_col = list(model.classes_).index(1.0)
                scores[sel] = proba[:, member_col]
        return torch.as_tensor(scores, dtype=torch.float64, device=x.device)
