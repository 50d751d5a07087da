"""Tables, figures and the Markdown report written by ``bastion demo``."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

IMAGE_SIZE = 28
NB_CLASSES = 10
GALLERY_SIZE = 8


@dataclass(frozen=True)
class AttackResult:
    """One row of the results: an attack at one budget."""

    attack: str
    eps: float
    norm: str
    accuracy: float
    mean_perturbation: float
    max_perturbation: float
    seconds: float
    n_samples: int


_HEADER = ("attack", "eps", "accuracy", "mean Linf", "max Linf", "time s")


def _rows(clean_accuracy: float, results: Sequence[AttackResult]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("none (clean)", "0", f"{clean_accuracy:.3f}", "0", "0", "-")]
    for r in results:
        rows.append(
            (
                r.attack,
                f"{r.eps:g}",
                f"{r.accuracy:.3f}",
                f"{r.mean_perturbation:.4f}",
                f"{r.max_perturbation:.4f}",
                f"{r.seconds:.2f}",
            )
        )
    return rows


def format_table(clean_accuracy: float, results: Sequence[AttackResult]) -> str:
    """The results as an aligned plain-text table (first column left, numbers right)."""
    rows = [_HEADER, *_rows(clean_accuracy, results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return " | ".join(cells)

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def markdown_table(clean_accuracy: float, results: Sequence[AttackResult]) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|:--" + "|--:" * (len(_HEADER) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(clean_accuracy, results)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no pyplot state
    fig.savefig(path, dpi=120)


def _gallery_indices(y: NDArray[np.int64], correct: NDArray[np.bool_]) -> list[int]:
    """Up to GALLERY_SIZE correctly classified images, one per class first."""
    chosen: list[int] = []
    for label in range(NB_CLASSES):
        hits = np.flatnonzero(correct & (y == label))
        if hits.size and len(chosen) < GALLERY_SIZE:
            chosen.append(int(hits[0]))
    for i in np.flatnonzero(correct).tolist() + list(range(len(y))):
        if len(chosen) >= GALLERY_SIZE:
            break
        if i not in chosen:
            chosen.append(int(i))
    return chosen


def plot_gallery(
    path: Path,
    x: NDArray[np.float32],
    x_adv: NDArray[np.float32],
    y: NDArray[np.int64],
    pred: NDArray[np.int64],
    pred_adv: NDArray[np.int64],
    *,
    eps: float,
    max_iter: int,
) -> None:
    """Clean images, their perturbations and the adversarial images, with predictions."""
    idx = _gallery_indices(y, pred == y)
    fig = Figure(figsize=(1.45 * len(idx) + 1.0, 5.4), layout="constrained")
    axes = fig.subplots(3, len(idx), squeeze=False)
    for col, i in enumerate(idx):
        delta = x_adv[i, 0] - x[i, 0]
        panels = (
            (x[i, 0], "gray", 0.0, 1.0, f"true {y[i]}, pred {pred[i]}", "black"),
            (delta, "RdBu_r", -eps, eps, f"L2 norm {np.linalg.norm(delta):.2f}", "black"),
            (
                x_adv[i, 0],
                "gray",
                0.0,
                1.0,
                f"pred {pred_adv[i]}",
                "tab:red" if pred_adv[i] != y[i] else "tab:green",
            ),
        )
        for row, (image, cmap, vmin, vmax, title, color) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(title, fontsize=9, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel("perturbation\n(scaled to ±eps)")
    axes[2, 0].set_ylabel("adversarial")
    fig.suptitle(
        f"PGD, Linf eps={eps:g}, {max_iter} steps, against SmallCNN on digits 28x28\n"
        f"perturbation scaled for visibility: blue = −{eps:g}, white = 0, red = +{eps:g}; "
        "adversarial prediction red = fooled, green = still right",
        fontsize=9,
    )
    _save(fig, path)


def plot_robustness(
    path: Path, clean_accuracy: float, results: Sequence[AttackResult], n_samples: int
) -> None:
    """Accuracy against the Linf budget, one curve per attack (eps 0 is the clean accuracy)."""
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, marker in (("FGSM", "o"), ("PGD", "s")):
        rows = sorted((r for r in results if r.attack == name), key=lambda r: r.eps)
        eps = [0.0] + [r.eps for r in rows]
        acc = [clean_accuracy] + [r.accuracy for r in rows]
        ax.plot(eps, acc, marker=marker, label=name)
    ax.set_xlabel("Linf budget eps (pixel values in [0, 1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(
        f"SmallCNN on digits {IMAGE_SIZE}x{IMAGE_SIZE}: accuracy under attack\n"
        f"({n_samples} test images, eps 0 = clean accuracy)",
        fontsize=10,
    )
    _save(fig, path)


# ----------------------------------------------------------------------------- report


def reproduce_command(
    *,
    output: Path,
    epochs: int,
    eps: Sequence[float],
    max_iter: int,
    eps_step: float,
    n_samples: int | None,
    seed: int,
) -> str:
    parts = ["bastion", "demo", "--output", shlex.quote(str(output)), "--epochs", str(epochs)]
    # repr of a float is its shortest exact form: the command gives back the same budgets.
    parts += ["--eps", *(repr(float(e)) for e in eps)]
    parts += ["--max-iter", str(max_iter), "--eps-step", repr(float(eps_step))]
    if n_samples is not None:
        parts += ["--n-samples", str(n_samples)]
    parts += ["--seed", str(seed)]
    return " ".join(parts)


def write_report(path: Path, payload: dict[str, Any], table: str, command: str) -> None:
    data, model, config = payload["dataset"], payload["model"], payload["config"]
    results = payload["results"]
    strongest = min(results, key=lambda r: (r["accuracy"], r["eps"]))
    pgd_max = [r for r in results if r["attack"] == "PGD" and r["eps"] == max(config["eps"])]
    if data["n_evaluated"] == data["n_test"]:
        evaluated = "all test images"
    else:
        evaluated = f"the first {data['n_evaluated']} test images"
    if model["source"] == "cache":
        trained = f"loaded from the model cache (`{model['cache_file']}`)"
    else:
        trained = f"trained now in {model['seconds']:.1f} s and cached as `{model['cache_file']}`"
    lines = [
        "# bastion demo: robustness of a small CNN on handwritten digits",
        "",
        f"Created {payload['created']} with bastion {payload['bastion_version']} "
        f"(torch {config['torch_version']}, {config['device']}).",
        "",
        "## What was done",
        "",
        f"- **Data**: scikit-learn's handwritten digits, upsampled to {IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"pixel values in [0, 1]; {data['n_train']} training and {data['n_test']} test images "
        f"(stratified split, seed {data['split_seed']}); {evaluated} are attacked.",
        f"- **Model**: `SmallCNN` ({model['parameters']:,} parameters), "
        f"{model['epochs']} epoch(s) of {model['optimizer']}, seed {model['seed']}; {trained}. "
        f"Clean accuracy: **{model['clean_accuracy']:.3f}**.",
        "- **Attacks** (white-box, untargeted, Linf ball intersected with [0, 1]): "
        "FGSM (one signed-gradient step of size eps) and PGD "
        f"({config['max_iter']} steps of {config['eps_step']:g} from a random start, "
        f"seed {config['seed']}), at eps = {', '.join(f'{e:g}' for e in config['eps'])}.",
        "",
        "## Results",
        "",
        table,
        "",
    ]
    if pgd_max:
        lines += [
            f"PGD at eps = {pgd_max[0]['eps']:g} takes the accuracy from "
            f"{model['clean_accuracy']:.3f} to {pgd_max[0]['accuracy']:.3f}; the lowest "
            f"accuracy, {strongest['accuracy']:.3f}, is first reached by {strongest['attack']} "
            f"at eps = {strongest['eps']:g}.",
            "",
        ]
        if pgd_max[0]["accuracy"] < 0.5 * model["clean_accuracy"]:
            lines[-2] += (
                " The undefended model is far from robust at this budget; adversarial training "
                "is the usual remedy."
            )
    lines += [
        "![Accuracy against the budget eps](robustness.png)",
        "",
        "[robustness.png](robustness.png): accuracy against eps for FGSM and PGD.",
        "",
        "![Clean, perturbation and adversarial images](gallery.png)",
        "",
        f"[gallery.png](gallery.png): test images (top), PGD's perturbation at eps = "
        f"{max(config['eps']):g} scaled for visibility (middle) and the adversarial images with "
        "the model's predictions (bottom).",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        "The raw numbers are in [results.json](results.json). A second run loads the model from "
        "the cache (`--retrain` trains anew).",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


# ----------------------------------------------------------------------------- the demo
