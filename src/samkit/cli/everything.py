"""``samkit everything``: segment everything in many images (mask PNGs and/or COCO JSON)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .common import add_model_args, existing_file, load_model

logger = logging.getLogger(__name__)

# CLI option -> (generator keyword, type, default)
_GENERATOR_OPTIONS: dict[str, tuple[str, type, Any]] = {
    "--points-per-side": ("points_per_side", int, 32),
    "--points-per-batch": ("points_per_batch", int, 64),
    "--pred-iou-thresh": ("pred_iou_thresh", float, 0.88),
    "--stability-score-thresh": ("stability_score_thresh", float, 0.95),
    "--box-nms-thresh": ("box_nms_thresh", float, 0.7),
    "--crop-n-layers": ("crop_n_layers", int, 0),
    "--min-mask-region-area": ("min_mask_region_area", int, 0),
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``everything`` subcommand."""
    parser = subparsers.add_parser(
        "everything",
        help="find all masks in images (automatic mask generation)",
        description="Segment everything in each input image with a grid of point prompts. "
        "Writes, per image, a folder of mask PNGs plus metadata.csv (--format png) and/or one COCO JSON "
        "for all images (--format coco). Rerunning skips images whose outputs are complete.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or glob patterns")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--format",
        default="png",
        choices=("png", "coco", "both"),
        help="png: per image a folder of mask PNGs + metadata.csv; coco: OUT/annotations.json; both (default png)",
    )
    parser.add_argument("--overlay", action="store_true", help="also write OUT/<image>/overlay.png with all masks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    group = parser.add_argument_group("mask generation")
    for option, (_, kind, default) in _GENERATOR_OPTIONS.items():
        group.add_argument(option, type=kind, default=default, help=f"(default {default})")
    add_model_args(parser)
    parser.set_defaults(func=run)


def generator_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The generator keyword arguments named by the options."""
    return {key: getattr(args, key) for key, _, _ in _GENERATOR_OPTIONS.values()}


def run(args: argparse.Namespace) -> int:
    """Run ``samkit everything``; 0 if every input was segmented (or already done), 1 if some failed."""
    from ..everything import SamAutomaticMaskGenerator
    from ..everything.job import collect_inputs, run_everything
    from . import UserError

    kwargs = generator_kwargs(args)
    try:
        collect_inputs(args.inputs)  # fail fast on inputs that name nothing, before loading the model
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    checkpoint = None if args.checkpoint is None else str(existing_file(args.checkpoint, "--checkpoint").resolve())
    model = load_model(args)
    try:
        generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **kwargs)
    except (ValueError, ImportError) as exc:
        raise UserError(str(exc)) from None
    signature = {"model": args.model, "checkpoint": checkpoint, "dtype": args.dtype, **kwargs}
    progress = not args.no_progress and sys.stderr.isatty()

    def report(task: Any, reason: str) -> None:
        print(f"samkit everything: skipped {task.path}: {reason}", file=sys.stderr)

    summary = run_everything(
        generator,
        args.inputs,
        args.out,
        fmt=args.format,
        overlay=args.overlay,
        signature=signature,
        progress=progress,
        on_failure=report,
    )
    print(summary.line())
    return 1 if summary.failed else 0
