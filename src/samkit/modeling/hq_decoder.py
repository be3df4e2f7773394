"""HQ-SAM's mask decoder: SAM's decoder plus a high-quality output token.

HQ-SAM (Ke et al., NeurIPS 2023) keeps SAM's decoder weights and adds:

* ``hf_token``: one more output token, decoded by the two-way transformer with the others;
* ``hf_mlp``: its hypernetwork MLP (like ``output_hypernetworks_mlps``);
* HQ features, once per image: ``embedding_encoder`` (upscales the image embedding 4x) plus
  ``compress_vit_feat`` (upscales the encoder's early features 4x), both to C/8 channels;
* ``embedding_maskfeature``: two 3x3 convolutions on the upscaled SAM image tokens, added to the
  HQ features; the HQ token's mask is its hypernetwork weights times that sum.

Outputs follow the official decoder: one mask per prompt. Its SAM part is token 0
(``multimask_output=False``) or the one of tokens 1..3 with the highest predicted IoU
(``multimask_output=True``); the returned logits are that mask plus the HQ mask, or the HQ mask
alone with ``hq_token_only=True``. The IoU prediction is always the SAM token's.

Parameter names equal the keys of the official ``sam_hq_vit_*.pth`` checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import MaskDecoderConfig
from .common import MLP, LayerNorm2d
from .mask_decoder import MaskDecoder
from .. import batching
from .decoder_cache import ImageSideCache

__all__ = ["HQMaskDecoder"]


class HQMaskDecoder(MaskDecoder):
    """SAM's mask decoder with HQ-SAM's output token and feature fusion.

    Args:
        config: the SAM decoder's architecture (the HQ parts follow from its width).
        early_feature_dim: channels of the encoder's early features (ViT width, or 160 for TinyViT).
    """

    def __init__(self, config: MaskDecoderConfig, early_feature_dim: int) -> None:
        super().__init__(config)
        dim = config.transformer_dim
        self.hf_token = nn.Embedding(1, dim)
        self.hf_mlp = MLP(dim, dim, dim // 8, 3)
        self.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(early_feature_dim, dim, kernel_size=2, stride=2),
            LayerNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, kernel_size=3, stride=1, padding=1),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, kernel_size=3, stride=1, padding=1),
        )

    def hq_features(self, image_embeddings: Tensor, early_features: Tensor) -> Tensor:
        """The per-image HQ features.

        Args:
            image_embeddings: (B, C, h, w) final image embeddings.
            early_features: (B, C_early, h, w) early encoder features (channels first).

        Returns:
            (B, C/8, 4h, 4w).
        """
        return self.embedding_encoder(image_embeddings) + self.compress_vit_feat(early_features)

    def forward(  # type: ignore[override]
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None,
        multimask_output: bool,
        *,
        hq_features: Tensor,
        hq_token_only: bool = False,
        cache: ImageSideCache | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode one HQ mask per prompt for a batch of B prompts on one image.

        Args:
            image_embeddings: (1 or B, C, h, w).
            image_pe: (1, C, h, w).
            sparse_prompt_embeddings: (B, T, C).
            dense_prompt_embeddings: (B or 1, C, h, w); ignored when ``cache`` is given.
            multimask_output: take the SAM mask among tokens 1..3 (highest predicted IoU)
                instead of token 0.
            hq_features: (1, C/8, 4h, 4w) from :meth:`hq_features`.
            hq_token_only: return the HQ token's mask alone instead of SAM's mask plus it.
            cache: :meth:`prepare_image` result for prompts without a mask input.

        Returns:
            mask logits (B, 1, 4h, 4w) and the SAM token's IoU prediction (B, 1).
        """
        b = sparse_prompt_embeddings.shape[0]
        chunk = batching.batching_for(sparse_prompt_embeddings.device).prompt_chunk  # per device, one place
        if b > chunk and not torch.jit.is_tracing():
            # A few prompts at a time, as MaskDecoder.forward does: each prompt's upscaled
            # features are (C/8 + C/4, 4h, 4w), ~24 MB at C = 256.
            def part(x: Tensor | None, s: int) -> Tensor | None:
                """Rows s.. of a per-prompt (B, ...) tensor; a shared (1, ...) one as it is."""
                return x[s : s + chunk] if x is not None and x.shape[0] == b else x

            parts = [
                self.forward(
                    part(image_embeddings, s),  # type: ignore[arg-type]
                    image_pe,
                    sparse_prompt_embeddings[s : s + chunk],
                    part(dense_prompt_embeddings, s),
                    multimask_output,
                    hq_features=hq_features,
                    hq_token_only=hq_token_only,
                    cache=cache,
                )
                for s in range(0, b, chunk)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        dtype = sparse_prompt_embeddings.dtype
        output_tokens = torch.cat(
            [self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight], dim=0
        ).to(dtype)  # (1+M+1, C)
        n_out = output_tokens.shape[0]
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1
        )  # (B, 1+M+1+T, C)
        if cache is not None:
            hs, image_tokens = self.transformer(None, None, tokens, cache=cache, keep_tokens=n_out)
        else:
            assert dense_prompt_embeddings is not None
            src = image_embeddings + dense_prompt_embeddings  # (B, C, h, w)
            if src.shape[0] != b:
                src = src.expand(b, -1, -1, -1)
            hs, image_tokens = self.transformer(src, image_pe, tokens, keep_tokens=n_out)
        assert isinstance(image_tokens, Tensor)  # materialized: factored=False
        h, w = image_pe.shape[-2:]
        c = image_tokens.shape[-1]
        iou_all = self.iou_prediction_head(hs[:, 0, :])  # (B, M)
        image = image_tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)
        upscaled_sam = self.output_upscaling(image)  # (B, C/8, 4h, 4w)
        upscaled_hq = self.embedding_maskfeature(upscaled_sam) + hq_features.to(dtype)  # (B, C/8, 4h, 4w)
        hq_weights = self.hf_mlp(hs[:, n_out - 1, :])  # (B, C/8)
        masks = torch.bmm(hq_weights.unsqueeze(1), upscaled_hq.flatten(2))  # (B, 1, 16hw)

        if multimask_output:
            # torch.max, as the official decoder: the same index on ties.
            iou_pred, best = torch.max(iou_all[:, 1:], dim=1)  # (B,), (B,) in 0..M-2
        else:
            iou_pred, best = iou_all[:, 0], torch.zeros(b, dtype=torch.long, device=iou_all.device)
        if not hq_token_only:
            candidates = self.hypernetwork_weights(hs, self.output_token_slice(multimask_output))  # (B, M', C/8)
            sam_weights = candidates[torch.arange(b, device=candidates.device), best]  # (B, C/8)
            masks = masks + torch.bmm(sam_weights.unsqueeze(1), upscaled_sam.flatten(2))  # (B, 1, 16hw)
        return masks.view(b, 1, 4 * h, 4 * w), iou_pred.unsqueeze(1)  # (B, 1, 4h, 4w), (B, 1)
