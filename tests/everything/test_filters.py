"""Boxes, crop-edge test, stability, NMS, grids and crop boxes against the reference utilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils import amg
from torchvision.ops import batched_nms

from samkit.everything.filters import (
    UNBOUNDED,
    is_box_near_crop_edge,
    masks_to_boxes,
    nms,
    provably_unstable,
    stability_bounds,
    stability_score,
)
from samkit.transforms import postprocess_masks, preprocess_shape
from samkit.everything.grid import build_all_layer_point_grids, build_point_grid, generate_crop_boxes


@pytest.mark.parametrize("n", [0, 1, 7, 300, 1001, 2400])
def test_nms_equals_torchvision(n: int) -> None:
    """Same kept indices in the same order, ties included, on both sides of torchvision's
    1000-box switch to its per-category path."""
    g = torch.Generator().manual_seed(n)
    xy = torch.randint(0, 300, (n, 2), generator=g)
    boxes = torch.cat([xy, xy + torch.randint(0, 120, (n, 2), generator=g)], dim=1)  # some empty boxes
    score_sets = [
        torch.rand(n, generator=g),
        torch.randint(0, 2, (n,), generator=g).float(),  # massive ties (small-region NMS)
        1 / (torch.randint(1, 4, (n,), generator=g) * 1000.0),  # crop-NMS style scores
    ]
    for scores in score_sets:
        for threshold in (0.0, 0.5, 0.7, 0.9):
            expected = batched_nms(boxes.float(), scores, torch.zeros(n), iou_threshold=threshold)
            torch.testing.assert_close(nms(boxes, scores, threshold), expected, rtol=0, atol=0)


def test_boxes_and_edges_equal_reference() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 33, 47, generator=g) < 0.002
    masks[3] = False
    masks[4] = True
    np.testing.assert_array_equal(masks_to_boxes(masks), amg.batched_mask_to_box(masks))
    np.testing.assert_array_equal(
        masks_to_boxes(masks.transpose(1, 2)), amg.batched_mask_to_box(masks.transpose(1, 2).contiguous())
    )
    boxes = torch.randint(0, 120, (500, 4), generator=g)
    for crop in ([0, 0, 120, 90], [15, 20, 100, 90], [60, 0, 120, 45]):
        np.testing.assert_array_equal(
            is_box_near_crop_edge(boxes, crop, [0, 0, 120, 90]), amg.is_box_near_crop_edge(boxes, crop, [0, 0, 120, 90])
        )


def test_stability_equals_reference() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 40, 60, generator=g) * 3
    logits[0] = -5.0  # empty at both thresholds: NaN like the reference
    torch.testing.assert_close(
        stability_score(logits, 0.0, 1.0), amg.calculate_stability_score(logits, 0.0, 1.0), equal_nan=True
    )


@pytest.mark.parametrize("size", [(546, 967), (300, 200), (1500, 700), (64, 1000), (1024, 1024)])
def test_stability_bounds_are_sound(size: tuple[int, int]) -> None:
    """Bounds from low-res logits hold for the upscaled masks; pruning never drops a stable mask."""
    g = torch.Generator().manual_seed(size[0])
    coarse = torch.randn(10, 1, 16, 16, generator=g) * 8  # (10, 1, 16, 16) smooth blobs ...
    low = torch.nn.functional.interpolate(coarse, (256, 256), mode="bilinear")[:, 0]  # (10, 256, 256)
    low = torch.cat([low + torch.randn(10, 256, 256, generator=g) * 0.3, torch.randn(2, 256, 256, generator=g) * 3])
    low[-1] = -5.0  # ... noise, and an empty mask
    input_size = preprocess_shape(*size, 1024)
    up = postprocess_masks(low, input_size, size, 1024)  # (12, H, W)
    high = (up > 1.0).flatten(1).sum(1)  # (12,)
    above_low = (up > -1.0).flatten(1).sum(1)
    upper, lower = stability_bounds(low, input_size, size, 1024, (1.0, -1.0))
    assert (upper >= high).all() and (lower <= above_low).all()
    for thresh in (0.5, 0.8, 0.95):
        pruned = provably_unstable(upper, lower, thresh)
        stability = stability_score(up, 0.0, 1.0)
        assert not (pruned & (stability >= thresh)).any()
    assert bool(provably_unstable(upper, lower, 0.95)[-1])  # empty: NaN score, always dropped
    low[0, 5, 5] = float("nan")  # inside the region every size reads
    upper, lower = stability_bounds(low, input_size, size, 1024, (1.0, -1.0))
    assert upper[0] == UNBOUNDED and lower[0] == 0 and not bool(provably_unstable(upper, lower, 0.5)[0])


def test_grids_and_crop_boxes_equal_reference() -> None:
    for n in (1, 2, 7, 32):
        np.testing.assert_array_equal(build_point_grid(n), amg.build_point_grid(n))
    for layers, factor in ((0, 1), (2, 2), (3, 1)):
        ours = build_all_layer_point_grids(16, layers, factor)
        ref = amg.build_all_layer_point_grids(16, layers, factor)
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            np.testing.assert_array_equal(a, b)
    for size in ((546, 967), (1500, 1000), (7, 10)):
        for layers in (0, 1, 2):
            assert generate_crop_boxes(size, layers, 512 / 1500) == amg.generate_crop_boxes(size, layers, 512 / 1500)
    # A 2x3 image: layer 2's four crops a side run off the edge; the empty ones are left out.
    ours_tiny = generate_crop_boxes((2, 3), 2, 512 / 1500)
    ref_tiny = amg.generate_crop_boxes((2, 3), 2, 512 / 1500)
    assert ours_tiny[0] == [b for b in ref_tiny[0] if b[2] > b[0] and b[3] > b[1]]
    assert len(ours_tiny[0]) < len(ref_tiny[0])
    assert all(0 <= x0 < x1 <= 3 and 0 <= y0 < y1 <= 2 for x0, y0, x1, y1 in ours_tiny[0])
    with pytest.raises(ValueError, match="crop layer 2"):
        build_all_layer_point_grids(3, 2, 2)
