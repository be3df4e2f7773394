"""Prompts of a predict request checked against the image, then turned into arrays.

A prompt that does not fit the image (a point outside it, a label other than 0 / 1, an
inverted box, too many points) is refused with :class:`InvalidPrompt` and a message that
names the offending entry, before any model work is queued.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidPrompt

__all__ = ["MAX_POINTS", "check_prompts"]

MAX_POINTS = 256


def check_prompts(
    width: int,
    height: int,
    points: list[tuple[float, float]],
    labels: list[int],
    box: tuple[float, float, float, float] | None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Check prompts given in pixels of a ``width`` x ``height`` image.

    Args:
        width: Image width W in pixels.
        height: Image height H in pixels.
        points: (N, 2) x, y inside [0, W] x [0, H]; at most :data:`MAX_POINTS`.
        labels: (N,) 1 = object, 0 = background.
        box: x0, y0, x1, y1 with 0 <= x0 <= x1 <= W and 0 <= y0 <= y1 <= H, or None.

    Returns:
        (N, 2) float64 coordinates, (N,) int64 labels (both None without points) and the (4,)
        float64 box (None without one).

    Raises:
        InvalidPrompt: any of the conditions above broken.
    """
    if len(points) > MAX_POINTS:
        raise InvalidPrompt(f"points: at most {MAX_POINTS} points, got {len(points)}")
    if len(labels) != len(points):
        raise InvalidPrompt(f"labels: got {len(labels)} labels for {len(points)} points")
    for i, label in enumerate(labels):
        if label not in (0, 1):
            raise InvalidPrompt(f"labels[{i}]: must be 1 (object) or 0 (background), got {label}")
    for i, (x, y) in enumerate(points):
        if not (0.0 <= x <= width and 0.0 <= y <= height):
            raise InvalidPrompt(f"points[{i}] = ({x:g}, {y:g}) is outside the {width}x{height} image")
    coords = np.asarray(points, dtype=np.float64).reshape(-1, 2) if points else None  # (N, 2)
    label_array = np.asarray(labels, dtype=np.int64) if points else None  # (N,)
    box_array = None
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0.0 <= x0 <= x1 <= width and 0.0 <= y0 <= y1 <= height):
            raise InvalidPrompt(
                f"box = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must satisfy 0 <= x0 <= x1 <= {width} "
                f"and 0 <= y0 <= y1 <= {height}"
            )
        box_array = np.asarray(box, dtype=np.float64)  # (4,)
    return coords, label_array, box_array
