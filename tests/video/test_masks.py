"""Video mask post-processing: hole filling and the non-overlap rule."""

from __future__ import annotations

import pytest
import torch
from video_oracle import opencv_connected_components

from samkit.video.masks import fill_holes, to_video_resolution

pytest.importorskip("cv2")


def test_holes_up_to_the_area_are_filled() -> None:
    logits = torch.full((1, 1, 12, 12), 2.0)
    logits[0, 0, 2:4, 2:6] = -1.0  # a hole of 8 pixels: filled
    logits[0, 0, 7:10, 2:5] = -1.0  # a hole of 9 pixels: kept
    logits[0, 0, 2, 9] = -3.0  # two diagonal pixels: one 8-connected hole of 2
    logits[0, 0, 3, 10] = -3.0
    filled = fill_holes(logits, 8)
    assert torch.equal(filled[0, 0, 2:4, 2:6], torch.full((2, 4), 0.1))
    assert torch.equal(filled[0, 0, 7:10, 2:5], torch.full((3, 3), -1.0))
    assert float(filled[0, 0, 2, 9]) == pytest.approx(0.1) and float(filled[0, 0, 3, 10]) == pytest.approx(0.1)
    assert torch.equal(logits[0, 0, 2, 2], torch.tensor(-1.0))  # the input is not changed


def test_matches_the_official_post_processor() -> None:
    """The official fill_holes_in_mask_scores, given the same labelling, fills the same pixels."""
    import sam2.utils.misc as misc

    logits = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(misc, "get_connected_components", opencv_connected_components)
        official = misc.fill_holes_in_mask_scores(logits, 8)
    assert not torch.equal(official, logits)
    assert torch.equal(fill_holes(logits, 8), official)


def test_non_overlap_keeps_the_best_object() -> None:
    logits = torch.tensor([[[[3.0, -1.0]]], [[[1.0, 2.0]]]])  # (2, 1, 1, 2)
    out = to_video_resolution(logits, 1, 2, non_overlap=True)
    assert out.tolist() == [[[[3.0, -10.0]]], [[[-10.0, 2.0]]]]
    assert torch.equal(to_video_resolution(logits, 1, 2), logits)
