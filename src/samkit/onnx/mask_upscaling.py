"""Low-res mask logits -> logits at the original image size, inside an exported graph.

The original size is a graph input (``orig_im_size``, float32 (2,) = (H, W)), so the sizes are
tensors here, never Python ints; both functions trace to Resize / Slice nodes with dynamic sizes.

Two framings:

* :func:`upscale_padded` (SAM 1, MobileSAM, HQ-SAM: the image was resized to longest side S and
  zero-padded): bilinear to S x S, crop the resized-image area, bilinear to (H, W), as the
  official pipeline and :func:`samkit.transforms.postprocess_masks` do;
* :func:`upscale_stretched` (SAM 2: the image was stretched to the square): one bilinear resize
  to (H, W), as :meth:`samkit.square_transform.ResizeSquare.postprocess_masks` does.

(:class:`samkit.onnx.modules.DecoderForExport` has its own copy of the padded upscaling.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["upscale_padded", "upscale_stretched"]


def upscale_padded(low_res: Tensor, orig_im_size: Tensor, img_size: int) -> Tensor:
    """(B, M, h, w) low-res logits of a padded square -> (B, M, H, W) logits.

    The crop size is computed in float64 like :func:`samkit.geometry.preprocess_shape`
    (round half up, at least 1).

    Args:
        low_res: (B, M, h, w) logits.
        orig_im_size: (2,) float (H, W) of the original image.
        img_size: side S of the padded model input.
    """
    s = img_size
    x = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)  # (B, M, S, S)
    size = orig_im_size.to(torch.float64)
    scale = s / torch.max(size)
    resized = torch.floor(size * scale + 0.5).clamp_min(1).to(torch.int64)  # (2,) (h, w), never 0
    x = x[:, :, : resized[0], : resized[1]]  # (B, M, h, w)
    out_hw = orig_im_size.to(torch.int64)
    return F.interpolate(x, size=(out_hw[0], out_hw[1]), mode="bilinear", align_corners=False)  # (B, M, H, W)


def upscale_stretched(low_res: Tensor, orig_im_size: Tensor) -> Tensor:
    """(B, M, h, w) low-res logits of a stretched square -> (B, M, H, W) logits, one bilinear resize.

    Args:
        low_res: (B, M, h, w) logits.
        orig_im_size: (2,) float (H, W) of the original image.
    """
    out_hw = orig_im_size.to(torch.int64)
    return F.interpolate(low_res, size=(out_hw[0], out_hw[1]), mode="bilinear", align_corners=False)  # (B, M, H, W)
