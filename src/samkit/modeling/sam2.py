"""SAM 2 image model: Hiera encoder + FPN neck, SAM's prompt encoder, SAM 2's mask decoder.

Tensor in, tensor out, with the same public surface as :class:`~samkit.modeling.sam.Sam`
(``preprocess``, ``encode_image_levels``, ``decoder_cache``, ``decode``, ``image_transform``),
so that :class:`~samkit.predictor.SamPredictor` drives both families.

What the image path of the official SAM 2 does, and this module does too:

* the image is stretched to the model's square (no padding; see
  :class:`~samkit.square_transform.ResizeSquare`) and normalized with ImageNet statistics;
* of the neck's three levels (strides 4, 8, 16), the stride-16 one is the image embedding, plus
  ``no_mem_embed`` (what a video frame without memory gets); the stride-4 and stride-8 levels go
  through the decoder's ``conv_s0`` / ``conv_s1`` once per image;
* a box is two points labelled 2 and 3 placed before the points, and the prompt encoder always
  appends its padding point (it sees no separate box).

Parameter names equal the official checkpoint keys (``image_encoder.*``, ``sam_prompt_encoder.*``,
``sam_mask_decoder.*``, ``no_mem_embed``); the video-only modules of a checkpoint are not built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config_sam2 import Sam2Config
from ..square_transform import ResizeSquare
from ..transforms import normalize_and_pad
from .fpn_neck import Sam2ImageEncoder
from .prompt_encoder import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, PromptEncoder
from .sam2_mask_decoder import Sam2MaskDecoder
from .decoder_cache import ImageSideCache

__all__ = ["Sam2", "Sam2ImageCache"]


@dataclass
class Sam2ImageCache:
    """Per-image decoder inputs besides the embedding.

    Attributes:
        high_res_features: (1, C/8, 4h, 4w) and (1, C/4, 2h, 2w) projected encoder levels.
        side: the transformer's prompt-independent work, for prompts without a mask input.
        high_res_blocks: the same levels in pixel-block order (``Sam2MaskDecoder.high_res_blocks``)
            for the fast upscaling; None for a model without high-resolution features.
    """

    high_res_features: tuple[Tensor, Tensor]
    side: ImageSideCache | None
    high_res_blocks: tuple[Tensor, Tensor] | None = None


class Sam2(nn.Module):
    """SAM 2 / SAM 2.1 image model.

    Attributes:
        config: the architecture.
        mask_threshold: logit threshold of binary masks (0.0).
        low_res_logit_limit: the predictor clamps the low-res logits it returns to +-32.
        image_format: channel order the model expects ("RGB").
    """

    pixel_mean: Tensor
    pixel_std: Tensor
    image_format: str = "RGB"

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = Sam2ImageEncoder(config.image_encoder)
        self.sam_prompt_encoder = PromptEncoder(config.prompt_encoder)
        self.sam_mask_decoder = Sam2MaskDecoder(
            config.mask_decoder,
            use_high_res_features=config.use_high_res_features,
            iou_prediction_use_sigmoid=config.iou_prediction_use_sigmoid,
            pred_obj_scores=config.pred_obj_scores,
            pred_obj_scores_mlp=config.pred_obj_scores_mlp,
            dynamic_multimask_via_stability=config.dynamic_multimask_via_stability,
            stability_delta=config.dynamic_multimask_stability_delta,
            stability_thresh=config.dynamic_multimask_stability_thresh,
        )
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, config.image_encoder.d_model))
        self.mask_threshold = config.mask_threshold
        self.low_res_logit_limit: float | None = config.low_res_logit_limit
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    # The names the predictor (and SAM 1 code) use for the heads.
    @property
    def prompt_encoder(self) -> PromptEncoder:
        """The prompt encoder (checkpoint name ``sam_prompt_encoder``)."""
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> Sam2MaskDecoder:
        """The mask decoder (checkpoint name ``sam_mask_decoder``)."""
        return self.sam_mask_decoder

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the mask decoder."""
        return self.sam_mask_decoder.iou_token.weight.dtype

    @property
    def encoder_dtype(self) -> torch.dtype:
        """Floating dtype of the image encoder."""
        return next(self.image_encoder.parameters()).dtype

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.config.img_size

    def image_transform(self) -> ResizeSquare:
        """How user images and prompts map into the model's square: stretched, not padded."""
        return ResizeSquare(self.img_size)

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) resized pixel values (0..255) -> (B, 3, S, S) normalized."""
        mean = self.pixel_mean.float()
        std = self.pixel_std.float()
        return normalize_and_pad(images, mean, std, self.img_size).to(self.encoder_dtype)

    @torch.inference_mode()
    def encode_image_levels(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """(B, 3, S, S) preprocessed images -> embedding and projected high-res levels.

        Returns:
            (B, C, S/16, S/16) image embedding (with ``no_mem_embed``), and
            ((B, C/8, S/4, S/4), (B, C/4, S/8, S/8)) for the decoder's upscaling, all in the
            decoder dtype.
        """
        levels = self.image_encoder(images.to(device=self.device, dtype=self.encoder_dtype))
        dtype = self.dtype
        embedding = levels[-1].to(dtype)  # (B, C, h, w)
        if self.config.directly_add_no_mem_embed:
            embedding = embedding + self.no_mem_embed.to(dtype).view(1, -1, 1, 1)
        if not self.config.use_high_res_features:
            return embedding, ()
        high_res = self.sam_mask_decoder.project_high_res(levels[0].to(dtype), levels[1].to(dtype))
        return embedding, high_res

    @torch.inference_mode()
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) preprocessed images -> (B, C, S/16, S/16) image embeddings."""
        return self.encode_image_levels(images)[0]

    def encode_for_decoding(self, images: Tensor) -> tuple[Tensor, Sam2ImageCache]:
        """:meth:`encode_image_levels` and :meth:`decoder_cache` of one (1, 3, S, S) preprocessed image.

        Returns:
            the (1, C, S/16, S/16) embedding and the per-image state :meth:`decode` takes as ``cache``.
        """
        embeddings, high_res = self.encode_image_levels(images)
        with torch.inference_mode():
            return embeddings, self.decoder_cache(embeddings, *high_res)

    def decoder_cache(self, image_embeddings: Tensor, *high_res_features: Tensor) -> Sam2ImageCache:
        """Per-image decoder inputs for a (1, C, h, w) embedding and its high-res levels."""
        if self.config.use_high_res_features:
            c, (h, w) = image_embeddings.shape[1], image_embeddings.shape[-2:]
            expected = [(1, c // 8, 4 * h, 4 * w), (1, c // 4, 2 * h, 2 * w)]
            found = [tuple(f.shape) for f in high_res_features]
            if found != expected:
                raise ValueError(f"high-resolution features have shapes {found}, expected {expected}")
        pe = self.sam_prompt_encoder
        h, w = pe.image_embedding_size
        dtype = self.dtype
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w).to(dtype)
        side = self.sam_mask_decoder.prepare_image(image_embeddings.to(dtype), pe.get_dense_pe().to(dtype), no_mask)
        levels = tuple(f.to(dtype) for f in high_res_features)
        blocks = self.sam_mask_decoder.high_res_blocks(*levels) if self.config.use_high_res_features else None
        return Sam2ImageCache(high_res_features=levels, side=side, high_res_blocks=blocks)  # type: ignore[arg-type]

    def point_prompts(
        self, point_coords: Tensor | None, point_labels: Tensor | None, boxes: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """Points and boxes as one point prompt: box corners (labels 2, 3) first, then the points.

        Args:
            point_coords: (B, N, 2) or None.
            point_labels: (B, N) or None.
            boxes: (B, 4) x0, y0, x1, y1 or None.

        Returns:
            ((B, 2 + N, 2) coords, (B, 2 + N) labels), or None without points and boxes.
        """
        coords: list[Tensor] = []
        labels: list[Tensor] = []
        if boxes is not None:
            corners = boxes.to(device=self.device, dtype=torch.float32).reshape(-1, 2, 2)  # (B, 2, 2)
            corner_labels = torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], device=self.device)
            coords.append(corners)
            labels.append(corner_labels.expand(corners.shape[0], 2))
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            coords.append(point_coords.to(device=self.device, dtype=torch.float32))
            labels.append(point_labels.to(self.device))
        if not coords:
            return None
        if len(coords) == 2 and coords[0].shape[0] != coords[1].shape[0]:
            batch = max(coords[0].shape[0], coords[1].shape[0])
            coords = [c.expand(batch, -1, -1) for c in coords]
            labels = [lab.expand(batch, -1) for lab in labels]
        return torch.cat(coords, dim=1), torch.cat([lab.to(labels[-1].dtype) for lab in labels], dim=1)

    def decode_with_object_scores(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        *,
        multimask_output: bool = True,
        cache: Sam2ImageCache | None = None,
        high_res_features: tuple[Tensor, ...] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`decode`, plus the (B, 1) object-score logits (> 0: an object is present)."""
        blocks = None
        if high_res_features is None:
            if cache is None and self.config.use_high_res_features:
                raise ValueError("decode: give cache= (from decoder_cache) or high_res_features=")
            high_res_features = cache.high_res_features if cache is not None else None
            blocks = cache.high_res_blocks if cache is not None else None
        dtype = self.dtype
        points = self.point_prompts(point_coords, point_labels, boxes)
        if mask_input is not None:
            mask_input = mask_input.to(device=self.device, dtype=torch.float32)
        sparse, dense = self.sam_prompt_encoder(points, None, mask_input)
        side = cache.side if cache is not None and mask_input is None else None
        levels = None if high_res_features is None else tuple(f.to(dtype) for f in high_res_features)
        low_res, iou, object_scores = self.sam_mask_decoder(
            image_embeddings.to(dtype),
            self.sam_prompt_encoder.get_dense_pe().to(dtype),
            sparse.to(dtype),
            dense.to(dtype),
            multimask_output,
            levels,  # type: ignore[arg-type]
            cache=side,
            high_res_blocks=blocks,
        )
        return low_res.float(), iou.float(), object_scores.float()

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        *,
        multimask_output: bool = True,
        cache: Sam2ImageCache | None = None,
        high_res_features: tuple[Tensor, ...] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Prompts (in the model's square pixel space) -> low-res logits and IoU.

        Args:
            image_embeddings: (1 or B, C, h, w).
            point_coords: (B, N, 2) float or None.
            point_labels: (B, N) int or None.
            boxes: (B, 4) float or None.
            mask_input: (B, 1, 4h, 4w) logits or None.
            multimask_output: 3 masks per prompt instead of 1 (with the stability fallback).
            cache: :meth:`decoder_cache` of this image (its high-res levels are needed).
            high_res_features: the high-res levels, when no cache is given.

        Returns:
            low-res logits (B, M, 4h, 4w) and IoU predictions (B, M), in float32.
        """
        low_res, iou, _ = self.decode_with_object_scores(
            image_embeddings,
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output=multimask_output,
            cache=cache,
            high_res_features=high_res_features,
        )
        return low_res, iou
