"""``samkit embed``: image embeddings for many images, one safetensors file per image."""

from __future__ import annotations

import argparse
import logging

from .common import add_model_args

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``embed`` subcommand."""
    from .engine_options import add_engine_args

    parser = subparsers.add_parser(
        "embed",
        help="compute image embeddings for many images (resumable; local or on Ray)",
        description=(
            "Encode every image once and save its embedding (what SamPredictor.save_embedding writes; "
            "load with SamPredictor.load_embedding). Images already done in OUT are skipped; "
            "OUT/manifest.json lists every image, its file and status."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or glob patterns")
    parser.add_argument(
        "-r", "--recursive", action="store_true", help="also read the subfolders of input folders (never the --out folder)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    add_model_args(parser, sam2=True)
    add_engine_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``samkit embed``; returns 0, or 1 when some images failed."""
    from ..outputs import check_output_dir
    from ..scale import run_job
    from .engine_options import engine_kwargs, model_factory

    engine = engine_kwargs(args)
    check_output_dir(args.out, what="--out")  # before the model loads: one line, exit 2
    factory, job_id = model_factory(args)
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # log lines (failed images) above the progress bar, not through it
        summary = run_job(
            "embed", args.inputs, args.out, model_factory=factory, job_id=job_id, recursive=args.recursive, **engine
        )
    print(summary.line())
    return 1 if summary.failed else 0
