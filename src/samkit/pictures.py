"""Mask PNGs and pictures of masks: binary mask files, a colour palette, overlays of masks,
points and boxes drawn over an image. Files are written atomically (:mod:`samkit.io`)."""

from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .io import atomic_write_bytes, to_rgb_uint8

__all__ = ["save_mask_png", "save_masks_png", "palette", "draw_overlay"]

_POSITIVE_COLOR = (0, 220, 0)
_NEGATIVE_COLOR = (230, 0, 0)
_BOX_COLOR = (30, 144, 255)


def _as_bool_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype.kind == "b":
        return mask
    if mask.dtype.kind in "iu":
        return mask != 0
    raise TypeError(
        f"{name}: expected a bool (or integer) mask, got dtype {mask.dtype}; "
        "threshold it first, e.g. logits > 0"
    )


def save_mask_png(path: str | os.PathLike[str], mask: np.ndarray) -> None:
    """Save a binary mask as an 8-bit greyscale PNG (0 outside, 255 inside), atomically.

    Args:
        path: Destination file (normally ``*.png``).
        mask: ``(H, W)`` bool array (integer arrays: nonzero is inside).

    Raises:
        TypeError: Float or other non-binary dtype.
        ValueError: Not two-dimensional or empty.
    """
    mask = _as_bool_mask(mask, "mask")
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask: expected a non-empty (H, W) array, got shape {mask.shape}")
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def save_masks_png(
    directory: str | os.PathLike[str], masks: np.ndarray, *, stem: str = "mask"
) -> list[Path]:
    """Save each of ``N`` masks as ``<directory>/<stem>_<i>.png`` (i zero-padded).

    Args:
        directory: Output directory (created if missing).
        masks: ``(N, H, W)`` bool array.
        stem: File name prefix.

    Returns:
        The written paths, in mask order.
    """
    masks = _as_bool_mask(masks, "masks")
    if masks.ndim != 3:
        raise ValueError(f"masks: expected an (N, H, W) array, got shape {masks.shape}")
    out_dir = Path(os.fspath(directory))
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(max(len(masks) - 1, 0))))
    paths = []
    for i, mask in enumerate(masks):
        path = out_dir / f"{stem}_{i:0{width}d}.png"
        save_mask_png(path, mask)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- overlays


def palette(n: int) -> np.ndarray:
    """``n`` distinct, deterministic colours (golden-ratio hue steps).

    Args:
        n: Number of colours (>= 0).

    Returns:
        ``(n, 3) uint8`` RGB array; colour ``i`` is the same for every ``n > i``.
    """
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    colors = np.empty((n, 3), dtype=np.uint8)
    for i in range(n):
        hue = (0.07 + i * 0.618033988749895) % 1.0
        saturation = 0.85 if i % 2 == 0 else 0.65
        value = 0.95 if (i // 2) % 2 == 0 else 0.8
        rgb = colorsys.hsv_to_rgb(hue, saturation, value)
        colors[i] = [round(c * 255) for c in rgb]
    return colors


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    return mask & ~interior


def _colors_for(colors: np.ndarray | Sequence[Sequence[int]] | None, n: int) -> np.ndarray:
    if colors is None:
        return palette(n)
    array = np.asarray(colors)
    if array.ndim == 1:
        array = np.broadcast_to(array, (n, array.shape[0]))
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] < n:
        raise ValueError(f"colors: expected ({n}, 3) RGB values, got shape {array.shape}")
    if array.dtype.kind not in "iuf" or array.min() < 0 or array.max() > 255:
        raise ValueError("colors: values must be numbers in [0, 255]")
    return array[:n].astype(np.uint8)


def draw_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    *,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    alpha: float = 0.5,
    colors: np.ndarray | Sequence[Sequence[int]] | None = None,
    outline: bool = True,
) -> np.ndarray:
    """Draw masks (tinted, outlined), prompt points and boxes over an image.

    Masks are blended in order (later masks over earlier ones); each mask's boundary is
    drawn in its full colour. Points are discs with a white rim: green for positive
    (label 1), red for negative (label 0); other labels (e.g. -1 padding) are not drawn.
    Boxes are rectangles.

    Args:
        image: Anything :func:`to_rgb_uint8` accepts, ``(H, W, ...)``.
        masks: ``(N, H, W)`` or ``(H, W)`` bool array (N may be 0).
        points: ``(K, 2)`` pixel coordinates ``(x, y)``.
        labels: ``(K,)`` 1 = positive, 0 = negative; default all positive.
        boxes: ``(M, 4)`` or ``(4,)`` ``(x0, y0, x1, y1)`` pixel boxes.
        alpha: Opacity of the mask tint, in [0, 1].
        colors: ``(N, 3)`` RGB per mask or one ``(3,)`` colour; default :func:`palette`.
        outline: Draw each mask's boundary.

    Returns:
        New ``(H, W, 3) uint8`` array; ``image`` is not modified.
    """
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must lie in [0, 1], got {alpha}")
    masks = _as_bool_mask(masks, "masks")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(
            f"masks: expected (N, {height}, {width}) to match the image, got {masks.shape}"
        )
    mask_colors = _colors_for(colors, len(masks)).astype(np.float32)

    out = rgb.astype(np.float32)
    for mask, color in zip(masks, mask_colors):
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color
        if outline:
            out[_boundary(mask)] = color
    result = np.rint(out).astype(np.uint8)

    if points is None and boxes is None:
        return result
    canvas = Image.fromarray(result)
    draw = ImageDraw.Draw(canvas)
    short = min(height, width)
    if boxes is not None:
        box_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        thickness = max(1, round(short / 300))
        for x0, y0, x1, y1 in box_array:
            draw.rectangle(
                (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
                outline=_BOX_COLOR,
                width=thickness,
            )
    if points is not None:
        point_array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if labels is None:
            label_array = np.ones(len(point_array), dtype=np.int64)
        else:
            label_array = np.asarray(labels).reshape(-1)
            if len(label_array) != len(point_array):
                raise ValueError(
                    f"labels: expected {len(point_array)} labels, got {len(label_array)}"
                )
        radius = max(3, round(short / 100))
        for (x, y), label in zip(point_array, label_array):
            if label not in (0, 1):
                continue
            fill = _POSITIVE_COLOR if label == 1 else _NEGATIVE_COLOR
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius),
                fill=fill,
                outline=(255, 255, 255),
                width=max(1, radius // 3),
            )
    return np.asarray(canvas).copy()
