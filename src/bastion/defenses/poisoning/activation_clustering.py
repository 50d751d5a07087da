"""Activation clustering (Chen et al. 2018): find backdoor poison by clustering activations."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar, cast

import numpy as np
import torch

from bastion._clustering import kmeans_batch
from bastion._tensor import resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    OPTIONAL_LAYER,
    RANDOM_STATE,
    VERBOSE,
    Constraint,
    Interval,
    Options,
    check_labels,
    validate_params,
)
from bastion.defenses.poisoning._clustering import mosaic, reduce, silhouettes
from bastion.defenses.poisoning.base import DetectionResult, PoisonDetector, _sklearn_seeds
from bastion.estimators.base import SupportsActivationsAndPredict, SupportsCloneFitAndPredict
from bastion.exceptions import EstimatorError, InputError

__all__ = ["ActivationClustering"]

#: k-means++ starts per class, run as one batch (whitened classes have many local optima).
_KMEANS_STARTS = 64


class ActivationClustering(PoisonDetector):
    """Detect backdoor poison by clustering a layer's activations class by class.

    For each class label, the activations of the training samples carrying that label (by
    default at the penultimate layer) are reduced to ``nb_dims`` dimensions and split into
    ``nb_clusters`` clusters with k-means. Poisoned samples of a target class reach it
    through the trigger, not through the features of the class, so their activations form a
    cluster of their own; an analysis rule then decides which clusters are poison.

    Analyses (``analysis``):

    * ``"silhouette"`` (default, the paper's test): a class is judged poisoned when its
      2-means split is well separated, i.e. its silhouette score exceeds
      ``silhouette_threshold``; in a poisoned class the clusters holding less than
      ``size_threshold`` of it are flagged. Clean classes are left alone, so the result is
      meaningful over the whole training set, not only within the target class;
    * ``"smaller"``: the smallest cluster of **every** class is flagged (the ART default; it
      flags clean classes too and is meant to be followed by
      :meth:`exclusionary_reclassification`);
    * ``"relative-size"``: clusters holding less than ``size_threshold`` of their class;
    * ``"distance"``: a cluster whose centre (in the full activation space) is closer to
      the centre of another class than to its own class's centre, while the other clusters of
      the class are not (ART's rule; the closest other class is reported as the likely source).

    Reductions (``reduce``), fitted per class: ``"whiten"`` (default) projects on the top
    ``nb_dims`` principal components scaled to unit variance; ``"fastica"`` (the paper's)
    whitens the same way and then rotates; since k-means and the silhouette use Euclidean
    distances only, both give the same clusters and silhouettes, and ``"whiten"`` skips
    FastICA's iterations. ``"pca"`` keeps the components' variances (ART's ``PCA``): a
    clean class's few dominant directions then make it split well too, so the silhouette
    thresholds above are meant for the whitened reductions. ``"umap"`` needs ``umap-learn``.
    Directions of zero variance (dead ReLU units) are dropped before reducing.

    Scores: ``1 - (size of the sample's cluster) / (size of its class)``, so samples of small
    clusters score high; they compare across classes.

    Memory: activations are computed ``batch_size`` samples at a time into one float32 array
    of ``N x D`` values (``D`` the layer's width, 128 for the penultimate layer of
    :class:`~bastion.zoo.SmallCNN`: 51 MB for 100,000 samples); the reductions, fitted class
    by class, keep ``N x nb_dims`` values in the result. Inputs are never copied.

    Parameters
    ----------
    estimator : Classifier
        The model trained on the suspect data; needs the ``activations`` capability
        (``clone`` and ``fit`` too for the default retraining of
        :meth:`exclusionary_reclassification`).
    layer : str, int or None, default=None
        Layer name or index in ``estimator.layer_names``; ``None`` takes the penultimate one.
    nb_clusters : int, default=2
        Clusters per class (the paper uses 2).
    nb_dims : int, default=10
        Dimensions after reduction (the paper uses 10).
    reduce : {"whiten", "pca", "fastica", "umap"}, default="whiten"
        Dimensionality reduction, fitted per class (see above).
    clustering : {"kmeans"}, default="kmeans"
        Clustering method: Lloyd's k-means with 64 k-means++ starts per class, the starts of
        all classes run side by side as one batched computation (float32; a start leaves
        the batch when it converges), keeping each class's split of lowest inertia.
    analysis : {"silhouette", "smaller", "relative-size", "distance"}, default="silhouette"
        How clusters are judged (see above).
    size_threshold : float, default=0.35
        Relative size under which a cluster is suspicious (``"relative-size"``,
        ``"silhouette"``).
    silhouette_threshold : float, default=0.2
        Silhouette score above which a class counts as really split (``"silhouette"``). On
        whitened activations (10 dimensions) the clean classes of the digits score 0.07 to
        0.14 and a class with a BadNets cluster 0.23 to 0.28.
    batch_size : int, default=128
        Samples per forward pass (on one CPU core, 64 to 128 run the digits CNN 1.4 times
        faster than 256: the activations of a batch then stay in cache).
    random_state : None, int or torch.Generator, default=None
        Seeds the reductions, k-means, silhouette sampling and the retraining of
        :meth:`exclusionary_reclassification`.
    verbose : bool, default=False
        Show a progress bar while computing activations.

    Attributes
    ----------
    layer_ : str or int
        The layer read by the last ``detect``.
    reclassifier_ : Classifier
        After :meth:`exclusionary_reclassification`: the model retrained without the
        flagged clusters.

    References
    ----------
    B. Chen, W. Carvalho, N. Baracaldo, H. Ludwig, B. Edwards, T. Lee, I. Molloy, B.
    Srivastava. "Detecting Backdoor Attacks on Deep Neural Networks by Activation
    Clustering." AAAI Workshop on Artificial Intelligence Safety (SafeAI), 2019.
    arXiv:1811.03728.

    Examples
    --------
    >>> import torch
    >>> from bastion.estimators import TorchClassifier
    >>> from bastion.defenses.poisoning import ActivationClustering
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 2))
    >>> clf = TorchClassifier(net, input_shape=(4,), nb_classes=2)
    >>> x, y = torch.rand(40, 4), torch.arange(40) % 2
    >>> result = ActivationClustering(clf, nb_dims=2, random_state=0).detect(x, y)
    >>> result.is_poison.shape, sorted(result.report)
    ((40,), [0, 1])
    """

    estimator: SupportsActivationsAndPredict

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "layer": OPTIONAL_LAYER,
        "nb_clusters": [Interval(int, 2, None)],
        "nb_dims": [Interval(int, 1, None)],
        "reduce": [Options(["whiten", "pca", "fastica", "umap"])],
        "clustering": [Options(["kmeans"])],
        "analysis": [Options(["smaller", "relative-size", "distance", "silhouette"])],
        "size_threshold": [Interval(float, 0, 1)],
        "silhouette_threshold": [Interval(float, -1, 1)],
        "batch_size": BATCH_SIZE,
        "random_state": RANDOM_STATE,
        "verbose": VERBOSE,
    }

    def __init__(
        self,
        estimator: SupportsActivationsAndPredict,
        *,
        layer: str | int | None = None,
        nb_clusters: int = 2,
        nb_dims: int = 10,
        reduce: str = "whiten",
        clustering: str = "kmeans",
        analysis: str = "silhouette",
        size_threshold: float = 0.35,
        silhouette_threshold: float = 0.2,
        batch_size: int = 128,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.layer = layer
        self.nb_clusters = nb_clusters
        self.nb_dims = nb_dims
        self.reduce = reduce
        self.clustering = clustering
        self.analysis = analysis
        self.size_threshold = size_threshold
        self.silhouette_threshold = silhouette_threshold
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ detection

    def detect(self, x: Any, y: Any) -> DetectionResult:
        """Cluster the activations of each class and flag the suspicious clusters.

        Parameters
        ----------
        x : array-like or torch.Tensor, shape (N, *input_shape)
            The (suspect) training inputs.
        y : array-like or torch.Tensor
            Their labels, class indices ``(N,)`` or one-hot.

        Returns
        -------
        DetectionResult
            With ``clusters`` (cluster of each sample within its class) and ``embeddings``
            (reduced activations per class) filled in.
        """
        acts, labels = self._labelled_activations(x, y)
        gen = resolve_random_state(self.random_state, "cpu")
        k = self.estimator.nb_classes
        seeds = _sklearn_seeds(gen, 2 * k)
        n = labels.shape[0]
        is_poison = np.zeros(n, dtype=bool)
        scores = np.zeros(n, dtype=np.float64)
        clusters = np.full(n, -1, dtype=np.int64)
        embeddings: dict[int, np.ndarray] = {}
        report: dict[int, dict[str, Any]] = {}
        # one stable sort groups the samples by class (a boolean mask per class costs N each)
        order = np.argsort(labels, kind="stable")
        present, first = np.unique(labels[order], return_index=True)
        members = dict(zip(present.tolist(), np.split(order, first[1:]), strict=True))

        reduced: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for c, idx in members.items():
            entry: dict[str, Any] = {"size": int(idx.size), "n_flagged": 0}
            report[c] = entry
            if idx.size < max(self.nb_clusters, 2) + 1:
                entry["skipped"] = f"too few samples ({idx.size}) to cluster"
                continue
            reduced[c] = (idx, reduce(acts[idx], self.reduce, self.nb_dims, seeds[2 * c]))
        # every class's k-means starts advance together (one set of array operations per
        # step), and so do the silhouettes
        cluster_labels = kmeans_batch(
            [red for _, red in reduced.values()],
            self.nb_clusters,
            generator=torch.Generator().manual_seed(seeds[1]),
            n_init=_KMEANS_STARTS,
        )
        sils = silhouettes(
            [red for _, red in reduced.values()], cluster_labels, [seeds[2 * c] for c in reduced]
        )
        centres = (
            {c: acts[idx].mean(axis=0) for c, idx in members.items()}
            if self.analysis == "distance"
            else {}
        )
        for (c, (idx, red)), lab, sil in zip(reduced.items(), cluster_labels, sils, strict=True):
            entry = report[c]
            sizes = np.bincount(lab, minlength=self.nb_clusters)
            rel = sizes / idx.size
            entry.update(
                cluster_sizes=sizes.tolist(),
                relative_sizes=np.round(rel, 4).tolist(),
                silhouette=sil,
            )
            flagged = self._analyse(c, acts, idx, lab, rel, sil, centres, entry)
            entry["flagged_clusters"] = flagged
            in_flagged = np.isin(lab, flagged)
            is_poison[idx] = in_flagged
            entry["n_flagged"] = int(in_flagged.sum())
            scores[idx] = 1.0 - rel[lab]
            clusters[idx] = lab
            embeddings[c] = red.astype(np.float32)
        return DetectionResult(
            is_poison=is_poison,
            scores=scores,
            report=report,
            method=f"ActivationClustering({self.analysis})",
            clusters=clusters,
            embeddings=embeddings,
            labels=labels,
        )

    def _analyse(
        self,
        c: int,
        acts: np.ndarray,
        idx: np.ndarray,
        lab: np.ndarray,
        rel: np.ndarray,
        sil: float,
        centres: dict[int, np.ndarray],
        entry: dict[str, Any],
    ) -> list[int]:
        nonempty = [j for j in range(rel.size) if rel[j] > 0]
        if self.analysis == "smaller":
            return [int(np.argmin(np.where(rel > 0, rel, np.inf)))] if len(nonempty) > 1 else []
        small = [j for j in nonempty if rel[j] < self.size_threshold]
        if self.analysis == "relative-size":
            return small
        if self.analysis == "silhouette":
            entry["suspicious"] = bool(sil > self.silhouette_threshold and small)
            return small if sil > self.silhouette_threshold else []
        # distance: compare each cluster's centre with every class centre (full space).
        means = {j: acts[idx[lab == j]].mean(axis=0) for j in nonempty}
        others = [k for k in centres if k != c]
        own = {j: float(np.linalg.norm(means[j] - centres[c])) for j in nonempty}
        to = {j: {k: float(np.linalg.norm(means[j] - centres[k])) for k in others} for j in means}
        flagged: list[int] = []
        closest: dict[int, int] = {}
        for j in nonempty:
            for k in others:
                closer = to[j][k] < own[j]
                rest_own = all(to[i][k] > own[i] for i in nonempty if i != j)
                if closer and rest_own:
                    flagged.append(j)
                    closest[j] = min(others, key=to[j].__getitem__)
                    break
        entry["distance_to_own_class"] = own
        entry["closest_other_class"] = closest
        return flagged

    # ------------------------------------------------------------------ confirmation

    def exclusionary_reclassification(
        self,
        x: Any,
        y: Any,
        result: DetectionResult,
        *,
        train_fn: Callable[[Any, Any], Any] | None = None,
        epochs: int = 5,
        threshold: float = 1.0,
    ) -> DetectionResult:
        """Confirm or clear the flagged clusters by retraining without them (Chen et al.).

        A model is trained from scratch on the data minus every flagged cluster, then
        classifies the removed samples. A legitimate cluster is mostly classified as its own
        label; a poisonous one as its source class. For each flagged cluster of class ``l``,
        with ``n_l`` removed samples predicted as ``l`` and ``n_p`` predicted as the most
        frequent other class ``p``, the cluster is confirmed poisonous when
        ``n_l / n_p < threshold``, and ``p`` is proposed as its source class.

        Parameters
        ----------
        x, y : array-like or torch.Tensor
            The data given to :meth:`detect`.
        result : DetectionResult
            What :meth:`detect` returned for ``(x, y)``.
        train_fn : callable, optional
            ``train_fn(x, y) -> estimator``: builds and trains a fresh model (any estimator
            with ``predict``). Default: ``estimator.clone(reinitialize=True)`` (fresh weights
            drawn from ``random_state``; the estimator needs the ``clone`` and ``fit``
            capabilities) trained with ``fit(x, y, epochs=epochs)``.
        epochs : int, default=5
            Epochs of the default retraining.
        threshold : float, default=1.0
            Ratio ``n_l / n_p`` under which a cluster is confirmed (the paper's ``T``).

        Returns
        -------
        DetectionResult
            ``is_poison`` only for confirmed clusters; ``proposed_labels`` holds the proposed
            source class of each confirmed sample (-1 elsewhere); each class's report gets an
            ``"exclusionary_reclassification"`` entry per flagged cluster and, when a cluster
            is confirmed, ``"proposed_source"``.
        """
        self._validate()
        owner = f"{type(self).__name__}.exclusionary_reclassification"
        validate_params(
            owner,
            {"epochs": epochs, "threshold": threshold},
            {"epochs": [Interval(int, 1, None)], "threshold": [Interval(float, 0, None)]},
        )
        xt, labels = self._inputs(x, y)
        cluster_of = self._check_result(result, labels.shape[0])
        flagged = result.is_poison
        if not flagged.any():
            return result.replace(proposed_labels=np.full(labels.shape[0], -1, dtype=np.int64))
        keep = torch.from_numpy(np.flatnonzero(~flagged)).to(xt.device)
        seed = _sklearn_seeds(resolve_random_state(self.random_state, "cpu"), 1)[0]
        if train_fn is None:
            model = self._retrain(xt[keep], torch.from_numpy(labels)[keep.cpu()], epochs, seed)
        else:
            model = train_fn(xt[keep], torch.from_numpy(labels)[keep.cpu()].to(xt.device))
        self.reclassifier_ = model
        removed = np.flatnonzero(flagged)
        probs = model.predict(xt[torch.from_numpy(removed).to(xt.device)])
        preds = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs)
        preds = preds.argmax(axis=1)
        pred_of = dict(zip(removed.tolist(), preds.tolist(), strict=True))

        is_poison = np.zeros_like(flagged)
        proposed = np.full(labels.shape[0], -1, dtype=np.int64)
        report = copy.deepcopy(result.report)
        k = self.estimator.nb_classes
        for c, entry in report.items():
            exre: dict[int, dict[str, Any]] = {}
            for j in entry.get("flagged_clusters", []):
                members = np.flatnonzero((labels == c) & (cluster_of == j) & flagged)
                counts = np.bincount([pred_of[i] for i in members.tolist()], minlength=k)
                n_label = int(counts[c])
                others = counts.copy()
                others[c] = -1
                p = int(np.argmax(others))
                ratio = n_label / counts[p] if counts[p] > 0 else math.inf
                confirmed = bool(ratio < threshold)
                exre[int(j)] = {
                    "predicted_counts": counts.tolist(),
                    "ratio": float(ratio),
                    "confirmed": confirmed,
                    "proposed_source": p if confirmed else None,
                }
                if confirmed:
                    is_poison[members] = True
                    proposed[members] = p
                    entry["proposed_source"] = p
            entry["exclusionary_reclassification"] = exre
            entry["n_flagged"] = int((is_poison & (labels == c)).sum())
        return result.replace(is_poison=is_poison, report=report, proposed_labels=proposed)

    def _retrain(self, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> Any:
        """A fresh model like the estimator's (``clone(reinitialize=True)``) trained on
        ``(x, y)``."""
        try:
            self._require(("clone", "fit"), "exclusionary_reclassification")
            retrainable = cast(SupportsCloneFitAndPredict, self.estimator)  # checked just above
            fresh = retrainable.clone(reinitialize=True, random_state=seed)
        except EstimatorError as err:
            raise EstimatorError(
                f"{err} Or pass train_fn=lambda x, y: <a freshly trained estimator>."
            ) from None
        return fresh.fit(x, y, epochs=epochs, random_state=seed)

    def relabel(self, y: Any, result: DetectionResult) -> Any:
        """Labels with every confirmed poisonous sample relabelled to its proposed source.

        Needs a result of :meth:`exclusionary_reclassification`. Same type out as ``y``.
        """
        if result.proposed_labels is None:
            raise InputError(
                "relabel needs the result of exclusionary_reclassification (it proposes the "
                "source classes); detect alone does not."
            )
        yt, kind = to_tensor(y, dtype=None)
        labels = check_labels(yt, n=result.is_poison.shape[0], nb_classes=self.estimator.nb_classes)
        proposed = torch.from_numpy(result.proposed_labels).to(labels.device)
        out = torch.where(proposed >= 0, proposed, labels).to(yt.dtype)
        return kind.restore(out, keep_dtype=True)

    @staticmethod
    def _check_result(result: DetectionResult, n: int) -> np.ndarray:
        if not isinstance(result, DetectionResult) or result.clusters is None:
            raise InputError("result must be the DetectionResult of ActivationClustering.detect.")
        if result.is_poison.shape[0] != n:
            raise InputError(
                f"result covers {result.is_poison.shape[0]} samples but x has {n}: pass the "
                "data given to detect."
            )
        return result.clusters

    # ------------------------------------------------------------------ visualisation

    @staticmethod
    def _figure() -> Any:
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("plotting needs matplotlib (pip install matplotlib).") from None
        return Figure

    def plot(self, result: DetectionResult, path: Any = None) -> Any:
        """Scatter the first two reduced dimensions of each class, coloured by cluster.

        Flagged clusters are drawn with crosses. Returns the matplotlib ``Figure`` (no window
        is opened); ``path`` saves it too.
        """
        figure_cls = self._figure()
        if not result.embeddings:
            raise InputError("result has no embeddings: pass the result of detect.")
        if result.clusters is None or result.labels is None:
            raise InputError("result has no clusters: pass the result of detect.")
        classes = sorted(result.embeddings)
        cols = min(5, len(classes))
        rows = math.ceil(len(classes) / cols)
        fig = figure_cls(figsize=(3 * cols, 3 * rows))
        for i, c in enumerate(classes):
            ax = fig.add_subplot(rows, cols, i + 1)
            emb = result.embeddings[c]
            flagged = result.report[c].get("flagged_clusters", [])
            lab = result.clusters[result.labels == c]
            second = emb[:, 1] if emb.shape[1] > 1 else np.zeros(emb.shape[0])
            for j in np.unique(lab):
                sel = lab == j
                marker = "x" if j in flagged else "o"
                ax.scatter(emb[sel, 0], second[sel], s=6, marker=marker, label=f"cluster {j}")
            ax.set_title(f"class {c} (flagged: {flagged})", fontsize=9)
            ax.legend(fontsize=6)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

    def sprites(
        self, x: Any, result: DetectionResult, path: Any = None, *, max_images: int = 36
    ) -> dict[int, list[np.ndarray]]:
        """Mosaics of (up to ``max_images``) images of each cluster of each class.

        Returns ``{class: [mosaic of cluster 0, mosaic of cluster 1, ...]}``, each mosaic an
        array ``(rows * H, cols * W, C)``; ``path`` also saves them as one figure (needs
        matplotlib).
        """
        validate_params(
            f"{type(self).__name__}.sprites",
            {"max_images": max_images},
            {"max_images": [Interval(int, 1, None)]},
        )
        if result.clusters is None or result.labels is None:
            raise InputError("result has no clusters: pass the result of detect.")
        xt, _ = to_tensor(x, dtype=torch.float32)
        if xt.shape[0] != result.clusters.shape[0] or xt.ndim != 4:
            raise InputError(
                f"x must be the images (N, C, H, W) given to detect; got {tuple(xt.shape)}."
            )
        out: dict[int, list[np.ndarray]] = {}
        for c in sorted(result.report):
            mosaics = []
            for j in range(self.nb_clusters):
                idx = np.flatnonzero((result.clusters == j) & (result.labels == c))[:max_images]
                mosaics.append(mosaic(xt[torch.from_numpy(idx)].cpu().numpy(), max_images))
            out[c] = mosaics
        if path is not None:
            figure_cls = self._figure()
            fig = figure_cls(figsize=(2 * self.nb_clusters, 2 * len(out)))
            for r, (c, mosaics) in enumerate(out.items()):
                for j, m in enumerate(mosaics):
                    ax = fig.add_subplot(len(out), self.nb_clusters, r * self.nb_clusters + j + 1)
                    ax.imshow(m.squeeze(-1) if m.shape[-1] == 1 else m, cmap="gray")
                    ax.set_axis_off()
                    ax.set_title(f"class {c}, cluster {j}", fontsize=7)
            fig.savefig(path)
        return out
