"""Mask quality scores, boxes and non-maximum suppression (torch/numpy only, no torchvision).

The arithmetic follows the reference implementation exactly where it decides what is kept:
stability is a float32 ratio of int32 pixel counts, box IoUs are computed in float32 in the same
order and compared to the threshold in float64, and ties in NMS are broken by input order.
"""

from __future__ import annotations

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
]

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
