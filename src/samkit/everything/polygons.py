"""Binary masks as polygons (outer contours, COCO polygon format), via OpenCV."""

from __future__ import annotations

import numpy as np

from .optional import require_cv2

__all__ = ["mask_to_polygons"]


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of each connected region of a mask.

    Holes are not represented (COCO polygons cannot carry them); use an RLE output mode when
    they matter. Regions whose contour has fewer than 3 vertices (single pixels, one-pixel-wide
    lines) are skipped.

    Args:
        mask: (H, W) bool.

    Returns:
        polygons as flat ``[x0, y0, x1, y1, ...]`` lists of pixel coordinates.
    """
    cv2 = require_cv2("output_mode='polygons'")
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polygons = []
    for contour in contours:  # one per region
        if len(contour) >= 3:
            polygons.append(contour.reshape(-1).astype(float).tolist())  # (K, 1, 2) -> flat x, y
    return polygons
