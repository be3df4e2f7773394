"""Batched decoding of single-point prompts over one image embedding.

Automatic mask generation decodes a grid of single foreground points and keeps only masks
whose predicted IoU passes a threshold. The IoU head reads the transformer's IoU token alone,
so the decode is split in two: first the two-way transformer and the IoU head for every
prompt, then the mask upscaling network and the hypernetwork product only for the masks that
survive the IoU filter (upscaling once per prompt with a survivor, and the hypernetwork product
only for its surviving outputs). The prompt-independent image-side work of the first two-way
layer is computed once per image (:meth:`samkit.modeling.Sam.decoder_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import batching
from ..modeling import Sam
from ..modeling.decoder_cache import ImageSideCache
from ..modeling.decoder_factored import NormedImage

__all__ = ["PointBatch", "PointDecoder", "normalized_points"]


def normalized_points(coords: Tensor | np.ndarray, image_size: tuple[int, int]) -> Tensor:
    """Pixel points -> the prompt encoder's normalized coordinates, in float64 on the host.

    ``((x + 0.5) / W, (y + 0.5) / H)`` in float64 then rounded to float32, as the reference
    computes it (its float64 points reach the positional encoding), but in numpy on the host:
    the same IEEE operations give the same float32 values, and no float64 tensor reaches the
    model's device (Apple's MPS has no float64).

    Args:
        coords: (B, 2) ``(x, y)`` in the model input's pixel space (any float dtype, any device).
        image_size: (H, W) of the model input.

    Returns:
        (B, 2) float32 on the CPU.
    """
    array = coords.cpu().numpy() if isinstance(coords, Tensor) else np.asarray(coords)
    size_xy = np.array([float(image_size[1]), float(image_size[0])])  # (2,) float64
    return torch.from_numpy(((array.astype(np.float64) + 0.5) / size_xy).astype(np.float32))  # (B, 2)


@dataclass
class PointBatch:
    """Transformer outputs of a batch of B single-point prompts.

    Attributes:
        tokens: (B, 5, C) output tokens (the IoU token, then the 4 mask tokens).
        image_tokens: (B, h*w, C) updated image tokens, or their factors (see
            ``MaskDecoder.masks_from_image_tokens``).
        iou: (B, M) float32 predicted IoU of the M = 3 multimask outputs.
    """

    tokens: Tensor
    image_tokens: Tensor | NormedImage
    iou: Tensor


class PointDecoder:
    """Decodes single foreground points on one image embedding (multimask output).

    Args:
        model: the SAM model.
        features: (1, C, h, w) image embedding from ``model.encode_image``.
        cache: ``model.decoder_cache(features)``, computed here when not given.
    """

    def __init__(self, model: Sam, features: Tensor, cache: ImageSideCache | None = None) -> None:
        self.model = model
        self.cache = cache if cache is not None else model.decoder_cache(features)
        self.embedding_size = tuple(features.shape[-2:])
        self._first_mask = model.mask_decoder.output_token_slice(True).start  # multimask outputs are tokens 1..3

    @torch.inference_mode()
    def run(self, coords: Tensor | np.ndarray) -> PointBatch:
        """Transformer and IoU head for B points, all in one pass (:meth:`decode` runs many
        points a few at a time).

        Args:
            coords: (B, 2) ``(x, y)`` points in the resized-image (model input) pixel space;
                float64 keeps the reference's precision up to the positional encoding (that
                arithmetic runs on the host: see :func:`normalized_points`).

        Returns:
            the batch's tokens, image tokens and (B, 3) IoU predictions.
        """
        model = self.model
        dtype = model.dtype
        device = model.device
        encoder = model.prompt_encoder
        if isinstance(coords, np.ndarray) or coords.dtype == torch.float64:
            normalized = normalized_points(coords, encoder.input_image_size).to(device)[:, None, :]  # (B, 1, 2)
            labels = torch.ones(normalized.shape[:2], dtype=torch.int64, device=device)  # (B, 1)
            sparse = encoder.embed_normalized_points(normalized, labels, pad=True).to(dtype)  # (B, 2, C)
        else:
            points = coords.to(device)[:, None, :]  # (B, 1, 2)
            labels = torch.ones(points.shape[:2], dtype=torch.int64, device=device)  # (B, 1)
            sparse = encoder.embed_points(points, labels, pad=True).to(dtype)  # (B, 2, C)
        decoder = model.mask_decoder
        tokens = decoder.prompt_tokens(sparse)  # (B, 7, C): IoU token, 4 mask tokens, point, padding
        hs, image_tokens = decoder.transformer(
            None, None, tokens, cache=self.cache, keep_tokens=1 + decoder.num_mask_tokens, factored=True
        )  # (B, 5, C), (B, h*w, C) or its factors
        iou = decoder.iou_prediction_head(hs[:, 0, :])[:, self._first_mask :]  # (B, 3)
        return PointBatch(tokens=hs, image_tokens=image_tokens, iou=iou.float())

    @torch.inference_mode()
    def decode(
        self, coords: Tensor | np.ndarray, iou_threshold: float | None, chunk: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted IoUs of every output, and low-res logits of those above ``iou_threshold``.

        :meth:`run` then :meth:`masks`, ``chunk`` prompts at a time: each chunk's image tokens
        are upscaled while they are fresh, and the (B, h*w, C) image tokens of the whole batch
        are never stored.

        Args:
            coords: (B, 2) points, as for :meth:`run`.
            iou_threshold: keep outputs whose predicted IoU is above it; None keeps all.
            chunk: prompts per step (default: ``samkit.batching`` for the model's device; each
                step syncs with the host once, for the IoU filter).

        Returns:
            iou (3B,) float32 on the CPU, prompt-major; index (N,) int64 of the kept outputs
            into it; low-res logits (N, 4h, 4w) float32 of those outputs.
        """
        h, w = self.embedding_size
        ious, indices, logits = [], [], []
        if chunk is None:
            chunk = batching.batching_for(self.model.device).prompt_chunk
        for start in range(0, coords.shape[0], chunk):
            batch = self.run(coords[start : start + chunk])
            n_out = batch.iou.shape[1]
            iou = batch.iou.flatten().cpu()  # (3b,)
            keep = iou > iou_threshold if iou_threshold is not None else torch.ones_like(iou, dtype=torch.bool)
            index = keep.nonzero().flatten()  # (n,)
            if len(index):
                device = batch.iou.device
                logits.append(self.masks(batch, (index // n_out).to(device), (index % n_out).to(device)))
            ious.append(iou)
            indices.append(index + start * n_out)
        if not logits:
            logits.append(torch.zeros((0, 4 * h, 4 * w), dtype=torch.float32, device=self.model.device))
        return torch.cat(ious), torch.cat(indices), torch.cat(logits)

    @torch.inference_mode()
    def masks(self, batch: PointBatch, prompt: Tensor, output: Tensor) -> Tensor:
        """Low-res logits of selected masks.

        Args:
            batch: from :meth:`run`.
            prompt: (N,) int64 index of each mask's prompt in the batch.
            output: (N,) int64 multimask output index (0..2) of each mask.

        Returns:
            (N, 4h, 4w) float32 logits (256x256 for SAM).
        """
        decoder = self.model.mask_decoder
        h, w = self.embedding_size
        n = prompt.shape[0]
        if n == 0:
            return torch.zeros((0, 4 * h, 4 * w), dtype=torch.float32, device=self.model.device)
        unique, inverse, counts = torch.unique(prompt, return_inverse=True, return_counts=True)  # (U,), (N,), (U,)
        hyper = decoder.hypernetwork_weights(batch.tokens[unique], decoder.output_token_slice(True))  # (U, 3, C/8)
        # Only the selected outputs: mask i goes to slot rank[i] (its rank among its prompt's masks).
        order = torch.argsort(inverse, stable=True)  # (N,) masks grouped by prompt
        starts = torch.cumsum(counts, 0) - counts  # (U,) first position of each prompt in `order`
        rank = torch.empty_like(inverse)
        rank[order] = torch.arange(n, device=inverse.device) - starts[inverse[order]]  # (N,)
        slots = int(counts.max())
        selected = hyper.new_zeros((len(unique), slots, hyper.shape[-1]))  # (U, S, C/8)
        selected[inverse, rank] = hyper[inverse, output]
        # unique is sorted: all B prompts means the identity, and a copy of (B, h*w, C) is avoided.
        image_tokens = batch.image_tokens
        if len(unique) != batch.tokens.shape[0]:
            image_tokens = image_tokens.select(unique) if isinstance(image_tokens, NormedImage) else image_tokens[unique]
        logits = decoder.masks_from_image_tokens(image_tokens, selected, (h, w), cache=self.cache)  # (U, S, 4h, 4w)
        return logits[inverse, rank].float()  # (N, 4h, 4w)
