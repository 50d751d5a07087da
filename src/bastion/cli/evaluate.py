"""``bastion evaluate``: a whole robustness evaluation of a model file on a data file.

The command loads the data (:func:`bastion.evaluation.load_data`) and the model
(:func:`bastion.evaluation.load_model`), runs :func:`bastion.evaluation.evaluate` on every
budget, and writes ``results.json``, ``gallery.npz`` and a self-contained ``index.html`` into
``--out``. Each finished unit of work (a chunk of samples at one budget) goes to
``--out/partial/`` as it completes (``evaluate(..., checkpoint_dir=...)``), so that
``--resume DIR`` continues an interrupted evaluation where it stopped (when the
configuration is the same). Errors are one line on stderr (``--debug`` adds the
traceback); exit status 2 for bad arguments or inputs, 1 for other failures, 130 when
interrupted. See ``docs/cli.md``.

Heavy imports (torch, matplotlib) happen in :func:`run`, so ``bastion --help`` stays fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["add_parser", "run"]

COMMAND = "bastion evaluate"
#: Adversarial examples per budget kept for the gallery (``evaluate``'s default).
GALLERY_SIZE = 8
PARTIAL = "partial"
STATE = "state.json"
#: The flags of load_model's and load_data's parameters, spelled as their error messages name
#: them (``bastion.evaluation.FLAGS``; a test keeps the two equal). Written out here so that
#: ``bastion --help`` does not import torch.
FLAGS = {
    "arch": "--arch",
    "arch_kwargs": "--arch-kwargs",
    "input_shape": "--input-shape",
    "nb_classes": "--nb-classes",
    "clip_values": "--clip-values",
    "mean": "--mean",
    "std": "--std",
    "trust_pickle": "--trust-pickle",
    "onnx_gradients": "--onnx-gradients",
    "x_key": "--x-key",
    "y_key": "--y-key",
    "limit": "--limit",
}


# ----------------------------------------------------------------------------- argument types


def _parse_number(text: str) -> float:
    """A float from ``"0.1"``, ``"8/255"`` or ``"1e-2"``; ValueError otherwise."""
    text = text.strip()
    value = float(Fraction(text)) if "/" in text else float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _eps_list(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        try:
            value = _parse_number(part)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(
                f"must be positive numbers or fractions separated by commas (e.g. "
                f"1/255,2/255,0.1); {part.strip()!r} is not a number"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive; got {part.strip()!r}")
        values.append(value)
    return values


def _floats(text: str) -> list[float]:
    try:
        return [_parse_number(p) for p in text.split(",")]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"must be numbers separated by commas, got {text!r}"
        ) from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(
            f"must be positive integers separated by commas (e.g. 3,32,32), got {text!r}"
        )
    return shape


def _clip(text: str) -> tuple[float, float] | str:
    if text.strip().lower() == "none":
        return "none"
    values = _floats(text)
    if len(values) != 2 or not values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"must be LO,HI with LO < HI (or none), got {text!r}")
    return values[0], values[1]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"must be a JSON object ({err.msg}), got {text!r}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


# ----------------------------------------------------------------------------- parser


def _one_line_error(prog: str) -> Any:
    """An ``ArgumentParser.error`` that prints one line (no usage block) and exits with 2."""

    def error(message: str) -> NoReturn:
        print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    return error


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` command to the ``bastion`` command's ``subparsers``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model file's robustness on a data file; write a report",
        description=(
            "Load a model file and a data file, attack the model with a suite at each budget "
            "--eps, run health checks, and write results.json, gallery.npz and index.html "
            "into --out. Progress bars go to stderr; the summary to stdout."
        ),
    )
    p.error = _one_line_error(p.prog)  # type: ignore[method-assign]
    p.add_argument("--model", required=True, metavar="PATH", help="the model file")
    p.add_argument("--data", required=True, metavar="PATH", help=".npz, .npy, .csv or a folder")
    p.add_argument(
        FLAGS["arch"], metavar="MODULE:CLASS", help="architecture a state dict is loaded into"
    )
    p.add_argument(
        FLAGS["arch_kwargs"],
        type=_json_object,
        metavar="JSON",
        help="keyword arguments of --arch, as a JSON object",
    )
    p.add_argument(FLAGS["input_shape"], type=_shape, metavar="C,H,W", help="shape of one sample")
    p.add_argument(
        FLAGS["nb_classes"], type=_int_at_least(2), metavar="K", help="number of classes"
    )
    p.add_argument(
        FLAGS["clip_values"],
        type=_clip,
        metavar="LO,HI",
        help="valid input range, or none for unbounded (default: inferred from the data)",
    )
    p.add_argument(FLAGS["mean"], type=_floats, metavar="M[,M..]", help="normalisation mean")
    p.add_argument(FLAGS["std"], type=_floats, metavar="S[,S..]", help="normalisation std")
    p.add_argument(
        FLAGS["trust_pickle"],
        action="store_true",
        help="load pickled models (only files you trust: unpickling can run any code)",
    )
    p.add_argument(
        FLAGS["onnx_gradients"],
        action="store_true",
        help="ONNX models: gradients from a torch twin of the graph checked against ONNX "
        "Runtime, for the white-box suites",
    )
    p.add_argument(FLAGS["x_key"], default="x", metavar="KEY", help="samples' key in a .npz")
    p.add_argument(FLAGS["y_key"], default="y", metavar="KEY", help="labels' key in a .npz")
    p.add_argument("--threat", choices=("linf", "l2"), default="linf", help="norm (default: linf)")
    p.add_argument(
        "--eps",
        type=_eps_list,
        required=True,
        metavar="E1,E2,..",
        help="budgets, numbers or fractions separated by commas (e.g. 1/255,2/255,0.1)",
    )
    p.add_argument(
        "--suite",
        default="standard",
        metavar="NAME|FILE.yaml",
        help="quick, standard, thorough, blackbox or a YAML file (default: standard)",
    )
    p.add_argument(
        FLAGS["limit"],
        type=_int_at_least(1),
        metavar="N",
        help="evaluate a stratified subsample of N samples (seeded by --seed)",
    )
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, metavar="S", help="seed (default: 0)"
    )
    p.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=256,
        metavar="B",
        help="attack batch size (default: 256)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="folder for the outputs")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the interrupted evaluation in DIR (the output folder unless --out)",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS|auto|local",
        help="shard the attacks over Ray: 'local' starts a local instance, 'auto' joins a "
        "running cluster, anything else is a cluster address (needs bastion[ray])",
    )
    p.add_argument("--no-html", action="store_true", help="do not write index.html")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(handler=run)


# ----------------------------------------------------------------------------- running


def run(args: argparse.Namespace) -> int:
    """Run ``bastion evaluate`` with parsed ``args``; returns the exit status.

    Parameters
    ----------
    args : argparse.Namespace
        From the parser :func:`add_parser` builds.

    Returns
    -------
    int
        0 on success; 2 for bad inputs (a missing file, a model that does not accept the
        data, labels out of range, a white-box suite on a predict-only model, a configuration
        that differs from the one being resumed); 1 for other failures; 130 when interrupted.
        The message is one line on stderr; ``--debug`` adds the traceback.
    """
    from bastion.exceptions import BastionError, ModelError

    try:
        return _run(args)
    except KeyboardInterrupt:
        out = args.out or args.resume
        hint = f"; continue with --resume {out}" if out is not None else ""
        print(f"{COMMAND}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for every failure, by design
        from bastion.evaluation import format_error

        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (--debug shows the traceback)"
        # A missing optional extra (Ray) is the user's setup to fix, like a bad input.
        bad_input = (
            isinstance(exc, BastionError) and not isinstance(exc, ModelError)
        ) or isinstance(exc, ImportError)
        print(f"{COMMAND}: error: {format_error(exc)}", file=sys.stderr)
        if not bad_input and hint:
            print(f"{COMMAND}: this looks like a bug or a model failure{hint}", file=sys.stderr)
        return 2 if bad_input else 1


def _sha256(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(path)}:{f.stat().st_size}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The command's settings a resumed evaluation must share (the budgets may change)."""
    suite = args.suite
    suite_file = Path(suite)
    return {
        "model": str(Path(args.model).resolve()),
        "model_sha256": _sha256(Path(args.model)),
        "data": str(Path(args.data).resolve()),
        "data_sha256": _sha256(Path(args.data)),
        "arch": args.arch,
        "arch_kwargs": args.arch_kwargs,
        "input_shape": list(model.input_shape),
        "nb_classes": int(model.nb_classes),
        "clip_values": None if model.clip_values is None else list(model.clip_values),
        "mean": args.mean,
        "std": args.std,
        "x_key": args.x_key,
        "y_key": args.y_key,
        "threat": args.threat,
        "suite": suite,
        "suite_sha256": _sha256(suite_file) if suite_file.is_file() else None,
        "limit": args.limit,
        "seed": args.seed,
        "batch_size": args.batch_size,
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # an interruption never leaves a truncated file


def _checkpoint(args: argparse.Namespace, out: Path, fingerprint: dict[str, Any]) -> Path:
    """Prepare ``out/partial`` (empty, or with the finished units of the evaluation
    ``--resume`` names) and return it."""
    from bastion.exceptions import InputError

    partial = out / PARTIAL
    if args.resume is None:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        _write_json(partial / STATE, {"config": fingerprint})
        return partial
    source = args.resume / PARTIAL
    state_file = source / STATE
    if not state_file.is_file():
        raise InputError(
            f"Nothing to resume in {str(args.resume)!r}: it holds no unfinished evaluation "
            f"({PARTIAL}/{STATE} is missing)."
        )
    state = json.loads(state_file.read_text(encoding="utf-8"))
    differ = sorted(k for k in fingerprint if state["config"].get(k) != fingerprint[k])
    if differ:
        raise InputError(
            f"Cannot resume {str(args.resume)!r}: its configuration differs in "
            f"{', '.join(differ)}; rerun without --resume (or with the same settings)."
        )
    if source.resolve() != partial.resolve():
        if partial.exists():
            shutil.rmtree(partial)
        shutil.copytree(source, partial)
    return partial


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from bastion.evaluation import (
        check_compatibility,
        check_suite,
        evaluate,
        load_data,
        load_model,
    )
    from bastion.exceptions import InputError

    start = time.perf_counter()
    out = args.out if args.out is not None else args.resume
    if out is None:
        raise InputError("Give the output folder: --out DIR (or --resume DIR).")
    verbose = not args.quiet

    data = load_data(
        args.data, x_key=args.x_key, y_key=args.y_key, limit=args.limit, random_state=args.seed
    )
    if data.y is None:
        raise InputError(
            f"{str(args.data)!r} holds no labels (key {args.y_key!r}): an evaluation measures "
            "accuracy against them; name them with --y-key."
        )
    model = load_model(
        args.model,
        arch=args.arch,
        arch_kwargs=args.arch_kwargs,
        input_shape=args.input_shape,
        nb_classes=args.nb_classes,
        clip_values=args.clip_values,
        mean=args.mean,
        std=args.std,
        x=data.x,
        trust_pickle=args.trust_pickle,
        onnx_gradients=args.onnx_gradients,
    )
    check_compatibility(model, data)
    check_suite(model, args.suite)  # before any file is written

    out.mkdir(parents=True, exist_ok=True)
    partial = _checkpoint(args, out, _fingerprint(args, model))
    if verbose and args.resume is not None:
        done = sum(1 for _ in partial.glob("unit-*.pt"))
        print(f"{COMMAND}: resuming; reusing {done} finished unit(s) of work", file=sys.stderr)

    # One evaluation of every budget: the minimum-norm attacks run once, AutoAttack's flags
    # reach the health checks, and each finished unit of work is kept in partial/ (resume).
    result = evaluate(
        model,
        data.x,
        data.y,
        threat=args.threat,
        eps=sorted(set(args.eps)),
        suite=args.suite,
        random_state=args.seed,
        batch_size=args.batch_size,
        gallery_size=GALLERY_SIZE,
        verbose=verbose,
        ray=args.ray,
        checkpoint_dir=partial,
    )
    if data.indices is not None:  # rows of the file, not of the subsample
        result.indices = np.asarray(data.indices, dtype=np.int64)[result.indices]
    result.config.update(limit=args.limit, model=str(args.model), data=str(args.data))
    result.seconds["total"] = time.perf_counter() - start

    result.to_json(out / "results.json")
    result.save_gallery(out / "gallery.npz")
    if not args.no_html:
        result.to_html(out / "index.html", class_names=data.class_names)
    shutil.rmtree(partial)

    print(result.summary())
    verdict = (
        "reliable: every health check passed or only warned"
        if result.reliable
        else "UNRELIABLE: a health check failed (see the report)"
    )
    print(f"verdict: {verdict}")
    written = "results.json, gallery.npz" + ("" if args.no_html else ", index.html")
    print(f"Wrote {written} to {out} in {time.perf_counter() - start:.1f} s")
    return 0
