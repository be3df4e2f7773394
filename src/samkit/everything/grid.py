"""Point grids and crop boxes of automatic mask generation.

A grid is an ``(N, 2)`` array of ``(x, y)`` points normalized to ``[0, 1]``, scaled
to each crop's pixel size at run time. Crop layer ``i`` (``i >= 1``) tiles the image
with ``2**i x 2**i`` overlapping crops; layer 0 is the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["build_point_grid", "build_all_layer_point_grids", "generate_crop_boxes"]


def build_point_grid(n_per_side: int) -> np.ndarray:
    """A regular ``n_per_side x n_per_side`` grid of cell centres in ``[0, 1]^2``.

    Args:
        n_per_side: points along each side (>= 1).

    Returns:
        (n_per_side**2, 2) float64 ``(x, y)`` points, x varying fastest (row by row).
    """
    if n_per_side < 1:
        raise ValueError(f"n_per_side: must be >= 1, got {n_per_side}")
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1.0 - offset, n_per_side)  # (n,)
    xs = np.broadcast_to(side[None, :], (n_per_side, n_per_side))  # (n, n): x varies along columns
    ys = np.broadcast_to(side[:, None], (n_per_side, n_per_side))  # (n, n): y varies along rows
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)  # (n*n, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer ``i`` has ``int(n_per_side / scale_per_layer**i)`` points a side.

    Args:
        n_per_side: points a side in layer 0.
        n_layers: number of crop layers after layer 0.
        scale_per_layer: downscale factor of the points a side per layer.

    Returns:
        ``n_layers + 1`` arrays of shape (n_i**2, 2).
    """
    grids = []
    for i in range(n_layers + 1):
        n_points = int(n_per_side / (scale_per_layer**i))
        if n_points < 1:
            raise ValueError(
                f"crop layer {i} would get {n_points} points per side: lower crop_n_points_downscale_factor "
                "or crop_n_layers, or raise points_per_side"
            )
        grids.append(build_point_grid(n_points))
    return grids


def _crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
    return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))


def generate_crop_boxes(
    image_size: Sequence[int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes of all layers, the whole image first.

    Layer ``i >= 1`` has ``2**i`` crops a side that overlap by
    ``int(overlap_ratio * short_side * 2 / 2**i)`` pixels.

    Args:
        image_size: (H, W) of the image.
        n_layers: number of crop layers after the whole image.
        overlap_ratio: overlap of the first crop layer as a fraction of the short side.

    Returns:
        boxes as ``[x0, y0, x1, y1]`` (x1, y1 exclusive) and the layer index of each box.
        Within a layer boxes are ordered by x0, then y0. Empty boxes (deep layers on images a few
        pixels wide) are left out.
    """
    im_h, im_w = int(image_size[0]), int(image_size[1])
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers: list[int] = [0]
    for i_layer in range(n_layers):
        per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = _crop_len(im_w, per_side, overlap)
        crop_h = _crop_len(im_h, per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0 in x0s:
            for y0 in y0s:
                x1, y1 = min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)
                if x1 <= x0 or y1 <= y0:
                    # Only on images a few pixels wide, where deep layers run off the edge (the
                    # official generator would fail on the empty crop).
                    continue
                boxes.append([x0, y0, x1, y1])
                layers.append(i_layer + 1)
    return boxes, layers
