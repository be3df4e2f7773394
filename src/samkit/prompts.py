"""Validation of user prompts: one place that turns loose input into checked arrays.

Every error names the argument and says what was expected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["as_points", "as_labels", "as_boxes", "as_mask_input", "check_torch_prompts"]


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name}: expected a numeric array ({exc})") from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    return array


def _check_finite(name: str, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")


def as_points(point_coords: Any) -> np.ndarray:
    """Check (N, 2) x, y coordinates; returns float64 (N, 2)."""
    array = _as_array("point_coords", point_coords)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(f"point_coords: expected shape (N, 2) with N >= 1, got {tuple(array.shape)}")
    _check_finite("point_coords", array)
    return array.astype(np.float64)


def as_labels(point_labels: Any, num_points: int) -> np.ndarray:
    """Check (N,) labels in {0, 1}; returns int64 (N,)."""
    if point_labels is None:
        raise ValueError("point_labels: required when point_coords is given (1 = foreground, 0 = background)")
    array = _as_array("point_labels", point_labels)
    if array.ndim != 1:
        raise ValueError(f"point_labels: expected shape (N,), got {tuple(array.shape)}")
    if array.shape[0] != num_points:
        raise ValueError(
            f"point_labels: has {array.shape[0]} labels but point_coords has {num_points} points"
        )
    _check_finite("point_labels", array)
    if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
        raise ValueError("point_labels: labels must be integers 0 (background) or 1 (foreground)")
    labels = array.astype(np.int64)
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:
        raise ValueError(f"point_labels: labels must be 0 (background) or 1 (foreground), got {bad[0]}")
    return labels


def as_boxes(box: Any) -> np.ndarray:
    """Check a (4,) or (B, 4) XYXY box array with x0 <= x1 and y0 <= y1; returns float64 (B, 4)."""
    array = _as_array("box", box)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 4 or array.shape[0] == 0:
        raise ValueError(f"box: expected shape (4,) or (B, 4) as x0, y0, x1, y1, got {tuple(np.shape(box))}")
    _check_finite("box", array)
    array = array.astype(np.float64)
    bad = np.nonzero((array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1]))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"box: box {i} {array[i].tolist()} has x1 < x0 or y1 < y0 (expected x0, y0, x1, y1)")
    return array


def as_mask_input(mask_input: Any, size: tuple[int, int]) -> np.ndarray:
    """Check a (1, h, w) low-res logit mask (h, w = ``size``, 256x256); returns float32."""
    array = _as_array("mask_input", mask_input)
    expected = (1, *size)
    if array.shape != expected:
        raise ValueError(
            f"mask_input: expected shape {expected} (low_res_logits of a previous predict), got {tuple(array.shape)}"
        )
    _check_finite("mask_input", array)
    return array.astype(np.float32)


def check_torch_prompts(
    point_coords: Tensor | None, point_labels: Tensor | None, boxes: Tensor | None, mask_input: Tensor | None
) -> None:
    """Shape checks for :meth:`SamPredictor.predict_torch`, naming the argument at fault."""
    import torch
    from torch import Tensor
    batch: dict[str, int] = {}

    def tensor(name: str, value: Any) -> Tensor:
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        return value

    if point_coords is not None:
        coords = tensor("point_coords", point_coords)
        if coords.ndim != 3 or coords.shape[-1] != 2:
            raise ValueError(f"point_coords: expected shape (B, N, 2), got {tuple(coords.shape)}")
        if point_labels is None:
            raise ValueError("point_labels: required when point_coords is given")
        labels = tensor("point_labels", point_labels)
        if labels.shape != coords.shape[:2]:
            raise ValueError(
                f"point_labels: expected shape {tuple(coords.shape[:2])} to match point_coords, got {tuple(labels.shape)}"
            )
        if ((labels < -1) | (labels > 3)).any():
            raise ValueError("point_labels: labels must be 1 (foreground), 0 (background) or -1 (padding)")
        batch["point_coords"] = coords.shape[0]
    if boxes is not None:
        b = tensor("boxes", boxes)
        if b.ndim != 2 or b.shape[-1] != 4:
            raise ValueError(f"boxes: expected shape (B, 4), got {tuple(b.shape)}")
        if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            raise ValueError("boxes: every box must have x0 <= x1 and y0 <= y1")
        batch["boxes"] = b.shape[0]
    if mask_input is not None:
        m = tensor("mask_input", mask_input)
        if m.ndim != 4 or m.shape[1] != 1:
            raise ValueError(f"mask_input: expected shape (B, 1, 256, 256), got {tuple(m.shape)}")
        batch["mask_input"] = m.shape[0]
    if len(set(batch.values())) > 1:
        raise ValueError(f"prompt batch sizes differ: {batch}")
