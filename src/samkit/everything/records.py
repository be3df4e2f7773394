"""``MaskSet``: the masks found so far, with their scores, boxes and prompts, column-wise."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["MaskSet"]


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
