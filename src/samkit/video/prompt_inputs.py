"""The video predictor's prompts as the model takes them: clicks, boxes and masks -> tensors.

* :func:`points_input`: clicks and/or a box in video pixels (or in [0, 1]) -> the official
  ``point_inputs`` coordinates in model-input pixels and their labels, a box first as two
  corner points labelled 2 and 3 (how SAM 2 was trained);
* :func:`mask_input`: an (H, W) mask of any size -> a binary (1, 1, S, S) mask prompt.

Both check what the user gave and raise a ``ValueError`` with a one-line message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["mask_input", "points_input"]


def points_input(
    points: Any,
    labels: Any,
    box: Any,
    *,
    normalize_coords: bool,
    video_size: tuple[int, int],
    image_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks and box corners in model-input pixels.

    Args:
        points: (N, 2) (x, y), or None.
        labels: (N,) 1 = foreground, 0 = background, or None (with ``points``).
        box: (x0, y0, x1, y1), or None.
        normalize_coords: ``points`` and ``box`` are in video pixels (else in [0, 1]).
        video_size: (height, width) of the video.
        image_size: side S of the square model input.
        device: where the tensors go.

    Returns:
        ((1, N, 2) float32 coordinates, (1, N) int32 labels); a box comes first as two
        points labelled 2 and 3.
    """
    coords = torch.zeros(1, 0, 2, dtype=torch.float32)
    point_labels = torch.zeros(1, 0, dtype=torch.int32)
    if points is not None:
        coords = torch.as_tensor(np.asarray(points, dtype=np.float32)) if not isinstance(points, torch.Tensor) else points.float()
        point_labels = torch.as_tensor(np.asarray(labels, dtype=np.int32)) if not isinstance(labels, torch.Tensor) else labels.int()
        coords = coords.cpu().reshape(1, -1, 2)  # (1, N, 2)
        point_labels = point_labels.cpu().reshape(1, -1)  # (1, N)
        if coords.shape[1] != point_labels.shape[1]:
            raise ValueError(f"points and labels: {coords.shape[1]} points but {point_labels.shape[1]} labels")
        if not set(point_labels.flatten().tolist()) <= {0, 1, 2, 3, -1}:
            raise ValueError("labels: expected 1 (foreground) or 0 (background)")
    if box is not None:
        box_t = box.float().cpu() if isinstance(box, torch.Tensor) else torch.as_tensor(np.asarray(box, dtype=np.float32))
        if box_t.numel() != 4:
            raise ValueError(f"box: expected (x0, y0, x1, y1), got {box_t.numel()} numbers")
        coords = torch.cat([box_t.reshape(1, 2, 2), coords], dim=1)  # (1, 2 + N, 2)
        point_labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), point_labels], dim=1)  # (1, 2 + N)
    if not torch.isfinite(coords).all():
        raise ValueError("points/box: contain NaN or infinite values")
    if normalize_coords:
        height, width = video_size
        coords = coords / torch.tensor([width, height])
    coords = coords * image_size
    return coords.to(device), point_labels.to(device)


def mask_input(mask: Any, image_size: int, device: torch.device) -> torch.Tensor:
    """An (H, W) array-like mask (nonzero = object, any size) -> (1, 1, S, S) float32 0/1 on ``device``.

    A mask of another size is resized bilinearly with antialiasing and thresholded at 0.5.
    """
    mask_tensor = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if mask_tensor.dim() != 2 or mask_tensor.numel() == 0:
        raise ValueError(f"mask: expected a non-empty (H, W) array, got shape {tuple(mask_tensor.shape)}")
    size = image_size
    prompt = mask_tensor.bool()[None, None].float().to(device)  # (1, 1, H, W)
    if tuple(prompt.shape[-2:]) != (size, size):
        prompt = F.interpolate(prompt, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        prompt = (prompt >= 0.5).float()  # (1, 1, S, S)
    return prompt
