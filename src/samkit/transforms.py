"""Pure pre/post-processing functions between user space and model space.

Model space is the ``img_size`` x ``img_size`` (1024) square: the image is resized
so its longest side is ``img_size`` (Pillow bilinear on uint8, as the official
pipeline does), normalized and zero-padded bottom/right. Prompts are given in
original-image pixels and mapped to the resized image; masks come back as 256x256
logits and are mapped to the original size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import map_boxes, map_coords, preprocess_shape, resize_longest_side

__all__ = [
    "preprocess_shape",
    "resize_longest_side",
    "normalize_and_pad",
    "map_coords",
    "map_boxes",
    "map_coords_torch",
    "map_boxes_torch",
    "postprocess_masks",
    "postprocess_to_masks",
    "ResizeLongestSide",
]


def normalize_and_pad(images: Tensor, mean: Tensor, std: Tensor, size: int) -> Tensor:
    """Normalize per channel and zero-pad bottom/right to ``size`` x ``size``.

    Args:
        images: (B, 3, h, w) pixel values (any real dtype; uint8 is converted).
        mean, std: (3, 1, 1) per-channel statistics.
        size: output side.

    Returns:
        (B, 3, size, size) in the dtype of ``mean``.
    """
    x = (images.to(mean.dtype) - mean) / std
    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h))


def map_coords_torch(coords: Tensor, original_size: tuple[int, int], long_side: int) -> Tensor:
    """Torch version of :func:`map_coords`; keeps the input's floating dtype (float32 default)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    dtype = coords.dtype if coords.is_floating_point() else torch.float32
    scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=dtype, device=coords.device)
    return coords.to(dtype) * scale


def map_boxes_torch(boxes: Tensor, original_size: tuple[int, int], long_side: int) -> Tensor:
    """Torch version of :func:`map_boxes`."""
    shape = boxes.shape
    return map_coords_torch(boxes.reshape(-1, 2, 2), original_size, long_side).reshape(shape)


def _low_res_needed(valid: int, low: int, padded: int) -> int:
    """Low-res rows (or columns) read when the first ``valid`` of ``padded`` upscaled ones are kept."""
    factor = padded // low
    return min(low, -(-valid // factor) + 1)


def postprocess_masks(
    low_res_masks: Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    img_size: int = 1024,
) -> Tensor:
    """Upscale low-resolution mask logits to the original image size.

    The official pipeline resizes bilinearly to ``img_size`` x ``img_size``, crops the
    valid ``input_size`` region, then resizes to the original size. The first resize is
    local (each output row/column reads two input rows/columns), so it is computed only on
    the low-res rows/columns the crop needs: with the same integer scale factor
    ``F.interpolate`` gives the same values for a fraction of the work. Each mask is
    resized as its own (1, h, w) image, the layout ``F.interpolate`` is fastest on.

    Args:
        low_res_masks: (..., h, w) logits (256x256 for SAM), e.g. (B, M, h, w).
        input_size: (h, w) of the resized image before padding.
        original_size: (H, W) of the original image.
        img_size: side of the padded model input.

    Returns:
        (..., H, W) logits; float64 input stays float64, anything else becomes float32.
    """
    *lead, low_h, low_w = low_res_masks.shape
    dtype = torch.float64 if low_res_masks.dtype == torch.float64 else torch.float32
    if img_size % low_h or img_size % low_w:
        # Not an integer factor: a cropped first step would change the scale; do it in full.
        rows, cols, up_h, up_w = low_h, low_w, img_size, img_size
    else:
        rows = _low_res_needed(input_size[0], low_h, img_size)
        cols = _low_res_needed(input_size[1], low_w, img_size)
        up_h, up_w = rows * (img_size // low_h), cols * (img_size // low_w)
    x = low_res_masks.reshape(-1, 1, low_h, low_w)[..., :rows, :cols].to(dtype)  # (N, 1, rows, cols)
    x = F.interpolate(x, (up_h, up_w), mode="bilinear", align_corners=False)  # (N, 1, up_h, up_w)
    x = x[..., : input_size[0], : input_size[1]]  # (N, 1, h_in, w_in)
    x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)  # (N, 1, H, W)
    return x.view(*lead, *x.shape[-2:])  # (..., H, W)


def postprocess_to_masks(
    low_res_masks: Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    img_size: int = 1024,
    threshold: float = 0.0,
    chunk: int = 3,
) -> Tensor:
    """Binary masks ``postprocess_masks(...) > threshold``, without the full-size logits.

    Upscales ``chunk`` masks at a time and thresholds them while they are in the CPU cache:
    the same values, but the (..., H, W) float32 logits of a large batch (4 bytes a pixel,
    ~400 MB for 64 prompts x 3 masks of a 967x546 image) are never written and read back.

    Args:
        low_res_masks: (..., h, w) logits.
        input_size, original_size, img_size: as for :func:`postprocess_masks`.
        threshold: logits above it are inside the mask.
        chunk: masks upscaled per step.

    Returns:
        (..., H, W) bool.
    """
    *lead, low_h, low_w = low_res_masks.shape
    flat = low_res_masks.reshape(-1, low_h, low_w)  # (N, h, w)
    out = torch.empty((flat.shape[0], *original_size), dtype=torch.bool, device=low_res_masks.device)  # (N, H, W)
    for start in range(0, flat.shape[0], chunk):
        logits = postprocess_masks(flat[start : start + chunk], input_size, original_size, img_size)  # (n, H, W)
        torch.gt(logits, threshold, out=out[start : start + chunk])
    return out.view(*lead, *original_size)  # (..., H, W)


class ResizeLongestSide:
    """Object form of the resize/coordinate functions (the official ``predictor.transform``).

    Args:
        target_length: longest side after resizing (1024).
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> resized (h, w, 3) uint8."""
        return resize_longest_side(image, self.target_length)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) original-pixel coordinates -> resized-image coordinates (float32)."""
        return map_coords(coords, (int(original_size[0]), int(original_size[1])), self.target_length)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 4) original-pixel boxes -> resized-image boxes (float32)."""
        return map_boxes(boxes, (int(original_size[0]), int(original_size[1])), self.target_length)

    def apply_coords_torch(self, coords: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Torch version of :meth:`apply_coords`."""
        return map_coords_torch(coords, (int(original_size[0]), int(original_size[1])), self.target_length)

    def apply_boxes_torch(self, boxes: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Torch version of :meth:`apply_boxes`."""
        return map_boxes_torch(boxes, (int(original_size[0]), int(original_size[1])), self.target_length)

    def postprocess_masks(
        self, low_res_masks: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Tensor:
        """:func:`postprocess_masks` for this framing: (..., h, w) logits -> (..., H, W) logits."""
        return postprocess_masks(low_res_masks, input_size, original_size, self.target_length)

    def postprocess_to_masks(
        self,
        low_res_masks: Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        threshold: float = 0.0,
    ) -> Tensor:
        """:func:`postprocess_to_masks` for this framing: (..., h, w) logits -> (..., H, W) bool."""
        return postprocess_to_masks(low_res_masks, input_size, original_size, self.target_length, threshold)
