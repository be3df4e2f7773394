"""Composition of image encoder, prompt encoder and mask decoder.

Tensor in, tensor out: no numpy, no thresholds, no resizing of user images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ImageEncoderConfig, SamConfig, TinyViTConfig
from ..transforms import normalize_and_pad
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .decoder_cache import ImageSideCache

__all__ = ["Sam"]


def _build_image_encoder(config: ImageEncoderConfig | TinyViTConfig) -> nn.Module:
    if isinstance(config, ImageEncoderConfig):
        return ImageEncoderViT(config)
    if isinstance(config, TinyViTConfig):
        from .tiny_vit import TinyViT  # local import: only vit_t needs it

        return TinyViT(config)
    raise TypeError(f"unsupported image encoder config {type(config).__name__}")


class Sam(nn.Module):
    """Segment Anything model.

    Attributes:
        config: the architecture.
        mask_threshold: logit threshold for binary masks (0.0).
        image_format: channel order the model expects ("RGB").
    """

    pixel_mean: Tensor
    pixel_std: Tensor
    image_format: str = "RGB"

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = _build_image_encoder(config.image_encoder)
        self.prompt_encoder = PromptEncoder(config.prompt_encoder)
        self.mask_decoder = MaskDecoder(config.mask_decoder)
        self.mask_threshold = config.mask_threshold
        # Not part of the checkpoint (the official model registers them non-persistent).
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the mask decoder (float32, also in the bf16 fast mode on CPU)."""
        return self.mask_decoder.iou_token.weight.dtype

    @property
    def encoder_dtype(self) -> torch.dtype:
        """Floating dtype of the image encoder (float32, or bfloat16 in the fast mode)."""
        return next(self.image_encoder.parameters()).dtype

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.config.img_size

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, h, w) resized pixel values (0..255) -> (B, 3, S, S) normalized, padded."""
        mean = self.pixel_mean.float()
        std = self.pixel_std.float()
        return normalize_and_pad(images, mean, std, self.img_size).to(self.encoder_dtype)

    @torch.inference_mode()
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) preprocessed images -> (B, 256, S/16, S/16) embeddings in the decoder dtype."""
        embeddings = self.image_encoder(images.to(device=self.device, dtype=self.encoder_dtype))
        return embeddings.to(self.dtype)

    def decoder_cache(self, image_embeddings: Tensor) -> ImageSideCache:
        """Prompt-independent decoder work for one (1, 256, h, w) image embedding."""
        pe = self.prompt_encoder
        h, w = pe.image_embedding_size
        dtype = self.dtype
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w).to(dtype)
        return self.mask_decoder.prepare_image(image_embeddings.to(dtype), pe.get_dense_pe().to(dtype), no_mask)

    def encode_for_decoding(self, images: Tensor) -> tuple[Tensor, ImageSideCache]:
        """:meth:`encode_image` and :meth:`decoder_cache` of one (1, 3, S, S) preprocessed image.

        Returns:
            the (1, 256, S/16, S/16) embedding and the per-image state :meth:`decode` takes as
            ``cache`` (models with more per-image state, such as HQ-SAM, return theirs).
        """
        embeddings = self.encode_image(images)
        return embeddings, self.decoder_cache(embeddings)

    def embed_prompts(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None,
        mask_input: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Prompts (resized-image pixels) -> sparse (B, T, C) and dense (B or 1, C, h, w) embeddings, float32.

        Args: as for :meth:`decode`.
        """
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            points = (point_coords.to(device=self.device, dtype=torch.float32), point_labels.to(self.device))
        if boxes is not None:
            boxes = boxes.to(device=self.device, dtype=torch.float32)
        if mask_input is not None:
            mask_input = mask_input.to(device=self.device, dtype=torch.float32)
        return self.prompt_encoder(points, boxes, mask_input)

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        *,
        multimask_output: bool = True,
        cache: ImageSideCache | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Prompts (in the resized-image pixel space) -> low-res mask logits and IoU.

        Args:
            image_embeddings: (1 or B, 256, h, w).
            point_coords: (B, N, 2) float or None.
            point_labels: (B, N) int or None.
            boxes: (B, 4) float or None.
            mask_input: (B, 1, 4h, 4w) logits or None.
            multimask_output: 3 masks per prompt instead of 1.
            cache: :meth:`decoder_cache` of this image, used when there is no mask input.

        Returns:
            low-res logits (B, M, 4h, 4w) and IoU predictions (B, M), in float32.
        """
        dtype = self.dtype
        sparse, dense = self.embed_prompts(point_coords, point_labels, boxes, mask_input)
        use_cache = cache if mask_input is None else None
        low_res, iou = self.mask_decoder(
            image_embeddings.to(dtype),
            self.prompt_encoder.get_dense_pe().to(dtype),
            sparse.to(dtype),
            dense.to(dtype),
            multimask_output,
            cache=use_cache,
        )
        return low_res.float(), iou.float()

    def forward(
        self,
        images: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Encode one preprocessed (1, 3, S, S) image and decode a batch of prompts."""
        return self.decode(
            self.image_encoder(images), point_coords, point_labels, boxes, mask_input, multimask_output=multimask_output
        )
