"""``samkit bench --rows annotate``'s row, run end to end on MobileSAM (the reference code on the same weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samkit.annotation.bench import BOXES_PER_IMAGE, benchmark_boxes, row_annotate
from samkit.benchmark import BenchContext, load_baselines

REPO = Path(__file__).resolve().parents[2]


def test_boxes_lie_inside_the_image() -> None:
    boxes = benchmark_boxes(546, 967)
    assert boxes.shape == (BOXES_PER_IMAGE, 4)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 967).all() and (boxes[:, 3] <= 546).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_annotate_row_times_both_sides_and_checks_the_masks(tmp_path: Path) -> None:
    ctx = BenchContext(load_baselines(REPO / "bench" / "baselines.py"), tmp_path, rounds=1, device="cpu")
    ctx.image = np.ascontiguousarray(ctx.image[::3, ::3])  # 323x182: the row's mechanics, at a third of the cost per mask
    (row,) = row_annotate(ctx, variant="vit_t")
    assert row.ok, row.check  # every samkit mask matches the reference's for the same box (IoU >= 0.99)
    assert row.baseline_s and row.samkit_s and row.ratio == row.baseline_s / row.samkit_s
    assert np.isclose(row.extra["samkit_boxes_per_s"], BOXES_PER_IMAGE / row.samkit_s)
    assert "boxes/s" in row.check and len(row.round_ratios) == 1
