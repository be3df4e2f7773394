"""Rows of the other model families against their official code: HQ-SAM (segment-anything-hq)
and SAM 2.1 (sam2), on the same perturbed weights; and samkit annotate's workload."""

from __future__ import annotations

import numpy as np

from .harness import BenchContext, BenchRow, logit_agreement, time_alternating

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
