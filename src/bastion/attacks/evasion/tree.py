"""Attacks on tree models, which have no gradients: they read the fitted trees (the
``"trees"`` capability, a :class:`~bastion.estimators.TreeEnsemble`).

* :class:`DecisionTreeAttack` (Papernot, McDaniel and Goodfellow 2016): one decision tree; move
  the sample into the nearest leaf of another class, changing as few features as possible.
* :class:`TreeEnsembleMILPAttack` (Kantchelian, Tygar and Joseph 2016): the exact
  minimal L-inf or L1 perturbation for any ensemble whose class scores are linear in its leaves
  (random forests, gradient boosting, AdaBoost), as a mixed-integer linear program solved by
  HiGHS (``scipy.optimize.milp``).

For a faster approximate attack on large ensembles, run a decision-based attack
(:class:`~bastion.attacks.evasion.HopSkipJump`, :class:`~bastion.attacks.evasion.SignOPT`) on
the same estimator: it only needs ``predict``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from bastion._validation import BATCH_SIZE, TARGETED, VERBOSE, Constraint, Interval, Options
from bastion.attacks.base import MinimumNormAttack
from bastion.attacks.evasion._tree_milp import Program
from bastion.estimators._trees import SupportsTreesAndPredict, Tree, TreeEnsemble
from bastion.exceptions import EstimatorError

__all__ = ["DecisionTreeAttack", "KantchelianAttack", "TreeEnsembleMILPAttack"]


def _ensemble(estimator: SupportsTreesAndPredict, owner: str) -> TreeEnsemble:
    ens = estimator.trees()
    if not isinstance(ens, TreeEnsemble):
        raise EstimatorError(
            f"{owner}: {type(estimator).__name__}.trees() must return a TreeEnsemble, got "
            f"{type(ens).__name__}"
        )
    return ens


class DecisionTreeAttack(MinimumNormAttack):
    """Papernot's attack on a decision tree: move each sample into a leaf of another class
    (or of the target class), changing as few features as possible.

    The leaves of the tree partition the input space into boxes. For each sample the attack
    considers every leaf of a wanted class whose box meets ``clip_values`` (and leaves the
    frozen features of ``mask`` alone), counts the features that must cross a threshold on the
    leaf's path, and picks the leaf with the fewest (ties: the smallest L-inf change). Each such
    feature is set just past its threshold, ``threshold +/- offset`` (or the middle of the
    leaf's interval when it is narrower than ``offset``). Papernot et al. search the leaves
    near the sample's own leaf, going up the tree one level at a time; searching all leaves
    gives the fewest changed features, which that search approximates.

    Threat model: white-box (the tree's structure), untargeted or targeted. No budget: the
    number of changed features is what is minimised (an L0 attack).

    Parameters
    ----------
    estimator : estimator with the ``"trees"`` capability, holding one tree
        E.g. ``SklearnClassifier(DecisionTreeClassifier(...))``.
    offset : float, default 0.001
        How far past a threshold a changed feature is set.
    targeted : bool, default False
    batch_size : int, default 128
    verbose : bool, default False

    References
    ----------
    Papernot, McDaniel and Goodfellow, "Transferability in Machine Learning: from Phenomena to
    Black-Box Attacks using Adversarial Samples", arXiv:1605.07277, 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> from bastion.estimators import SklearnClassifier
    >>> from bastion.attacks.evasion import DecisionTreeAttack
    >>> x, y = load_digits(return_X_y=True)
    >>> x = (x / 16).astype(np.float32)
    >>> tree = DecisionTreeClassifier(random_state=0).fit(x, y)
    >>> clf = SklearnClassifier(tree, clip_values=(0, 1))
    >>> x_adv = DecisionTreeAttack(clf).generate(x[:10])
    >>> bool((clf.predict(x_adv).argmax(1) != clf.predict(x[:10]).argmax(1)).all())
    True
    """

    estimator: SupportsTreesAndPredict

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "offset": [Interval(float, 0, None, closed="neither")],
        "targeted": TARGETED,
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "trees")

    def __init__(
        self,
        estimator: SupportsTreesAndPredict,
        *,
        offset: float = 0.001,
        targeted: bool = False,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.offset = offset
        self.targeted = targeted
        self.batch_size = batch_size
        self.verbose = verbose

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        ens = _ensemble(self.estimator, type(self).__name__)
        if len(ens.trees) != 1:
            raise EstimatorError(
                f"DecisionTreeAttack needs a single decision tree; the estimator holds "
                f"{len(ens.trees)} trees (use TreeEnsembleMILPAttack or HopSkipJump)"
            )
        tree: Tree = ens.trees[0]
        leaves, lower_np, upper_np = tree.leaf_boxes(ens.n_features)
        dev = x.device
        n_leaves, n_features = lower_np.shape
        # Each leaf bounds only the few features on its path: keep those (K per leaf, padded
        # with the dummy feature n_features and unbounded sides) instead of all features, so
        # the search works on samples x leaves x K values rather than x features.
        bounded = np.isfinite(lower_np) | np.isfinite(upper_np)
        k = max(1, int(bounded.sum(axis=1).max(initial=0)))
        feat_np = np.full((n_leaves, k), n_features, dtype=np.int64)
        lo_np = np.full((n_leaves, k), -np.inf)
        hi_np = np.full((n_leaves, k), np.inf)
        rows_np, cols_np = np.nonzero(bounded)
        slot = np.arange(rows_np.size) - np.searchsorted(rows_np, rows_np)
        feat_np[rows_np, slot] = cols_np
        lo_np[rows_np, slot] = lower_np[rows_np, cols_np]
        hi_np[rows_np, slot] = upper_np[rows_np, cols_np]
        feat = torch.as_tensor(feat_np, device=dev)
        lower = torch.as_tensor(lo_np, device=dev)
        upper = torch.as_tensor(hi_np, device=dev)
        real = feat < n_features
        scores = torch.as_tensor(ens.base + tree.value[leaves], device=dev)
        leaf_class = scores.argmax(dim=1)
        flat = x.reshape(x.shape[0], -1)
        frozen = None if mask is None else (mask.expand_as(x).reshape(x.shape[0], -1) == 0)
        # Samples x leaves at once, in chunks of about 2**24 / n_features leaf-feature pairs.
        step = max(1, 2**24 // max(1, lower_np.size))
        parts = [
            self._nearest_leaf(
                flat[i : i + step],
                y[i : i + step],
                None if frozen is None else frozen[i : i + step],
                feat,
                real,
                lower,
                upper,
                leaf_class,
                ens.left_if,
            )
            for i in range(0, x.shape[0], step)
        ]
        return torch.cat(parts).reshape(x.shape)

    def _nearest_leaf(
        self,
        flat: torch.Tensor,
        y: torch.Tensor,
        frozen: torch.Tensor | None,
        feat: torch.Tensor,
        real: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        leaf_class: torch.Tensor,
        left_if: str,
    ) -> torch.Tensor:
        """For each sample, the point of the wanted leaf that needs the fewest changes.

        ``feat`` (L, K) lists the features each leaf bounds (padding: the dummy feature
        ``F``, unbounded), ``lower``/``upper`` (L, K) their bounds. A feature a leaf does not
        bound keeps its value, so it only has to be valid as it is (inside ``clip_values``).
        """
        dev = flat.device
        n = flat.shape[0]
        clip = self.estimator.clip_values
        # The sample's features plus the dummy one (value 0, never frozen, always valid).
        xe = torch.cat([flat, flat.new_zeros(n, 1)], dim=1)
        x_d = flat.double()
        if left_if == "le":
            valid = (x_d > -torch.inf) & (x_d <= torch.inf)
        else:
            valid = (x_d >= -torch.inf) & (x_d < torch.inf)
        if clip is not None:
            valid &= (flat >= clip[0]) & (flat <= clip[1])
        bad = torch.cat([~valid, valid.new_zeros(n, 1)], dim=1)  # (B, F + 1)
        # The nearest point of each leaf's box: x where it already lies inside, else just past
        # the threshold (the middle of the interval when it is narrower than the offset).
        x_k = xe[:, feat]  # (B, L, K)
        x0 = x_k.double()
        width = upper - lower
        past_lower = torch.where(width > self.offset, lower + self.offset, lower + width / 2)
        below_upper = torch.where(width > self.offset, upper - self.offset, upper - width / 2)
        if left_if == "le":
            need_up, need_down = x0 <= lower, x0 > upper
        else:
            need_up, need_down = x0 < lower, x0 >= upper
        target = torch.where(need_up, past_lower, torch.where(need_down, below_upper, x0))
        cand = target.to(flat.dtype)
        cand_d = cand.double()
        if left_if == "le":
            inside = (cand_d > lower) & (cand_d <= upper)
        else:
            inside = (cand_d >= lower) & (cand_d < upper)
        changed = cand != x_k
        if clip is not None:
            inside &= (cand >= clip[0]) & (cand <= clip[1])
        # Bounded features must land inside (and inside clip_values); the others stay as
        # they are, so none of them may be invalid.
        ok = (inside | ~real).all(dim=2)
        ok &= (bad.sum(dim=1)[:, None] - (bad[:, feat] & real).sum(dim=2)) == 0
        if frozen is not None:
            frozen_e = torch.cat([frozen, frozen.new_zeros(n, 1)], dim=1)
            ok &= ~(changed & frozen_e[:, feat]).any(dim=2)
        wanted = leaf_class[None, :] == y[:, None]
        ok &= wanted if self.targeted else ~wanted
        n_changed = changed.sum(dim=2).double()
        linf = ((cand_d - x0).abs() * changed).amax(dim=2)
        # Fewest changed features first, then the smallest L-inf change.
        key = n_changed + linf / (linf.max() + 1.0)
        key = torch.where(ok, key, torch.inf)
        best = key.argmin(dim=1)
        found = torch.isfinite(key.gather(1, best[:, None]).squeeze(1))
        rows = torch.arange(n, device=dev)
        out = xe.clone()
        out[rows[:, None], feat[best]] = cand[rows, best]
        return torch.where(found[:, None], out[:, :-1], flat)


class TreeEnsembleMILPAttack(MinimumNormAttack):
    """Kantchelian's exact evasion of tree ensembles: the smallest L-inf or L1 perturbation
    that changes the ensemble's decision, found by a mixed-integer linear program.

    Formulation (per sample, solved by HiGHS through ``scipy.optimize.milp``):

    * one binary *predicate* variable ``p[f, i] = [x_f <= t_i]`` per feature ``f`` and each of
      the distinct thresholds ``t_1 < t_2 < ...`` the ensemble splits ``f`` at, with the
      ordering constraints ``p[f, i] <= p[f, i+1]``;
    * one *leaf* variable ``l[t, j]`` in ``[0, 1]`` per leaf, ``sum_j l[t, j] = 1`` per tree,
      and for each internal node splitting on ``p``: the leaves of its left subtree sum to at
      most ``p``, those of its right subtree to at most ``1 - p`` (so exactly the leaf the
      predicates lead to is 1);
    * the class scores ``s_k = base_k + sum v[t, j, k] l[t, j]`` (linear in the leaves: an
      average of leaf class distributions for a random forest, summed per-class leaf values
      for gradient boosting, weighted votes for AdaBoost), and the misclassification
      constraint ``s_c - s_y >= margin``;
    * the distance to ``x`` as a function of the predicates: L-inf: ``d >= |t_i - x_f|`` for
      every threshold crossed; L1: the telescoped sum of the gaps between the thresholds
      crossed. Minimise it.

    Untargeted with more than two classes, one program is solved per other class ``c`` (each
    bounded by the best distance found so far) and the smallest kept; targeted, one program
    requires ``s_target - s_k >= margin`` for every ``k``. A tie counts as no change (the
    margin is strict). The point returned is the nearest point of the cell the predicates
    define, with the open side of a split met by the next representable value, inside
    ``clip_values``; then each feature the decision does not need is put back (largest change
    first; an L-inf optimum leaves the features under the bound free). Frozen features
    (``mask``) keep their predicates.

    Limits: the program has as many binaries as distinct (feature, threshold) pairs and a
    constraint per node; forests of tens of trees with a few thousand leaves solve in seconds
    per sample, far larger ones may hit ``time_limit``: then the best point found is returned
    and ``optimal_`` is False for that sample (a sample with no point found comes back
    unchanged).

    Threat model: white-box (the trees), untargeted or targeted. Norms: ``"inf"``, 1.

    Parameters
    ----------
    estimator : estimator with the ``"trees"`` capability
    norm : {"inf", 1}, default "inf"
    targeted : bool, default False
    margin : float, default 1e-6
        How much the adversarial class's score must exceed the label's (ties do not count).
    time_limit : float, default 60.0
        Seconds the solver may spend on one sample (all its programs together).
    batch_size : int, default 128
    verbose : bool, default False

    Attributes
    ----------
    optimal_ : ndarray of bool, shape (N,)
        After :meth:`generate`: the solver proved the distance minimal (False when a sample
        timed out; a sample the attack cannot misclassify at all is optimal too).
    distances_ : ndarray of float, shape (N,)
        The minimal distance per sample (inf where no adversarial point was found): the
        infimum over the cell found; the returned point is at most one float step further,
        across the open side of a split.

    References
    ----------
    Kantchelian, Tygar and Joseph, "Evasion and Hardening of Tree Ensemble Classifiers",
    ICML 2016. https://proceedings.mlr.press/v48/kantchelian16.html

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from bastion.estimators import SklearnClassifier
    >>> from bastion.attacks.evasion import TreeEnsembleMILPAttack
    >>> x, y = load_breast_cancer(return_X_y=True)
    >>> x = ((x - x.min(0)) / (x.max(0) - x.min(0))).astype(np.float32)
    >>> rf = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, y)
    >>> clf = SklearnClassifier(rf, clip_values=(0, 1))
    >>> attack = TreeEnsembleMILPAttack(clf)
    >>> x_adv = attack.generate(x[:3])
    >>> bool((clf.predict(x_adv).argmax(1) != clf.predict(x[:3]).argmax(1)).all())
    True
    >>> bool(attack.optimal_.all())
    True
    """

    estimator: SupportsTreesAndPredict

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "norm": [Options(["inf", float("inf"), 1])],
        "targeted": TARGETED,
        "margin": [Interval(float, 0, None, closed="neither")],
        "time_limit": [Interval(float, 0, None, closed="neither")],
        "batch_size": BATCH_SIZE,
        "verbose": VERBOSE,
    }
    _estimator_requirements = ("predict", "trees")

    def __init__(
        self,
        estimator: SupportsTreesAndPredict,
        *,
        norm: Any = "inf",
        targeted: bool = False,
        margin: float = 1e-6,
        time_limit: float = 60.0,
        batch_size: int = 128,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.norm = norm
        self.targeted = targeted
        self.margin = margin
        self.time_limit = time_limit
        self.batch_size = batch_size
        self.verbose = verbose

    def _generate_tensor(self, x: torch.Tensor, y: Any, mask: Any) -> torch.Tensor:
        self._optimal: list[bool] = []
        self._distances: list[float] = []
        self._program: Program | None = None
        out = super()._generate_tensor(x, y, mask)
        self.optimal_ = np.asarray(self._optimal, dtype=bool)
        self.distances_ = np.asarray(self._distances, dtype=np.float64)
        return out

    def _attack(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        if getattr(self, "_program", None) is None:
            self._program = Program(_ensemble(self.estimator, type(self).__name__))
            self._optimal, self._distances = [], []
        prog = self._program
        assert prog is not None
        flat = x.reshape(x.shape[0], -1)
        x_adv = flat.clone()
        clip = self.estimator.clip_values
        l1 = str(self.norm) == "1"
        frozen_all = None
        if mask is not None:
            frozen_all = (mask.expand_as(x).reshape(x.shape[0], -1) == 0).cpu().numpy()
        for i in range(x.shape[0]):
            frozen = None if frozen_all is None else frozen_all[i]
            point, dist, optimal = prog.solve(
                flat[i],
                int(y[i]),
                targeted=self.targeted,
                l1=l1,
                margin=self.margin,
                clip=clip,
                frozen=frozen,
                time_limit=float(self.time_limit),
            )
            self._optimal.append(optimal)
            self._distances.append(dist)
            if point is not None:
                x_adv[i] = point
        return x_adv.reshape(x.shape)


#: The short name, after the first author.
KantchelianAttack = TreeEnsembleMILPAttack
