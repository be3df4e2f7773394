"""Removal of small disconnected regions and small holes from binary masks (OpenCV)."""

from __future__ import annotations

import numpy as np

from .optional import require_cv2

__all__ = ["remove_small_regions"]


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes or drop islands smaller than ``area_thresh`` pixels (8-connectivity).

    Args:
        mask: (H, W) bool.
        area_thresh: regions with fewer pixels than this are changed.
        mode: ``"holes"`` fills small background regions; ``"islands"`` removes small foreground
            regions, keeping the largest one if all are small.

    Returns:
        the (H, W) bool mask and whether it changed (the input is returned when unchanged).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode: expected 'holes' or 'islands', got {mode!r}")
    cv2 = require_cv2("min_mask_region_area > 0")
    holes = mode == "holes"
    working = np.ascontiguousarray(mask != holes, dtype=np.uint8)  # regions to examine are 1
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]  # (n_labels - 1,), label 0 is the rest
    small = np.flatnonzero(sizes < area_thresh) + 1
    if len(small) == 0:
        return mask, False
    fill = np.zeros(n_labels, dtype=bool)  # label -> in the new mask
    if holes:
        fill[0] = True  # the mask itself
        fill[small] = True  # plus its small holes
    else:
        fill[1:] = True
        fill[small] = False
        if not fill.any():  # every island is small: keep the largest
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[labels], True
