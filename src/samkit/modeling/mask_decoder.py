"""Mask decoder: two-way transformer, upscaling, hypernetwork MLPs and IoU head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import MaskDecoderConfig
from .common import MLP, LayerNorm2d
from .transformer import ImageSideCache, TwoWayTransformer

__all__ = ["MaskDecoder"]


class MaskDecoder(nn.Module):
    """Predicts mask logits (256x256) and IoU estimates from image and prompt embeddings."""

    def __init__(self, config: MaskDecoderConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.transformer_dim
        self.transformer_dim = dim
        self.transformer = TwoWayTransformer(
            depth=config.transformer_depth,
            embedding_dim=dim,
            num_heads=config.transformer_num_heads,
            mlp_dim=config.transformer_mlp_dim,
            attention_downsample_rate=config.attention_downsample_rate,
        )
        self.num_multimask_outputs = config.num_multimask_outputs
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth)

    def output_token_slice(self, multimask_output: bool) -> slice:
        """Which mask tokens are returned: 1..3 for multimask, else token 0."""
        return slice(1, None) if multimask_output else slice(0, 1)

    def prepare_image(self, image_embeddings: Tensor, image_pe: Tensor, no_mask_dense: Tensor) -> ImageSideCache:
        """Prompt-independent work for one image (valid for prompts without a mask input).

        Args:
            image_embeddings: (1, C, h, w).
            image_pe: (1, C, h, w).
            no_mask_dense: (1, C, h, w) dense embedding used when no mask is given.
        """
        return self.transformer.prepare_image(image_embeddings + no_mask_dense, image_pe)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None,
        multimask_output: bool,
        *,
        cache: ImageSideCache | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode masks for a batch of B prompts on one image (or one image per prompt).

        Args:
            image_embeddings: (1 or B, C, h, w).
            image_pe: (1, C, h, w).
            sparse_prompt_embeddings: (B, T, C).
            dense_prompt_embeddings: (B or 1, C, h, w); ignored when ``cache`` is given.
            multimask_output: return the 3 ambiguity masks instead of the single one.
            cache: :meth:`prepare_image` result for prompts without a mask input.

        Returns:
            mask logits (B, M, 4h, 4w) and IoU predictions (B, M), M = 3 or 1.
        """
        b = sparse_prompt_embeddings.shape[0]
        dtype = sparse_prompt_embeddings.dtype
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).to(dtype)  # (1+M, C)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)  # (B, 1+M+T, C)

        if cache is not None:
            hs, src = self.transformer(None, None, tokens, cache=cache)
        else:
            assert dense_prompt_embeddings is not None
            src = image_embeddings + dense_prompt_embeddings  # (B, C, h, w)
            if src.shape[0] != b:
                src = src.expand(b, -1, -1, -1)
            hs, src = self.transformer(src, image_pe, tokens)
        h, w = image_pe.shape[-2:]
        iou_token_out = hs[:, 0, :]  # (B, C)
        selected = self.output_token_slice(multimask_output)
        token_ids = range(self.num_mask_tokens)[selected]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]  # (B, 4, C)

        src = src.transpose(1, 2).reshape(b, self.transformer_dim, h, w)  # (B, C, h, w)
        upscaled = self.output_upscaling(src)  # (B, C/8, 4h, 4w)
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in token_ids], dim=1
        )  # (B, M, C/8)
        _, c8, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c8, uh * uw)).view(b, -1, uh, uw)  # (B, M, 4h, 4w)
        iou_pred = self.iou_prediction_head(iou_token_out)[:, selected]  # (B, M)
        return masks, iou_pred
