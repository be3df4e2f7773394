"""Pure pre/post-processing functions between user space and model space.

Model space is the ``img_size`` x ``img_size`` (1024) square: the image is resized
so its longest side is ``img_size`` (Pillow bilinear on uint8, as the official
pipeline does), normalized and zero-padded bottom/right. Prompts are given in
original-image pixels and mapped to the resized image; masks come back as 256x256
logits and are mapped to the original size.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import map_boxes, map_coords, preprocess_shape, resize_longest_side

__all__ = [
    "preprocess_shape",
    "resize_longest_side",
    "normalize_and_pad",
    "map_coords",
    "map_boxes",
    "map_coords_torch",
    "map_boxes_torch",
    "postprocess_masks",
    "resize_axis_weights",
    "ResizeLongestSide",
]


def normalize_and_pad(images: Tensor, mean: Tensor, std: Tensor, size: int) -> Tensor:
    """Normalize per channel and zero-pad bottom/right to ``size`` x ``size``.

    Args:
        images: (B, 3, h, w) pixel values (any real dtype; uint8 is converted).
        mean, std: (3, 1, 1) per-channel statistics.
        size: output side.

    Returns:
        (B, 3, size, size) in the dtype of ``mean``.
    """
    x = (images.to(mean.dtype) - mean) / std
    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h))


def map_coords_torch(coords: Tensor, original_size: tuple[int, int], long_side: int) -> Tensor:
    """Torch version of :func:`map_coords`; keeps the input's floating dtype (float32 default)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    dtype = coords.dtype if coords.is_floating_point() else torch.float32
    scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=dtype, device=coords.device)
    return coords.to(dtype) * scale


def map_boxes_torch(boxes: Tensor, original_size: tuple[int, int], long_side: int) -> Tensor:
    """Torch version of :func:`map_boxes`."""
    shape = boxes.shape
    return map_coords_torch(boxes.reshape(-1, 2, 2), original_size, long_side).reshape(shape)


def _bilinear_source(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs and weights of 1-D bilinear resampling, align_corners=False.

    Matches ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``
    given an output size: source = (dst + 0.5) * in/out - 0.5, clamped at 0.

    Returns:
        i0, i1 (out_len,) int64 and w1 (out_len,) float64; w0 = 1 - w1.
    """
    scale = in_len / out_len
    src = (np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    w1 = src - i0
    return i0, i1, w1


def _bilinear_matrix(out_len: int, in_len: int) -> np.ndarray:
    """(out_len, in_len) float64 matrix of 1-D bilinear resampling."""
    i0, i1, w1 = _bilinear_source(out_len, in_len)
    m = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.arange(out_len)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


@functools.lru_cache(maxsize=64)
def resize_axis_weights(low_len: int, padded_len: int, valid_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse weights of the official two-step upscaling along one axis.

    The official post-processing resizes ``low_len`` (256) -> ``padded_len`` (1024),
    crops the first ``valid_len`` rows, then resizes to ``out_len``. Both steps are
    linear, so their composition is one (out_len, low_len) matrix with at most a
    few non-zeros per row; we keep it as K index/weight columns.

    Returns:
        index (out_len, K) int64 and weight (out_len, K) float32.
    """
    first = _bilinear_matrix(padded_len, low_len)[:valid_len]  # (valid, low)
    second = _bilinear_matrix(out_len, valid_len)  # (out, valid)
    combined = second @ first  # (out, low)
    nonzero = combined != 0
    k = max(int(nonzero.sum(axis=1).max()), 1)
    order = np.argsort(~nonzero, axis=1, kind="stable")[:, :k]  # non-zero columns first
    weights = np.take_along_axis(combined, order, axis=1)
    return order.astype(np.int64), weights.astype(np.float32)


def _resample_last_axis(x: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """x (..., L) -> (..., out) with out[..., o] = sum_k weight[o, k] * x[..., index[o, k]]."""
    out = x[..., index[:, 0]] * weight[:, 0]
    for k in range(1, index.shape[1]):
        out = out + x[..., index[:, k]] * weight[:, k]
    return out


def _resample_rows(x: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """x (..., L, W) -> (..., out, W), resampling whole rows (contiguous copies)."""
    out = x.index_select(-2, index[:, 0]) * weight[:, 0:1]
    for k in range(1, index.shape[1]):
        out = out + x.index_select(-2, index[:, k]) * weight[:, k : k + 1]
    return out


def postprocess_masks(
    low_res_masks: Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    img_size: int = 1024,
) -> Tensor:
    """Upscale low-resolution mask logits to the original image size.

    Equal (to float rounding) to the official pipeline: bilinear to img_size x
    img_size, crop the padding, bilinear to the original size; but done in one
    sparse separable pass that never builds the 1024x1024 intermediate.

    Args:
        low_res_masks: (B, M, h, w) logits (256x256 for SAM).
        input_size: (h, w) of the resized image before padding.
        original_size: (H, W) of the original image.
        img_size: side of the padded model input.

    Returns:
        (B, M, H, W) logits in the input's floating dtype (at least float32 precision is kept
        for float32 inputs).
    """
    low_h, low_w = low_res_masks.shape[-2:]
    device = low_res_masks.device
    x = low_res_masks if low_res_masks.dtype == torch.float64 else low_res_masks.float()
    idx_w, w_w = resize_axis_weights(low_w, img_size, input_size[1], original_size[1])
    idx_h, w_h = resize_axis_weights(low_h, img_size, input_size[0], original_size[0])
    x = _resample_last_axis(
        x, torch.from_numpy(idx_w).to(device), torch.from_numpy(w_w).to(device=device, dtype=x.dtype)
    )  # (B, M, h, W)
    x = _resample_rows(
        x, torch.from_numpy(idx_h).to(device), torch.from_numpy(w_h).to(device=device, dtype=x.dtype)
    )  # (B, M, H, W)
    return x


class ResizeLongestSide:
    """Object form of the resize/coordinate functions (the official ``predictor.transform``).

    Args:
        target_length: longest side after resizing (1024).
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> resized (h, w, 3) uint8."""
        return resize_longest_side(image, self.target_length)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) original-pixel coordinates -> resized-image coordinates (float32)."""
        return map_coords(coords, (int(original_size[0]), int(original_size[1])), self.target_length)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 4) original-pixel boxes -> resized-image boxes (float32)."""
        return map_boxes(boxes, (int(original_size[0]), int(original_size[1])), self.target_length)

    def apply_coords_torch(self, coords: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Torch version of :meth:`apply_coords`."""
        return map_coords_torch(coords, (int(original_size[0]), int(original_size[1])), self.target_length)

    def apply_boxes_torch(self, boxes: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Torch version of :meth:`apply_boxes`."""
        return map_boxes_torch(boxes, (int(original_size[0]), int(original_size[1])), self.target_length)
