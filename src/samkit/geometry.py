"""Torch-free geometry of the resize-longest-side pipeline (numpy + Pillow only).

The model sees the image resized so its longest side is ``long_side`` (1024,
Pillow bilinear on uint8, as the official pipeline does); prompts given in
original-image pixels are scaled into that resized image. These functions are
shared by the torch pipeline (:mod:`samkit.transforms` re-exports them) and by
the ONNX Runtime predictor, which must run without torch installed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["map_boxes", "map_coords", "preprocess_shape", "resize_longest_side"]


def preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """(H, W) of an image resized so its longest side is ``long_side`` (round half up).

    A side is never rounded down to 0: an image more than ``2 * long_side`` times longer than
    it is wide keeps one row (or column), where the official pipeline fails on an empty resize.
    """
    scale = long_side * 1.0 / max(old_h, old_w)
    new_h, new_w = old_h * scale, old_w * scale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image so its longest side is ``long_side``.

    Uses Pillow's bilinear filter on uint8, like the official pipeline.

    Returns:
        (h, w, 3) uint8.
    """
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    if (new_h, new_w) == image.shape[:2]:
        return np.ascontiguousarray(image)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR)
    return np.asarray(resized)


def map_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Map (..., 2) (x, y) pixel coordinates of the original image to the resized image.

    The scale factors are computed in float64 (as the official code does) and the
    result is returned as float32, ready for the model.
    """
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    return out.astype(np.float32)


def map_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Map (..., 4) XYXY boxes of the original image to the resized image (float32)."""
    shape = np.shape(boxes)
    return map_coords(np.reshape(boxes, (-1, 2, 2)), original_size, long_side).reshape(shape)
