"""Boxes to masks on one image embedding, a batch of boxes per decoder call."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..predictor import SamPredictor

__all__ = ["MULTIMASK_CHOICES", "BoxMasks", "masks_for_boxes"]

# "best": decode three candidates per box and keep the one with the highest predicted IoU;
# "single": SAM's single-mask output.
MULTIMASK_CHOICES = ("best", "single")


@dataclass
class BoxMasks:
    """The masks of one batch of boxes.

    Attributes:
        start: index of the batch's first box among all boxes given.
        masks: (B, H, W) bool, one mask per box.
        predicted_iou: (B,) float32, the decoder's IoU prediction for each kept mask.
    """

    start: int
    masks: Tensor
    predicted_iou: Tensor


def masks_for_boxes(
    predictor: SamPredictor, boxes: np.ndarray, *, multimask: str = "best", batch_size: int = 32
) -> Iterator[BoxMasks]:
    """One mask per box for the image set on ``predictor``, ``batch_size`` boxes per decode.

    The boxes of a batch share the image embedding and the decoder's per-image work; the kept
    mask of a box is the one ``predictor.predict(box=box, multimask_output=...)`` returns (the
    highest-scoring of the three for ``"best"``).

    Args:
        predictor: a predictor with the image set.
        boxes: (N, 4) x0, y0, x1, y1 in image pixels.
        multimask: ``"best"`` or ``"single"`` (see :data:`MULTIMASK_CHOICES`).
        batch_size: boxes per decoder call (bounds memory: B x 3 x H x W bools).

    Yields:
        :class:`BoxMasks`, in order.
    """
    if multimask not in MULTIMASK_CHOICES:
        raise ValueError(f"multimask: expected one of {', '.join(MULTIMASK_CHOICES)}, got {multimask!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if not predictor.is_image_set or predictor.original_size is None:
        raise RuntimeError("no image is set: call predictor.set_image(image) first")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mapped = predictor.transform.apply_boxes(boxes, predictor.original_size)  # (N, 4) in the model's frame (SAM 2: the stretched square)
    for start in range(0, len(boxes), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(mapped[start : start + batch_size])).to(predictor.device)  # (B, 4)
        low_res, iou = predictor.decode_low_res(None, None, batch, multimask_output=multimask == "best")  # (B, C, h, w), (B, C)
        best = iou.argmax(dim=1)  # (B,)
        rows = torch.arange(len(best), device=best.device)
        masks = predictor.upscale_masks(low_res[rows, best])  # (B, H, W): only the kept mask of each box
        yield BoxMasks(start=start, masks=masks.cpu(), predicted_iou=iou[rows, best].float().cpu())
