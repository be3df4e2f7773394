"""``samkit bench --rows annotate``: boxes to masks, samkit against a loop over the official predictor.

The workload of ``samkit annotate`` on one image: 32 detector boxes, one mask each (the best of
SAM's three). The official side calls ``predictor.predict(box=box)`` once per box, the way
box-to-mask tools drive the official predictor; samkit decodes all 32 in one batch
(:func:`samkit.annotation.boxes.masks_for_boxes`). Both sides have the image embedded already
(the same in both), so the row times the per-box work; boxes/s = 32 / time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..benchmark import BenchContext, BenchRow, mask_iou, time_alternating
from .boxes import masks_for_boxes

__all__ = ["BOXES_PER_IMAGE", "benchmark_boxes", "row_annotate"]

BOXES_PER_IMAGE = 32


def benchmark_boxes(height: int, width: int, count: int = BOXES_PER_IMAGE, seed: int = 2) -> np.ndarray:
    """``count`` seeded detector-like boxes (x0, y0, x1, y1) of 5-50% of the image's sides. (count, 4)"""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.05, 0.5, count) * width
    h = rng.uniform(0.05, 0.5, count) * height
    x0 = rng.uniform(0, 1, count) * (width - w)
    y0 = rng.uniform(0, 1, count) * (height - h)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def row_annotate(ctx: BenchContext, variant: str = "vit_b") -> list[BenchRow]:
    """32 boxes on one embedded image: a loop of official ``predict(box=...)`` against one samkit batch."""
    official = ctx.official(variant)
    ours = ctx.samkit(variant)
    image = ctx.image
    if not ours.is_image_set:
        ours.set_image(image)
    if not official.is_image_set:
        official.set_image(image)
    h, w = image.shape[:2]
    boxes = benchmark_boxes(h, w)

    last: dict[str, list[Any]] = {}  # the masks of each side's last timed run, for the check

    def official_masks() -> None:
        out = []
        for box in boxes:
            masks, scores, _ = official.predict(box=box, multimask_output=True)
            out.append(masks[int(np.argmax(scores))])
        last["official"] = out

    def samkit_masks() -> None:
        batches = masks_for_boxes(ours, boxes, multimask="best", batch_size=BOXES_PER_IMAGE)
        last["samkit"] = [m for batch in batches for m in batch.masks.numpy()]

    medians = time_alternating({"official": official_masks, "samkit": samkit_masks}, ctx.rounds)
    ious = [mask_iou(a, b) for a, b in zip(last["official"], last["samkit"], strict=True)]
    official_rate = BOXES_PER_IMAGE / medians["official"]
    samkit_rate = BOXES_PER_IMAGE / medians["samkit"]
    return [
        BenchRow(
            f"annotate {variant}: {BOXES_PER_IMAGE} boxes on one embedded {w}x{h} image, best of 3 masks",
            "official predict(box=...) per box",
            medians["official"],
            medians["samkit"],
            round_ratios=medians.ratios("official", "samkit"),
            check=f"{official_rate:.1f} vs {samkit_rate:.1f} boxes/s; mask IoU min {min(ious):.4f}",
            ok=min(ious) >= 0.99,
            extra={"boxes": BOXES_PER_IMAGE, "official_boxes_per_s": official_rate, "samkit_boxes_per_s": samkit_rate},
        )
    ]
