"""Rows of the other model families against their official code: HQ-SAM (segment-anything-hq)
and SAM 2.1 (sam2), on the same perturbed weights; and samkit annotate's workload."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .harness import BenchContext, BenchRow, logit_agreement, match_records, time_alternating

def row_annotate(ctx: BenchContext) -> list[BenchRow]:
    """``samkit annotate``'s workload (in :mod:`samkit.annotation.bench`, imported when run)."""
    from ..annotation.bench import row_annotate

    return row_annotate(ctx)


def row_model_family(ctx: BenchContext, variant: str) -> list[BenchRow]:
    """set_image and a 1-point multimask predict of another model family (HQ-SAM, SAM 2.1)
    against its official code (``bench/baselines.py``), on the same perturbed weights."""
    off = ctx.official(variant)
    ours = ctx.samkit(variant)
    image = ctx.image
    h, w = image.shape[:2]
    encode = time_alternating({"official": lambda: off.set_image(image), "samkit": lambda: ours.set_image(image)}, ctx.rounds)
    point = {"point_coords": np.array([[w * 0.45, h * 0.55]]), "point_labels": np.array([1])}
    decode = time_alternating(
        {"official": lambda: off.predict(**point), "samkit": lambda: ours.predict(**point)},
        max(ctx.rounds * 10, 20),
        warmup=3,
    )
    lo, _, _ = off.predict(return_logits=True, **point)
    ls, _, _ = ours.predict(return_logits=True, **point)
    strong, diff = logit_agreement(np.asarray(lo, dtype=np.float32), np.asarray(ls, dtype=np.float32))
    check = f"logits max|diff| {diff:.1e}, {strong} mask pixels differ beyond |logit|>=1e-3"
    ctx.drop(f"official:{variant}:", f"samkit:{variant}:")
    return [
        BenchRow(f"set_image {variant} fp32", "official fp32", encode["official"], encode["samkit"],
                 round_ratios=encode.ratios("official", "samkit"), check=check, ok=strong == 0),
        BenchRow(f"predict {variant} 1 point, multimask, {w}x{h}", "official", decode["official"], decode["samkit"],
                 round_ratios=decode.ratios("official", "samkit"), check=check, ok=strong == 0),
    ]


def row_hq(ctx: BenchContext) -> list[BenchRow]:
    """HQ-SAM (hq_vit_b) against segment-anything-hq."""
    return row_model_family(ctx, "hq_vit_b")


def row_sam2(ctx: BenchContext) -> list[BenchRow]:
    """SAM 2.1 (hiera_t and hiera_b+) against the official sam2 package."""
    return row_model_family(ctx, "sam2.1_hiera_t") + row_model_family(ctx, "sam2.1_hiera_b+")


def _generate_timed(generator: Any, image: np.ndarray) -> tuple[float, list[dict[str, Any]]]:
    start = time.perf_counter()
    records = generator.generate(image)
    return time.perf_counter() - start, records


def row_sam2_everything_variant(ctx: BenchContext, variant: str) -> list[BenchRow]:
    """Segment everything with a SAM 2.1 model against ``SAM2AutomaticMaskGenerator``, one round.

    Two settings on the same perturbed weights: the official defaults (32x32 points, predicted
    IoU > 0.8, stability >= 0.95, box NMS 0.7), and the same with both score filters off, which
    keeps masks on random weights so that the mask sets can be compared one to one (box NMS
    still merges the image-wide masks random weights give).
    """
    from ..everything import SamAutomaticMaskGenerator

    off_model = ctx.official(variant).model
    ours_model = ctx.samkit(variant).model
    image = ctx.image
    rows = []
    settings: list[tuple[str, dict[str, Any]]] = [
        ("defaults", {}),
        ("filters off", {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}),
    ]
    for label, options in settings:
        t_off, off_masks = _generate_timed(ctx.baselines.mask_generator(off_model, variant, **options), image)
        ours_gen = SamAutomaticMaskGenerator(ours_model, **options)
        t_ours, ours_masks = _generate_timed(ours_gen, image)
        matched = match_records(off_masks, ours_masks)
        stats = dict(ours_gen.last_stats)
        rows.append(
            BenchRow(
                f"everything {variant} {label}, {image.shape[1]}x{image.shape[0]}",
                "official SAM2AutomaticMaskGenerator",
                t_off,
                t_ours,
                check=(
                    f"{len(off_masks)} vs {len(ours_masks)} masks, {matched} matched one-to-one with IoU>=0.99; "
                    f"{stats.get('iou_passed', '?')}/{stats.get('masks', '?')} passed the IoU filter; "
                    "perturbed random weights; one round"
                ),
                ok=len(off_masks) == len(ours_masks) == matched,
                extra={"samkit_stats": stats},
            )
        )
    ctx.drop(f"official:{variant}:", f"samkit:{variant}:")
    return rows


def row_sam2_everything(ctx: BenchContext) -> list[BenchRow]:
    """Segment everything, SAM 2.1 hiera_t and hiera_b+, against the official sam2 generator."""
    return row_sam2_everything_variant(ctx, "sam2.1_hiera_t") + row_sam2_everything_variant(ctx, "sam2.1_hiera_b+")
