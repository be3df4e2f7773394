"""Model outputs -> JSON-ready values: masks in the requested wire format, mask records.

Pure functions with no model or cache state; the service calls them in its worker threads.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from .encoding import encode_rle, mask_to_outlined_png_base64, mask_to_png_base64

__all__ = ["MaskFormat", "encode_masks", "json_value", "everything_masks"]

MaskFormat = Literal["png", "rle", "outlined_png"]


def encode_masks(masks: np.ndarray, output_format: str) -> list[Any]:
    """Encode each mask for the wire.

    Args:
        masks: (C, H, W) bool masks.
        output_format: "png" (base64 1-bit PNG, white object on a transparent background),
            "outlined_png" (base64 2-bit indexed PNG: 0 background, 1 interior, 2 outline);
            anything else: COCO compressed RLE dicts.

    Returns:
        C encoded masks: base64 strings, or RLE dicts.
    """
    if output_format == "png":
        return [mask_to_png_base64(m, transparent_background=True) for m in masks]
    if output_format == "outlined_png":
        return [mask_to_outlined_png_base64(m) for m in masks]
    return [encode_rle(m) for m in masks]


def json_value(value: Any) -> Any:
    """numpy scalars/arrays/tensors (and bytes) inside a record -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("ascii")
    return value


def everything_masks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segment-everything records -> JSON dicts with a COCO RLE ``segmentation``.

    Args:
        records: :meth:`samkit.SamAutomaticMaskGenerator.generate` output; ``segmentation``
            is an (H, W) bool array or already an RLE dict.

    Returns:
        One dict per record, every value plain JSON.
    """
    masks = []
    for record in records:
        out = json_value({k: v for k, v in record.items() if k != "segmentation"})
        segmentation = record["segmentation"]
        if isinstance(segmentation, np.ndarray):
            out["segmentation"] = encode_rle(segmentation)
        else:
            out["segmentation"] = json_value(segmentation)
        masks.append(out)
    return masks
