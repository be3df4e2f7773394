"""Batched decoding of single-point prompts with a SAM 2 model (segment everything).

The counterpart of :class:`samkit.everything.decode.PointDecoder` for
:class:`samkit.modeling.sam2.Sam2`: each prompt is one foreground point, decoded through the
model's public :meth:`~samkit.modeling.sam2.Sam2.decode` (the transformer's cached image side,
the high-resolution upscaling), three masks per prompt; the IoU filter then decides which
low-res logits are kept.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..modeling.sam2 import Sam2, Sam2ImageCache

__all__ = ["Sam2PointDecoder"]


class Sam2PointDecoder:
    """Decodes single foreground points on one image with a SAM 2 model.

    Args:
        model: the SAM 2 model.
        features: (1, C, h, w) image embedding.
        cache: the image's :class:`Sam2ImageCache` (from ``model.encode_for_decoding``).
        multimask_output: three masks per prompt (the official generator's default), else one.
        refine: the official ``use_m2m``: every mask is decoded once more from its own point
            with its low-res logits (clamped to +-32, as the official predictor returns them)
            as mask input, one mask each; the refined masks and IoUs replace the first ones.
    """

    def __init__(
        self,
        model: Sam2,
        features: Tensor,
        cache: Sam2ImageCache,
        *,
        multimask_output: bool = True,
        refine: bool = False,
    ) -> None:
        if not isinstance(cache, Sam2ImageCache):
            raise TypeError("Sam2PointDecoder needs the image's Sam2ImageCache")
        self.model = model
        self.features = features
        self.cache = cache
        self.multimask_output = multimask_output
        self.refine = refine

    @torch.inference_mode()
    def decode(self, coords: Tensor | np.ndarray, iou_threshold: float | None) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted IoU of every mask, and low-res logits of those above ``iou_threshold``.

        Args:
            coords: (B, 2) ``(x, y)`` float32 points in the model's square pixel space.
            iou_threshold: keep masks whose predicted IoU is above it; None keeps all.

        Returns:
            iou (B*M,) float32 on the CPU (M masks per prompt, prompt-major); index (N,) int64 of
            the kept masks into it; their (N, 4h, 4w) float32 low-res logits (not clamped).
        """
        points = torch.as_tensor(coords, dtype=torch.float32)[:, None, :]  # (B, 1, 2)
        labels = torch.ones(points.shape[:2], dtype=torch.int64)  # (B, 1)
        low_res, iou = self.model.decode(
            self.features, points, labels, multimask_output=self.multimask_output, cache=self.cache
        )  # (B, M, 4h, 4w), (B, M)
        if self.refine:
            m = low_res.shape[1]
            limit = self.model.low_res_logit_limit
            previous = low_res.flatten(0, 1).clamp(-limit, limit)[:, None]  # (B*M, 1, 4h, 4w)
            low_res, iou = self.model.decode(
                self.features,
                points.repeat_interleave(m, dim=0),  # (B*M, 1, 2)
                labels.repeat_interleave(m, dim=0),  # (B*M, 1)
                mask_input=previous,
                multimask_output=False,
                cache=self.cache,
            )  # (B*M, 1, 4h, 4w), (B*M, 1)
        iou_flat = iou.flatten().cpu()  # (B*M,)
        if iou_threshold is None:
            index = torch.arange(len(iou_flat))
        else:
            index = (iou_flat > iou_threshold).nonzero().flatten()  # (N,)
        kept = low_res.flatten(0, 1)[index.to(low_res.device)]  # (N, 4h, 4w)
        return iou_flat, index, kept
