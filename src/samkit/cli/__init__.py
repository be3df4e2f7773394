"""The ``samkit`` command line.

Each subcommand lives in its own module under ``samkit.cli`` exposing
``register(subparsers)``; it adds its parser and sets ``func=run`` where
``run(args) -> int``. User mistakes raise :class:`UserError` (or ValueError /
FileNotFoundError from the library): the CLI prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "UserError", "COMMANDS"]

# Module names under samkit.cli, in the order they appear in --help.
COMMANDS: tuple[str, ...] = ("segment", "download", "everything", "embed", "bench", "export_onnx", "serve", "annotate", "label_studio", "track")


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def _build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .parser import OneLineErrorParser

    # Subcommand parsers inherit the class: every argument error is one line, exit 2.
    parser = OneLineErrorParser(prog="samkit", description="Fast, exact Segment Anything (SAM) inference.")
    parser.add_argument("--version", action="version", version=f"samkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # subcommand not present in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samkit`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..allocator import keep_freed_memory
    from ..devices import runs_on_cpu
    from ..io import ImageReadError
    from ..weights import CheckpointError

    # The command line owns its process: let freed tensors' memory be reused, not re-mapped.
    # A CPU malloc trick: only for commands that compute on the CPU (no --device: they do).
    if runs_on_cpu(getattr(args, "device", "cpu")):
        keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except (UserError, CheckpointError, ImageReadError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"samkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"samkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
