"""``samkit download``: fetch official checkpoints into the cache."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``download`` subcommand."""
    parser = subparsers.add_parser(
        "download",
        help="download official checkpoints (sha256-verified) into the cache",
        description="Download official checkpoints into $SAMKIT_HOME (default ~/.cache/samkit). "
        "Mirrors: set SAMKIT_DOWNLOAD_BASE to a base URL, or SAMKIT_URL_VIT_B etc. to full URLs.",
    )
    parser.add_argument(
        "variants",
        nargs="*",
        metavar="VARIANT",
        help="vit_b (default), vit_l, vit_h, vit_t; HQ-SAM's hq_vit_b, hq_vit_l, hq_vit_h, hq_vit_tiny "
        "(no published sha256: downloaded unverified, with a warning)",
    )
    parser.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Download each requested variant; print the path of each file."""
    from ..downloads import CHECKPOINTS, download_checkpoint
    from . import UserError

    variants = args.variants or ["vit_b"]
    unknown = [v for v in variants if v not in CHECKPOINTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}: expected one of {', '.join(sorted(CHECKPOINTS))}")
    for variant in variants:
        path = download_checkpoint(variant, progress=not args.no_progress, force=args.force)
        print(f"{variant}\t{path}")
    return 0
