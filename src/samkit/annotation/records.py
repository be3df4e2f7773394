"""Masks of detector boxes as JSON-ready instance records (COCO RLE, area, box from the mask)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..everything.rle import counts_to_string, encode_fortran
from .detections import Detection

__all__ = ["mask_boxes_xywh", "instance_records"]


def mask_boxes_xywh(masks: Tensor) -> Tensor:
    """COCO boxes of masks: [x, y, w, h] of the pixels that are on (pycocotools' ``toBbox``).

    Args:
        masks: (B, H, W) bool.

    Returns:
        (B, 4) int64; all zeros for an empty mask.
    """
    n, h, w = masks.shape
    columns = masks.any(dim=1)  # (B, W)
    rows = masks.any(dim=2)  # (B, H)
    x0 = columns.int().argmax(dim=1)
    x1 = w - columns.flip(1).int().argmax(dim=1)  # one past the last column
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1).long()  # (B, 4)
    boxes[~columns.any(dim=1)] = 0
    return boxes


def instance_records(
    masks: Tensor, predicted_iou: Tensor, detections: Sequence[Detection], boxes: Sequence[Sequence[float]]
) -> list[dict[str, Any]]:
    """One record per mask.

    Args:
        masks: (B, H, W) bool, the mask of each detection.
        predicted_iou: (B,) the decoder's IoU prediction of each mask.
        detections: the B detections the masks belong to.
        boxes: the B prompt boxes (x0, y0, x1, y1 pixels, clipped to the image).

    Returns:
        dicts with ``category_id``, ``segmentation`` (COCO RLE, string counts), ``area``,
        ``bbox`` (from the mask, XYWH), ``score`` (the detection's, or None), ``predicted_iou``,
        ``box`` (the prompt) and ``source`` (the detection's row).
    """
    b, h, w = masks.shape
    flat = masks.transpose(1, 2).reshape(b, w * h)  # (B, W*H) column-major, COCO's order
    counts = encode_fortran(flat)
    areas = masks.sum(dim=(1, 2)).tolist()
    bboxes = mask_boxes_xywh(masks).tolist()
    ious = predicted_iou.tolist()
    return [
        {
            "category_id": det.category_id,
            "segmentation": {"size": [h, w], "counts": counts_to_string(counts[i])},
            "area": int(areas[i]),
            "bbox": [int(v) for v in bboxes[i]],
            "score": det.score,
            "predicted_iou": float(ious[i]),
            "box": [float(v) for v in boxes[i]],
            "source": det.where,
        }
        for i, det in enumerate(detections)
    ]
