"""``bastion audit privacy|backdoor|extraction``: audit a model file, write a report.

Each sub-command loads the model (:func:`bastion.evaluation.load_model`) and the data
(:func:`bastion.evaluation.load_data`), runs :func:`bastion.evaluation.audit_privacy`,
:func:`~bastion.evaluation.audit_backdoor` or :func:`~bastion.evaluation.audit_extraction`,
and writes ``results.json`` and a self-contained ``index.html`` (plots embedded as PNG) into
``--out``. Errors are one line on stderr (``--debug`` shows the traceback); exit status 2 for
bad arguments or inputs, 1 for other failures, 130 when interrupted. See ``docs/cli.md``.

Heavy imports (torch, matplotlib) happen when a sub-command runs, so ``bastion --help`` stays
fast.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The argument types and the one-line parser error are those of ``bastion evaluate``.
from bastion.cli.evaluate import _clip, _int_at_least, _json_object, _one_line_error, _shape

__all__ = ["add_parser", "render_html", "run"]

COMMAND = "bastion audit"


# ----------------------------------------------------------------------------- argument types


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be numbers separated by commas, got {text!r}"
        ) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"must be finite numbers separated by commas, got {text!r}"
        )
    return values


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"must be positive integers separated by commas, got {text!r}"
        )
    return values


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


# ----------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, *, data: str, data_help: str) -> None:
    """The model, data, output and run flags every audit shares (flag names of
    ``bastion.evaluation.FLAGS``, written out so that ``--help`` does not import torch)."""
    p.error = _one_line_error(p.prog)  # type: ignore[method-assign]
    p.add_argument("--model", required=True, metavar="PATH", help="the model file")
    p.add_argument(data, required=True, metavar="PATH", help=data_help)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the report")
    p.add_argument(
        "--arch", metavar="MODULE:CLASS", help="architecture a state dict is loaded into"
    )
    p.add_argument(
        "--arch-kwargs", type=_json_object, metavar="JSON", help="keyword arguments of --arch"
    )
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="shape of one sample")
    p.add_argument("--nb-classes", type=_int_at_least(2), metavar="K", help="number of classes")
    p.add_argument(
        "--clip-values",
        type=_clip,
        metavar="LO,HI",
        help="valid input range, or none (default: inferred from the data)",
    )
    p.add_argument("--mean", type=_floats, metavar="M[,M..]", help="normalisation mean")
    p.add_argument("--std", type=_floats, metavar="S[,S..]", help="normalisation std")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load pickled models (only files you trust: unpickling can run any code)",
    )
    p.add_argument("--x-key", default="x", metavar="KEY", help="samples' key in a .npz")
    p.add_argument("--y-key", default="y", metavar="KEY", help="labels' key in a .npz")
    p.add_argument(
        "--limit",
        type=_int_at_least(1),
        metavar="N",
        help="use a stratified subsample of N samples of each data file (seeded by --seed)",
    )
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, metavar="S", help="seed (default: 0)"
    )
    p.add_argument("--no-html", action="store_true", help="do not write index.html")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summary")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` command (``privacy``, ``backdoor``, ``extraction``) to ``subparsers``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers``.
    """
    audit = subparsers.add_parser(
        "audit",
        help="audit a model file: membership privacy, backdoors, extraction",
        description=(
            "Audit a model file and write results.json and index.html into --out: "
            "'privacy' (membership inference: LiRA, RMIA or the loss attack), 'backdoor' "
            "(activation clustering and spectral signatures on the training data), "
            "'extraction' (how cheaply the model can be stolen through its predictions)."
        ),
    )
    audit.error = _one_line_error(audit.prog)  # type: ignore[method-assign]
    kinds = audit.add_subparsers(title="audits", dest="audit", metavar="AUDIT", required=True)

    p = kinds.add_parser(
        "privacy",
        help="membership inference: ROC (log-log), AUC, TPR at 0.1%% and 1%% FPR",
        description=(
            "Score the training samples (members) and test samples (non-members) with a "
            "membership attack. LiRA and RMIA train --reference-models like the target (a "
            "fresh copy of its architecture, --epochs of Adam), which needs a torch model."
        ),
    )
    _common(p, data="--train", data_help="the model's training data (.npz, .npy, .csv, folder)")
    p.add_argument("--test", required=True, metavar="PATH", help="data it did not train on")
    p.add_argument(
        "--attack",
        choices=("lira", "lira-offline", "rmia", "loss"),
        default="lira",
        help="membership attack (default: lira)",
    )
    p.add_argument(
        "--reference-models",
        type=_int_at_least(1),
        metavar="N",
        help="reference models to train (default: 16 for LiRA, 2 for RMIA)",
    )
    p.add_argument(
        "--reference-dir", type=Path, metavar="DIR", help="save (and reuse) the reference models"
    )
    p.add_argument(
        "--epochs", type=_int_at_least(1), default=10, metavar="N", help="reference training"
    )
    p.add_argument("--batch-size", type=_int_at_least(1), default=128, metavar="B")
    p.add_argument("--learning-rate", type=_positive_float, default=1e-3, metavar="LR")
    p.set_defaults(handler=run)

    p = kinds.add_parser(
        "backdoor",
        help="find backdoor poison in training data (activation clustering, spectral signatures)",
        description=(
            "Read a layer's activations of each training class and look for a separate "
            "cluster of poisoned samples (Chen et al. 2019) or outliers along the top singular "
            "direction (Tran et al. 2018). Needs a torch model."
        ),
    )
    _common(p, data="--train", data_help="the suspect training data (.npz, .npy, .csv, folder)")
    p.add_argument(
        "--method",
        choices=("activation-clustering", "spectral-signatures", "both"),
        default="both",
        help="detector(s) (default: both)",
    )
    p.add_argument("--layer", metavar="NAME", help="layer to read (default: the penultimate)")
    p.add_argument("--nb-dims", type=_int_at_least(1), default=10, metavar="D")
    p.add_argument(
        "--poison-fraction",
        type=_fraction,
        default=0.05,
        metavar="F",
        help="spectral signatures' expected poisoned fraction per class (default: 0.05)",
    )
    p.set_defaults(handler=run)

    p = kinds.add_parser(
        "extraction",
        help="steal the model with --budget queries: fidelity and accuracy versus queries",
        description=(
            "Train fresh thieves on the model's answers to samples of --data at budgets up to "
            "--budget; report their fidelity (agreement with the model) and, with labels, "
            "accuracy, on --test or a held-out part of --data."
        ),
    )
    _common(p, data="--data", data_help="the attacker's pool (labels optional)")
    p.add_argument("--test", metavar="PATH", help="held-out data (default: part of --data)")
    p.add_argument("--budget", type=_int_at_least(1), default=1000, metavar="N")
    p.add_argument(
        "--budgets", type=_ints, metavar="N1,N2,..", help="budgets of the curve (default: 5)"
    )
    p.add_argument("--attack", choices=("copycat", "knockoff"), default="copycat")
    p.add_argument(
        "--architecture",
        choices=("same", "mlp", "cnn"),
        help="the thief (default: the model's own architecture when it can be copied)",
    )
    p.add_argument("--epochs", type=_int_at_least(1), default=10, metavar="N")
    p.set_defaults(handler=run)


