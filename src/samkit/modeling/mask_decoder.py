"""Mask decoder: two-way transformer, upscaling, hypernetwork MLPs and IoU head."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import batching
from ..config import MaskDecoderConfig
from .common import MLP, LayerNorm2d
from . import decoder_factored
from .decoder_cache import ImageSideCache
from .decoder_factored import NormedImage, image_tokens_of
from .transformer import TwoWayTransformer

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
        cache = self.transformer.prepare_image(image_embeddings + no_mask_dense, image_pe)
        layers = self.transformer.layers
        if cache.second_t2i_gained_keys_by_head is not None and len(layers) == 2:
            # K W12 of the factored upscaling (identity 5 of decoder_factored), per image.
            w1 = self.upscaling_matrices()[0]  # (C, 4 * C/4)
            gains = layers[0].norm4.weight * layers[1].norm4.weight  # (C,) g1 g2
            cache.image_times_w12 = cache.image[0] @ (gains[:, None] * w1)  # (N, 4 * C/4)
        return cache

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None,
        multimask_output: bool,
        *,
        cache: ImageSideCache | None = None,
        reference: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Decode masks for a batch of B prompts on one image (or one image per prompt).

        Args:
            image_embeddings: (1 or B, C, h, w).
            image_pe: (1, C, h, w).
            sparse_prompt_embeddings: (B, T, C).
            dense_prompt_embeddings: (B or 1, C, h, w); ignored when ``cache`` is given.
            multimask_output: return the 3 ambiguity masks instead of the single one.
            cache: :meth:`prepare_image` result for prompts without a mask input.
            reference: decode with :meth:`predict_masks`, the plain path of the official code
                (``cache`` is then ignored; for tests and the ONNX export).

        Returns:
            mask logits (B, M, 4h, 4w) and IoU predictions (B, M), M = 3 or 1.
        """
        if reference:
            if dense_prompt_embeddings is None:
                raise ValueError("reference=True needs dense_prompt_embeddings (it reads no cache)")
            masks, iou_pred = self.predict_masks(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
            )  # (B, M, 4h, 4w), (B, M)
            selected = self.output_token_slice(multimask_output)
            return masks[:, selected], iou_pred[:, selected]
        b = sparse_prompt_embeddings.shape[0]
        chunk = batching.batching_for(sparse_prompt_embeddings.device).prompt_chunk
        if b > chunk and not torch.jit.is_tracing():
            # End to end a few prompts at a time (the only place prompts are chunked): each
            # prompt's image tokens (and their factors) are ~4-8 MB, upscaled while they are in
            # the CPU cache and never concatenated. How many: samkit.batching, per device.
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
                    cache=cache,
                )
                for s in range(0, b, chunk)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        tokens = self.prompt_tokens(sparse_prompt_embeddings)  # (B, 1+M+T, C)
        src: Tensor | NormedImage
        if cache is not None:
            hs, src = self.transformer(
                None, None, tokens, cache=cache, keep_tokens=1 + self.num_mask_tokens, factored=True
            )
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
        masks = self.masks_from_image_tokens(src, hyper_in, (h, w), cache=cache)  # (B, M, 4h, 4w)
        iou_pred = self.iou_prediction_head(iou_token_out)[:, selected]  # (B, M)
        return masks, iou_pred

    def prompt_tokens(self, sparse_prompt_embeddings: Tensor) -> Tensor:
        """The transformer's input tokens: the IoU token, the mask tokens, then the prompt's.

        Args:
            sparse_prompt_embeddings: (B, T, C).

        Returns:
            (B, 1+M+T, C) in the dtype of the prompt embeddings.
        """
        b = sparse_prompt_embeddings.shape[0]
        dtype = sparse_prompt_embeddings.dtype
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).to(dtype)  # (1+M, C)
        return torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)  # (B, 1+M+T, C)

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The reference path, as the official decoder computes it: every output token's mask.

        The two-way transformer on materialized tokens, the transposed-convolution upscaling,
        then each mask token's hypernetwork weights times the upscaled channels.

        Args:
            image_embeddings: (1 or B, C, h, w).
            image_pe: (1, C, h, w).
            sparse_prompt_embeddings: (B, T, C).
            dense_prompt_embeddings: (1 or B, C, h, w).

        Returns:
            mask logits (B, M, 4h, 4w) and IoU predictions (B, M) of all M mask tokens
            (M = :attr:`num_mask_tokens`: the single-mask output, then the multimask outputs).
        """
        b = sparse_prompt_embeddings.shape[0]
        tokens = self.prompt_tokens(sparse_prompt_embeddings)  # (B, 1+M+T, C)
        src = image_embeddings + dense_prompt_embeddings  # (B or 1, C, h, w)
        src = src.expand(b, -1, -1, -1)  # (B, C, h, w)
        hs, image_tokens = self.transformer(src, image_pe, tokens, reference=True)  # (B, 1+M+T, C), (B, hw, C)
        iou_token_out = hs[:, 0, :]  # (B, C)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]  # (B, M, C)
        c, h, w = src.shape[1:]
        upscaled = self.output_upscaling(image_tokens.transpose(1, 2).reshape(b, c, h, w))  # (B, C/8, 4h, 4w)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, M, C/8)
        c8, uh, uw = upscaled.shape[1:]
        masks = (hyper_in @ upscaled.reshape(b, c8, uh * uw)).reshape(b, -1, uh, uw)  # (B, M, 4h, 4w)
        return masks, self.iou_prediction_head(iou_token_out)  # (B, M, 4h, 4w), (B, M)

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
        self,
        image_tokens: Tensor | NormedImage,
        hyper_in: Tensor,
        grid: tuple[int, int],
        tile: int | None = None,
        cache: ImageSideCache | None = None,
    ) -> Tensor:
        """Upscale image tokens and apply the hypernetwork weights.

        The upscaling network runs as two per-token matrix products (see
        :meth:`upscaling_matrices`) on ``tile`` tokens at a time, so that its intermediates
        stay in the CPU cache, and its features are never stored: each tile goes straight to
        mask logits. Logits come out in sub-pixel order (token, a1, b1, a2, b2), pixel
        ``(4i + 2a1 + a2, 4j + 2b1 + b2)`` of token ``i*w + j``, and are unshuffled once at
        the end, on the (much smaller) masks.

        Image tokens given as a two-level :class:`NormedImage` (the cached transformer path),
        with ``cache.image_times_w12``, skip the (N, C) x (C, 4 * C/4) first product: see
        :func:`~samkit.modeling.decoder_factored.factored_first_product`.

        Args:
            image_tokens: (B, N, C) transformer image tokens, N = h * w, or their factors.
            hyper_in: (B, M, C/8) from :meth:`hypernetwork_weights`.
            grid: (h, w) of the image embedding.
            tile: tokens upscaled at a time (default: ``samkit.batching`` for the device).
            cache: the image's :class:`ImageSideCache`, for factored image tokens.

        Returns:
            (B, M, 4h, 4w) mask logits.
        """
        h, w = grid
        b, m, c8 = hyper_in.shape
        if tile is None:
            tile = batching.batching_for(hyper_in.device).upscale_tile
        _, norm, act1, _, act2 = self.output_upscaling
        c4 = norm.normalized_shape[0]
        w1, b1, w2, b2 = self.upscaling_matrices()
        exact_gelu = all(isinstance(a, nn.GELU) and a.approximate == "none" for a in (act1, act2))
        factored = None
        image_times_w12 = cache.image_times_w12 if cache is not None else None
        if isinstance(image_tokens, NormedImage) and image_tokens.base is not None and image_times_w12 is not None:
            factored = decoder_factored.factored_first_product(image_tokens, image_times_w12, w1, b1)
        tokens = image_tokens_of(image_tokens)  # (B, N, C)
        n = tokens.shape[1]
        logits = hyper_in.new_empty((b, m, 16 * n))  # (B, M, 16N) in sub-pixel order
        for i in range(b):
            for s in range(0, n, tile):
                e = min(s + tile, n)
                if factored is not None:
                    left, right, scale, const = factored
                    x = torch.addmm(const, left[i, s:e], right[i])  # (t, 4 * C/4)
                    x.addcmul_(image_times_w12[s:e], scale[i, s:e])  # type: ignore[index]
                else:
                    x = torch.addmm(b1, tokens[i, s:e], w1)  # (t, 4 * C/4)
                x = x.view(4 * (e - s), c4)  # (4t, C/4)
                x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
                x = torch.ops.aten.gelu_(x) if exact_gelu else act1(x)
                x = torch.addmm(b2, x, w2)  # (4t, 4*C/8)
                x = torch.ops.aten.gelu_(x) if exact_gelu else act2(x)
                torch.mm(hyper_in[i], x.view(16 * (e - s), c8).t(), out=logits[i, :, 16 * s : 16 * e])  # (M, 16t)
        return logits[:, :, _unshuffle_index(h, w, logits.device)].view(b, m, 4 * h, 4 * w)  # (B, M, 4h, 4w)


@functools.lru_cache(maxsize=8)
def _unshuffle_index(h: int, w: int, device: torch.device) -> Tensor:
    """Gather index from sub-pixel order (i, j, a1, b1, a2, b2) to raster order of the 4h x 4w mask.

    Built outside inference mode (it is cached, and may be used under autograd later).
    """
    with torch.inference_mode(False):
        order = torch.arange(16 * h * w, device=device).view(h, w, 2, 2, 2, 2)  # (i, j, a1, b1, a2, b2)
        return order.permute(0, 2, 4, 1, 3, 5).reshape(-1)  # (i, a1, a2, j, b1, b2)
