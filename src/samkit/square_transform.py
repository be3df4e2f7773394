"""The SAM 2 framing: the image is stretched to the model's square, not padded.

SAM 1 resizes the longest side and pads (:class:`samkit.transforms.ResizeLongestSide`); the
official SAM 2 image pipeline instead resizes the whole image to ``size`` x ``size`` (bilinear
with antialiasing, on float pixels), scales each prompt coordinate by ``size / W`` and
``size / H`` (float32: divided by the side, then multiplied by ``size``), and resizes the
low-res mask logits straight to the original image size. :class:`ResizeSquare` has the same
methods as ``ResizeLongestSide``, so the predictor uses either through one interface.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ResizeSquare"]


class ResizeSquare:
    """Image, prompt and mask mapping between an (H, W) image and the model's square.

    Args:
        target_length: side of the square (1024).
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    # ----------------------------------------------------------------- image
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (S, S, 3) float32 pixel values (0..255), bilinear with antialiasing."""
        tensor = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        return self.apply_image_torch(tensor)[0].permute(1, 2, 0).numpy()  # (S, S, 3)

    def apply_image_torch(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) pixel values -> (B, 3, S, S) float32."""
        s = self.target_length
        x = images.float()
        if tuple(x.shape[-2:]) == (s, s):
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    # --------------------------------------------------------------- prompts
    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) x, y pixels of the original image -> model-square coordinates (float32)."""
        h, w = int(original_size[0]), int(original_size[1])
        out = np.array(coords, dtype=np.float32, copy=True)
        out[..., 0] = out[..., 0] / np.float32(w)
        out[..., 1] = out[..., 1] / np.float32(h)
        return out * np.float32(self.target_length)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 4) XYXY boxes of the original image -> model-square boxes (float32)."""
        shape = np.shape(boxes)
        return self.apply_coords(np.reshape(boxes, (-1, 2, 2)), original_size).reshape(shape)

    def apply_coords_torch(self, coords: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Torch version of :meth:`apply_coords`; keeps a floating dtype (float32 default)."""
        h, w = int(original_size[0]), int(original_size[1])
        out = coords.to(coords.dtype if coords.is_floating_point() else torch.float32).clone()
        out[..., 0] = out[..., 0] / w
        out[..., 1] = out[..., 1] / h
        return out * self.target_length

    def apply_boxes_torch(self, boxes: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Torch version of :meth:`apply_boxes`."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(boxes.shape)

    # ----------------------------------------------------------------- masks
    def postprocess_masks(
        self, low_res_masks: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Tensor:
        """(..., h, w) low-res logits -> (..., H, W) float32 logits, one bilinear resize.

        ``input_size`` is the square itself here and is not needed; it is accepted so that
        both framings are called alike.
        """
        *lead, low_h, low_w = low_res_masks.shape
        x = low_res_masks.reshape(-1, 1, low_h, low_w).float()  # (N, 1, h, w)
        x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)  # (N, 1, H, W)
        return x.view(*lead, *x.shape[-2:])  # (..., H, W)

    def postprocess_to_masks(
        self,
        low_res_masks: Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        threshold: float = 0.0,
        chunk: int = 3,
    ) -> Tensor:
        """Binary masks ``postprocess_masks(...) > threshold``, ``chunk`` masks upscaled at a time."""
        *lead, low_h, low_w = low_res_masks.shape
        flat = low_res_masks.reshape(-1, low_h, low_w)  # (N, h, w)
        out = torch.empty((flat.shape[0], *original_size), dtype=torch.bool, device=low_res_masks.device)  # (N, H, W)
        for start in range(0, flat.shape[0], chunk):
            logits = self.postprocess_masks(flat[start : start + chunk], input_size, original_size)  # (n, H, W)
            torch.gt(logits, threshold, out=out[start : start + chunk])
        return out.view(*lead, *original_size)  # (..., H, W)
