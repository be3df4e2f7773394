"""Mask wire formats: the 1-bit and outlined PNG writers and COCO RLE against Pillow and pycocotools."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samkit.server.encoding import (
    counts_to_string,
    decode_rle,
    encode_rle,
    mask_outline,
    mask_to_outlined_png,
    mask_to_outlined_png_base64,
    mask_to_png,
    mask_to_png_base64,
    rle_counts,
    string_to_counts,
)


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:546, :967]
    disk = (xx - 400) ** 2 / 300**2 + (yy - 300) ** 2 / 200**2 < 1
    corner = np.zeros((9, 13), dtype=bool)
    corner[0, 0] = True  # run starts with an object pixel: counts begin with 0
    return [
        disk,
        disk ^ (rng.random(disk.shape) < 0.02),  # many short runs, negative deltas
        np.zeros((5, 7), dtype=bool),
        np.ones((5, 7), dtype=bool),
        corner,
        rng.random((1, 1)) < 0.5,
        rng.random((3, 17)) < 0.5,  # width not a multiple of 8
        rng.random((64, 2000)) < 0.3,
    ]


@pytest.mark.parametrize("index", range(len(_masks())))
def test_png_decodes_to_the_same_mask(index: int) -> None:
    mask = _masks()[index]
    data = mask_to_png(mask)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.mode == "1"  # 1-bit greyscale
        assert image.size == (mask.shape[1], mask.shape[0])
        decoded = np.asarray(image).astype(bool)
    np.testing.assert_array_equal(decoded, mask)


def test_png_with_transparent_background() -> None:
    mask = _masks()[6]
    with Image.open(io.BytesIO(mask_to_png(mask, transparent_background=True))) as image:
        assert image.mode == "1" and image.info["transparency"] == 0
        np.testing.assert_array_equal(np.asarray(image).astype(bool), mask)
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
    np.testing.assert_array_equal(alpha == 255, mask)
    np.testing.assert_array_equal(alpha == 0, ~mask)


def test_png_base64_and_non_bool_input() -> None:
    import base64

    mask = np.array([[0, 3, 0], [1, 0, 255]], dtype=np.uint8)
    data = base64.b64decode(mask_to_png_base64(mask))
    with Image.open(io.BytesIO(data)) as image:
        np.testing.assert_array_equal(np.asarray(image).astype(bool), mask != 0)


def test_png_is_compact_for_a_smooth_mask() -> None:
    disk = _masks()[0]
    assert len(mask_to_png(disk)) < 8000  # 528k pixels; 66 kB even uncompressed at 1 bit


def test_png_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_png(np.zeros((2, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        mask_to_png(np.zeros((0, 3), dtype=bool))


def _outline_by_loops(mask: np.ndarray) -> np.ndarray:
    """Reference: an object pixel is on the outline if a 4-neighbour is background or off the image."""
    height, width = mask.shape
    out = np.zeros_like(mask)
    for y in range(height):
        for x in range(width):
            if mask[y, x]:
                neighbours = ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
                out[y, x] = any(not (0 <= j < height and 0 <= i < width) or not mask[j, i] for j, i in neighbours)
    return out


def test_outline_matches_a_per_pixel_reference() -> None:
    rng = np.random.default_rng(3)
    for shape in ((1, 1), (1, 9), (6, 1), (7, 11), (23, 40)):
        for density in (0.3, 0.8, 1.0):
            mask = rng.random(shape) < density
            np.testing.assert_array_equal(mask_outline(mask), _outline_by_loops(mask))


@pytest.mark.parametrize("index", range(len(_masks())))
def test_outlined_png_decodes_to_the_mask_and_its_outline(index: int) -> None:
    mask = _masks()[index]
    with Image.open(io.BytesIO(mask_to_outlined_png(mask))) as image:
        assert image.format == "PNG" and image.mode == "P"  # indexed colour
        assert image.size == (mask.shape[1], mask.shape[0])
        indices = np.asarray(image)
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
    np.testing.assert_array_equal(indices != 0, mask)
    np.testing.assert_array_equal(indices == 2, mask_outline(mask))
    np.testing.assert_array_equal(alpha == 255, mask)  # reads like the 1-bit PNG with tRNS
    np.testing.assert_array_equal(alpha == 0, ~mask)


def _recolour(png: bytes, fill: tuple[int, int, int, int], edge: tuple[int, int, int, int]) -> bytes:
    """What the web page does: rewrite the PLTE and tRNS chunks (and their CRCs) in place."""
    import struct
    import zlib

    out = bytearray(png)
    data = {b"PLTE": bytes((0, 0, 0, *fill[:3], *edge[:3])), b"tRNS": bytes((0, fill[3], edge[3]))}
    at = 8
    while at < len(out):
        (length,) = struct.unpack(">I", out[at : at + 4])
        kind = bytes(out[at + 4 : at + 8])
        if kind in data:
            assert length == len(data[kind])
            out[at + 8 : at + 8 + length] = data[kind]
            out[at + 8 + length : at + 12 + length] = struct.pack(">I", zlib.crc32(out[at + 4 : at + 8 + length]))
        at += 12 + length
    return bytes(out)


def test_outlined_png_recolours_through_its_palette() -> None:
    mask = _masks()[1]
    fill, edge = (10, 200, 30, 130), (10, 200, 30, 255)
    png = _recolour(base64.b64decode(mask_to_outlined_png_base64(mask)), fill, edge)
    with Image.open(io.BytesIO(png)) as image:
        image.load()  # Pillow checks the chunk CRCs
        rgba = np.asarray(image.convert("RGBA"))
    outline = mask_outline(mask)
    assert (rgba[outline] == edge).all()
    assert (rgba[mask & ~outline] == fill).all()
    assert (rgba[~mask][:, 3] == 0).all()


def test_outlined_png_is_compact_and_checks_shapes() -> None:
    assert len(mask_to_outlined_png(_masks()[0])) < 8000
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_outlined_png(np.zeros((2, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        mask_to_outlined_png(np.zeros((3, 0), dtype=bool))


@pytest.mark.parametrize("index", range(len(_masks())))
def test_rle_matches_pycocotools(index: int) -> None:
    mask = _masks()[index]
    ours = encode_rle(mask)
    reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["size"] == [mask.shape[0], mask.shape[1]]
    assert ours["counts"] == reference["counts"].decode("ascii")
    np.testing.assert_array_equal(decode_rle(ours), mask)
    assert sum(rle_counts(mask)) == mask.size
    assert string_to_counts(ours["counts"]) == rle_counts(mask)


def test_counts_string_round_trip_with_large_and_negative_deltas() -> None:
    counts = [0, 5, 3_000_000, 1, 70_000_000, 2, 1, 2**31 + 5, 7]
    text = counts_to_string(counts)
    assert string_to_counts(text) == counts
    # pycocotools reads the same string back to the same runs.
    rle = {"size": [1, sum(counts)], "counts": text.encode()}
    assert int(mask_utils.area(rle)) == sum(counts[1::2])


def test_decode_accepts_uncompressed_counts_and_checks_the_size() -> None:
    mask = _masks()[6]
    np.testing.assert_array_equal(decode_rle({"size": list(mask.shape), "counts": rle_counts(mask)}), mask)
    with pytest.raises(ValueError, match="sum to"):
        decode_rle({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(ValueError, match="ends inside"):
        string_to_counts("0" + chr(48 + 0x20))
