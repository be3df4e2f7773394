"""Mask decoder: two-way transformer, upscaling, hypernetwork MLPs and IoU head."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import batching
from ..config import MaskDecoderConfig
from .common import MLP, LayerNorm2d
from .transformer import ImageSideCache, NormedImage, TwoWayTransformer, image_tokens_of

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
        if cache.second_t2i_k is not None and len(layers) == 2:
            # The upscaling's first product of the fixed image side, for factored image tokens.
            w1 = self.upscaling_matrices()[0]  # (C, 4 * C/4)
            gains = layers[0].norm4.weight * layers[1].norm4.weight  # (C,)
            cache.upscale_keys = cache.keys[0] @ (gains[:, None] * w1)  # (N, 4 * C/4)
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
        dtype = sparse_prompt_embeddings.dtype
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).to(dtype)  # (1+M, C)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)  # (B, 1+M+T, C)

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
        with ``cache.upscale_keys``, skip the (N, C) x (C, 4 * C/4) first product: see
        :func:`_factored_first_product`.

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
        if isinstance(image_tokens, NormedImage) and image_tokens.base is not None:
            if cache is not None and cache.upscale_keys is not None:
                factored = _factored_first_product(image_tokens, cache.upscale_keys, w1, b1)
        tokens = image_tokens_of(image_tokens)  # (B, N, C)
        n = tokens.shape[1]
        logits = hyper_in.new_empty((b, m, 16 * n))  # (B, M, 16N) in sub-pixel order
        for i in range(b):
            for s in range(0, n, tile):
                e = min(s + tile, n)
                if factored is not None:
                    left, right, scale, const = factored
                    x = torch.addmm(const, left[i, s:e], right[i])  # (t, 4 * C/4)
                    x.addcmul_(cache.upscale_keys[s:e], scale[i, s:e])  # type: ignore[union-attr]
                else:
                    x = torch.addmm(b1, tokens[i, s:e], w1)  # (t, 4 * C/4)
                x = x.view(4 * (e - s), c4)  # (4t, C/4)
                x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
                x = torch.ops.aten.gelu_(x) if exact_gelu else act1(x)
                x = torch.addmm(b2, x, w2)  # (4t, 4*C/8)
                x = torch.ops.aten.gelu_(x) if exact_gelu else act2(x)
                torch.mm(hyper_in[i], x.view(16 * (e - s), c8).t(), out=logits[i, :, 16 * s : 16 * e])  # (M, 16t)
        return logits[:, :, _unshuffle_index(h, w, logits.device)].view(b, m, 4 * h, 4 * w)  # (B, M, 4h, 4w)


def _factored_first_product(
    image: NormedImage, upscale_keys: Tensor, w1: Tensor, b1: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The upscaling's first product ``image.materialized @ w1 + b1`` as a low-rank sum.

    The image tokens are X2 = LN2(X1 + P2^T M2) with X1 = LN1(K + P1^T M1) (K the cache's fixed
    image side; each LN a per-token standardization with mean mu, inverse std s, then gain g
    and bias beta). With G = diag(g), W2 = G2 w1 and W12 = G1 W2, expanding both norms gives

        X2 w1 + b1 = s1 s2 * (K W12) + L @ R + (beta2 w1 + b1)

    with L = [s1 s2 P1^T | s2 P2^T | -s1 s2 mu1 | -s2 mu2 | s2] (N, R1 + R2 + 3) and
    R = [M1 W12; M2 W2; 1^T W12; 1^T W2; beta1 W2] (R1 + R2 + 3, 4 * C/4). K W12 is per image
    (``upscale_keys``), so per prompt the (N, C) x (C, 4 * C/4) product becomes
    (N, R1 + R2 + 3) x (R1 + R2 + 3, 4 * C/4), R = 56 for a point prompt, and a scaled add.
    L is built as L^T, in the (B, R, N) layout the factors already have (no transposing
    copy), and returned as a transposed view, which the matrix product reads as it is.

    Returns:
        left (B, N, R') (a transposed view), right (B, R', 4 * C/4), scale (B, N, 1) = s1 s2,
        const (4 * C/4,).
    """
    first = image.base
    assert first is not None
    w2g = image.gain[:, None] * w1  # (C, 4C/4)
    w12g = first.gain[:, None] * w2g  # (C, 4C/4)
    s2 = image.rstd  # (B, 1, N)
    s12 = first.rstd * s2  # (B, 1, N)
    left_t = torch.cat(
        [
            first.probs * s12,  # (B, R1, N)
            image.probs * s2,  # (B, R2, N)
            -first.mean * s12,  # (B, 1, N)
            -image.mean * s2,  # (B, 1, N)
            s2,  # (B, 1, N)
        ],
        dim=1,
    )  # (B, R1 + R2 + 3, N)
    left = left_t.transpose(1, 2)  # (B, N, R1 + R2 + 3)
    b = left.shape[0]
    fixed = torch.stack([w12g.sum(0), w2g.sum(0), first.bias @ w2g])  # (3, 4C/4)
    right = torch.cat(
        [first.mixed @ w12g, image.mixed @ w2g, fixed.expand(b, -1, -1)], dim=1
    )  # (B, R1 + R2 + 3, 4C/4)
    return left, right, s12.transpose(1, 2), image.bias @ w1 + b1


@functools.lru_cache(maxsize=8)
def _unshuffle_index(h: int, w: int, device: torch.device) -> Tensor:
    """Gather index from sub-pixel order (i, j, a1, b1, a2, b2) to raster order of the 4h x 4w mask.

    Built outside inference mode (it is cached, and may be used under autograd later).
    """
    with torch.inference_mode(False):
        order = torch.arange(16 * h * w, device=device).view(h, w, 2, 2, 2, 2)  # (i, j, a1, b1, a2, b2)
        return order.permute(0, 2, 4, 1, 3, 5).reshape(-1)  # (i, a1, a2, j, b1, b2)
