"""``MaskSet``: the masks found so far, with their scores, boxes and prompts, column-wise; and
the generator's output records made from it (:func:`mask_records`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .filters import box_xyxy_to_xywh
from .polygons import mask_to_polygons
from .rle import counts_to_string, rle_to_mask

__all__ = ["MaskSet", "mask_records"]


@dataclass
class MaskSet:
    """N candidate masks, stored as run lengths (see :mod:`samkit.everything.rle`).

    Attributes:
        rles: N column-major run-length arrays over the whole image.
        boxes: (N, 4) int64 XYXY boxes (inclusive corners).
        iou_preds: (N,) float32 predicted IoU.
        stability: (N,) float32 stability score.
        points: (N, 2) float64 prompt points.
        crop_boxes: (N, 4) int64 XYXY crop of each mask.
    """

    rles: list[np.ndarray] = field(default_factory=list)
    boxes: Tensor = field(default_factory=lambda: torch.zeros((0, 4), dtype=torch.int64))
    iou_preds: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float32))
    stability: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float32))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float64))
    crop_boxes: Tensor = field(default_factory=lambda: torch.zeros((0, 4), dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, index: Tensor) -> MaskSet:
        """The masks at ``index`` ((K,) int64), in that order."""
        idx = index.cpu()
        positions = idx.tolist()
        return MaskSet(
            rles=[self.rles[i] for i in positions],
            boxes=self.boxes[idx],
            iou_preds=self.iou_preds[idx],
            stability=self.stability[idx],
            points=self.points[idx.numpy()],
            crop_boxes=self.crop_boxes[idx],
        )

    @staticmethod
    def concat(parts: list[MaskSet]) -> MaskSet:
        """All masks of ``parts``, in order."""
        if not parts:
            return MaskSet()
        return MaskSet(
            rles=[rle for part in parts for rle in part.rles],
            boxes=torch.cat([p.boxes for p in parts]),
            iou_preds=torch.cat([p.iou_preds for p in parts]),
            stability=torch.cat([p.stability for p in parts]),
            points=np.concatenate([p.points for p in parts]),
            crop_boxes=torch.cat([p.crop_boxes for p in parts]),
        )


def mask_records(data: MaskSet, orig_size: tuple[int, int], output_mode: str) -> list[dict[str, Any]]:
    """The generator's output: one record per mask (segmentation in ``output_mode``, area, bbox, scores...)."""
    size = [int(orig_size[0]), int(orig_size[1])]
    records = []
    boxes = data.boxes.tolist()
    crop_boxes = data.crop_boxes.tolist()
    iou_preds = data.iou_preds.tolist()
    stability = data.stability.tolist()
    for i, counts in enumerate(data.rles):
        rle = {"size": size, "counts": counts}
        if output_mode == "binary_mask":
            segmentation: Any = rle_to_mask(rle)
        elif output_mode == "uncompressed_rle":
            segmentation = {"size": list(size), "counts": counts.tolist()}
        elif output_mode == "coco_rle":
            segmentation = {"size": list(size), "counts": counts_to_string(counts)}
        else:
            segmentation = mask_to_polygons(rle_to_mask(rle))
        records.append(
            {
                "segmentation": segmentation,
                "area": int(counts[1::2].sum()),
                "bbox": box_xyxy_to_xywh(boxes[i]),
                "predicted_iou": iou_preds[i],
                "point_coords": [data.points[i].tolist()],
                "stability_score": stability[i],
                "crop_box": box_xyxy_to_xywh(crop_boxes[i]),
            }
        )
    return records
