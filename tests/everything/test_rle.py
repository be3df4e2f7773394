"""Run-length encoding: round trips, equality with pycocotools and with the reference encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

from samkit.everything.rle import (
    coco_to_rle,
    counts_to_string,
    encode_fortran,
    mask_to_rle,
    rle_area,
    rle_to_coco,
    rle_to_mask,
    string_to_counts,
)


def _random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    kind = rng.integers(0, 4)
    if kind == 0:
        return rng.random((n, h, w)) < rng.random()  # noise: many runs
    if kind == 1:  # blobs with holes
        y, x = np.mgrid[0:h, 0:w]
        masks = np.zeros((n, h, w), dtype=bool)
        for i in range(n):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, max(h, w))
            masks[i] = ((x - cx) ** 2 + (y - cy) ** 2 < r**2) & ~((x - cx) ** 2 + (y - cy) ** 2 < (r / 3) ** 2)
        return masks
    if kind == 2:
        return np.zeros((n, h, w), dtype=bool)
    return np.ones((n, h, w), dtype=bool)


def test_matches_reference_and_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 48, size=2))
        masks = _random_masks(rng, 4, h, w)
        ours = mask_to_rle(masks)
        reference = mask_to_rle_pytorch(torch.from_numpy(masks))
        assert ours == reference
        for rle, mask, ref in zip(ours, masks, reference):
            decoded = rle_to_mask(rle)
            assert decoded.shape == (h, w) and decoded.dtype == np.bool_
            np.testing.assert_array_equal(decoded, mask)
            coco = rle_to_coco(rle)
            assert coco == coco_encode_rle(ref)
            assert coco["counts"] == mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
            assert coco_to_rle(coco) == rle
            np.testing.assert_array_equal(rle_to_mask(coco), mask)
            assert rle_area(rle) == rle_area(coco) == int(mask.sum())


def test_large_counts_and_negative_deltas_round_trip() -> None:
    mask = np.zeros((3000, 2500), dtype=bool)
    mask[100:2900, 5:2499] = True
    mask[0, 0] = True
    mask[1500:1502, 3] = True
    rle = mask_to_rle(mask)[0]
    coco = rle_to_coco(rle)
    assert coco["counts"] == mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    np.testing.assert_array_equal(string_to_counts(coco["counts"]), rle["counts"])
    assert mask_utils.area({**coco, "counts": coco["counts"].encode()}) == mask.sum()
    np.testing.assert_array_equal(mask_utils.decode({**coco, "counts": coco["counts"].encode()}), mask)


def test_window_of_a_longer_frame() -> None:
    """A crop spanning whole columns: the window's runs plus zeros outside equal the full mask's."""
    rng = np.random.default_rng(1)
    full = np.zeros((6, 7, 9), dtype=bool)  # (N, H, W)
    full[:, 2:5, 3:8] = rng.random((6, 3, 5)) < 0.5
    full[0, :, 3:8] = True  # touches the window's first and last pixel
    window = torch.from_numpy(full[:, :, 3:8]).transpose(1, 2).reshape(6, -1)  # (N, 5*7) column-major
    for counts, mask in zip(encode_fortran(window, total=7 * 9, offset=3 * 7), full):
        assert counts.tolist() == mask_to_rle(mask)[0]["counts"]
        assert counts.sum() == 63


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="masks"):
        mask_to_rle(np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="offset"):
        encode_fortran(torch.zeros(1, 10, dtype=torch.bool), total=12, offset=5)
    with pytest.raises(ValueError, match="counts sum"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="COCO RLE string"):
        string_to_counts("\x01")
    assert counts_to_string([]) == ""
