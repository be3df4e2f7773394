"""``SamAutomaticMaskGenerator`` against the official generator: same masks, same records.

Both load one official-format checkpoint (perturbed, with a decoder built to make point-local
masks: see conftest.py), so the comparison covers real filtering, NMS and crops with a good
number of masks. Each case asserts that the official generator itself finds enough masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import segment_anything
import torch

import samkit
from samkit.everything import SamAutomaticMaskGenerator

from .conftest import (
    assert_same_records,
    build_official_small,
    make_image,
    save_constructed,
    small_config,
)

IMAGE_SIZE = (546, 967)  # (H, W): the design's reference image size
SMALL_SEED = 3
LOW = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.5}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_image(*IMAGE_SIZE, seed=0)


@pytest.fixture(scope="module")
def small_pair(image: np.ndarray, checkpoints: Path) -> Iterator[tuple[Any, Any]]:
    """(samkit model, official model) of the small config, from one constructed checkpoint."""
    path = save_constructed(build_official_small, checkpoints / "small.pth", SMALL_SEED, image)
    official = build_official_small()
    official.load_state_dict(torch.load(path, weights_only=True))
    yield samkit.build_sam(small_config(), path), official.eval()


def _both(pair: tuple[Any, Any], image: np.ndarray, **kwargs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ours_model, official_model = pair
    ours = SamAutomaticMaskGenerator(ours_model, **kwargs).generate(image)
    official = segment_anything.SamAutomaticMaskGenerator(official_model, **kwargs).generate(image)
    return ours, official


def test_small_grid_lowered_thresholds(small_pair: tuple[Any, Any], image: np.ndarray) -> None:
    ours, official = _both(small_pair, image, points_per_side=16, **LOW)
    assert len(official) >= 10, f"the case must exercise filtering and NMS, official found {len(official)} masks"
    assert_same_records(ours, official, what="16x16 lowered thresholds", official_model=small_pair[1], image=image)
    for rec in ours:
        assert isinstance(rec["area"], int) and all(isinstance(v, int) for v in rec["bbox"] + rec["crop_box"])
        assert rec["segmentation"].shape == IMAGE_SIZE and rec["segmentation"].dtype == np.bool_


def test_crop_layer(small_pair: tuple[Any, Any], image: np.ndarray) -> None:
    ours, official = _both(small_pair, image, points_per_side=12, crop_n_layers=1, **LOW)
    assert len(official) >= 10, f"official found {len(official)} masks"
    assert len({tuple(r["crop_box"]) for r in official}) > 1, "no mask comes from a crop"
    assert_same_records(ours, official, what="crop_n_layers=1", official_model=small_pair[1], image=image)


def test_min_mask_region_area(small_pair: tuple[Any, Any], image: np.ndarray) -> None:
    ours, official = _both(small_pair, image, points_per_side=16, min_mask_region_area=3000, **LOW)
    assert len(official) >= 10, f"official found {len(official)} masks"
    assert_same_records(ours, official, what="min_mask_region_area=3000", official_model=small_pair[1], image=image)


@pytest.mark.slow
def test_default_settings_full_grid(image: np.ndarray, checkpoints: Path) -> None:
    """Every default (32x32 grid, 0.88 / 0.95 thresholds), equal whatever the count.

    Its checkpoint shifts the IoU head further and sharpens the masks so that some pass the
    default thresholds."""
    path = save_constructed(
        build_official_small, checkpoints / "small_defaults.pth", SMALL_SEED, image, iou_shift=0.9, sharpness=150.0
    )
    official_model = build_official_small()
    official_model.load_state_dict(torch.load(path, weights_only=True))
    ours, official = _both((samkit.build_sam(small_config(), path), official_model.eval()), image)
    assert len(official) >= 1, "the constructed model should pass the default thresholds somewhere"
    assert_same_records(ours, official, what="defaults", official_model=official_model, image=image)


def test_output_modes_equal_reference(small_pair: tuple[Any, Any]) -> None:
    """uncompressed_rle and coco_rle equal the reference exactly; polygons outline the masks."""
    small = make_image(273, 484, seed=5)
    ours_model, official_model = small_pair
    kwargs = {"points_per_side": 8, **LOW}
    for mode in ("uncompressed_rle", "coco_rle"):
        ours = SamAutomaticMaskGenerator(ours_model, output_mode=mode, **kwargs).generate(small)
        official = segment_anything.SamAutomaticMaskGenerator(official_model, output_mode=mode, **kwargs).generate(small)
        assert len(official) >= 3, f"official found {len(official)} masks"
        assert [r["segmentation"] for r in ours] == [r["segmentation"] for r in official], mode
        assert [r["area"] for r in ours] == [r["area"] for r in official]
    binary = SamAutomaticMaskGenerator(ours_model, **kwargs).generate(small)
    polygons = SamAutomaticMaskGenerator(ours_model, output_mode="polygons", **kwargs).generate(small)
    import cv2

    for rec, poly in zip(binary, polygons):
        drawn = np.zeros(small.shape[:2], dtype=np.uint8)
        for flat in poly["segmentation"]:
            cv2.fillPoly(drawn, [np.asarray(flat, dtype=np.int32).reshape(-1, 2)], 1)
        mask = rec["segmentation"]
        filled_iou = (drawn.astype(bool) & mask).sum() / max((drawn.astype(bool) | mask).sum(), 1)
        assert filled_iou > 0.8  # outer contours only: holes are filled


@pytest.mark.slow
def test_vit_b_small_grid(tmp_path: Path) -> None:
    """The real ViT-B architecture end to end (8x8 grid)."""
    image = make_image(*IMAGE_SIZE, seed=1)
    builder = segment_anything.sam_model_registry["vit_b"]
    path = save_constructed(builder, tmp_path / "vit_b.pth", 7, image)
    official = builder()
    official.load_state_dict(torch.load(path, weights_only=True))
    ours = samkit.build_sam("vit_b", path)
    kwargs = {"points_per_side": 8, **LOW}
    got = SamAutomaticMaskGenerator(ours, **kwargs).generate(image)
    expected = segment_anything.SamAutomaticMaskGenerator(official.eval(), **kwargs).generate(image)
    assert len(expected) >= 5, f"official found {len(expected)} masks"
    assert_same_records(got, expected, what="vit_b 8x8", official_model=official, image=image)
