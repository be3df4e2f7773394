"""``samkit annotate``: detector boxes in (COCO or YOLO), a labelled mask data set out."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import add_model_args, existing_file, load_model

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``annotate`` subcommand."""
    from .engine_options import add_engine_args

    parser = subparsers.add_parser(
        "annotate",
        help="turn detector boxes into masks: COCO / YOLO-seg / Label Studio data sets",
        description="Decode every detection box with SAM (all boxes of an image on one embedding) and write the masks "
        "as a labelled data set. DETECTIONS is a COCO results file (with --dataset), a COCO data set whose annotations "
        "carry boxes, or a folder of YOLO txt files (class cx cy w h [score], normalized; classes file: --classes, "
        "default DETECTIONS/classes.txt). Rerunning skips images already done with the same settings; bad rows are "
        "reported with their line and skipped. --engine ray --workers N decodes on N model replicas on Ray (a local "
        "cluster, or --ray-address); the files are the same as with the local engine.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files, folders of images, or glob patterns")
    parser.add_argument("--boxes", required=True, metavar="DETECTIONS", help="COCO JSON file or YOLO txt folder")
    parser.add_argument("--dataset", default=None, help="COCO data set naming the images and categories of a results file")
    parser.add_argument("--classes", default=None, help="YOLO classes file, one name per line")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--format",
        default="coco",
        choices=("coco", "yolo", "labelstudio", "all"),
        help="coco: OUT/annotations.json; yolo: OUT/labels/*.txt + OUT/classes.txt; labelstudio: "
        "OUT/labelstudio_tasks.json; all (default coco)",
    )
    parser.add_argument("--min-score", type=float, default=None, help="skip detections scoring below this")
    parser.add_argument(
        "--multimask",
        default="best",
        choices=("best", "single"),
        help="best: of SAM's three masks the one with the highest predicted IoU; single: SAM's single-mask output",
    )
    parser.add_argument("--polygons", action="store_true", help="COCO segmentations as polygons (default RLE)")
    parser.add_argument("--batch-size", type=int, default=32, help="boxes per decoder call (default 32); memory: boxes x 3 x image pixels bytes")
    parser.add_argument(
        "--image-url-prefix",
        default="/data/local-files/?d=",
        help="Label Studio tasks name each image PREFIX + its file name (default: Label Studio's local files)",
    )
    parser.add_argument("-r", "--recursive", action="store_true", help="also read subfolders of input folders")
    add_model_args(parser, sam2=True)
    add_engine_args(parser)  # --engine, --ray-address, --workers, --threads, --no-progress
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``samkit annotate``; 0 if every image was annotated, 1 if some could not be read."""
    import torch
    from tqdm.auto import tqdm

    from ..annotation import annotate
    from . import UserError
    from .engine_options import engine_kwargs, model_factory

    if args.batch_size < 1:
        raise UserError(f"--batch-size: expected at least 1, got {args.batch_size}")
    engine = engine_kwargs(args)  # checks --threads, --workers / --ray-address and that Ray is there
    for option, value in (("--dataset", args.dataset), ("--classes", args.classes)):
        if value is not None:
            existing_file(value, option)
    checkpoint = None if args.checkpoint is None else str(existing_file(args.checkpoint, "--checkpoint").resolve())

    def bad_row(row: Any) -> None:
        tqdm.write(f"samkit annotate: skipped detection {row.line()}", file=sys.stderr)

    def failure(path: str, reason: str) -> None:
        tqdm.write(f"samkit annotate: skipped {path}: {reason}", file=sys.stderr)

    if engine["engine"] == "ray":
        factory, _ = model_factory(args)
        models: dict[str, Any] = {"model_factory": factory, "workers": engine["workers"], "ray_address": engine["ray_address"]}
    threads_before = torch.get_num_threads()
    try:
        if engine["engine"] == "local":
            if engine["threads"] is not None:
                torch.set_num_threads(engine["threads"])  # while the model loads too
            models = {"model": load_model(args)}
        summary = annotate(
            args.inputs,
            args.boxes,
            args.out,
            **models,
            engine=engine["engine"],
            threads=engine["threads"],
            dataset=args.dataset,
            classes=args.classes,
            fmt=args.format,
            min_score=args.min_score,
            multimask=args.multimask,
            segmentation="polygons" if args.polygons else "rle",
            batch_size=args.batch_size,
            recursive=args.recursive,
            image_url_prefix=args.image_url_prefix,
            signature={"model": args.model, "checkpoint": checkpoint, "dtype": args.dtype},
            progress=engine["progress"] and sys.stderr.isatty(),
            on_bad_row=bad_row,
            on_failure=failure,
        )
    finally:
        torch.set_num_threads(threads_before)
    print(summary.line())
    for kind, path in summary.outputs.items():
        print(f"{kind}: {path}")
    return 1 if summary.failed else 0
