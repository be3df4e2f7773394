"""Mask post-processing of the video predictor: hole filling and video-resolution output.

Hole filling (``fill_hole_area``, 8 with the official ``apply_postprocessing=True``): background
regions (logit <= 0) of a low-res mask whose 8-connected area is at most ``fill_hole_area``
pixels get the logit 0.1, i.e. become foreground. The official computes the components with a
CUDA/C++ extension (``sam2._C``); where that extension is not built (a pip install without
CUDA, as on these machines) it warns and skips the step, so the official output then depends on
how sam2 was installed. samkit implements the step as documented, with OpenCV's
8-connected components (the same labelling), so its output does not depend on the install;
without OpenCV it logs a warning once and skips the step as the official does. The parity tests
give the official the same OpenCV labelling in place of its missing extension.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["fill_holes", "to_video_resolution"]

logger = logging.getLogger(__name__)
_warned_no_cv2 = False


def fill_holes(mask_logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Fill background holes of at most ``max_area`` pixels with the logit 0.1.

    Args:
        mask_logits: (B, 1, h, w) mask logits.
        max_area: largest hole (8-connected background component) to fill; > 0.

    Returns:
        (B, 1, h, w) logits, a new tensor (the input is not changed).
    """
    global _warned_no_cv2
    if max_area <= 0:
        raise ValueError(f"max_area: expected > 0, got {max_area}")
    try:
        import cv2
    except ImportError:
        if not _warned_no_cv2:
            logger.warning("fill_hole_area > 0 needs OpenCV (pip install opencv-python-headless); holes are not filled")
            _warned_no_cv2 = True
        return mask_logits
    background = (mask_logits <= 0).to(torch.uint8).cpu().numpy()  # (B, 1, h, w)
    holes = np.zeros(background.shape, dtype=bool)
    for i in range(background.shape[0]):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(background[i, 0], connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA]  # (n_labels,), label 0 is the foreground
        small = areas <= max_area
        small[0] = False
        holes[i, 0] = small[labels]
    if not holes.any():
        return mask_logits
    fill = torch.from_numpy(holes).to(mask_logits.device)
    return torch.where(fill, torch.tensor(0.1, dtype=mask_logits.dtype, device=mask_logits.device), mask_logits)


def to_video_resolution(
    mask_logits: torch.Tensor, height: int, width: int, non_overlap: bool = False
) -> torch.Tensor:
    """Masks of any resolution -> the video's, bilinear, optionally one object per pixel.

    Args:
        mask_logits: (N, 1, h, w) logits of N objects.
        height, width: the video's frame size.
        non_overlap: keep each pixel only for its highest-scoring object (the others' logits
            there are clamped to at most -10).

    Returns:
        (N, 1, height, width) logits.
    """
    if tuple(mask_logits.shape[-2:]) != (height, width):
        mask_logits = F.interpolate(mask_logits, size=(height, width), mode="bilinear", align_corners=False)
    if non_overlap and mask_logits.size(0) > 1:
        winner = torch.argmax(mask_logits, dim=0, keepdim=True)  # (1, 1, H, W)
        objects = torch.arange(mask_logits.size(0), device=mask_logits.device)[:, None, None, None]  # (N, 1, 1, 1)
        mask_logits = torch.where(winner == objects, mask_logits, torch.clamp(mask_logits, max=-10.0))
    return mask_logits
