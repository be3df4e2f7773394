"""Mask quality scores, boxes and non-maximum suppression (torch/numpy only, no torchvision).

The arithmetic follows the reference implementation exactly where it decides what is kept:
stability is a float32 ratio of int32 pixel counts, box IoUs are computed in float32 in the same
order and compared to the threshold in float64, and ties in NMS are broken by input order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "stability_score",
    "stability_from_counts",
    "masks_to_boxes",
    "box_area",
    "box_xyxy_to_xywh",
    "is_box_near_crop_edge",
    "nms",
    "stability_bounds",
    "provably_unstable",
    "UNBOUNDED",
]

# Upper bound of a pixel count reported by ``stability_bounds`` for masks with NaN logits.
UNBOUNDED = 2**62

# Above this many box coordinates the reference NMS (torchvision's batched_nms) switches to a
# per-category loop that re-sorts the kept indices with an unstable sort; we reproduce the
# resulting order (which matters for later tie-breaking) exactly.
_VANILLA_NMS_NUMEL = {"cpu": 4000}
_VANILLA_NMS_NUMEL_OTHER = 100_000


def stability_from_counts(above_high: Tensor, above_low: Tensor) -> Tensor:
    """Stability score from pixel counts: ``|logits > t + o| / |logits > t - o|``.

    Args:
        above_high: (N,) int counts of pixels above ``mask_threshold + offset``.
        above_low: (N,) int counts of pixels above ``mask_threshold - offset``.

    Returns:
        (N,) float32 (NaN where ``above_low`` is 0).
    """
    return above_high.to(torch.int32) / above_low.to(torch.int32)


def stability_score(logits: Tensor, mask_threshold: float, offset: float) -> Tensor:
    """IoU of the masks thresholded at ``mask_threshold +- offset`` (one contains the other).

    Args:
        logits: (..., H, W) mask logits.
        mask_threshold: logit threshold of a binary mask.
        offset: shift of the threshold.

    Returns:
        (...) float32 scores in [0, 1] (NaN for a mask that is empty at the low threshold).
    """
    high = (logits > (mask_threshold + offset)).flatten(-2).sum(-1)  # (...)
    low = (logits > (mask_threshold - offset)).flatten(-2).sum(-1)  # (...)
    return stability_from_counts(high, low)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes of binary masks, corners inclusive (x1, y1 are the last pixel).

    Args:
        masks: (N, H, W) bool (any strides, e.g. a transposed view).

    Returns:
        (N, 4) int64; ``[0, 0, 0, 0]`` for an empty mask.
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows_any = masks.any(dim=-1)  # (N, H)
    rows = rows_any.to(torch.uint8)
    cols = masks.any(dim=-2).to(torch.uint8)  # (N, W)
    top = rows.argmax(dim=-1)  # (N,) first row with a pixel
    bottom = (h - 1) - rows.flip(-1).argmax(dim=-1)  # (N,) last row with a pixel
    left = cols.argmax(dim=-1)
    right = (w - 1) - cols.flip(-1).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)  # (N, 4)
    nonempty = rows_any.any(dim=-1, keepdim=True)  # (N, 1)
    return torch.where(nonempty, boxes, torch.zeros_like(boxes))


def box_area(boxes: Tensor) -> Tensor:
    """(N, 4) XYXY -> (N,) ``(x1 - x0) * (y1 - y0)`` in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_xyxy_to_xywh(box: Sequence[int] | np.ndarray) -> list[int]:
    """One XYXY box -> ``[x0, y0, x1 - x0, y1 - y0]`` as Python numbers."""
    x0, y0, x1, y1 = (v.item() if hasattr(v, "item") else v for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def is_box_near_crop_edge(
    boxes: Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: int = 20
) -> Tensor:
    """Whether a box touches its crop's border where that border is not the image border.

    Such masks are likely cut off by the crop and are dropped.

    Args:
        boxes: (N, 4) int64 XYXY boxes in the crop's frame.
        crop_box: the crop ``[x0, y0, x1, y1]`` in the image.
        orig_box: the image ``[0, 0, W, H]``.
        atol: distance (pixels) that counts as touching.

    Returns:
        (N,) bool.
    """
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    offset = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype, device=boxes.device)
    crop = torch.as_tensor(list(crop_box), dtype=boxes.dtype, device=boxes.device)
    image = torch.as_tensor(list(orig_box), dtype=boxes.dtype, device=boxes.device)
    boxes = boxes + offset  # (N, 4) in the image's frame
    near_crop = (boxes - crop).abs() <= atol  # (N, 4)
    near_image = (boxes - image).abs() <= atol  # (N, 4)
    return (near_crop & ~near_image).any(dim=1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression over XYXY boxes.

    Boxes are visited by decreasing score (ties: lower index first); a box is dropped when its
    IoU with a kept box is greater than ``iou_threshold``.

    Args:
        boxes: (N, 4) XYXY boxes (computed in float32).
        scores: (N,) float scores.
        iou_threshold: IoU above which the lower-scored box is dropped.

    Returns:
        (N_keep,) int64 indices of kept boxes, by decreasing score.
    """
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    order = torch.sort(scores, descending=True, stable=True).indices.cpu().numpy()  # (N,)
    b = boxes.detach().float().cpu().numpy()[order]  # (N, 4) float32, by score
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x1 - x0) * (y1 - y0)  # (N,) float32
    suppressed = np.zeros(n, dtype=bool)
    kept: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            if suppressed[i]:
                continue
            kept.append(i)
            if i + 1 == n:
                break
            rest = slice(i + 1, None)
            w = np.maximum(np.float32(0), np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
            h = np.maximum(np.float32(0), np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)  # float32, like the reference kernel
            suppressed[rest] |= iou.astype(np.float64) > iou_threshold
    keep = torch.from_numpy(order[kept]).to(device)
    limit = _VANILLA_NMS_NUMEL.get(device.type, _VANILLA_NMS_NUMEL_OTHER)
    if boxes.numel() > limit:
        # Reference order for large inputs: kept indices ascending, then an unstable sort by score.
        keep = torch.sort(keep).values
        keep = keep[scores[keep].sort(descending=True)[1]]
    return keep


def _footprint(out_size: int, mid_size: int, low_size: int, mid_full: int, margin: float = 1e-3) -> tuple[Tensor, int]:
    """Low-res rows (or columns) that each output row of the two-step bilinear resize can read.

    The resize is low-res ``low_size`` -> ``mid_full`` (cropped to its first ``mid_size``) ->
    ``out_size``, both bilinear with ``align_corners=False``. Source indices are computed in
    float64 and widened by ``margin`` either way, so the float32 index arithmetic of the actual
    kernel cannot pick a row outside the returned window.

    Returns:
        ((out_size,) int64 first low-res row of each output row's window, window width).
    """

    def sources(n_out: int, n_in: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        real = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)  # (n_out,)
        lo = np.clip(np.floor(real - margin), 0, n_in - 1).astype(np.int64)
        hi = np.clip(np.floor(real + margin) + 1, 0, n_in - 1).astype(np.int64)
        return lo, hi

    mid_lo, mid_hi = sources(out_size, mid_size, mid_size / out_size)  # (out,) intermediate rows read
    low_lo_of_mid, low_hi_of_mid = sources(mid_size, low_size, low_size / mid_full)  # (mid,) low-res rows read
    first = low_lo_of_mid[mid_lo]  # (out,) low-res windows are monotone in the row
    last = low_hi_of_mid[mid_hi]  # (out,)
    return torch.from_numpy(first), int((last - first).max()) + 1


def stability_bounds(
    low_res: Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    img_size: int,
    thresholds: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """Sound bounds of the stability counts of upscaled masks, from their low-res logits.

    :func:`samkit.transforms.postprocess_masks` upscales with two bilinear resizes; each is a
    convex combination, so an output pixel lies within [min, max] of the low-res logits in its
    footprint (a small window, found by :func:`_footprint`). Windows are anchored at their
    first low-res row and column, so the number of output pixels per anchor is the product of a
    row count and a column count, and the bounds are two small bilinear forms. A margin of
    ``1e-4 * (1 + max|logit|)`` covers float32 rounding of the interpolation. Masks with NaN
    logits get the trivial bounds (inf, 0).

    Args:
        low_res: (N, h, w) low-res logits (256x256 for SAM).
        input_size: (h, w) of the resized image before padding.
        original_size: (H, W) the masks are upscaled to.
        img_size: side of the padded model input.
        thresholds: (high, low) logit thresholds of the stability score.

    Returns:
        ((N,) int64 upper bound of ``count(upscaled > high)`` (:data:`UNBOUNDED` for NaN logits),
        (N,) int64 lower bound of ``count(upscaled > low)``), on the CPU. The counts are exact
        integers computed without float64 (Apple's MPS has none): float32 row sums (exact below
        2**24 columns), then int64 products and sums.
    """
    _, low_h, low_w = low_res.shape  # (N, h, w)
    row_first, k_y = _footprint(original_size[0], input_size[0], low_h, img_size)  # (H,)
    col_first, k_x = _footprint(original_size[1], input_size[1], low_w, img_size)  # (W,)
    rows = int(row_first.max()) + 1  # anchors in use
    cols = int(col_first.max()) + 1
    count_y = torch.bincount(row_first, minlength=rows)  # (rows,) int64 output rows per anchor
    count_x = torch.bincount(col_first, minlength=cols)  # (cols,) int64
    x = low_res[:, : rows + k_y - 1, : cols + k_x - 1].float()  # (N, r, c) the low-res cells read
    margin = 1e-4 * (1.0 + x.flatten(1).abs().amax(1))[:, None, None]  # (N, 1, 1)
    pad = (0, cols + k_x - 1 - x.shape[2], 0, rows + k_y - 1 - x.shape[1])

    def window_max(values: Tensor) -> Tensor:
        """(N, r, c) -> (N, rows, cols) maxima over each anchor's k_y x k_x window (separable)."""
        padded = torch.nn.functional.pad(values, pad, value=-math.inf)  # (N, rows+k_y-1, cols+k_x-1)
        along_rows = padded[:, :rows]  # (N, rows, cols+k_x-1)
        for d in range(1, k_y):
            along_rows = torch.maximum(along_rows, padded[:, d : d + rows])
        out = along_rows[:, :, :cols]  # (N, rows, cols)
        for d in range(1, k_x):
            out = torch.maximum(out, along_rows[:, :, d : d + cols])
        return out

    high = window_max(x)  # window maxima
    low = -window_max(-x)  # window minima
    # Counts are integers: a row's float32 sum is exact (it is at most the image width, < 2**24);
    # the sum over rows, which can pass 2**24, is taken in int64.
    weight_x = count_x.to(x.device, torch.float32)  # (cols,)
    weight_y = count_y.to(x.device)  # (rows,) int64
    n = x.shape[0]

    def weighted_count(above: Tensor) -> Tensor:
        """(N, rows, cols) bool -> (N,) int64 sum of count_y[r] * count_x[c] where set."""
        per_row = above.to(torch.float32).view(n * rows, cols) @ weight_x  # (N*rows,) exact integers
        return (per_row.view(n, rows).to(torch.int64) * weight_y).sum(1)  # (N,)

    upper = weighted_count(high > thresholds[0] - margin)  # (N,)
    lower = weighted_count(low > thresholds[1] + margin)  # (N,)
    unknown = x.isnan().flatten(1).any(1)  # (N,) NaN logits: no bound, never pruned
    upper = torch.where(unknown, UNBOUNDED, upper)
    lower = torch.where(unknown, 0, lower)
    return upper.cpu(), lower.cpu()


def provably_unstable(upper_high: Tensor, lower_low: Tensor, threshold: float) -> Tensor:
    """Masks whose stability score is certainly below ``threshold`` (> 0), given count bounds.

    The score is ``float32(high / low)``; it fails when ``high / low < threshold`` with room for
    float32 rounding, when ``high`` is 0 (score 0 or NaN) — never on a guess.

    Args:
        upper_high: (N,) upper bounds of ``high`` (from :func:`stability_bounds`).
        lower_low: (N,) lower bounds of ``low``.
        threshold: ``stability_score_thresh``, > 0.

    Returns:
        (N,) bool.
    """
    # In float64 on the host (numpy): counts are exact there, and no float64 tensor is made.
    upper = upper_high.cpu().numpy().astype(np.float64)  # (N,)
    lower = lower_low.cpu().numpy().astype(np.float64)  # (N,)
    certain_ratio = (lower > 0) & (upper < threshold * (1.0 - 1e-6) * lower)
    return torch.from_numpy((upper == 0) | certain_ratio)  # (N,) bool
