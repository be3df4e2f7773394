"""Mask decoder: two-way transformer, upscaling, hypernetwork MLPs and IoU head."""

from __future__ import annotations

import functools

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

    def upscaling_matrices(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The two transposed convolutions of the upscaling network as per-token matrices.

        Both have kernel 2 and stride 2, so no output pixel mixes two input pixels: each is a
        (C_in -> 4 * C_out) product per token, with output columns in (a, b, channel) order for
        the sub-pixel (a, b).

        Returns:
            w1 (C, 4 * C/4), b1 (4 * C/4,), w2 (C/4, 4 * C/8), b2 (4 * C/8,).
        """
        up1, _, _, up2, _ = self.output_upscaling
        c = up1.in_channels
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(c, 4 * up1.out_channels)  # (C, a1*b1*C/4)
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, 4 * up2.out_channels)  # (C/4, a2*b2*C/8)
        return w1, up1.bias.repeat(4), w2, up2.bias.repeat(4)

    def masks_from_image_tokens(
        self, image_tokens: Tensor, hyper_in: Tensor, grid: tuple[int, int], tile: int = 1024
    ) -> Tensor:
        """Upscale image tokens and apply the hypernetwork weights.

        The upscaling network runs as two per-token matrix products (see
        :meth:`upscaling_matrices`) on ``tile`` tokens at a time, so that its intermediates
        stay in the CPU cache, and its features are never stored: each tile goes straight to
        mask logits. Logits come out in sub-pixel order (token, a1, b1, a2, b2), pixel
        ``(4i + 2a1 + a2, 4j + 2b1 + b2)`` of token ``i*w + j``, and are unshuffled once at
        the end, on the (much smaller) masks.

        Args:
            image_tokens: (B, N, C) transformer image tokens, N = h * w.
            hyper_in: (B, M, C/8) from :meth:`hypernetwork_weights`.
            grid: (h, w) of the image embedding.
            tile: tokens upscaled at a time.

        Returns:
            (B, M, 4h, 4w) mask logits.
        """
        h, w = grid
        b, m, c8 = hyper_in.shape
        n = image_tokens.shape[1]
        _, norm, act1, _, act2 = self.output_upscaling
        c4 = norm.normalized_shape[0]
        w1, b1, w2, b2 = self.upscaling_matrices()
        exact_gelu = all(isinstance(a, nn.GELU) and a.approximate == "none" for a in (act1, act2))
        logits = hyper_in.new_empty((b, m, 16 * n))  # (B, M, 16N) in sub-pixel order
        for i in range(b):
            for s in range(0, n, tile):
                e = min(s + tile, n)
                x = torch.addmm(b1, image_tokens[i, s:e], w1).view(4 * (e - s), c4)  # (4t, C/4)
                x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
                x = torch.ops.aten.gelu_(x) if exact_gelu else act1(x)
                x = torch.addmm(b2, x, w2)  # (4t, 4*C/8)
                x = torch.ops.aten.gelu_(x) if exact_gelu else act2(x)
                torch.mm(hyper_in[i], x.view(16 * (e - s), c8).t(), out=logits[i, :, 16 * s : 16 * e])  # (M, 16t)
        return logits[:, :, _unshuffle_index(h, w, logits.device)].view(b, m, 4 * h, 4 * w)  # (B, M, 4h, 4w)


@functools.lru_cache(maxsize=8)
def _unshuffle_index(h: int, w: int, device: torch.device) -> Tensor:
    """Gather index from sub-pixel order (i, j, a1, b1, a2, b2) to raster order of the 4h x 4w mask."""
    order = torch.arange(16 * h * w, device=device).view(h, w, 2, 2, 2, 2)  # (i, j, a1, b1, a2, b2)
    return order.permute(0, 2, 4, 1, 3, 5).reshape(-1)  # (i, a1, a2, j, b1, b2)
