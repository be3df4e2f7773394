"""Mask decoder: two-way transformer, upscaling, hypernetwork MLPs and IoU head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
            hs, src = self.transformer(None, None, tokens, cache=cache, keep_tokens=1 + self.num_mask_tokens)
        else:
            assert dense_prompt_embeddings is not None
            src = image_embeddings + dense_prompt_embeddings  # (B, C, h, w)
            if src.shape[0] != b:
                src = src.expand(b, -1, -1, -1)
            hs, src = self.transformer(src, image_pe, tokens, keep_tokens=1 + self.num_mask_tokens)
        h, w = image_pe.shape[-2:]
        iou_token_out = hs[:, 0, :]  # (B, C)
        selected = self.output_token_slice(multimask_output)
        hyper_in = self.hypernetwork_weights(hs, selected)  # (B, M, C/8)
        masks = self.masks_from_image_tokens(src, hyper_in, (h, w))  # (B, M, 4h, 4w)
        iou_pred = self.iou_prediction_head(iou_token_out)[:, selected]  # (B, M)
        return masks, iou_pred

    def hypernetwork_weights(self, tokens: Tensor, selected: slice) -> Tensor:
        """Per-mask weights over the upscaled channels.

        Args:
            tokens: (B, T, C) transformer output tokens (IoU token first, then the mask tokens).
            selected: which mask tokens (see :meth:`output_token_slice`).

        Returns:
            (B, M, C/8), M = number of selected mask tokens.
        """
        token_ids = range(self.num_mask_tokens)[selected]
        return torch.stack(
            [self.output_hypernetworks_mlps[i](tokens[:, 1 + i, :]) for i in token_ids], dim=1
        )  # (B, M, C/8)

    def upscale_tokens(self, image_tokens: Tensor) -> Tensor:
        """The output upscaling network, computed as two per-token matrix products.

        Both transposed convolutions have kernel 2 and stride 2, so no output pixel mixes
        two input pixels: each is a (C_in -> 4 * C_out) product per token. Keeping the result
        in sub-pixel order (token, a1, b1, a2, b2) avoids the pixel shuffles and layout
        copies of the convolution form; :meth:`masks_from_image_tokens` unshuffles once, on
        the (much smaller) masks.

        Args:
            image_tokens: (B, N, C) image tokens from the transformer (N = h * w).

        Returns:
            (B, N * 16, C/8) upscaled features; row ``n*16 + a1*8 + b1*4 + a2*2 + b2`` is pixel
            ``(4i + 2a1 + a2, 4j + 2b1 + b2)`` of token ``n = i*w + j``.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        b, n, c = image_tokens.shape
        c4, c8 = up1.out_channels, up2.out_channels
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c4)  # (C, a1*b1*C/4)
        x = torch.addmm(up1.bias.repeat(4), image_tokens.reshape(b * n, c), w1)  # (B*N, 4*C/4)
        x = F.layer_norm(x.view(b * n * 4, c4), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        x = act1(x)  # (B*N*4, C/4)
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(c4, 4 * c8)  # (C/4, a2*b2*C/8)
        x = act2(torch.addmm(up2.bias.repeat(4), x, w2))  # (B*N*4, 4*C/8)
        return x.view(b, n * 16, c8)  # (B, N*16, C/8)

    def masks_from_image_tokens(
        self, image_tokens: Tensor, hyper_in: Tensor, grid: tuple[int, int], chunk: int = 2
    ) -> Tensor:
        """Upscale image tokens and apply the hypernetwork weights.

        Args:
            image_tokens: (B, N, C) transformer image tokens, N = h * w.
            hyper_in: (B, M, C/8) from :meth:`hypernetwork_weights`.
            grid: (h, w) of the image embedding.
            chunk: prompts upscaled at a time (bounds the (chunk, 16N, C/8) intermediate).

        Returns:
            (B, M, 4h, 4w) mask logits.
        """
        h, w = grid
        b, m = hyper_in.shape[:2]
        parts = []
        for start in range(0, b, chunk):
            upscaled = self.upscale_tokens(image_tokens[start : start + chunk])  # (b', 16N, C/8)
            parts.append(hyper_in[start : start + chunk] @ upscaled.transpose(1, 2))  # (b', M, 16N)
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)  # (B, M, 16N)
        logits = logits.view(b, m, h, w, 2, 2, 2, 2)  # (B, M, i, j, a1, b1, a2, b2)
        return logits.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, m, 4 * h, 4 * w)  # (B, M, 4h, 4w)
