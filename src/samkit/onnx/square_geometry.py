"""Torch-free geometry of the SAM 2 framing (numpy + Pillow only), for :class:`~samkit.onnx.OnnxPredictor`.

SAM 2 stretches the whole image to the model's S x S square (bilinear with antialiasing, on
float pixels; :class:`samkit.square_transform.ResizeSquare` does it with torch). Pillow's
bilinear filter on a 32-bit float image is the same separable triangle filter, widened by the
scale factor when shrinking, as torch's ``interpolate(..., antialias=True)``: the two agree to
float32 rounding (max 6e-5 of 255 for a 2000 x 3001 image, measured).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["map_coords_to_square", "resize_to_square"]


def resize_to_square(image: np.ndarray, side: int) -> np.ndarray:
    """Stretch an (H, W, 3) image to (side, side, 3) float32 pixel values (0..255).

    Each channel is resized as a Pillow float image ("F" mode) with the bilinear filter, which
    antialiases when shrinking, as SAM 2's preprocessing does.
    """
    channels = []
    for c in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32))  # mode "F"
        channels.append(np.asarray(plane.resize((side, side), Image.BILINEAR)))  # (S, S) float32
    return np.stack(channels, axis=-1).astype(np.float32, copy=False)  # (S, S, 3)


def map_coords_to_square(coords: np.ndarray, original_size: tuple[int, int], side: int) -> np.ndarray:
    """(..., 2) x, y pixels of an (H, W) image -> coordinates in the S x S square (float32).

    In float32, divided by the side first and then multiplied by S, as the official SAM 2
    predictor (and :meth:`samkit.square_transform.ResizeSquare.apply_coords`) computes them.
    """
    h, w = int(original_size[0]), int(original_size[1])
    out = np.array(coords, dtype=np.float32, copy=True)
    out[..., 0] = out[..., 0] / np.float32(w)
    out[..., 1] = out[..., 1] / np.float32(h)
    return out * np.float32(side)
