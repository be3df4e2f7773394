"""Tests for samkit.io (reading images: EXIF, modes, bit depths; atomic writers) and samkit.pictures (mask PNGs, overlays)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samkit.io import (
    ImageReadError,
    atomic_write_bytes,
    atomic_write_text,
    load_image,
    save_image,
    to_rgb_uint8,
)
from samkit.pictures import draw_overlay, palette, save_mask_png, save_masks_png


def _gradient(h: int = 6, w: int = 8) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 30, y * 40, (x + y) * 10], axis=-1).astype(np.uint8)


# --------------------------------------------------------------------------- reading files


def test_exif_rotated_jpeg_is_upright(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.new("RGB", (40, 20), (200, 10, 10)).save(path, exif=exif)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    image = load_image(path)
    assert image.shape == (40, 20, 3) and image.dtype == np.uint8
    # The same from bytes and from an opened PIL image.
    assert load_image(path.read_bytes()).shape == (40, 20, 3)
    with Image.open(path) as opened:
        assert load_image(opened).shape == (40, 20, 3)


def test_png_roundtrip_rgb(tmp_path: Path) -> None:
    rgb = _gradient()
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    out = load_image(str(path))
    assert np.array_equal(out, rgb)
    assert out.flags.c_contiguous


def test_16bit_png_is_shifted(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 0x1234], [0x8000, 0xFF00, 0xFFFF, 257]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    out = load_image(path)
    assert out.shape == (2, 4, 3)
    assert np.array_equal(out[..., 0], (values >> 8).astype(np.uint8))
    assert np.array_equal(out[..., 0], out[..., 2])


def test_pil_mode_I_and_I16B() -> None:
    img_i = Image.new("I", (3, 2), 70000)  # clipped to 65535 -> 255
    assert (to_rgb_uint8(img_i) == 255).all()
    img_b = Image.new("I;16B", (3, 2), 0x4000)
    assert (to_rgb_uint8(img_b) == 0x40).all()


def test_rgba_alpha_is_dropped(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 100
    rgba[..., 1] = 150
    rgba[..., 2] = 200
    rgba[..., 3] = np.arange(5, dtype=np.uint8) * 60
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_image(path)
    assert out.shape == (4, 5, 3)
    assert (out == np.array([100, 150, 200], dtype=np.uint8)).all()
    assert np.array_equal(to_rgb_uint8(rgba), rgba[..., :3])


def test_palette_image(tmp_path: Path) -> None:
    img = Image.new("P", (4, 3))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 1] * 3)
    path = tmp_path / "pal.png"
    img.save(path, transparency=1)
    out = load_image(path)
    assert out.shape == (3, 4, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [0, 255, 0]
    assert out[0, 2].tolist() == [0, 0, 255]


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_grayscale_replicated(tmp_path: Path, mode: str) -> None:
    img = Image.new(mode, (5, 4), 77 if mode == "L" else (77, 9))
    path = tmp_path / f"g_{mode}.png"
    img.save(path)
    out = load_image(path)
    assert out.shape == (4, 5, 3) and (out == 77).all()


def test_cmyk_and_bilevel() -> None:
    assert to_rgb_uint8(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).tolist() == [[[255] * 3] * 2] * 2
    bilevel = Image.new("1", (3, 1))
    bilevel.putpixel((1, 0), 1)
    assert to_rgb_uint8(bilevel)[0, :, 0].tolist() == [0, 255, 0]


def test_float_mode_F() -> None:
    assert (to_rgb_uint8(Image.new("F", (2, 2), 0.5)) == 128).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb_uint8(Image.new("F", (2, 2), 3.0))


def test_not_an_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am text")
    with pytest.raises(ImageReadError, match=r"cannot read .*notes\.txt: not an image file"):
        load_image(path)
    with pytest.raises(ImageReadError, match="not an image file"):
        load_image(b"plain bytes")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(TypeError, match="source"):
        load_image(12345)  # type: ignore[arg-type]


def test_truncated_png(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        load_image(path)


def test_max_pixels_guard(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    with pytest.raises(ImageReadError, match="400 pixels exceed the limit of 100"):
        load_image(path, max_pixels=100)
    assert load_image(path, max_pixels=None).shape == (20, 20, 3)
    with pytest.raises(ImageReadError, match="exceed"):
        load_image(np.zeros((20, 20), dtype=np.uint8), max_pixels=100)


# --------------------------------------------------------------------------- array conversions


def test_array_conversions() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_rgb_uint8(gray)
    assert out.shape == (3, 4, 3) and np.array_equal(out[..., 1], gray)
    assert np.array_equal(to_rgb_uint8(gray[..., None]), out)
    assert np.array_equal(to_rgb_uint8(np.stack([gray, gray * 0], -1)), out)  # grey + alpha

    mask = np.array([[True, False]])
    assert to_rgb_uint8(mask).tolist() == [[[255] * 3, [0] * 3]]

    floats = np.array([[0.0, 0.5, 1.0, 0.2]], dtype=np.float64)
    assert to_rgb_uint8(floats)[0, :, 0].tolist() == [0, 128, 255, 51]

    wide = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    assert to_rgb_uint8(wide)[0, :, 0].tolist() == [0, 0, 1, 255]

    ints = np.array([[0, 17, 255]], dtype=np.int64)
    assert to_rgb_uint8(ints)[0, :, 0].tolist() == [0, 17, 255]

    rgb = _gradient()
    assert to_rgb_uint8(rgb) is rgb or np.array_equal(to_rgb_uint8(rgb), rgb)


@pytest.mark.parametrize(
    ("array", "error", "pattern"),
    [
        (np.zeros((0, 4, 3), np.uint8), ValueError, "empty"),
        (np.zeros((2, 2, 5), np.uint8), ValueError, "channels"),
        (np.zeros((2, 2, 3, 1), np.uint8), ValueError, "shape"),
        (np.zeros(5, np.uint8), ValueError, "shape"),
        (np.array([["a"]]), TypeError, "numeric"),
        (np.zeros((2, 2), np.complex64), TypeError, "numeric"),
        (np.array([[np.nan, 0.5]]), ValueError, "NaN"),
        (np.array([[1.5, 0.5]]), ValueError, r"\[0, 1\]"),
        (np.array([[-1, 3]]), ValueError, r"\[0, 255\]"),
    ],
)
def test_array_errors(array: np.ndarray, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern) as info:
        to_rgb_uint8(array)
    assert "image" in str(info.value)


def test_to_rgb_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="image"):
        to_rgb_uint8([[1, 2]])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- writing


def test_save_mask_png_roundtrip_and_atomic(tmp_path: Path) -> None:
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:4, 2:6] = True
    path = tmp_path / "m.png"
    save_mask_png(path, mask)
    with Image.open(path) as img:
        assert img.mode == "L"
        data = np.asarray(img)
    assert set(np.unique(data).tolist()) == {0, 255}
    assert np.array_equal(data == 255, mask)
    save_mask_png(path, ~mask)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["m.png"]
    with pytest.raises(TypeError, match="logits > 0"):
        save_mask_png(path, mask.astype(np.float32))
    with pytest.raises(ValueError, match="mask"):
        save_mask_png(path, np.zeros((2, 2, 2), bool))


def test_save_masks_png(tmp_path: Path) -> None:
    masks = np.zeros((3, 4, 4), dtype=bool)
    for i in range(3):
        masks[i, i] = True
    paths = save_masks_png(tmp_path / "out", masks)
    assert [p.name for p in paths] == ["mask_000.png", "mask_001.png", "mask_002.png"]
    assert np.array_equal(load_image(paths[2])[..., 0] == 255, masks[2])


def test_save_image_formats(tmp_path: Path) -> None:
    rgb = _gradient()
    save_image(tmp_path / "x.png", rgb)
    assert np.array_equal(load_image(tmp_path / "x.png"), rgb)
    save_image(tmp_path / "x.jpg", rgb)
    assert load_image(tmp_path / "x.jpg").shape == rgb.shape
    with pytest.raises(ValueError, match="suffix"):
        save_image(tmp_path / "x.unknown", rgb)
    assert sorted(os.listdir(tmp_path)) == ["x.jpg", "x.png"]


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.json"
    atomic_write_text(target, '{"a": 1}')
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.json"]

    def boom(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(target, b"third")
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_write_honours_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "perm", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "perm").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- overlays


def test_palette_is_distinct_and_deterministic() -> None:
    colors = palette(12)
    assert colors.shape == (12, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors.tolist()}) == 12
    assert np.array_equal(palette(5), colors[:5])
    assert palette(0).shape == (0, 3)
    with pytest.raises(ValueError):
        palette(-1)


def test_overlay_tints_only_inside_mask() -> None:
    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:15, 10:20] = True
    out = draw_overlay(image, mask, colors=[(255, 0, 0)], alpha=0.5)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])
    assert (out[mask] != image[mask]).any(axis=-1).all()
    assert out[10, 15].tolist() == [178, 50, 50]  # interior: 50 % blend (rounded)
    assert out[5, 15].tolist() == [255, 0, 0]  # boundary: full colour
    assert np.array_equal(image, np.full((20, 30, 3), 100, dtype=np.uint8))  # input untouched


def test_overlay_multiple_masks_points_boxes() -> None:
    image = np.zeros((50, 60, 3), dtype=np.uint8)
    masks = np.zeros((2, 50, 60), dtype=bool)
    masks[0, :10, :10] = True
    masks[1, 40:, 50:] = True
    out = draw_overlay(
        image,
        masks,
        points=np.array([[30, 25], [45, 5]]),
        labels=np.array([1, 0]),
        boxes=np.array([20, 20, 40, 35]),
        outline=False,
    )
    assert out.shape == (50, 60, 3)
    colors = palette(2)
    assert np.array_equal(out[5, 5], np.rint(colors[0] * 0.5).astype(np.uint8))
    assert np.array_equal(out[45, 55], np.rint(colors[1] * 0.5).astype(np.uint8))
    assert out[25, 30].tolist() == [0, 220, 0]  # positive point centre
    assert out[5, 45].tolist() == [230, 0, 0]  # negative point centre
    assert out[20, 30].tolist() == [30, 144, 255]  # box top edge
    assert draw_overlay(image, np.zeros((0, 50, 60), bool)).tolist() == image.tolist()


def test_overlay_validates_inputs() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="masks"):
        draw_overlay(image, np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="alpha"):
        draw_overlay(image, np.zeros((4, 4), bool), alpha=1.5)
    with pytest.raises(ValueError, match="labels"):
        draw_overlay(image, np.zeros((4, 4), bool), points=np.zeros((2, 2)), labels=np.ones(3))
    with pytest.raises(ValueError, match="colors"):
        draw_overlay(image, np.zeros((2, 4, 4), bool), colors=[(1, 2, 3, 4)])


def test_load_image_accepts_bytesio_content(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_gradient()).save(buffer, format="PNG")
    assert np.array_equal(load_image(buffer.getvalue()), _gradient())
