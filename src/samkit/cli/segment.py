"""``samkit segment``: masks for point / box prompts on one image."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .common import add_model_args, existing_file, load_model, parse_floats

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``segment`` subcommand."""
    parser = subparsers.add_parser(
        "segment",
        help="segment an object from points and/or boxes",
        description="Predict a mask from point and box prompts given in the image's own pixels. "
        "Writes the best mask (or all candidates) as PNG and prints the scores.",
    )
    parser.add_argument("image", help="input image file")
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="a prompt point in image pixels; LABEL 1 = object (default), 0 = background. Repeatable.",
    )
    parser.add_argument(
        "--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="a box prompt in image pixels. Repeatable."
    )
    parser.add_argument("--out", required=True, help="output mask PNG (same size as the image)")
    parser.add_argument("--overlay", default=None, help="also write a picture of the mask over the image")
    parser.add_argument(
        "--all-masks",
        action="store_true",
        help="write every candidate mask (OUT_0.png, OUT_1.png, ...) instead of the best one",
    )
    parser.add_argument(
        "--single-mask", action="store_true", help="ask the model for one mask instead of 3 candidates"
    )
    parser.add_argument(
        "--hq-token-only",
        action="store_true",
        help="HQ-SAM models (hq_vit_*): the HQ token's mask alone, without SAM's mask added",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_args(parser, sam2=True)
    parser.set_defaults(func=run)


def _parse_prompts(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import numpy as np

    from . import UserError

    coords, labels = [], []
    for text in args.point:
        values = parse_floats(text, "--point", (2, 3))
        label = 1 if len(values) == 2 else values[2]
        if label not in (0.0, 1.0):
            raise UserError(f"--point: LABEL must be 1 (object) or 0 (background), got {text!r}")
        coords.append(values[:2])
        labels.append(int(label))
    boxes = []
    for text in args.box:
        box = parse_floats(text, "--box", (4,))
        if box[2] < box[0] or box[3] < box[1]:
            raise UserError(f"--box: expected X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0, got {text!r}")
        boxes.append(box)
    if not coords and not boxes:
        raise UserError("give at least one --point X,Y or --box X0,Y0,X1,Y1")
    point_coords = np.array(coords, dtype=np.float64) if coords else None
    point_labels = np.array(labels, dtype=np.int64) if coords else None
    box_array = np.array(boxes, dtype=np.float64) if boxes else None
    return point_coords, point_labels, box_array


def _out_path(base: Path, index: int | None) -> Path:
    if index is None:
        return base
    return base.with_name(f"{base.stem}_{index}{base.suffix or '.png'}")


def _check_outputs(args: argparse.Namespace) -> None:
    """--out and --overlay: a known format for the suffix and a writable folder, before any work.

    Raises:
        samkit.cli.UserError: a suffix that is not .png for --out, an unknown image suffix for
            --overlay.
        samkit.outputs.OutputPathError: a missing or unwritable folder.
    """
    from PIL import Image

    from ..outputs import check_output_file
    from . import UserError

    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out: masks are written as PNG; give a file name ending in .png, got {args.out!r}")
    check_output_file(args.out, what="--out")
    if args.overlay:
        if Path(args.overlay).suffix.lower() not in Image.registered_extensions():
            raise UserError(
                f"--overlay: cannot tell the image format from {args.overlay!r}; end it in .png, .jpg, .webp, ..."
            )
        check_output_file(args.overlay, what="--overlay")


def run(args: argparse.Namespace) -> int:
    """Segment and write the outputs; prints scores."""
    import numpy as np

    from ..io import load_image, save_image
    from ..pictures import draw_overlay, save_mask_png
    from ..predictor import SamPredictor
    from . import UserError

    image_path = existing_file(args.image, "IMAGE")
    if args.hq_token_only and not args.model.startswith("hq_"):
        raise UserError(f"--hq-token-only: only HQ-SAM models (hq_vit_*) have an HQ token, not {args.model}")
    point_coords, point_labels, boxes = _parse_prompts(args)
    _check_outputs(args)
    image = load_image(image_path)
    h, w = image.shape[:2]
    for name, arr in (("--point", point_coords), ("--box", boxes)):
        if arr is not None:
            xy = arr.reshape(-1, 2)
            if (xy[:, 0] < 0).any() or (xy[:, 0] > w).any() or (xy[:, 1] < 0).any() or (xy[:, 1] > h).any():
                raise UserError(f"{name}: coordinates must lie inside the {w}x{h} image")

    t0 = time.perf_counter()
    print(f"samkit segment: loading {args.model} ...", file=sys.stderr, flush=True)
    model = load_model(args)
    t1 = time.perf_counter()
    print(f"samkit segment: encoding the {w}x{h} image ...", file=sys.stderr, flush=True)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    t2 = time.perf_counter()
    masks, scores, _ = predictor.predict(
        point_coords=point_coords,
        point_labels=point_labels,
        box=boxes,
        multimask_output=not args.single_mask,
        hq_token_only=args.hq_token_only,
    )
    t3 = time.perf_counter()
    if masks.ndim == 3:  # one prompt set -> add the box axis
        masks, scores = masks[None], scores[None]
    # masks (B, C, H, W), scores (B, C): one object per box (or one for points only)
    best = scores.argmax(axis=1)  # (B,)
    out = Path(args.out)
    written: list[str] = []
    areas: list[int] = []  # one per mask file written
    if args.all_masks:
        for b in range(masks.shape[0]):
            for c in range(masks.shape[1]):
                index = b * masks.shape[1] + c
                path = _out_path(out, index)
                save_mask_png(path, masks[b, c])
                written.append(str(path))
                areas.append(int(masks[b, c].sum()))
        chosen = masks[np.arange(masks.shape[0]), best]  # (B, H, W)
    else:
        chosen = masks[np.arange(masks.shape[0]), best]  # (B, H, W)
        save_mask_png(out, chosen.any(axis=0))
        written.append(str(out))
        areas = [int(m.sum()) for m in chosen]  # the best mask of each object (the file holds their union)
    if args.overlay:
        picture = draw_overlay(image, chosen, points=point_coords, labels=point_labels, boxes=boxes)
        save_image(args.overlay, picture)
        written.append(str(args.overlay))

    rounded = [[round(float(s), 4) for s in row] for row in scores]
    result = {
        "image": str(image_path),
        "size": [w, h],
        "model": args.model,
        # Python floats rounded to 4 digits (float32 values rounded in float32 print as -0.020400000736117363).
        "scores": rounded if scores.shape[0] > 1 else rounded[0],
        "best": best.tolist() if scores.shape[0] > 1 else int(best[0]),
        "mask_area": areas,
        "written": written,
        "seconds": {"load": round(t1 - t0, 3), "encode": round(t2 - t1, 3), "predict": round(t3 - t2, 4)},
    }
    if args.json:
        print(json.dumps(result))
    else:
        for b in range(scores.shape[0]):
            label = f"object {b}: " if scores.shape[0] > 1 else ""
            cand = "  ".join(f"[{c}] {s:.3f}" for c, s in enumerate(scores[b]))
            print(f"{label}scores {cand}  -> best {int(best[b])}, {int(chosen[b].sum())} pixels")
        for path in written:
            print(f"wrote {path}")
        print(
            f"encode {result['seconds']['encode']:.2f} s, predict {result['seconds']['predict'] * 1000:.0f} ms"
        )
    return 0
