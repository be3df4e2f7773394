"""Folded and cached forms of the mask decoder's attentions (the fast path, part 1).

Each function here computes exactly what a :class:`~samkit.modeling.transformer.DecoderAttention`
computes on materialized tokens (``attention(q, k, v)``, the reference), in a cheaper order;
``tests/model/test_decoder_fast_paths.py`` checks each against the reference. The factored forms
that read image tokens through their LayerNorm factors are in
:mod:`~samkit.modeling.decoder_factored`. The identities, derived once (row vectors; head h of an
attention with ``nh`` heads of width ``hd``, internal width ``D = nh * hd``, model width C;
``W_h`` the (hd, C) rows of a projection's weight that belong to head h, ``b_h`` its bias; T
prompt tokens, N = h*w image tokens):

**1. Folding a projection into the tokens.** Tokens attending to image tokens X (N, C):
query ``q_h`` (hd,) = the token's scaled ``q_proj`` for head h; the keys are
``X W_h^T + b_h`` (N, hd), so the scores are

    q_h (X W_h^T + b_h)^T = (q_h W_h) X^T + q_h . b_h.

``q_h W_h`` is the *folded query* (C,), and ``q_h . b_h`` is one constant per query row, which
the softmax over the N image tokens ignores. With probabilities ``p`` (N,) summing to 1, the
values give ``p (X V_h^T + c_h) = (p X) V_h^T + c_h``: mix X first (one (C,) row per head and
token), project per head after (:func:`unfold_heads`). The image side is never projected: an
(nh*T, C) x (C, N) product replaces the (N, C) x (C, D) projection, cheaper when
``nh * T < D`` (:func:`low_rank_pays`). Image tokens attending to the tokens fold the other
way: the image query ``X_n W_h^T + b_h`` against token key ``k_h`` scores
``X_n . (k_h W_h) + b_h . k_h``, a folded key (C,) plus an offset per (head, token) that stays
(the softmax now runs over the T tokens). The output ``out_proj`` of the mixed values is
``sum_h sum_t p_ht (v_ht O_h^T) + o`` (``O_h`` the (C, hd) columns of ``out_proj.weight``): the
*mixed values* ``m_ht = v_ht O_h^T + o / nh`` (nh*T rows of C) times the probabilities, where
``o / nh`` per row adds up to the bias ``o`` once, each head's probabilities summing to 1.
:func:`fold_heads` is the one per-head product behind every folded query, key, offset and
mixed value.

**2. Caching the prompt-independent image side.** Without a mask input, the first layer's image
side ``K`` (image embedding plus the no-mask embedding) and the positional encoding ``E`` are
fixed per image: the first layer's projections of ``K + E`` and ``K`` are computed once
(:class:`~samkit.modeling.decoder_cache.ImageSideCache`), split by head. In later layers the image
tokens X depend on the prompt but ``E`` does not: ``(X + E) W^T = X W^T + E W^T``, the second
term cached (without bias), the first folded as in 1.

Names: ``*_by_head`` tensors are projections split by head, (nh, hd, N) for keys and queries
(the right operand of a per-head score product) and (nh, N, hd) for values; ``pe_*`` are
projections of the positional encoding alone, without bias; ``image_*`` / ``tokens_*`` the
image-side / token-side inputs of an attention (before any projection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .transformer import DecoderAttention

__all__ = [
    "fold_heads",
    "heads_first",
    "heads_transposed",
    "image_to_tokens",
    "image_with_pe_to_tokens_residual",
    "low_rank_pays",
    "projected_image_to_tokens_residual",
    "tokens_to_image",
    "tokens_to_image_with_pe",
    "tokens_to_projected_image",
    "unfold_heads",
]


def low_rank_pays(attention: DecoderAttention, num_tokens: int) -> bool:
    """Whether folding (identity 1) is cheaper than projecting the image side for ``num_tokens``."""
    return attention.num_heads * num_tokens < attention.internal_dim


def fold_heads(x: Tensor, weight: Tensor, num_heads: int) -> Tensor:
    """Per-head products of token rows with a projection's per-head rows (identity 1).

    Row ``h*T + t`` of the result is ``x[:, t, head h] @ weight[head h]``: the folded query or
    key ``q_h W_h`` for a (D, C) ``weight``, the mixed value ``v_h O_h^T`` for ``out_proj.weight.t()``,
    the offset ``k_h . b_h`` for a (D, 1) bias.

    Args:
        x: (B, T, D) token projections, D = nh * hd.
        weight: (D, C).
        num_heads: nh.

    Returns:
        (B, nh*T, C).
    """
    b, t, d = x.shape
    hd = d // num_heads
    per_head = torch.einsum("bthd,hdc->bhtc", x.view(b, t, num_heads, hd), weight.view(num_heads, hd, -1))  # (B, nh, T, C)
    return per_head.reshape(b, num_heads * t, weight.shape[-1])  # (B, nh*T, C)


def unfold_heads(mixed: Tensor, weight: Tensor) -> Tensor:
    """Head h's mixed image rows through head h's rows of a (D, C) projection: ``(p X) V_h^T``.

    Args:
        mixed: (B, nh, T, C) per-head mixtures of image tokens.
        weight: (D, C) the value projection's weight.

    Returns:
        (B, T, D), heads concatenated.
    """
    b, nh, t, c = mixed.shape
    per_head = torch.einsum("bhtc,hdc->bthd", mixed, weight.view(nh, -1, c))  # (B, T, nh, hd)
    return per_head.reshape(b, t, -1)  # (B, T, D)


def scaled_queries(attention: DecoderAttention, tokens: Tensor) -> Tensor:
    """``q_proj(tokens)`` (B, T, C) -> (B, T, D), times the softmax scale ``hd**-0.5``."""
    hd = attention.internal_dim // attention.num_heads
    return attention.q_proj(tokens) * hd**-0.5  # (B, T, D)


def scaled_keys(attention: DecoderAttention, tokens: Tensor) -> Tensor:
    """``k_proj(tokens)`` (B, T, C) -> (B, T, D), times the softmax scale ``hd**-0.5``."""
    hd = attention.internal_dim // attention.num_heads
    return attention.k_proj(tokens) * hd**-0.5  # (B, T, D)


# ---------------------------------------------------------------- token -> image


def tokens_to_image(attention: DecoderAttention, tokens: Tensor, image_keys: Tensor, image_values: Tensor) -> Tensor:
    """``attention(tokens, image_keys, image_values)`` with the image side never projected (identity 1).

    Args:
        tokens: (B, T, C) queries.
        image_keys: (B or 1, N, C) keys.
        image_values: (B or 1, N, C) values.

    Returns:
        (B, T, C).
    """
    b, t, _ = tokens.shape
    nh = attention.num_heads
    folded_queries = fold_heads(scaled_queries(attention, tokens), attention.k_proj.weight, nh)  # (B, nh*T, C)
    probs = matmul_transposed(folded_queries, image_keys).softmax(dim=-1)  # (B, nh*T, N)
    mixed = (probs @ image_values).view(b, nh, t, -1)  # (B, nh, T, C)
    return attention.out_proj(unfold_heads(mixed, attention.v_proj.weight) + attention.v_proj.bias)  # (B, T, C)


def tokens_to_projected_image(
    attention: DecoderAttention, tokens: Tensor, keys_by_head: Tensor, values_by_head: Tensor
) -> Tensor:
    """``attention(tokens, K, V)`` with the image side's projections given (identity 2).

    Args:
        tokens: (B, T, C) queries.
        keys_by_head: (nh, hd, N) ``k_proj(K)``, bias included.
        values_by_head: (nh, N, hd) ``v_proj(V)``, bias included.

    Returns:
        (B, T, C).
    """
    b, t, _ = tokens.shape
    queries = tokens_by_head(scaled_queries(attention, tokens), attention.num_heads)  # (nh, B*T, hd)
    probs = torch.bmm(queries, keys_by_head).softmax(dim=-1)  # (nh, B*T, N)
    out = torch.bmm(probs, values_by_head)  # (nh, B*T, hd)
    return attention.out_proj(out.transpose(0, 1).reshape(b, t, attention.internal_dim))  # (B, T, C)


def tokens_to_image_with_pe(attention: DecoderAttention, tokens: Tensor, image: Tensor, pe_keys_by_head: Tensor) -> Tensor:
    """``attention(tokens, image + pe, image)`` with ``pe``'s key projection given (identities 1, 2).

    ``image`` is never projected and ``image + pe`` never formed.

    Args:
        tokens: (B, T, C) queries.
        image: (B or 1, N, C) image tokens.
        pe_keys_by_head: (nh, hd, N) ``k_proj`` of the positional encoding, without bias.

    Returns:
        (B, T, C).
    """
    b, t, c = tokens.shape
    nh = attention.num_heads
    n = pe_keys_by_head.shape[-1]
    queries = scaled_queries(attention, tokens)  # (B, T, D)
    scores = per_head_scores(queries, pe_keys_by_head)  # (B, nh*T, N)
    add_matmul_transposed_(scores, fold_heads(queries, attention.k_proj.weight, nh), image)  # (B, nh*T, N)
    probs = scores.softmax(dim=-1)
    if image.shape[0] == 1:
        mixed = (probs.view(b * nh * t, n) @ image[0]).view(b, nh, t, c)  # (B, nh, T, C)
    else:
        mixed = torch.bmm(probs, image).view(b, nh, t, c)  # (B, nh, T, C)
    return attention.out_proj(unfold_heads(mixed, attention.v_proj.weight) + attention.v_proj.bias)  # (B, T, C)


# ---------------------------------------------------------------- image -> token


def image_to_tokens(attention: DecoderAttention, image_queries: Tensor, tokens_keys: Tensor, tokens_values: Tensor) -> Tensor:
    """``attention(image_queries, tokens_keys, tokens_values)`` with no projection of the image side (identity 1).

    Args:
        image_queries: (B or 1, N, C) queries.
        tokens_keys: (B, T, C) keys.
        tokens_values: (B, T, C) values.

    Returns:
        (B, N, C).
    """
    b, t, c = tokens_keys.shape
    nh = attention.num_heads
    keys = scaled_keys(attention, tokens_keys)  # (B, T, D)
    scores = matmul_transposed(fold_heads(keys, attention.q_proj.weight, nh), image_queries)  # (B, nh*T, N)
    scores.add_(fold_heads(keys, attention.q_proj.bias[:, None], nh))  # + offset (B, nh*T, 1)
    return attend_tokens_residual(attention, None, scores, tokens_values)[0]  # (B, N, C)


def projected_image_to_tokens_residual(
    attention: DecoderAttention, image: Tensor, tokens_keys: Tensor, tokens_values: Tensor, queries_by_head: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``image + attention(Q, tokens_keys, tokens_values)`` with the image queries' projection given.

    Args:
        image: (B or 1, N, C) the residual.
        tokens_keys: (B, T, C) keys.
        tokens_values: (B, T, C) values.
        queries_by_head: (nh, hd, N) ``q_proj(Q)``, bias included.

    Returns:
        (B, N, C) the residual plus the attention, and its factors: the (B, nh*T, N)
        probabilities P and (B, nh*T, C) mixed values M (``out_proj`` bias included) of identity 1.
    """
    scores = per_head_scores(scaled_keys(attention, tokens_keys), queries_by_head)  # (B, nh*T, N)
    return attend_tokens_residual(attention, image, scores, tokens_values)


