"""Batched decoding of single-point prompts with an HQ-SAM model (segment everything).

The counterpart of :class:`samkit.everything.decode.PointDecoder` for
:class:`samkit.modeling.hq_sam.HQSam`: HQ-SAM gives one mask per prompt (the best SAM mask of
the three plus the HQ mask, as the official HQ generator asks for), and its mask needs the
upscaled image tokens anyway (the HQ features are convolved from them), so each prompt is
decoded in full; the IoU filter then only decides which logits are kept.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..modeling.hq_sam import HQImageCache, HQSam
from .decode import normalized_points
from .. import batching

__all__ = ["HQPointDecoder"]


class HQPointDecoder:
    """Decodes single foreground points on one image with HQ-SAM.

    Args:
        model: the HQ-SAM model.
        features: (1, C, h, w) image embedding.
        cache: the image's :class:`HQImageCache` (from ``model.encode_for_decoding``).
        multimask_output: the SAM part of each mask is the best of the 3 ambiguity masks (the
            official HQ generator's default) instead of the single-mask output.
    """

    def __init__(self, model: HQSam, features: Tensor, cache: HQImageCache, *, multimask_output: bool = True) -> None:
        if not isinstance(cache, HQImageCache):
            raise TypeError("HQPointDecoder needs the image's HQImageCache")
        self.model = model
        self.features = features
        self.cache = cache
        self.multimask_output = multimask_output
        self.embedding_size = tuple(features.shape[-2:])

    @torch.inference_mode()
    def decode(
        self, coords: Tensor | np.ndarray, iou_threshold: float | None, chunk: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted IoU of every prompt's mask, and low-res logits of those above ``iou_threshold``.

        Args:
            coords: (B, 2) ``(x, y)`` points in the resized-image (model input) pixel space;
                float64 keeps the reference's precision up to the positional encoding.
            iou_threshold: keep masks whose predicted IoU is above it; None keeps all.
            chunk: prompts per step (default: the model device's, see :mod:`samkit.batching`).

        Returns:
            iou (B,) float32 on the CPU; index (N,) int64 of the kept masks into it; low-res
            logits (N, 4h, 4w) float32 of those masks (one output per prompt, so the index is
            the prompt's).
        """
        model = self.model
        decoder = model.mask_decoder
        dtype = model.dtype
        device = model.device
        h, w = self.embedding_size
        image_pe = model.prompt_encoder.get_dense_pe().to(dtype)
        # Without the transformer's image-side cache the plain path needs the no-mask embedding.
        no_mask = None if self.cache.side is not None else model.embed_prompts(None, None, None, None)[1].to(dtype)
        ious, indices, logits = [], [], []
        encoder = model.prompt_encoder
        # numpy / float64 points are normalized on the host (as PointDecoder.run does): no float64
        # tensor on the model's device.
        host_normalized = isinstance(coords, np.ndarray) or coords.dtype == torch.float64
        if host_normalized:
            coords = normalized_points(coords, encoder.input_image_size)  # (B, 2) float32, CPU
        if chunk is None:
            chunk = batching.batching_for(device).prompt_chunk
        for start in range(0, coords.shape[0], chunk):
            points = coords[start : start + chunk].to(device)[:, None, :]  # (b, 1, 2)
            labels = torch.ones(points.shape[:2], dtype=torch.int64, device=device)  # (b, 1)
            if host_normalized:
                sparse = encoder.embed_normalized_points(points, labels, pad=True).to(dtype)  # (b, 2, C)
            else:
                sparse = encoder.embed_points(points, labels, pad=True).to(dtype)  # (b, 2, C)
            low_res, iou = decoder(
                self.features,
                image_pe,
                sparse,
                no_mask,
                self.multimask_output,
                hq_features=self.cache.hq_features,
                cache=self.cache.side,
            )  # (b, 1, 4h, 4w), (b, 1)
            iou = iou.float().flatten().cpu()  # (b,)
            keep = iou > iou_threshold if iou_threshold is not None else torch.ones_like(iou, dtype=torch.bool)
            index = keep.nonzero().flatten()  # (n,)
            if len(index):
                logits.append(low_res[index.to(low_res.device), 0].float())  # (n, 4h, 4w)
            ious.append(iou)
            indices.append(index + start)
        if not logits:
            logits.append(torch.zeros((0, 4 * h, 4 * w), dtype=torch.float32, device=device))
        return torch.cat(ious), torch.cat(indices), torch.cat(logits)
