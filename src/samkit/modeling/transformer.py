"""Two-way transformer of the mask decoder, shaped like the official modules.

Prompt tokens attend to the image embedding and the image embedding attends back to the tokens,
``depth`` times, then a final token-to-image attention. :meth:`TwoWayTransformer.reference_forward`
is that computation on materialized tokens, as the official code runs it. The default
:meth:`TwoWayTransformer.forward` computes the same by the fast path of
:mod:`~samkit.modeling.decoder_cache` (a per-image cache of the prompt-independent projections,
projections folded into the few prompt tokens, factored LayerNorms; the identities are derived
in :mod:`~samkit.modeling.decoder_folding` and :mod:`~samkit.modeling.decoder_factored`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLPBlock
from .decoder_cache import ImageSideCache, fast_two_way, prepare_image_side
from .decoder_factored import NormedImage

__all__ = ["DecoderAttention", "TwoWayAttentionBlock", "TwoWayTransformer"]


class DecoderAttention(nn.Module):
    """Multi-head attention with an optional down-projection of the internal width.

    Parameter names match the checkpoint: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"internal dim {self.internal_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, nh, N, D/nh)."""
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, nh, N, hd)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (Bq, Nq, C), k/v (Bk, Nk, C) -> (B, Nq, C); batch 1 on either side broadcasts."""
        qh = self.split_heads(self.q_proj(q))  # (Bq, nh, Nq, hd)
        kh = self.split_heads(self.k_proj(k))  # (Bk, nh, Nk, hd)
        vh = self.split_heads(self.v_proj(v))  # (Bk, nh, Nk, hd)
        batch = max(qh.shape[0], kh.shape[0])
        qh = qh.expand(batch, -1, -1, -1)
        kh, vh = kh.expand(batch, -1, -1, -1), vh.expand(batch, -1, -1, -1)
        # softmax(q k^T / sqrt(hd)) v, fused
        out = F.scaled_dot_product_attention(qh, kh, vh)  # (B, nh, Nq, hd)
        b, nh, n, hd = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, nh * hd))  # (B, Nq, C)


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, token->image, MLP on tokens, image->token."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = DecoderAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = DecoderAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """One two-way layer.

        Args:
            queries: (B, T, C) tokens.
            keys: (B or 1, N, C) image tokens.
            query_pe: (B, T, C) token positional encoding (the original prompt tokens).
            key_pe: (1, N, C) image positional encoding.

        Returns:
            updated queries (B, T, C) and keys (B, N, C).
        """
        queries = self.token_self_attention(queries, query_pe)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.token_mlp(self.norm2(queries + self.cross_attn_token_to_image(q, k, keys)))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys

    def token_self_attention(self, queries: Tensor, query_pe: Tensor) -> Tensor:
        """Self-attention of the (B, T, C) tokens with residual and norm1."""
        if self.skip_first_layer_pe:
            return self.norm1(self.self_attn(queries, queries, queries))
        q = queries + query_pe
        return self.norm1(queries + self.self_attn(q, q, queries))

    def token_mlp(self, queries: Tensor) -> Tensor:
        """MLP on the (B, T, C) tokens with residual and norm3."""
        return self.norm3(queries + self.mlp(queries))


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final token->image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = DecoderAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def prepare_image(self, image_embedding: Tensor, image_pe: Tensor) -> ImageSideCache:
        """The prompt-independent image-side projections (see :func:`~samkit.modeling.decoder_cache.prepare_image_side`).

        Args:
            image_embedding: (1, C, h, w) image embedding with the dense prompt embedding added.
            image_pe: (1, C, h, w) positional encoding.
        """
        return prepare_image_side(self, image_embedding, image_pe)

    def forward(
        self,
        image_embedding: Tensor | None,
        image_pe: Tensor | None,
        point_embedding: Tensor,
        cache: ImageSideCache | None = None,
        keep_tokens: int | None = None,
        factored: bool = False,
        *,
        reference: bool = False,
    ) -> tuple[Tensor, Tensor | NormedImage]:
        """Run the transformer: the fast path by default, :meth:`reference_forward` with ``reference``.

        Args:
            image_embedding: (B or 1, C, h, w), unused when ``cache`` is given.
            image_pe: (1, C, h, w), unused when ``cache`` is given.
            point_embedding: (B, T, C) tokens.
            cache: from :meth:`prepare_image`.
            keep_tokens: return only the first K output tokens (fast path only).
            factored: image tokens possibly as a :class:`NormedImage` (fast path only; see
                :func:`~samkit.modeling.decoder_cache.fast_two_way`).
            reference: the plain path of the official code (``cache``, ``keep_tokens`` and
                ``factored`` must be left unset).

        Returns:
            tokens (B, K, C) (K = T by default) and image tokens (B, h*w, C), or with
            ``factored`` possibly their :class:`NormedImage`.
        """
        if reference:
            if cache is not None or keep_tokens is not None or factored:
                raise ValueError("reference=True runs the plain path: no cache, keep_tokens or factored")
            if image_embedding is None or image_pe is None:
                raise ValueError("reference=True needs image_embedding and image_pe")
            return self.reference_forward(image_embedding, image_pe, point_embedding)
        return fast_two_way(self, image_embedding, image_pe, point_embedding, cache, keep_tokens, factored)

    def reference_forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """The official computation, every attention on materialized, projected tokens.

        Args:
            image_embedding: (B, C, h, w) image embedding (dense prompt embedding added).
            image_pe: (1, C, h, w) positional encoding.
            point_embedding: (B, T, C) tokens.

        Returns:
            tokens (B, T, C) and image tokens (B, h*w, C).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)  # (B, N, C)
        key_pe = image_pe.flatten(2).transpose(1, 2)  # (1, N, C)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