def image_with_pe_to_tokens_residual(
    attention: DecoderAttention, image: Tensor, tokens_keys: Tensor, tokens_values: Tensor, pe_queries_by_head: Tensor
) -> Tensor:
    """``image + attention(image + pe, tokens_keys, tokens_values)`` with ``pe``'s query projection given.

    Args:
        image: (B or 1, N, C) image tokens (the residual and the queries' image part).
        tokens_keys: (B, T, C) keys.
        tokens_values: (B, T, C) values.
        pe_queries_by_head: (nh, hd, N) ``q_proj`` of the positional encoding, without bias.

    Returns:
        (B, N, C).
    """
    nh = attention.num_heads
    keys = scaled_keys(attention, tokens_keys)  # (B, T, D)
    scores = per_head_scores(keys, pe_queries_by_head)  # (B, nh*T, N)
    scores.add_(fold_heads(keys, attention.q_proj.bias[:, None], nh))  # + offset (B, nh*T, 1)
    add_matmul_transposed_(scores, fold_heads(keys, attention.q_proj.weight, nh), image)  # (B, nh*T, N)
    return attend_tokens_residual(attention, image, scores, tokens_values)[0]


def attend_tokens_residual(
    attention: DecoderAttention, image: Tensor | None, scores: Tensor, tokens_values: Tensor, *, in_place: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """The image->token tail: (B, nh*T, N) scores -> ``image + P^T M`` (identity 1).

    Args:
        image: (B or 1, N, C) the residual; None for the attention alone.
        scores: (B, nh*T, N) scores of head h, token t in row h*T + t (offsets included).
        tokens_values: (B, T, C) values.
        in_place: add into ``image`` (a (B, N, C) tensor of its own).

    Returns:
        (B, N, C) ``image + P^T M``, (B, nh*T, N) probabilities P, (B, nh*T, C) mixed values M.
    """
    b, t, c = tokens_values.shape
    nh = attention.num_heads
    n = scores.shape[-1]
    # Softmax over the T tokens of each head, along a strided axis of long contiguous rows.
    probs = scores.view(b, nh, t, n).softmax(dim=2).view(b, nh * t, n)  # (B, nh*T, N)
    values = attention.v_proj(tokens_values)  # (B, T, D)
    mixed = fold_heads(values, attention.out_proj.weight.t(), nh)  # (B, nh*T, C)
    mixed = mixed + attention.out_proj.bias / nh  # adds up to the bias once per image token
    if image is None:
        return torch.bmm(probs.transpose(1, 2), mixed), probs, mixed  # (B, N, C), ...
    if in_place:
        return image.baddbmm_(probs.transpose(1, 2), mixed), probs, mixed  # (B, N, C), ...
    return torch.baddbmm(image, probs.transpose(1, 2), mixed), probs, mixed  # (B, N, C), ...


# ---------------------------------------------------------------- per-head products and layouts


def per_head_scores(x: Tensor, side_by_head: Tensor) -> Tensor:
    """Token projections x (B, T, D) against a per-head side (nh, hd, N) -> (B, nh*T, N)."""
    b, t, _ = x.shape
    nh, _, n = side_by_head.shape
    scores = torch.bmm(tokens_by_head(x, nh), side_by_head)  # (nh, B*T, N)
    return scores.view(nh, b, t, n).transpose(0, 1).reshape(b, nh * t, n)  # (B, nh*T, N)


def per_head_values(probs: Tensor, values_by_head: Tensor) -> Tensor:
    """Weights (B, nh*T, N) over per-head values (nh, N, hd) -> (B, T, nh, hd)."""
    nh, n, hd = values_by_head.shape
    b = probs.shape[0]
    t = probs.shape[1] // nh
    per_head = probs.view(b, nh, t, n).transpose(0, 1).reshape(nh, b * t, n)  # (nh, B*T, N)
    return torch.bmm(per_head, values_by_head).view(nh, b, t, hd).permute(1, 2, 0, 3)  # (B, T, nh, hd)


def add_matmul_transposed_(out: Tensor, a: Tensor, x: Tensor) -> Tensor:
    """out (B, R, N) += a (B, R, C) times x^T for x (B or 1, N, C), in place.

    The product is computed as x a^T, (N, R) with the long N side as the GEMM's rows (~30%
    faster here than (R, N) with a transposed x), and added through a transposed view.
    """
    b, r, n = out.shape
    if x.shape[0] == 1:
        prod = x[0] @ a.reshape(b * r, -1).transpose(0, 1)  # (N, B*R)
        out.view(b * r, n).add_(prod.transpose(0, 1))
    else:
        out.add_(torch.bmm(x, a.transpose(1, 2)).transpose(1, 2))  # (B, N, R) -> (B, R, N)
    return out


def matmul_transposed(a: Tensor, x: Tensor) -> Tensor:
    """a (B, R, C) times x^T for x (B or 1, N, C) -> (B, R, N).

    With a shared x (batch 1) the B products become one (B*R, C) x (C, N) GEMM.
    """
    if x.shape[0] == 1:
        return a @ x[0].transpose(0, 1)  # (B, R, N)
    return a @ x.transpose(1, 2)  # (B, R, N)


def heads_transposed(x: Tensor, num_heads: int) -> Tensor:
    """(1, N, D) projection -> (nh, hd, N), contiguous: keys or queries by head."""
    _, n, d = x.shape
    return x[0].view(n, num_heads, d // num_heads).permute(1, 2, 0).contiguous()  # (nh, hd, N)


def heads_first(x: Tensor, num_heads: int) -> Tensor:
    """(1, N, D) projection -> (nh, N, hd), contiguous: values by head."""
    _, n, d = x.shape
    return x[0].view(n, num_heads, d // num_heads).transpose(0, 1).contiguous()  # (nh, N, hd)


def tokens_by_head(x: Tensor, num_heads: int) -> Tensor:
    """(B, T, D) token projection -> (nh, B*T, hd) for per-head products against an image side."""
    b, t, d = x.shape
    return x.view(b * t, num_heads, d // num_heads).transpose(0, 1)  # (nh, B*T, hd)
