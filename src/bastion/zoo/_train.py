"""A plain supervised training loop for the reference models (and any classifier module)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import trange

from bastion._params import renamed_keywords
from bastion._tensor import RandomStateLike, resolve_random_state, to_tensor
from bastion._validation import (
    BATCH_SIZE,
    RANDOM_STATE,
    VERBOSE,
    Interval,
    check_labels,
    check_trained,
    check_x,
    invalid_parameter,
    probe_classes,
    validate_params,
)

__all__ = ["train_classifier"]


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        param = next(model.parameters(), None)
        if param is None:
            raise invalid_parameter(
                "model", "train_classifier", "a module with trainable parameters", model
            )
        return param.device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise invalid_parameter(
            "device", "train_classifier", "None, a torch.device or a device name", device
        ) from exc


@renamed_keywords(lr="learning_rate")
def train_classifier(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    random_state: RandomStateLike = None,
    device: str | torch.device | None = None,
    verbose: bool = False,
) -> nn.Module:
    """Train a classifier with Adam on the cross-entropy loss.

    Meant for the small models of :mod:`bastion.zoo` (demos, tests, target models for
    attacks), but works with any module mapping a batch of ``x`` to logits. The model is
    trained in place, on ``device``, and returned in eval mode.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier; its output must be logits of shape ``(N, nb_classes)``.
    x : numpy.ndarray or torch.Tensor
        Training samples, batch first (converted to the dtype of the model's parameters).
    y : numpy.ndarray or torch.Tensor
        Class indices of shape ``(N,)`` or one-hot labels of shape ``(N, nb_classes)``.
    epochs : int, default=5
        Passes over the data.
    batch_size : int, default=64
        Samples per optimisation step.
    learning_rate : float, default=1e-3
        Adam's learning rate.
    weight_decay : float, default=0.0
        Adam's L2 penalty.
    random_state : None, int or torch.Generator, default=None
        Seed of the shuffling of the samples at each epoch (a private generator; the global
        RNGs are left alone). With a seeded model on the CPU, the same seed gives the same
        trained model. Layers that draw random numbers themselves (dropout) still use torch's
        global RNG.
    device : str or torch.device, optional
        Where to train; ``None`` uses the device of the model's parameters. Batches are moved
        there one at a time.
    verbose : bool, default=False
        Show a progress bar over epochs with the epoch's mean loss and accuracy.

    Returns
    -------
    torch.nn.Module
        ``model`` itself, trained and in eval mode.

    Raises
    ------
    InvalidParameterError
        If a hyper-parameter is outside its allowed range or ``model`` has no parameters.
    InputError
        If ``x`` is empty or holds NaN/inf, ``y`` has the wrong length or shape, or labels
        fall outside the model's classes.
    ModelError
        If the model does not take ``x`` or returns non-finite logits, or training diverged
        (a weight became NaN or infinite).

    Examples
    --------
    >>> import torch
    >>> from bastion.datasets import load_digits
    >>> from bastion.zoo import MLP, train_classifier
    >>> (x_train, y_train), (x_test, y_test) = load_digits(size=8)
    >>> model = MLP(64, 10, random_state=0)
    >>> model = train_classifier(model, x_train, y_train, epochs=10, random_state=0)
    >>> accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    >>> bool(accuracy > 0.9)
    True
    """
    if not isinstance(model, nn.Module):
        raise invalid_parameter("model", "train_classifier", "a torch.nn.Module", model)
    validate_params(
        "train_classifier",
        {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "random_state": random_state,
            "verbose": verbose,
        },
        {
            "epochs": [Interval(int, 1, None)],
            "batch_size": BATCH_SIZE,
            "learning_rate": [Interval(float, 0, None, closed="neither")],
            "weight_decay": [Interval(float, 0, None, closed="left")],
            "random_state": RANDOM_STATE,
            "verbose": VERBOSE,
        },
    )
    dev = _resolve_device(model, device)
    model.to(dev)
    dtype = next(model.parameters()).dtype
    x_t, _ = to_tensor(x, dtype=dtype)
    check_x(x_t, input_shape=None, clip_values=None)
    y_t, _ = to_tensor(y, dtype=None)
    n = x_t.shape[0]

    # One sample through the model tells the number of classes the labels must fit.
    nb_classes = probe_classes(model, x_t[:1].to(dev), "train_classifier")
    y_t = check_labels(y_t, n=n, nb_classes=nb_classes)

    generator = resolve_random_state(random_state, "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    model.train()
    bar = trange(epochs, desc="train_classifier", unit="epoch", disable=not verbose)
    for _ in bar:
        order = torch.randperm(n, generator=generator)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x_batch = x_t[idx.to(x_t.device)].to(dev, non_blocking=True)
            y_batch = y_t[idx.to(y_t.device)].to(dev, non_blocking=True)
            logits = model(x_batch)
            loss = F.cross_entropy(logits, y_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if verbose:
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(dim=1) == y_batch).sum()
        if verbose:
            bar.set_postfix(loss=f"{loss_sum.item() / n:.4f}", accuracy=f"{correct.item() / n:.3f}")
    return check_trained(model, "train_classifier").eval()
