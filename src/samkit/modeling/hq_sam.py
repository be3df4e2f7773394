"""HQ-SAM: a SAM 1 (or MobileSAM) encoder with :class:`HQMaskDecoder`.

The composition is :class:`Sam`'s; what differs is the per-image state: besides the image
embedding, the decoder needs the HQ features (from the embedding and the encoder's early
features), computed once per image by :meth:`HQSam.encode_for_decoding` and kept in an
:class:`HQImageCache`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import HQSamConfig
from .hq_decoder import HQMaskDecoder
from .sam import Sam
from .decoder_cache import ImageSideCache

__all__ = ["HQSam", "HQImageCache"]


@dataclass
class HQImageCache:
    """Per-image state of HQ-SAM's decoder.

    Attributes:
        hq_features: (1, C/8, 4h, 4w) HQ features of the image.
        side: the two-way transformer's prompt-independent work (for prompts without a mask
            input), or None to run the plain path for every prompt.
    """

    hq_features: Tensor
    side: ImageSideCache | None = None


class HQSam(Sam):
    """HQ-SAM model; parameter names equal the official ``sam_hq_vit_*.pth`` keys.

    Decoding returns one mask per prompt (see :mod:`samkit.modeling.hq_decoder`).
    """

    mask_decoder: HQMaskDecoder

    def __init__(self, config: HQSamConfig) -> None:
        if not isinstance(config, HQSamConfig):
            raise TypeError(f"HQSam needs an HQSamConfig, got {type(config).__name__}")
        super().__init__(config)
        self.mask_decoder = HQMaskDecoder(config.mask_decoder, config.early_feature_dim)

    @torch.inference_mode()
    def encode_image_hq(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Encode preprocessed images for HQ decoding.

        Args:
            images: (B, 3, S, S) preprocessed images.

        Returns:
            (B, 256, S/16, S/16) embeddings and (B, 32, S/4, S/4) HQ features, in the decoder dtype.
        """
        x = images.to(device=self.device, dtype=self.encoder_dtype)
        embeddings, early = self.image_encoder.forward_with_early_features(x)
        dtype = self.dtype
        embeddings = embeddings.to(dtype)
        return embeddings, self.mask_decoder.hq_features(embeddings, early.to(dtype))

    def hq_cache(self, image_embeddings: Tensor, hq_features: Tensor) -> HQImageCache:
        """The :class:`HQImageCache` of one image from its (1, 256, h, w) embedding and HQ features."""
        return HQImageCache(hq_features=hq_features, side=self.decoder_cache(image_embeddings))

    def encode_for_decoding(self, images: Tensor) -> tuple[Tensor, HQImageCache]:  # type: ignore[override]
        """Embedding and :class:`HQImageCache` of one (1, 3, S, S) preprocessed image."""
        embeddings, hq_features = self.encode_image_hq(images)
        with torch.inference_mode():
            return embeddings, self.hq_cache(embeddings, hq_features)

    def decode(  # type: ignore[override]
        self,
        image_embeddings: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        *,
        multimask_output: bool = True,
        cache: HQImageCache | None = None,
        hq_token_only: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Prompts (in the resized-image pixel space) -> one low-res mask and IoU per prompt.

        Args:
            image_embeddings: (1 or B, 256, h, w).
            point_coords, point_labels, boxes, mask_input: as for :meth:`Sam.decode`.
            multimask_output: the SAM part of the mask is the best of the 3 ambiguity masks
                (highest predicted IoU) instead of the single-mask token.
            cache: the image's :class:`HQImageCache` (required: it holds the HQ features).
            hq_token_only: the HQ token's mask alone, without SAM's mask added.

        Returns:
            low-res logits (B, 1, 4h, 4w) and IoU predictions (B, 1), in float32.
        """
        if not isinstance(cache, HQImageCache):
            raise TypeError("HQ-SAM decodes with the HQImageCache of its image (see encode_for_decoding)")
        dtype = self.dtype
        sparse, dense = self.embed_prompts(point_coords, point_labels, boxes, mask_input)
        side = cache.side if mask_input is None else None
        low_res, iou = self.mask_decoder(
            image_embeddings.to(dtype),
            self.prompt_encoder.get_dense_pe().to(dtype),
            sparse.to(dtype),
            dense.to(dtype),
            multimask_output,
            hq_features=cache.hq_features,
            hq_token_only=hq_token_only,
            cache=side,
        )
        return low_res.float(), iou.float()

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        hq_token_only: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Encode one preprocessed (1, 3, S, S) image and decode a batch of prompts (plain path)."""
        embeddings, early = self.image_encoder.forward_with_early_features(images)
        cache = HQImageCache(hq_features=self.mask_decoder.hq_features(embeddings, early))
        return self.decode(
            embeddings,
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output=multimask_output,
            cache=cache,
            hq_token_only=hq_token_only,
        )