# ----------------------------------------------------------------------------- running


def run(args: argparse.Namespace) -> int:
    """Run ``bastion audit AUDIT`` with parsed ``args``; returns the exit status.

    Returns
    -------
    int
        0 on success; 2 for bad inputs (a missing file, a model that does not accept the
        data, labels out of range, a model lacking a capability the audit needs); 1 for other
        failures; 130 when interrupted. The message is one line on stderr.
    """
    from bastion.exceptions import BastionError, ModelError

    prog = f"{COMMAND} {args.audit}"
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for every failure, by design
        from bastion.evaluation import format_error

        if args.debug:
            traceback.print_exc()
        bad_input = isinstance(exc, BastionError) and not isinstance(exc, ModelError)
        hint = "" if bad_input or args.debug else " (a bug or a model failure? --debug shows it)"
        print(f"{prog}: error: {format_error(exc)}{hint}", file=sys.stderr)
        return 2 if bad_input else 1


def _data(args: argparse.Namespace, path: str, *, labels: bool = True) -> Any:
    from bastion.evaluation import load_data

    return load_data(
        path,
        x_key=args.x_key,
        y_key=args.y_key if labels else None,
        limit=args.limit,
        random_state=args.seed,
    )


def _has_labels(args: argparse.Namespace, path: str) -> bool:
    """Whether a ``.npz`` pool holds labels (other formats: assumed to)."""
    import numpy as np

    p = Path(path)
    if p.suffix.lower() != ".npz" or not p.is_file():
        return True
    try:
        with np.load(p, allow_pickle=False) as f:
            return bool(args.y_key in f.files)
    except (OSError, ValueError):
        return True  # load_data reports the problem


