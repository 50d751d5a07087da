"""The ``bastion`` command.

``bastion --version`` prints the version; ``bastion demo`` trains (or loads from a cache) a small
CNN on the bundled digits, attacks it with FGSM and PGD at several budgets and writes a report
(see ``docs/cli.md``). Heavy imports (torch, matplotlib) happen only when a subcommand runs, so
``--version`` and ``--help`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bastion import __version__

__all__ = ["build_parser", "main"]

PROG = "bastion"
#: Defaults of ``bastion demo`` (also those of :func:`bastion.cli.demo.run_demo`).
DEFAULT_OUTPUT = "bastion-demo"
DEFAULT_EPS = (0.05, 0.1, 0.2, 0.3)


# ----------------------------------------------------------------------------- argument types


def _number(text: str, kind: type, what: str, check: Callable[[float], bool]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not check(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _eps(text: str) -> float:
    return _number(text, float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


def _positive_float(text: str) -> float:
    return _number(text, float, "a positive number", lambda v: 0.0 < v < float("inf"))


def _positive_int(text: str) -> int:
    return int(_number(text, int, "a positive integer", lambda v: v >= 1))


def _non_negative_int(text: str) -> int:
    return int(_number(text, int, "a non-negative integer", lambda v: v >= 0))


# ----------------------------------------------------------------------------- parser


def _add_demo_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="train a small CNN on digits, attack it with FGSM and PGD, write a report",
        description=(
            "Train a SmallCNN on scikit-learn's handwritten digits (28x28), or load it from the "
            "cache, then measure its accuracy under FGSM and PGD (Linf) at each budget eps. "
            "Writes results.json, report.md, gallery.png and robustness.png into --output."
        ),
    )
    demo.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path(DEFAULT_OUTPUT),
        metavar="DIR",
        help="folder for the outputs (default: %(default)s)",
    )
    demo.add_argument(
        "--epochs", type=_positive_int, default=5, metavar="N", help="training epochs (default: 5)"
    )
    demo.add_argument(
        "--eps",
        type=_eps,
        nargs="+",
        default=list(DEFAULT_EPS),
        metavar="EPS",
        help="Linf budgets in (0, 1], for pixel values in [0, 1] (default: "
        + " ".join(f"{e:g}" for e in DEFAULT_EPS)
        + ")",
    )
    demo.add_argument(
        "--max-iter", type=_positive_int, default=40, metavar="N", help="PGD steps (default: 40)"
    )
    demo.add_argument(
        "--eps-step",
        type=_positive_float,
        default=0.01,
        metavar="S",
        help="PGD step size (default: 0.01)",
    )
    demo.add_argument(
        "--n-samples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="attack only the first N test images (default: the whole test split)",
    )
    demo.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="root of the model cache (default: $BASTION_CACHE, else ~/.cache/bastion)",
    )
    demo.add_argument(
        "--retrain", action="store_true", help="train even if the model is in the cache"
    )
    demo.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="seed of the data split, the model's initialisation and training, and PGD's "
        "random start (default: 0)",
    )
    demo.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars or step messages (the table is still printed)",
    )
    demo.set_defaults(handler=_run_demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bastion`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="bastion: evaluate, attack, defend and certify machine-learning models.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    _add_demo_parser(subparsers)
    from bastion.cli import evaluate  # argparse only: torch loads when it runs

    evaluate.add_parser(subparsers)
    from bastion.cli import audit  # argparse only: torch loads when it runs

    audit.add_parser(subparsers)
    return parser


# ----------------------------------------------------------------------------- handlers


def _run_demo(args: argparse.Namespace) -> int:
    from bastion.cli.demo import run_demo

    run_demo(
        output=args.output,
        epochs=args.epochs,
        eps=args.eps,
        max_iter=args.max_iter,
        eps_step=args.eps_step,
        n_samples=args.n_samples,
        cache_dir=args.cache_dir,
        retrain=args.retrain,
        seed=args.seed,
        quiet=args.quiet,
    )
    return 0


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bastion`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status instead of exiting, so it can be called in-process: 0 on success,
    1 when the command fails (the message is printed, without a traceback), 2 for bad
    arguments and 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argument errors
        return _exit_code(exc)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    from bastion.exceptions import BastionError

    try:
        return int(args.handler(args))
    except (BastionError, OSError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
