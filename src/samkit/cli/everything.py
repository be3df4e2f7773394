"""``samkit everything``: segment everything in many images (mask PNGs and/or COCO JSON).

``--engine local`` (default) segments in this process; ``--engine ray`` on a pool of Ray actors,
one model replica each (:mod:`samkit.jobs`). Both write the same files
(:func:`samkit.everything.job.run_everything` writes them, in this process, whichever engine segments).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .common import add_model_args, existing_file, load_model

__all__ = ["generator_kwargs", "register", "run"]

logger = logging.getLogger(__name__)

# CLI option -> (generator keyword, type, default)
_GENERATOR_OPTIONS: dict[str, tuple[str, type, Any]] = {
    "--points-per-side": ("points_per_side", int, 32),
    "--points-per-batch": ("points_per_batch", int, 64),
    "--pred-iou-thresh": ("pred_iou_thresh", float, None),  # None: the model family's official default
    "--stability-score-thresh": ("stability_score_thresh", float, 0.95),
    "--box-nms-thresh": ("box_nms_thresh", float, 0.7),
    "--crop-n-layers": ("crop_n_layers", int, 0),
    "--min-mask-region-area": ("min_mask_region_area", int, 0),
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``everything`` subcommand."""
    from .engine_options import add_engine_args

    parser = subparsers.add_parser(
        "everything",
        help="find all masks in images (automatic mask generation)",
        description="Segment everything in each input image with a grid of point prompts. "
        "Writes, per image, a folder of mask PNGs plus metadata.csv (--format png) and/or one COCO JSON "
        "for all images (--format coco). Rerunning skips images whose outputs are complete. "
        "--engine ray --workers N segments on N model replicas on Ray (a local cluster, or --ray-address); "
        "the files are the same as with the local engine.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or glob patterns")
    parser.add_argument(
        "-r", "--recursive", action="store_true", help="also read the subfolders of input folders (never the --out folder)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--format",
        default="png",
        choices=("png", "coco", "both"),
        help="png: per image a folder of mask PNGs + metadata.csv; coco: OUT/annotations.json; both (default png)",
    )
    parser.add_argument("--overlay", action="store_true", help="also write OUT/<image>/overlay.png with all masks")
    group = parser.add_argument_group("mask generation")
    for option, (_, kind, default) in _GENERATOR_OPTIONS.items():
        shown = default if default is not None else "0.88; 0.8 for SAM 2.x models, as their official generators"
        group.add_argument(option, type=kind, default=default, help=f"(default {shown})")
    add_model_args(parser, sam2=True)
    add_engine_args(parser)  # also --threads and --no-progress
    parser.set_defaults(func=run)


def generator_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The generator keyword arguments named by the options."""
    return {key: getattr(args, key) for key, _, _ in _GENERATOR_OPTIONS.values()}


def run(args: argparse.Namespace) -> int:
    """Run ``samkit everything``; 0 if every input was segmented (or already done), 1 if some failed."""
    from ..everything import SamAutomaticMaskGenerator
    from ..everything.job import collect_inputs, run_everything
    from ..outputs import check_output_dir
    from .engine_options import engine_kwargs
    from . import UserError

    kwargs = generator_kwargs(args)
    try:
        found = collect_inputs(args.inputs, recursive=args.recursive, exclude=[args.out])  # fail fast on inputs that name nothing, before loading the model
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if not found:
        hint = "empty folders?" if args.recursive else "empty folders? for subfolders add --recursive"
        print(f"samkit everything: warning: the inputs hold no files ({hint})", file=sys.stderr)
    engine = engine_kwargs(args)  # checks --workers / --ray-address / --threads and that Ray is there
    check_output_dir(args.out, what="--out")  # before the model loads: one line, exit 2
    checkpoint = None if args.checkpoint is None else str(existing_file(args.checkpoint, "--checkpoint").resolve())
    # The same signature for both engines: it is recorded in the outputs, which do not depend on the engine.
    signature = {"model": args.model, "checkpoint": checkpoint, "dtype": args.dtype, **kwargs}
    progress = engine["progress"]  # a bar on a terminal, periodic lines elsewhere (samkit.progress)

    def report(task: Any, reason: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"samkit everything: failed, not segmented: {task.path}: {reason}", file=sys.stderr)  # above the bars

    common: dict[str, Any] = {
        "fmt": args.format,
        "overlay": args.overlay,
        "signature": signature,
        "progress": progress,
        "on_failure": report,
        "recursive": args.recursive,
    }
    if engine["engine"] == "ray":
        summary = run_everything(None, args.inputs, args.out, engine=_ray_engine(args, kwargs, engine), **common)
    else:
        import torch

        threads_before = torch.get_num_threads()
        try:
            if engine["threads"] is not None:
                torch.set_num_threads(engine["threads"])
            model = load_model(args)
            try:
                generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **kwargs)
            except (ValueError, ImportError) as exc:
                raise UserError(str(exc)) from None
            summary = run_everything(generator, args.inputs, args.out, **common)
        finally:
            torch.set_num_threads(threads_before)  # main() may be called in-process (tests, notebooks)
    print(summary.line())
    if summary.details:
        logger.info("engine: %s", summary.details)
    return 1 if summary.failed else 0


def _ray_engine(args: argparse.Namespace, kwargs: dict[str, Any], engine: dict[str, Any]) -> Any:
    """The Ray engine for these options, after checking the generator options in this process.

    The actors build the generator, so a bad option would only show there, as workers that fail
    to start; :func:`_check_generator_options` reports it here first, as a one-line user error.
    """
    from ..everything.job import SegmentWork
    from ..jobs import ray_engine
    from .engine_options import model_factory

    _check_generator_options(kwargs)
    factory, _ = model_factory(args)
    return ray_engine(
        SegmentWork(factory, kwargs), workers=engine["workers"], address=engine["ray_address"], threads=engine["threads"]
    )


def _check_generator_options(kwargs: dict[str, Any]) -> None:
    """Check generator options without loading the real model.

    The checks do not depend on the model, so they run on a tiny random one (built in
    milliseconds, no checkpoint read, unlike a ``meta``-device copy of the real architecture,
    which costs seconds of torch imports).

    Raises:
        samkit.cli.UserError: an option is out of range, or OpenCV is missing but needed.
    """
    from ..config import (
        ImageEncoderConfig,
        MaskDecoderConfig,
        PromptEncoderConfig,
        SamConfig,
    )
    from ..everything import SamAutomaticMaskGenerator
    from ..modeling import Sam
    from . import UserError

    config = SamConfig(
        name="options-check",
        image_encoder=ImageEncoderConfig(
            img_size=32, embed_dim=8, depth=1, num_heads=1, window_size=0, global_attn_indexes=(0,), out_chans=8
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=8, image_embedding_size=2, input_image_size=32),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=8, transformer_depth=1, transformer_mlp_dim=8, transformer_num_heads=1, iou_head_hidden_dim=8
        ),
    )
    try:
        SamAutomaticMaskGenerator(Sam(config), output_mode="coco_rle", **kwargs)
    except (ValueError, ImportError) as exc:
        raise UserError(str(exc)) from None