def _model(args: argparse.Namespace, x: Any) -> Any:
    from bastion.evaluation import load_model

    return load_model(
        args.model,
        arch=args.arch,
        arch_kwargs=args.arch_kwargs,
        input_shape=args.input_shape,
        nb_classes=args.nb_classes,
        clip_values=args.clip_values,
        mean=args.mean,
        std=args.std,
        x=x,
        trust_pickle=args.trust_pickle,
    )


def _labelled(data: Any, path: str, nb_classes: int) -> Any:
    """The labels of ``data``, checked against the model's classes (the file named)."""
    from bastion.evaluation import check_labels
    from bastion.exceptions import InputError

    if data.y is None:
        raise InputError(f"The data {path!r} has no labels; this audit needs them.")
    try:
        check_labels(data.y, nb_classes, class_names=data.class_names)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    return data.y


def _run(args: argparse.Namespace) -> int:
    from bastion.evaluation import audit_backdoor, audit_extraction, audit_privacy

    verbose = not args.quiet
    if args.audit == "privacy":
        train, test = _data(args, args.train), _data(args, args.test)
        model = _model(args, train.x)
        ytr = _labelled(train, args.train, model.nb_classes)
        yte = _labelled(test, args.test, model.nb_classes)
        result = audit_privacy(
            model,
            train.x,
            ytr,
            test.x,
            yte,
            attack=args.attack,
            reference_models=args.reference_models,
            reference_dir=args.reference_dir,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            random_state=args.seed,
            verbose=verbose,
        )
    elif args.audit == "backdoor":
        train = _data(args, args.train)
        model = _model(args, train.x)
        ytr = _labelled(train, args.train, model.nb_classes)
        layer: Any = args.layer
        if layer is not None and layer.lstrip("-").isdigit():
            layer = int(layer)
        result = audit_backdoor(
            model,
            train.x,
            ytr,
            method=args.method,
            layer=layer,
            nb_dims=args.nb_dims,
            expected_poison_fraction=args.poison_fraction,
            random_state=args.seed,
            verbose=verbose,
        )
    else:
        pool = _data(args, args.data, labels=_has_labels(args, args.data))
        model = _model(args, pool.x)
        y_pool = None if pool.y is None else _labelled(pool, args.data, model.nb_classes)
        x_test = y_test = None
        if args.test is not None:
            test = _data(args, args.test, labels=_has_labels(args, args.test))
            x_test = test.x
            y_test = None if test.y is None else _labelled(test, args.test, model.nb_classes)
        result = audit_extraction(
            model,
            pool.x,
            budget=args.budget,
            budgets=args.budgets,
            x_test=x_test,
            y_test=y_test,
            y_pool=y_pool,
            attack=args.attack,
            architecture=args.architecture,
            epochs=args.epochs,
            random_state=args.seed,
            verbose=verbose,
        )
    result.configuration = {
        "command": ["bastion", "audit", args.audit],
        "model": str(args.model),
        **result.configuration,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "results.json")
    if not args.no_html:
        (out / "index.html").write_text(render_html(result), encoding="utf-8")
    if not args.quiet:
        print(result.summary())
        print(f"report: {out / ('results.json' if args.no_html else 'index.html')}")
    return 0


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;
background:#fff}
main{max-width:960px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 8px}h2{font-size:1.25em;margin-top:28px;border-bottom:1px solid
#d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f6f8fa}
tr.flag td{background:#fff8c5}
img.plot{max-width:100%;height:auto;border:1px solid #eaeef2}
code{background:#f0f3f6;padding:0 4px;border-radius:4px}
.muted{color:#57606a;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png(fig: Any, alt: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # no display, no pyplot state
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.2%}" if pct else f"{v:.4g}"
    return str(v)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], flagged: Sequence[bool] = ()
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="flag"' if i < len(flagged) and flagged[i] else ""
        cells = "".join(
            f'<td class="n">{_e(c)}</td>' if isinstance(c, (int, float)) else f"<td>{_e(c)}</td>"
            for c in row
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _privacy(n: dict[str, Any]) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    fpr, tpr = np.asarray(n["roc"]["fpr"], float), np.asarray(n["roc"]["tpr"], float)
    nb_out = max(int(n["nb_non_members"]), 1)
    floor = min(0.5 / nb_out, 5e-4)  # where a rate of 0 is drawn on a log axis
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.step(np.maximum(fpr, floor), np.maximum(tpr, floor), where="post", label=n["attack"])
    grid = np.geomspace(floor, 1, 50)
    ax.plot(grid, grid, ls="--", color="grey", lw=1, label="chance")
    for f, key in ((0.001, "tpr_at_0.1%_fpr"), (0.01, "tpr_at_1%_fpr")):
        ax.axvline(f, ls=":", color="black", lw=1)
        ax.plot([f], [max(n[key], floor)], "o", color="C3")
        ax.annotate(
            f"TPR {n[key]:.1%}",
            (f, max(n[key], floor)),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=8,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(floor, 1),
        ylim=(floor, 1.05),
        xlabel="false-positive rate",
        ylabel="true-positive rate",
        title=f"membership ROC (AUC {n['auc']:.3f})",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    rows = [
        ("attack", n["attack"]),
        ("reference models", n["nb_reference_models"]),
        ("members / non-members", f"{n['nb_members']} / {n['nb_non_members']}"),
        ("train accuracy", _fmt(n["train_accuracy"], True)),
        ("test accuracy", _fmt(n["test_accuracy"], True)),
        ("membership AUC", _fmt(n["auc"])),
        ("membership advantage", _fmt(n["advantage"])),
        ("TPR at 0.1% FPR", _fmt(n["tpr_at_0.1%_fpr"], True)),
        ("TPR at 1% FPR", _fmt(n["tpr_at_1%_fpr"], True)),
    ]
    note = ""
    if nb_out < 1000:
        note = (
            f'<p class="muted">With {nb_out} non-members the FPR moves in steps of '
            f"{1 / nb_out:.2%}: the TPR at 0.1% FPR reads the members scored above every "
            "non-member. Use at least 10,000 non-members for a stable reading.</p>"
        )
    return (
        "<h2>Membership inference</h2>"
        + _table(("measure", "value"), rows)
        + note
        + _png(fig, "membership ROC curve on log-log axes")
    )


def _backdoor(n: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    flagged = n["flagged_classes"]
    parts = [
        "<h2>Backdoor poison</h2>",
        "<p>Flagged classes: <strong>"
        + (_e(", ".join(map(str, flagged))) if flagged else "none")
        + f"</strong>; suspicious samples: {len(n['suspicious_indices'])} of "
        f"{n['nb_samples']}.</p>",
    ]
    ac = n["methods"].get("activation-clustering")
    if ac is not None:
        classes = ac["classes"]
        rows: list[tuple[Any, ...]] = []
        marks: list[bool] = []
        for c, e in classes.items():
            sizes = e.get("cluster_sizes") or []
            rows.append(
                (
                    c,
                    e.get("size"),
                    " / ".join(map(str, sizes)),
                    _fmt(e.get("silhouette")),
                    e.get("n_flagged", 0),
                )
            )
            marks.append(int(c) in ac["flagged_classes"])
        parts += [
            f"<h3>Activation clustering (layer <code>{_e(ac['layer'])}</code>)</h3>",
            _table(("class", "size", "cluster sizes", "silhouette", "flagged"), rows, marks),
        ]
        fig = Figure(figsize=(8, 3.2))
        ax = fig.add_subplot()
        names = list(classes)
        sizes = [classes[c].get("cluster_sizes") or [0] for c in names]
        width = max(len(s) for s in sizes)
        for j in range(width):
            ax.bar(
                [i + (j - (width - 1) / 2) * 0.8 / width for i in range(len(names))],
                [s[j] if j < len(s) else 0 for s in sizes],
                width=0.8 / width,
                label=f"cluster {j}",
            )
        ax.set_xticks(
            range(len(names)), [f"{c}*" if int(c) in ac["flagged_classes"] else c for c in names]
        )
        ax.set(xlabel="class (* flagged)", ylabel="samples", title="cluster sizes per class")
        ax.legend(fontsize=8)
        fig.tight_layout()
        parts.append(_png(fig, "cluster sizes per class"))
        proj = ac.get("projections", {})
        if proj:
            fig = Figure(figsize=(3.2 * len(proj), 3.2))
            for i, (c, p) in enumerate(proj.items()):
                ax = fig.add_subplot(1, len(proj), i + 1)
                bad = set(p["flagged_clusters"])
                for k in sorted(set(p["cluster"])):
                    pts = [
                        (a, b)
                        for a, b, q in zip(p["x"], p["y"], p["cluster"], strict=True)
                        if q == k
                    ]
                    ax.scatter(
                        [a for a, _ in pts],
                        [b for _, b in pts],
                        s=8,
                        color="C3" if k in bad else ("C0", "C2", "C4", "C1")[k % 4],
                        label=f"cluster {k}" + (" (flagged)" if k in bad else ""),
                    )
                ax.set_title(f"class {c}", fontsize=10)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.legend(fontsize=7)
            fig.tight_layout()
            parts.append(_png(fig, "activations of the flagged classes, 2-D projection"))
    ss = n["methods"].get("spectral-signatures")
    if ss is not None:
        rows = [
            (c, e["size"], e["n_removed"], _fmt(e["outlier_ratio"]))
            for c, e in ss["classes"].items()
        ]
        marks = [int(c) in ss["flagged_classes"] for c in ss["classes"]]
        parts += [
            f"<h3>Spectral signatures (layer <code>{_e(ss['layer'])}</code>)</h3>",
            _table(("class", "size", "removed", "outlier ratio"), rows, marks),
        ]
    return "".join(parts)


def _extraction(n: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(n["queries"], n["fidelity"], "o-", label="fidelity")
    if any(a is not None for a in n["accuracy"]):
        ax.plot(
            n["queries"],
            [math.nan if a is None else a for a in n["accuracy"]],
            "s--",
            label="thief accuracy",
        )
    if n.get("victim_accuracy") is not None:
        ax.axhline(n["victim_accuracy"], color="grey", ls=":", label="victim accuracy")
    ax.set(
        xscale="log",
        ylim=(0, 1.02),
        xlabel="victim queries",
        title=f"stealing with {n['attack']} ({n['architecture']} thief)",
    )
    ax.set_xticks(n["queries"], [str(q) for q in n["queries"]])
    ax.minorticks_off()
    ax.legend()
    fig.tight_layout()
    rows = [
        (q, _fmt(f, True), _fmt(a, True))
        for q, f, a in zip(n["queries"], n["fidelity"], n["accuracy"], strict=True)
    ]
    return (
        "<h2>Model extraction</h2>"
        f"<p>Victim accuracy on the held-out data: {_e(_fmt(n.get('victim_accuracy'), True))} "
        f"({n['nb_eval']} samples; the thief's pool holds {n['nb_pool']}).</p>"
        + _table(("queries", "fidelity", "thief accuracy"), rows)
        + _png(fig, "fidelity versus queries")
    )


def render_html(result: Any) -> str:
    """A self-contained HTML page (inline CSS, plots as base64 PNG) of an ``AuditResult``."""
    body = {"privacy": _privacy, "backdoor": _backdoor, "extraction": _extraction}[result.kind](
        result.numbers
    )
    config = _table(
        ("setting", "value"), [(k, json.dumps(v)) for k, v in result.configuration.items()]
    )
    versions = ", ".join(f"{k} {v}" for k, v in result.versions.items())
    seconds = sum(result.seconds.values())
    title = f"bastion audit {result.kind}"
    return "".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
            f"<h1>{_e(title)}</h1>",
            body,
            "<h2>Configuration</h2>",
            config,
            f'<p class="muted">{_e(versions)}; {seconds:.1f} s.</p>',
            "</main></body></html>\n",
        ]
    )
