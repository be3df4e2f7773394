"""Upscaling of low-resolution mask logits to the image, bit-identical to the reference.

The reference post-processing resizes the 256x256 logits bilinearly to the padded model
input (1024x1024), crops the valid ``input_size`` region, then resizes to the original image
size. The first resize is local (each output row/column reads two input rows/columns), so it
is computed only over the input rows/columns the crop needs: with the same scale factor
(exactly 1/4) ``F.interpolate`` gives the same values, bit for bit, for a fraction of the
work. Automatic mask generation needs bit-identical logits because it counts pixels above
thresholds (stability score) and compares masks pixel by pixel.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["upscale_logits"]


def _rows_needed(valid: int, low: int, padded: int) -> int:
    """Low-res rows read when the first ``valid`` of ``padded`` upscaled rows are kept."""
    factor = padded // low
    return min(low, -(-valid // factor) + 1)


def upscale_logits(
    low_res: Tensor, input_size: tuple[int, int], original_size: tuple[int, int], img_size: int = 1024
) -> Tensor:
    """Low-res logits -> logits at the original image size.

    Args:
        low_res: (N, h, w) float logits (256x256 for SAM).
        input_size: (h_in, w_in) of the resized image inside the padded ``img_size`` square.
        original_size: (H, W) of the image (or crop) the masks belong to.
        img_size: side of the padded model input.

    Returns:
        (N, H, W) float32 logits, equal to the reference two-step bilinear resize.
    """
    n, low_h, low_w = low_res.shape
    if img_size % low_h or img_size % low_w:
        # Not an integer factor: the cropped first step would change the scale; do it in full.
        rows, cols = low_h, low_w
        up_h, up_w = img_size, img_size
    else:
        rows = _rows_needed(input_size[0], low_h, img_size)
        cols = _rows_needed(input_size[1], low_w, img_size)
        up_h, up_w = rows * (img_size // low_h), cols * (img_size // low_w)
    x = low_res[:, None, :rows, :cols].float()  # (N, 1, rows, cols)
    x = F.interpolate(x, (up_h, up_w), mode="bilinear", align_corners=False)  # (N, 1, 4*rows, 4*cols)
    x = x[..., : input_size[0], : input_size[1]]  # (N, 1, h_in, w_in)
    x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)  # (N, 1, H, W)
    return x[:, 0]  # (N, H, W)
