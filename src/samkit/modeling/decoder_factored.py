"""Factored forms of the mask decoder's attentions and upscaling (the fast path, part 2).

After a layer that read the cached image side, the image tokens are a LayerNorm of a fixed
image side plus a low-rank update; the next layer's attentions and the upscaling's first product
read them through those factors (:class:`NormedImage`) instead of the (N, C) tokens. Each
function equals the reference on the materialized tokens (checked in
``tests/model/test_decoder_fast_paths.py``). Notation and identities 1-2 (folding, caching):
:mod:`~samkit.modeling.decoder_folding`.

**3. Factored LayerNorm.** After the cached first layer the image tokens are
``X1 = LN(K + P^T M)`` with P (R, N) the image->token probabilities and M (R, C) the mixed
values of identity 1 (R = nh*T rows); LN normalizes each token n with mean ``mu_n`` and inverse std
``s_n``, then scales by the gain g and adds the bias beta. For any (C,) row f (a folded query or
key of the next layer):

    f . X1_n = s_n * ((f*g) . K_n + ((f*g) M^T) P_n - sum(f*g) mu_n) + f . beta.

``(f*g) . K_n`` is a per-head product with the cached projection of ``K * g`` (hd wide, not C),
the second term has rank R, and no product reads the (N, C) tokens X1 (:class:`NormedImage`
keeps P, M, mu, s, g, beta). ``f . beta`` is constant per row: dropped when the softmax runs over
N (token->image), kept when it runs over T (image->token).

**4. The value side of tokens attending to normed image tokens.** With probabilities p (N,)
and ``p' = p * s`` (per token), the mixed image row is

    p X1 = p' (K * g) + (p' P^T) (M * g) - (p' . mu) g + beta          (sum(p) = 1),

so the head-h value ``p X1 V_h^T + c_h`` is ``p' (K g V_h^T)`` (cached per-head values of
``K * g``) plus rank-R and constant terms projected once for all heads; head h keeps its slice.

**5. Factored upscaling.** After two cached layers the image tokens are
``X2 = LN2(X1 + P2^T M2)`` with ``X1`` as in 3. The upscaling's first transposed convolution is a
per-token product ``X2 w1 + b1`` (see ``MaskDecoder.upscaling_matrices``); with
``W2 = diag(g2) w1`` and ``W12 = diag(g1) W2``, expanding both norms gives

    X2 w1 + b1 = s1 s2 * (K W12) + L R + (beta2 w1 + b1),
    L = [s1 s2 P1^T | s2 P2^T | -s1 s2 mu1 | -s2 mu2 | s2]           (N, R1 + R2 + 3),
    R = [M1 W12; M2 W2; 1^T W12; 1^T W2; beta1 W2]                   (R1 + R2 + 3, 4 * C/4),

where ``K W12`` is per image (the cache's ``image_times_w12``): per prompt the (N, C) x (C, 4 * C/4)
product becomes (N, R1 + R2 + 3) x (R1 + R2 + 3, 4 * C/4), 56 columns for a point prompt, and a
scaled add (:func:`factored_first_product`).

Names: ``gained_*`` are projections of ``K * g`` (nh, hd, N) for keys and queries, (nh, N, hd)
for values; ``pe_*`` projections of the positional encoding alone, without bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .decoder_folding import (
    attend_tokens_residual,
    fold_heads,
    per_head_scores,
    per_head_values,
    scaled_keys,
    scaled_queries,
)

if TYPE_CHECKING:
    from .transformer import DecoderAttention

__all__ = [
    "NormedImage",
    "factored_first_product",
    "image_tokens_of",
    "normed_image_to_tokens_residual",
    "tokens_to_normed_image",
]

@dataclass
class NormedImage:
    """Image tokens ``LN(K + P^T M)`` after a cached layer, with the factors behind them (identity 3).

    K is the cache's fixed image side after the first layer, or, after the second, the first
    layer's output (``base``).

    Attributes:
        materialized: (B, N, C) the tokens themselves; None for a ``base`` whose tensor the
            next layer reused for its own residual (only the factors are read then).
        probs: (B, R, N) the layer's image->token probabilities P.
        mixed: (B, R, C) the layer's mixed values M (``out_proj`` bias included).
        mean: (B, 1, N) per-token mean of K + P^T M.
        rstd: (B, 1, N) per-token inverse standard deviation.
        gain: (C,) LayerNorm weight.
        bias: (C,) LayerNorm bias.
        base: K as a :class:`NormedImage` itself, or None when K is the cache's fixed image side.
    """

    materialized: Tensor | None
    probs: Tensor
    mixed: Tensor
    mean: Tensor
    rstd: Tensor
    gain: Tensor
    bias: Tensor
    base: NormedImage | None = None

    def select(self, index: Tensor) -> NormedImage:
        """The prompts ``index`` (a (B',) int64 index into B) of every per-prompt factor."""
        return NormedImage(
            materialized=self.materialized[index] if self.materialized is not None else None,
            probs=self.probs[index],
            mixed=self.mixed[index],
            mean=self.mean[index],
            rstd=self.rstd[index],
            gain=self.gain,
            bias=self.bias,
            base=self.base.select(index) if self.base is not None else None,
        )


def image_tokens_of(image: Tensor | NormedImage) -> Tensor:
    """(B, N, C) image tokens, materialized."""
    if isinstance(image, NormedImage):
        if image.materialized is None:
            raise ValueError("these image tokens were only kept in factored form")
        return image.materialized
    return image


def normed_scores(
    x: Tensor, weight: Tensor, image: NormedImage, gained_by_head: Tensor, num_heads: int
) -> tuple[Tensor, Tensor]:
    """Token projections x (B, T, D) against the ``weight``-projected normed image tokens (identity 3).

    Args:
        x: (B, T, D) scaled queries or keys.
        weight: (D, C) the image side's projection weight.
        image: the normed image tokens.
        gained_by_head: (nh, hd, N) that projection (without bias) of ``K * g``.
        num_heads: nh.

    Returns:
        (B, nh*T, N) scores without ``f . beta``, and that (B, nh*T, 1) per-row term.
    """
    folded = fold_heads(x, weight, num_heads)  # (B, nh*T, C) f
    folded_gained = folded * image.gain  # (B, nh*T, C) f * g
    scores = per_head_scores(x, gained_by_head)  # (B, nh*T, N) (f*g) . K_n
    scores.baddbmm_(folded_gained @ image.mixed.transpose(1, 2), image.probs)  # + ((f*g) M^T) P
    scores.addcmul_(folded_gained.sum(-1, keepdim=True), image.mean, value=-1.0)  # - sum(f*g) mu
    scores.mul_(image.rstd)
    return scores, folded @ image.bias[:, None]  # (B, nh*T, N), (B, nh*T, 1)


def factored_first_product(
    image: NormedImage, image_times_w12: Tensor, w1: Tensor, b1: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The upscaling's first product ``X2 w1 + b1`` as ``scale * image_times_w12 + left @ right + const`` (identity 5).

    ``left`` is built as ``L^T``, in the (B, R, N) layout the factors already have, and returned
    as a transposed view, which the matrix product reads as it is.

    Args:
        image: X2, a two-level :class:`NormedImage` (``image.base`` is X1).
        image_times_w12: (N, 4 * C/4) ``K W12``.
        w1: (C, 4 * C/4), b1: (4 * C/4,) the first upscaling product.

    Returns:
        left (B, N, R1 + R2 + 3) (a transposed view), right (B, R1 + R2 + 3, 4 * C/4),
        scale (B, N, 1) = s1 s2, const (4 * C/4,).
    """
    first = image.base
    assert first is not None
    w1_gain2 = image.gain[:, None] * w1  # (C, 4C/4) W2
    w1_gain12 = first.gain[:, None] * w1_gain2  # (C, 4C/4) W12
    rstd2 = image.rstd  # (B, 1, N) s2
    rstd12 = first.rstd * rstd2  # (B, 1, N) s1 s2
    left_transposed = torch.cat(
        [first.probs * rstd12, image.probs * rstd2, -first.mean * rstd12, -image.mean * rstd2, rstd2], dim=1
    )  # (B, R1 + R2 + 3, N)
    b = left_transposed.shape[0]
    fixed_rows = torch.stack([w1_gain12.sum(0), w1_gain2.sum(0), first.bias @ w1_gain2])  # (3, 4C/4)
    right = torch.cat(
        [first.mixed @ w1_gain12, image.mixed @ w1_gain2, fixed_rows.expand(b, -1, -1)], dim=1
    )  # (B, R1 + R2 + 3, 4C/4)
    return left_transposed.transpose(1, 2), right, rstd12.transpose(1, 2), image.bias @ w1 + b1



def tokens_to_normed_image(
    attention: DecoderAttention,
    tokens: Tensor,
    image: NormedImage,
    gained_keys_by_head: Tensor,
    gained_values_by_head: Tensor,
    pe_keys_by_head: Tensor,
) -> Tensor:
    """:func:`tokens_to_image_with_pe` on image tokens given by their factors (identities 3, 4).

    Args:
        tokens: (B, T, C) queries.
        image: the image tokens X1 = LN(K + P^T M), factored.
        gained_keys_by_head: (nh, hd, N) ``k_proj`` (without bias) of ``K * g``.
        gained_values_by_head: (nh, N, hd) ``v_proj`` (without bias) of ``K * g``.
        pe_keys_by_head: (nh, hd, N) ``k_proj`` of the positional encoding, without bias.

    Returns:
        (B, T, C), equal to ``attention(tokens, X1 + pe, X1)``.
    """
    b, t, _ = tokens.shape
    nh = attention.num_heads
    hd = attention.internal_dim // nh
    queries = scaled_queries(attention, tokens)  # (B, T, D)
    scores, _ = normed_scores(queries, attention.k_proj.weight, image, gained_keys_by_head, nh)  # row constants cancel
    scores.add_(per_head_scores(queries, pe_keys_by_head))
    probs = scores.softmax(dim=-1)  # (B, nh*T, N)
    scaled_probs = probs * image.rstd  # (B, nh*T, N) p' of identity 4
    out = per_head_values(scaled_probs, gained_values_by_head)  # (B, T, nh, hd)
    w_v = attention.v_proj.weight  # (D, C)
    # The rank-R and constant terms of identity 4, for all heads at once: (B, nh*T, D).
    low_rank = torch.bmm(scaled_probs, image.probs.transpose(1, 2)) @ ((image.mixed * image.gain) @ w_v.t())
    low_rank.addcmul_(torch.bmm(scaled_probs, image.mean.transpose(1, 2)), w_v @ image.gain, value=-1.0)
    low_rank.add_(w_v @ image.bias + attention.v_proj.bias)  # each probability row sums to 1
    own_head = torch.diagonal(low_rank.view(b, nh, t, nh, hd), dim1=1, dim2=3)  # (B, T, hd, nh): row h*T+t, head h
    out = out + own_head.permute(0, 1, 3, 2)  # (B, T, nh, hd)
    return attention.out_proj(out.reshape(b, t, nh * hd))  # (B, T, C)


def normed_image_to_tokens_residual(
    attention: DecoderAttention,
    image: NormedImage,
    tokens_keys: Tensor,
    tokens_values: Tensor,
    gained_queries_by_head: Tensor,
    pe_queries_by_head: Tensor,
    *,
    in_place: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`image_with_pe_to_tokens_residual` on image tokens X1 given by their factors (identity 3).

    Args:
        image: X1 factored; ``image.materialized`` is the residual.
        tokens_keys: (B, T, C) keys.
        tokens_values: (B, T, C) values.
        gained_queries_by_head: (nh, hd, N) ``q_proj`` (without bias) of ``K * g``.
        pe_queries_by_head: (nh, hd, N) ``q_proj`` of the positional encoding, without bias.
        in_place: add the attention into ``image.materialized`` itself (which then no longer
            holds X1) instead of a new tensor.

    Returns:
        as :func:`projected_image_to_tokens_residual`.
    """
    assert image.materialized is not None
    nh = attention.num_heads
    keys = scaled_keys(attention, tokens_keys)  # (B, T, D)
    scores, beta_term = normed_scores(keys, attention.q_proj.weight, image, gained_queries_by_head, nh)
    bias_term = fold_heads(keys, attention.q_proj.bias[:, None], nh)  # (B, nh*T, 1)
    scores.add_(beta_term + bias_term)  # the softmax runs over T: these offsets matter
    scores.add_(per_head_scores(keys, pe_queries_by_head))
    return attend_tokens_residual(attention, image.materialized, scores, tokens_values, in_place=in_place)
