"""samkit.transforms against the official ResizeLongestSide and Sam.preprocess/postprocess_masks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from segment_anything.modeling import Sam as OfficialSam
from segment_anything.utils.transforms import ResizeLongestSide as OfficialResize

from samkit.config import PIXEL_MEAN, PIXEL_STD
from samkit.transforms import (
    ResizeLongestSide,
    map_boxes,
    map_boxes_torch,
    map_coords,
    map_coords_torch,
    normalize_and_pad,
    postprocess_masks,
    postprocess_to_masks,
    preprocess_shape,
    resize_longest_side,
)

# (H, W) of original images: landscape, portrait, tiny, large, square, already 1024, extremes.
SIZES = [(546, 967), (800, 480), (7, 10), (2000, 3000), (500, 500), (1024, 700), (1, 1), (17, 1500), (1999, 3)]


def _official_postprocess(
    low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], img_size: int
) -> torch.Tensor:
    """The official ``Sam.postprocess_masks`` (only ``image_encoder.img_size`` is read from self)."""
    fake_self = SimpleNamespace(image_encoder=SimpleNamespace(img_size=img_size))
    return OfficialSam.postprocess_masks(fake_self, low_res, input_size, original_size)  # type: ignore[arg-type]


def _assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("original_size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_postprocess_masks_equals_official_two_step_interpolation(original_size: tuple[int, int]) -> None:
    """samkit runs the official two-step upscaling only on the low-res rows the crop needs.

    The values must equal the official float32 output to float rounding (1e-6 of the logit
    scale), and be as close to the official code run in float64 as the official float32
    output itself is.
    """
    g = torch.Generator().manual_seed(sum(original_size))
    b, m = (1, 1) if original_size[0] * original_size[1] > 10**6 else (2, 2)  # keep the large case cheap
    low_res = torch.randn(b, m, 256, 256, generator=g) * 8  # (B, M, 256, 256) logits
    input_size = preprocess_shape(*original_size, 1024)
    actual = postprocess_masks(low_res, input_size, original_size, 1024)
    assert actual.shape == (b, m, *original_size)
    assert actual.dtype == torch.float32
    official32 = _official_postprocess(low_res, input_size, original_size, 1024)
    _assert_close_scaled(actual, official32, 1e-6)
    official64 = _official_postprocess(low_res.double(), input_size, original_size, 1024)
    official_error = float((official32.double() - official64).abs().max())
    assert float((actual.double() - official64).abs().max()) <= official_error * 1.01 + 1e-9
    # so the thresholded masks agree wherever the logit is not ~0
    decided = official32.abs() > 1e-3
    assert torch.equal((actual > 0)[decided], (official32 > 0)[decided])


@pytest.mark.parametrize("original_size", [(120, 200), (37, 11), (64, 64), (1000, 1000)])
def test_postprocess_masks_small_model(original_size: tuple[int, int]) -> None:
    """img_size 320 with 80x80 low-res masks (a tiny model): the same two-step result."""
    low_res = torch.randn(1, 1, 80, 80, generator=torch.Generator().manual_seed(1)) * 8
    input_size = preprocess_shape(*original_size, 320)
    actual = postprocess_masks(low_res, input_size, original_size, 320)
    _assert_close_scaled(actual, _official_postprocess(low_res, input_size, original_size, 320), 1e-6)


@pytest.mark.parametrize("original_size", [(546, 967), (37, 11), (1200, 900)])
def test_postprocess_to_masks_equals_thresholded_logits(original_size: tuple[int, int]) -> None:
    """The chunked boolean path gives exactly ``postprocess_masks(...) > threshold``, for any
    leading shape and a chunk that does not divide the number of masks."""
    g = torch.Generator().manual_seed(7)
    low_res = torch.randn(2, 3, 256, 256, generator=g) * 4  # (B, M, 256, 256)
    input_size = preprocess_shape(*original_size, 1024)
    logits = postprocess_masks(low_res, input_size, original_size, 1024)
    for threshold, chunk in ((0.0, 4), (0.5, 1), (-1.0, 6)):
        masks = postprocess_to_masks(low_res, input_size, original_size, 1024, threshold, chunk=chunk)
        assert masks.dtype == torch.bool and masks.shape == (2, 3, *original_size)
        assert torch.equal(masks, logits > threshold)
    assert 0 < int(masks.sum()) < masks.numel()  # both sides of the threshold occur


def test_postprocess_masks_float64_stays_float64() -> None:
    low_res = torch.randn(1, 1, 256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = postprocess_masks(low_res, (768, 1024), (600, 800), 1024)
    assert out.dtype == torch.float64
    _assert_close_scaled(out, _official_postprocess(low_res, (768, 1024), (600, 800), 1024), 1e-6)


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_resize_longest_side_equals_official_apply_image(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    expected = OfficialResize(1024).apply_image(image)
    actual = resize_longest_side(image, 1024)
    assert actual.dtype == np.uint8
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(ResizeLongestSide(1024).apply_image(image), expected)


def test_preprocess_shape_equals_official() -> None:
    clamped = 0
    for long_side in (1024, 320, 256):
        for h in list(range(1, 60)) + [546, 967, 1000, 1023, 1024, 1025, 2000, 2999, 3000, 4321]:
            for w in (1, 2, 3, 7, 10, 480, 511, 967, 1024, 3000):
                official = OfficialResize.get_preprocess_shape(h, w, long_side)
                # The official rounds a very thin side to 0 (and then fails to resize); samkit keeps 1.
                expected = (max(1, official[0]), max(1, official[1]))
                clamped += expected != official
                assert preprocess_shape(h, w, long_side) == expected, (h, w, long_side)
    assert clamped > 0  # the grid does reach the thin cases


def test_very_thin_image_keeps_one_row() -> None:
    """A 1 x 3000 strip resizes to 1 x 1024 (not 0 rows) and its masks map back to 1 x 3000."""
    image = np.random.default_rng(0).integers(0, 256, size=(1, 3000, 3), dtype=np.uint8)
    resized = resize_longest_side(image, 1024)
    assert resized.shape == (1, 1024, 3)
    low_res = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(2)) * 8
    input_size = preprocess_shape(1, 3000, 1024)
    logits = postprocess_masks(low_res, input_size, (1, 3000), 1024)
    assert logits.shape == (1, 1, 1, 3000)
    _assert_close_scaled(logits, _official_postprocess(low_res, input_size, (1, 3000), 1024), 1e-6)
    assert torch.equal(postprocess_to_masks(low_res, input_size, (1, 3000), 1024), logits > 0)


@pytest.mark.parametrize("original_size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_map_coords_and_boxes_equal_official(original_size: tuple[int, int]) -> None:
    h, w = original_size
    rng = np.random.default_rng(h * 7 + w)
    coords = rng.uniform([-5, -5], [w + 5, h + 5], size=(3, 4, 2))  # (..., 2), some outside the image
    boxes = np.concatenate([coords[0, :, :], coords[0, :, :] + 3.5], axis=1)  # (4, 4)
    official = OfficialResize(1024)
    # the official predictor converts the float64 result to float32 for the model
    expected_coords = official.apply_coords(coords, original_size).astype(np.float32)
    expected_boxes = official.apply_boxes(boxes, original_size).astype(np.float32)
    np.testing.assert_array_equal(map_coords(coords, original_size, 1024), expected_coords)
    np.testing.assert_array_equal(map_boxes(boxes, original_size, 1024), expected_boxes)
    ours = ResizeLongestSide(1024)
    np.testing.assert_array_equal(ours.apply_coords(coords, original_size), expected_coords)
    np.testing.assert_array_equal(ours.apply_boxes(boxes, original_size), expected_boxes)
    # integer input and inputs are not modified in place
    int_coords = np.array([[0, 0], [w - 1, h - 1]])
    np.testing.assert_array_equal(
        map_coords(int_coords, original_size, 1024), official.apply_coords(int_coords, original_size).astype(np.float32)
    )
    assert int_coords.tolist() == [[0, 0], [w - 1, h - 1]]


@pytest.mark.parametrize("original_size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_map_coords_torch_equals_official(original_size: tuple[int, int]) -> None:
    h, w = original_size
    g = torch.Generator().manual_seed(h + w)
    coords = torch.rand(5, 3, 2, generator=g) * torch.tensor([w, h])  # (B, N, 2)
    boxes = torch.rand(5, 4, generator=g) * torch.tensor([w, h, w, h])  # (B, 4)
    official = OfficialResize(1024)
    expected_coords = official.apply_coords_torch(coords, original_size)
    expected_boxes = official.apply_boxes_torch(boxes, original_size)
    torch.testing.assert_close(map_coords_torch(coords, original_size, 1024), expected_coords, rtol=1e-7, atol=0)
    torch.testing.assert_close(map_boxes_torch(boxes, original_size, 1024), expected_boxes, rtol=1e-7, atol=0)
    ours = ResizeLongestSide(1024)
    torch.testing.assert_close(ours.apply_coords_torch(coords, original_size), expected_coords, rtol=1e-7, atol=0)
    torch.testing.assert_close(ours.apply_boxes_torch(boxes, original_size), expected_boxes, rtol=1e-7, atol=0)
    # integer tensors become float32, as in the official code
    int_coords = torch.tensor([[[0, 0], [w - 1, h - 1]]])
    assert map_coords_torch(int_coords, original_size, 1024).dtype == torch.float32


@pytest.mark.parametrize("size", [(546, 967), (800, 480), (7, 10), (1024, 1024)])
def test_normalize_and_pad_equals_official_preprocess(size: tuple[int, int]) -> None:
    h, w = preprocess_shape(*size, 1024)
    image = torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(h)).float()
    mean = torch.tensor(PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD).view(-1, 1, 1)
    fake_self = SimpleNamespace(pixel_mean=mean, pixel_std=std, image_encoder=SimpleNamespace(img_size=1024))
    expected = OfficialSam.preprocess(fake_self, image)  # type: ignore[arg-type]
    actual = normalize_and_pad(image.to(torch.uint8), mean, std, 1024)
    assert actual.shape == (1, 3, 1024, 1024)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
