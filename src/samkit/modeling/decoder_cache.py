"""The two-way transformer's fast path: per-image cache, folded and factored layers.

:func:`fast_two_way` computes what ``TwoWayTransformer.reference_forward`` computes, choosing per
attention the cheapest exact form of :mod:`~samkit.modeling.decoder_folding` and
:mod:`~samkit.modeling.decoder_factored` (where the identities are derived):

* with an :class:`ImageSideCache` (prompts without a mask input), the first layer reads the
  cached projections of the fixed image side; the second layer reads the first layer's output
  in factored form (a :class:`~samkit.modeling.decoder_factored.NormedImage`) and, when it is the
  last, hands its own output factored to the mask decoder's upscaling; later layers and the
  final attention fold their projections into the tokens and read the positional encoding's
  cached projections;
* without a cache, each attention folds its projections into the tokens;
* either way, an attention with too many prompt tokens for folding to pay
  (:func:`~samkit.modeling.decoder_folding.low_rank_pays`) projects its image side as the
  reference does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..memory import tensor_nbytes
from . import decoder_factored as factored
from . import decoder_folding as folding
from .decoder_factored import NormedImage, image_tokens_of
from .decoder_folding import heads_first, heads_transposed, low_rank_pays

if TYPE_CHECKING:
    from .transformer import TwoWayAttentionBlock, TwoWayTransformer

__all__ = ["ImageSideCache", "fast_two_way", "prepare_image_side"]


@dataclass
class ImageSideCache:
    """Prompt-independent decoder work for one image (prompts without a mask input).

    Attributes:
        image: (1, N, C) flattened image embedding plus the no-mask dense embedding (K).
        pe: (1, N, C) flattened dense positional encoding (E).
        first_t2i_keys_by_head: (nh, hd, N) first token->image ``k_proj(K + E)``.
        first_t2i_values_by_head: (nh, N, hd) first token->image ``v_proj(K)``.
        first_i2t_queries_by_head: (nh, hd, N) first image->token ``q_proj(K + E)``.
        pe_t2i_keys_by_head: per later layer, then the final attention: (nh, hd, N) token->image
            key projection of E, without bias.
        pe_i2t_queries_by_head: per later layer: (nh, hd, N) image->token query projection of
            E, without bias.
        second_t2i_gained_keys_by_head, second_t2i_gained_values_by_head,
        second_i2t_gained_queries_by_head: for the second layer, which reads the first layer's
            output factored: (nh, hd, N) / (nh, N, hd) / (nh, hd, N) projections (without bias)
            of ``K * g1`` (g1 the first layer's norm4 weight); None for a depth-1 transformer.
        image_times_w12: (N, 4 * C/4) ``K W12`` of the factored upscaling (set by
            ``MaskDecoder.prepare_image`` for a depth-2 transformer), else None.
    """

    image: Tensor
    pe: Tensor
    first_t2i_keys_by_head: Tensor
    first_t2i_values_by_head: Tensor
    first_i2t_queries_by_head: Tensor
    pe_t2i_keys_by_head: list[Tensor]
    pe_i2t_queries_by_head: list[Tensor]
    second_t2i_gained_keys_by_head: Tensor | None = None
    second_t2i_gained_values_by_head: Tensor | None = None
    second_i2t_gained_queries_by_head: Tensor | None = None
    image_times_w12: Tensor | None = None

    def nbytes(self) -> int:
        """Bytes held by all of this cache's tensors, the per-layer lists included (each storage once)."""
        return tensor_nbytes(self)


def prepare_image_side(transformer: TwoWayTransformer, image_embedding: Tensor, image_pe: Tensor) -> ImageSideCache:
    """Precompute the prompt-independent projections of the image side.

    Args:
        transformer: the two-way transformer.
        image_embedding: (1, C, h, w) image embedding with the no-mask dense embedding added.
        image_pe: (1, C, h, w) positional encoding.
    """
    image = image_embedding.flatten(2).transpose(1, 2).contiguous()  # (1, N, C)
    pe = image_pe.flatten(2).transpose(1, 2).contiguous()  # (1, N, C)
    layers = transformer.layers
    if layers:
        t2i, i2t = layers[0].cross_attn_token_to_image, layers[0].cross_attn_image_to_token
        image_pe_sum = image + pe  # (1, N, C)
        first_t2i_keys = heads_transposed(t2i.k_proj(image_pe_sum), t2i.num_heads)  # (nh, hd, N)
        first_t2i_values = heads_first(t2i.v_proj(image), t2i.num_heads)  # (nh, N, hd)
        first_i2t_queries = heads_transposed(i2t.q_proj(image_pe_sum), i2t.num_heads)  # (nh, hd, N)
    else:
        first_t2i_keys = first_t2i_values = first_i2t_queries = image.new_zeros(0)
    pe_t2i_keys: list[Tensor] = []
    pe_i2t_queries: list[Tensor] = []
    for layer in layers[1:]:
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        pe_t2i_keys.append(heads_transposed(F.linear(pe, t2i.k_proj.weight), t2i.num_heads))
        pe_i2t_queries.append(heads_transposed(F.linear(pe, i2t.q_proj.weight), i2t.num_heads))
    final = transformer.final_attn_token_to_image
    pe_t2i_keys.append(heads_transposed(F.linear(pe, final.k_proj.weight), final.num_heads))
    second: dict[str, Tensor] = {}
    if len(layers) > 1:
        gained = image * layers[0].norm4.weight  # (1, N, C) K * g1
        t2i, i2t = layers[1].cross_attn_token_to_image, layers[1].cross_attn_image_to_token
        second["second_t2i_gained_keys_by_head"] = heads_transposed(F.linear(gained, t2i.k_proj.weight), t2i.num_heads)
        second["second_t2i_gained_values_by_head"] = heads_first(F.linear(gained, t2i.v_proj.weight), t2i.num_heads)
        second["second_i2t_gained_queries_by_head"] = heads_transposed(F.linear(gained, i2t.q_proj.weight), i2t.num_heads)
    return ImageSideCache(
        **second,
        image=image,
        pe=pe,
        first_t2i_keys_by_head=first_t2i_keys,
        first_t2i_values_by_head=first_t2i_values,
        first_i2t_queries_by_head=first_i2t_queries,
        pe_t2i_keys_by_head=pe_t2i_keys,
        pe_i2t_queries_by_head=pe_i2t_queries,
    )


def fast_two_way(
    transformer: TwoWayTransformer,
    image_embedding: Tensor | None,
    image_pe: Tensor | None,
    point_embedding: Tensor,
    cache: ImageSideCache | None = None,
    keep_tokens: int | None = None,
    factored: bool = False,
) -> tuple[Tensor, Tensor | NormedImage]:
    """The transformer's output by the cheapest exact path (see the module docstring).

    Args:
        transformer: the two-way transformer.
        image_embedding: (B or 1, C, h, w); unused with ``cache``.
        image_pe: (1, C, h, w); unused with ``cache``.
        point_embedding: (B, T, C) tokens.
        cache: :func:`prepare_image_side` of the image.
        keep_tokens: return only the first K output tokens (the decoder reads only its IoU and
            mask tokens); the final attention, whose queries are independent, runs for those only.
        factored: return the image tokens as a :class:`NormedImage` when the cached path made
            them in factored form (the mask decoder's upscaling reads the factors).

    Returns:
        tokens (B, K, C) (K = T by default) and image tokens (B, h*w, C), or with ``factored``
        possibly their :class:`NormedImage`.

    All B prompts run together: callers with many prompts pass a few at a time (the prompt
    chunk of ``samkit.batching``, as ``MaskDecoder.forward`` does), so that each prompt's
    ~4 MB of (N, C) intermediates stays in the CPU cache.
    """
    queries = point_embedding
    image: Tensor | NormedImage
    if cache is not None:
        image = cache.image  # (1, N, C)
        last = len(transformer.layers) - 1
        for index, layer in enumerate(transformer.layers):
            queries = layer.token_self_attention(queries, point_embedding)
            queries, image = _cached_cross_attention(layer, queries, image, point_embedding, cache, index, index == last)
        pe = cache.pe
    else:
        assert image_embedding is not None and image_pe is not None
        image = image_embedding.flatten(2).transpose(1, 2)  # (B, N, C)
        pe = image_pe.flatten(2).transpose(1, 2)  # (1, N, C)
        for layer in transformer.layers:
            queries = layer.token_self_attention(queries, point_embedding)
            queries, image = _folded_cross_attention(layer, queries, image, point_embedding, pe)
    tokens = image_tokens_of(image)  # (B, N, C)
    if keep_tokens is not None:
        queries, point_embedding = queries[:, :keep_tokens], point_embedding[:, :keep_tokens]  # (B, K, C)
    final = transformer.final_attn_token_to_image
    q = queries + point_embedding
    if not low_rank_pays(final, q.shape[1]):
        attn = final(q, tokens + pe, tokens)
    elif cache is not None:
        attn = folding.tokens_to_image_with_pe(final, q, tokens, cache.pe_t2i_keys_by_head[-1])
    else:
        attn = folding.tokens_to_image(final, q, tokens + pe, tokens)
    queries = transformer.norm_final_attn(queries + attn)
    if isinstance(image, NormedImage) and factored:
        return queries, image
    if tokens.shape[0] != queries.shape[0]:  # depth 0 with a shared image: give every prompt its copy
        tokens = tokens.expand(queries.shape[0], -1, -1)
    return queries, tokens


def _folded_cross_attention(
    layer: TwoWayAttentionBlock, queries: Tensor, image: Tensor, query_pe: Tensor, pe: Tensor
) -> tuple[Tensor, Tensor]:
    """A layer's two cross-attentions after its token self-attention, folded when that pays.

    Args:
        queries: (B, T, C) tokens after the self-attention.
        image: (B or 1, N, C) image tokens.
        query_pe: (B, T, C) the original prompt tokens.
        pe: (1, N, C) image positional encoding.

    Returns:
        updated tokens (B, T, C) and image tokens (B, N, C).
    """
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    folds = low_rank_pays(t2i, queries.shape[1])
    image_with_pe = image + pe  # (B or 1, N, C)
    q = queries + query_pe
    attn = folding.tokens_to_image(t2i, q, image_with_pe, image) if folds else t2i(q, image_with_pe, image)
    queries = layer.token_mlp(layer.norm2(queries + attn))
    q = queries + query_pe
    attn = folding.image_to_tokens(i2t, image_with_pe, q, queries) if folds else i2t(image_with_pe, q, queries)
    return queries, layer.norm4(image + attn)


def _cached_cross_attention(
    layer: TwoWayAttentionBlock,
    queries: Tensor,
    image: Tensor | NormedImage,
    query_pe: Tensor,
    cache: ImageSideCache,
    index: int,
    last: bool,
) -> tuple[Tensor, Tensor | NormedImage]:
    """A layer's two cross-attentions after its token self-attention, from the image's cache.

    Args:
        queries: (B, T, C) tokens after the self-attention.
        image: ``cache.image`` for the first layer; the first layer's output for the second
            (a :class:`NormedImage` when the cache has the second layer's projections); else
            (B, N, C) image tokens.
        query_pe: (B, T, C) the original prompt tokens.
        cache: the image's cache.
        index: the layer's position in the stack.
        last: this is the last layer.

    Returns:
        updated tokens (B, T, C) and image tokens: (B, N, C), or a :class:`NormedImage` from
        the first layer when the second can read it, and from the second when it is the last
        (the upscaling reads the factors).
    """
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    normed = image if isinstance(image, NormedImage) else None
    tokens = image_tokens_of(image)
    q = queries + query_pe
    if index == 0:
        attn = folding.tokens_to_projected_image(t2i, q, cache.first_t2i_keys_by_head, cache.first_t2i_values_by_head)
    elif not low_rank_pays(t2i, queries.shape[1]):  # many prompt tokens: project the image side
        return _folded_cross_attention(layer, queries, tokens, query_pe, cache.pe)
    elif normed is not None:
        assert cache.second_t2i_gained_keys_by_head is not None and cache.second_t2i_gained_values_by_head is not None
        attn = factored.tokens_to_normed_image(
            t2i, q, normed, cache.second_t2i_gained_keys_by_head, cache.second_t2i_gained_values_by_head,
            cache.pe_t2i_keys_by_head[0],
        )
    else:
        attn = folding.tokens_to_image_with_pe(t2i, q, tokens, cache.pe_t2i_keys_by_head[index - 1])
    queries = layer.token_mlp(layer.norm2(queries + attn))

    q = queries + query_pe
    if index == 0:
        pre_norm, probs, mixed = folding.projected_image_to_tokens_residual(
            i2t, tokens, q, queries, cache.first_i2t_queries_by_head
        )
        if cache.second_t2i_gained_keys_by_head is None:
            return queries, layer.norm4(pre_norm)
        return queries, _normed(layer, pre_norm, probs, mixed, base=None)
    if normed is not None:
        assert cache.second_i2t_gained_queries_by_head is not None
        # The last layer's residual goes into the first layer's output tensor, which nothing
        # reads afterwards (the upscaling reads only its factors).
        pre_norm, probs, mixed = factored.normed_image_to_tokens_residual(
            i2t, normed, q, queries, cache.second_i2t_gained_queries_by_head, cache.pe_i2t_queries_by_head[0],
            in_place=last,
        )
        if last:
            return queries, _normed(layer, pre_norm, probs, mixed, base=dataclasses.replace(normed, materialized=None))
        return queries, layer.norm4(pre_norm)
    pre_norm = folding.image_with_pe_to_tokens_residual(i2t, tokens, q, queries, cache.pe_i2t_queries_by_head[index - 1])
    return queries, layer.norm4(pre_norm)


def _normed(layer: TwoWayAttentionBlock, pre_norm: Tensor, probs: Tensor, mixed: Tensor, base: NormedImage | None) -> NormedImage:
    """``layer.norm4`` of ``pre_norm`` = K + P^T M (B, N, C), kept with its factors and statistics.

    The statistics are kept in the compute dtype: ``native_layer_norm`` returns them in float32
    for half-precision input on CUDA (in the input dtype on CPU), and every factored product
    that reads them must not mix dtypes.
    """
    norm = layer.norm4
    out, mean, rstd = torch.native_layer_norm(pre_norm, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return NormedImage(
        materialized=out,
        probs=probs,
        mixed=mixed,
        mean=mean.to(out.dtype).transpose(1, 2),  # (B, 1, N)
        rstd=rstd.to(out.dtype).transpose(1, 2),  # (B, 1, N)
        gain=norm.weight,
        bias=norm.bias,
        base=base,
    )
