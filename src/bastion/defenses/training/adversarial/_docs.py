"""The docstring sections every adversarial trainer shares, written once."""

from __future__ import annotations

__all__ = ["fill_doc"]

_LOOP_DOC = """
    epochs : int
        Passes over the training data.
    batch_size : int
        Samples per optimiser step (the global batch, over all processes); ignored when
        ``fit`` is given a loader, whose batches are used as they come.
    optimizer : {"sgd", "adam"}
    learning_rate : float
        The base (peak) learning rate of the schedule. ``lr`` is accepted as an old name.
    schedule : {"piecewise", "cosine", "cyclic"} or None
        Per-step learning rate: ``"piecewise"`` divides it by 10 at 50% and 75% of the epochs,
        ``"cosine"`` anneals it to 0, ``"cyclic"`` rises linearly from 0 to the base rate at
        40% of the epochs and falls back to 0 (updated every step), ``None`` keeps it.
    momentum : float
        SGD's momentum (Adam ignores it).
    weight_decay : float
        L2 penalty of the optimiser.
    validation_attack : "pgd-K", a bastion evasion attack, or None
        Measures the validation robust accuracy after each epoch: ``"pgd-K"`` is PGD with K
        steps of ``2.5 * eps / K`` from a random start at the training ``eps`` and ``norm``
        (cheap, and only a proxy: report :meth:`evaluate`'s AutoAttack numbers); an attack must
        be built on this trainer's estimator. ``None``: clean validation accuracy only (and
        the best epoch is chosen by it).
    checkpoint_dir : path or None
        Where ``last.pt`` (each epoch's end: model, optimiser, scaler, history, best model)
        and ``best.pt`` are written, atomically and by rank 0 only. Read back as data only
        (``torch.load(weights_only=True)``), with a fingerprint of the model's parameter
        names and shapes and the trainer's settings: ``fit(..., resume=True)`` continues an
        interrupted run, and ends bit-identical (on the CPU) to the uninterrupted one.
    random_state : None, int or torch.Generator
        Every random draw (the shuffling of each epoch, each batch's random starts, the
        randomness of layers such as dropout) comes from seeds derived from it and the
        (epoch, batch) position, so a resumed run needs no RNG state; torch's global RNG is
        left as it was (layers that draw from it run inside ``torch.random.fork_rng``).
    verbose : bool
        A tqdm bar per epoch with the live loss and accuracies.
    amp : bool
        Mixed precision (``torch.autocast`` in float16 and a gradient scaler) on CUDA; an
        estimator on the CPU raises :class:`~bastion.exceptions.InvalidParameterError`.
    channels_last : bool
        The channels-last memory layout for the module and 4-D inputs, on CUDA only (as
        ``amp``). Converts the estimator's model's weights in place.
"""

_ATTRIBUTES_DOC = """
    Attributes
    ----------
    history_ : list of dict
        One record per epoch: ``epoch``, ``loss`` (the mean training loss),
        ``train_clean_accuracy`` (NaN for the recipes whose step never sees the clean batch:
        Madry, Fast-FGSM, Free, AdversarialTrainer; no forward pass runs just to log),
        ``train_robust_accuracy`` (on the training batches' adversarial examples, as made
        during the epoch), ``val_clean_accuracy`` and ``val_robust_accuracy``
        (with validation data), ``seconds``, ``learning_rate`` (at the epoch's last step).
    best_epoch_ : int
        The epoch whose weights the estimator holds after ``fit``: the highest validation
        robust accuracy (early stopping against robust overfitting, Rice et al. 2020), or the
        last epoch without validation data.
"""

_RICE = """
    Rice, Wong and Kolter, "Overfitting in adversarially robust deep learning", ICML 2020.
    https://arxiv.org/abs/2002.11569
"""

_WU = """
    Wu, Xia and Wang, "Adversarial Weight Perturbation Helps Robust Generalization",
    NeurIPS 2020. https://arxiv.org/abs/2004.05884
"""


def fill_doc(text: str) -> str:
    """``text`` with the shared sections ({loop}, {attributes}, {rice}, {wu}) filled in."""
    return (
        text.replace("{loop}", _LOOP_DOC.strip("\n"))
        .replace("{attributes}", _ATTRIBUTES_DOC.strip("\n"))
        .replace("{rice}", _RICE.strip("\n"))
        .replace("{wu}", _WU.strip("\n"))
    )
