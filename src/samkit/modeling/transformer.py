"""Two-way transformer of the mask decoder.

Prompt tokens attend to the image embedding and the image embedding attends back
to the tokens, ``depth`` times, then a final token-to-image attention.

Without a mask prompt, the image side of the first layer does not depend on the prompts,
and in every later attention the positional-encoding part of the image side does not
either: :class:`ImageSideCache` holds those projections, split by head, so they are
computed once per image instead of once per prompt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import tensor_nbytes
from .common import MLPBlock

__all__ = ["DecoderAttention", "TwoWayAttentionBlock", "TwoWayTransformer", "ImageSideCache"]

# Prompts decoded together, end to end, by MaskDecoder.forward and PointDecoder.decode (the only
# places that chunk; measured on a 2-core CPU with a 32 MB L3: 2-4 beat both 1 and 64 by ~25%).
PROMPT_CHUNK = 4


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

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Projected q (Bq, Nq, D), k/v (Bk, Nk, D) -> (B, Nq, embedding_dim).

        Batch 1 on either side broadcasts against the other.
        """
        qh, kh, vh = self.split_heads(q), self.split_heads(k), self.split_heads(v)  # (B, nh, N, hd)
        batch = max(qh.shape[0], kh.shape[0])
        if qh.shape[0] != batch:
            qh = qh.expand(batch, -1, -1, -1)
        if kh.shape[0] != batch:
            kh = kh.expand(batch, -1, -1, -1)
            vh = vh.expand(batch, -1, -1, -1)
        out = F.scaled_dot_product_attention(qh, kh, vh)  # (B, nh, Nq, hd)
        b, nh, n, hd = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, nh * hd))  # (B, Nq, C)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (B, Nq, C), k/v (B, Nk, C) -> (B, Nq, C)."""
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    # Low-rank paths. With few prompt tokens T on one side and N = 4096 image tokens on
    # the other, projecting the image side (N x C x D) costs more than folding the
    # projection into the T tokens (N x C x nh*T) whenever nh * T < D. The algebra is
    # exact: a key bias adds a per-query constant to the scores (softmax ignores it) and
    # a value bias passes through the convex combination unchanged.

    def low_rank_pays(self, num_tokens: int) -> bool:
        """Whether the folded paths are cheaper for ``num_tokens`` prompt tokens."""
        return self.num_heads * num_tokens < self.internal_dim

    def tokens_to_image(self, tokens: Tensor, image_k: Tensor, image_v: Tensor) -> Tensor:
        """Tokens attend to image tokens without projecting the image tokens.

        Args:
            tokens: (B, T, C) queries (before ``q_proj``).
            image_k: (B or 1, N, C) keys (before ``k_proj``).
            image_v: (B or 1, N, C) values (before ``v_proj``).

        Returns:
            (B, T, C), equal to ``forward(tokens, image_k, image_v)``.
        """
        b, t, c = tokens.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        q = self.q_proj(tokens).view(b, t, nh, hd) * hd**-0.5  # (B, T, nh, hd)
        w_k = self.k_proj.weight.view(nh, hd, c)  # (nh, hd, C)
        folded = torch.einsum("bthd,hdc->bhtc", q, w_k).reshape(b, nh * t, c)  # (B, nh*T, C)
        scores = _matmul_transposed(folded, image_k)  # (B, nh*T, N)
        probs = scores.softmax(dim=-1)
        mixed = (probs @ image_v).view(b, nh, t, c)  # (B, nh, T, C)
        w_v = self.v_proj.weight.view(nh, hd, c)  # (nh, hd, C)
        out = torch.einsum("bhtc,hdc->bthd", mixed, w_v).reshape(b, t, nh * hd) + self.v_proj.bias  # (B, T, D)
        return self.out_proj(out)

    def image_to_tokens(self, image_q: Tensor, tokens_k: Tensor, tokens_v: Tensor) -> Tensor:
        """Image tokens attend to prompt tokens without ``q_proj``/``out_proj`` on the image side.

        Args:
            image_q: (B or 1, N, C) queries before ``q_proj``.
            tokens_k: (B, T, C) keys (before ``k_proj``).
            tokens_v: (B, T, C) values (before ``v_proj``).

        Returns:
            (B, N, C), equal to ``forward(image_q, tokens_k, tokens_v)``.
        """
        b, t, c = tokens_k.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        k = self.k_proj(tokens_k).view(b, t, nh, hd) * hd**-0.5  # (B, T, nh, hd)
        # Scores are laid out (B, nh*T, N): the softmax over the T tokens then runs along a
        # strided axis of long contiguous rows instead of N tiny rows of length T.
        w_q = self.q_proj.weight.view(nh, hd, c)  # (nh, hd, C)
        folded = torch.einsum("bthd,hdc->bhtc", k, w_q).reshape(b, nh * t, c)  # (B, nh*T, C)
        offset = torch.einsum("bthd,hd->bht", k, self.q_proj.bias.view(nh, hd)).reshape(b, nh * t, 1)
        scores = _matmul_transposed(folded, image_q).add_(offset)  # (B, nh*T, N)
        n = scores.shape[-1]
        probs = scores.view(b, nh, t, n).softmax(dim=2).view(b, nh * t, n)  # (B, nh*T, N)
        v = self.v_proj(tokens_v).view(b, t, nh, hd)  # (B, T, nh, hd)
        w_o = self.out_proj.weight.view(c, nh, hd)  # (C, nh, hd)
        mixed = torch.einsum("bthd,chd->bhtc", v, w_o).reshape(b, nh * t, c)  # (B, nh*T, C)
        return torch.baddbmm(self.out_proj.bias.expand(b, 1, c), probs.transpose(1, 2), mixed)  # (B, N, C)

    # Cached-image paths (see ImageSideCache): the image side's fixed parts arrive projected
    # and split by head, as (nh, hd, N) keys/queries and (nh, N, hd) values.

    def tokens_to_cached_image(self, tokens: Tensor, image_k: Tensor, image_v: Tensor) -> Tensor:
        """Tokens attend to an image side whose projections are cached.

        Args:
            tokens: (B, T, C) queries (before ``q_proj``).
            image_k: (nh, hd, N) projected keys.
            image_v: (nh, N, hd) projected values.

        Returns:
            (B, T, C), equal to ``forward`` on the unprojected image side.
        """
        b, t, _ = tokens.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        q = tokens_by_head(self.q_proj(tokens) * hd**-0.5, nh)  # (nh, B*T, hd)
        probs = torch.bmm(q, image_k).softmax(dim=-1)  # (nh, B*T, N)
        out = torch.bmm(probs, image_v)  # (nh, B*T, hd)
        return self.out_proj(out.transpose(0, 1).reshape(b, t, self.internal_dim))  # (B, T, C)

    def tokens_to_image_pe(self, tokens: Tensor, image: Tensor, pe_k: Tensor) -> Tensor:
        """Tokens attend to image tokens plus a positional encoding whose key projection is cached.

        The keys are ``image + pe`` and the values ``image``; ``image`` is never projected
        (the folded low-rank form of :meth:`tokens_to_image`) and ``image + pe`` is never formed.

        Args:
            tokens: (B, T, C) queries (before ``q_proj``).
            image: (B or 1, N, C) image tokens.
            pe_k: (nh, hd, N) ``k_proj`` of the positional encoding, without bias.

        Returns:
            (B, T, C), equal to ``forward(tokens, image + pe, image)``.
        """
        b, t, c = tokens.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        n = pe_k.shape[-1]
        q = self.q_proj(tokens) * hd**-0.5  # (B, T, D)
        scores = _per_head_scores(q, pe_k)  # (B, nh*T, N)
        folded = torch.einsum("bthd,hdc->bhtc", q.view(b, t, nh, hd), self.k_proj.weight.view(nh, hd, c))
        _add_matmul_transposed_(scores, folded.reshape(b, nh * t, c), image)  # (B, nh*T, N)
        probs = scores.softmax(dim=-1)
        if image.shape[0] == 1:
            mixed = (probs.view(b * nh * t, n) @ image[0]).view(b, nh, t, c)  # (B, nh, T, C)
        else:
            mixed = torch.bmm(probs, image).view(b, nh, t, c)  # (B, nh, T, C)
        w_v = self.v_proj.weight.view(nh, hd, c)  # (nh, hd, C)
        out = torch.einsum("bhtc,hdc->bthd", mixed, w_v).reshape(b, t, nh * hd) + self.v_proj.bias  # (B, T, D)
        return self.out_proj(out)

    def image_to_tokens_residual(
        self,
        image: Tensor,
        tokens_k: Tensor,
        tokens_v: Tensor,
        image_q: Tensor,
        *,
        projected: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Image tokens attend to prompt tokens; returns ``image + attention`` in one product.

        Args:
            image: (B or 1, N, C) image tokens: the residual, and the queries' image part.
            tokens_k: (B, T, C) keys (before ``k_proj``).
            tokens_v: (B, T, C) values (before ``v_proj``).
            image_q: (nh, hd, N) cached query projection: of the whole query side (``image +
                pe``, with bias) when ``projected``, else of the positional encoding alone
                (without bias), the image part then entering through folded products.

        Returns:
            (B, N, C), equal to ``image + forward(image + pe, tokens_k, tokens_v)``; the (B, nh*T, N)
            attention probabilities and the (B, nh*T, C) mixed values (out_proj bias included)
            whose product is the attention.
        """
        b, t, c = tokens_k.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        k = self.k_proj(tokens_k) * hd**-0.5  # (B, T, D)
        scores = _per_head_scores(k, image_q)  # (B, nh*T, N)
        if not projected:
            kh = k.view(b, t, nh, hd)
            folded = torch.einsum("bthd,hdc->bhtc", kh, self.q_proj.weight.view(nh, hd, c)).reshape(b, nh * t, c)
            offset = torch.einsum("bthd,hd->bht", kh, self.q_proj.bias.view(nh, hd)).reshape(b, nh * t, 1)
            _add_matmul_transposed_(scores.add_(offset), folded, image)  # (B, nh*T, N)
        return self._attend_tokens_residual(image, scores, tokens_v)

    def _attend_tokens_residual(
        self, image: Tensor, scores: Tensor, tokens_v: Tensor, *, in_place: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Shared tail of the image->token paths: (B, nh*T, N) scores -> ``image + attention``.

        With ``in_place`` the attention is added into ``image`` (a (B, N, C) tensor of its own).

        Returns:
            (B, N, C) ``image + attention``, (B, nh*T, N) probabilities, (B, nh*T, C) mixed values.
        """
        b, t, c = tokens_v.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        n = scores.shape[-1]
        # Softmax over the T tokens of each head, along a strided axis of long contiguous rows.
        probs = scores.view(b, nh, t, n).softmax(dim=2).view(b, nh * t, n)  # (B, nh*T, N)
        v = self.v_proj(tokens_v).view(b, t, nh, hd)  # (B, T, nh, hd)
        w_o = self.out_proj.weight.view(c, nh, hd)  # (C, nh, hd)
        mixed = torch.einsum("bthd,chd->bhtc", v, w_o).reshape(b, nh * t, c)  # (B, nh*T, C)
        # Each head's probabilities sum to 1 over its T tokens, so out_proj's bias, spread as
        # bias / nh over every mixed row, comes out exactly once per image token.
        mixed = mixed + self.out_proj.bias / nh
        if in_place:
            return image.baddbmm_(probs.transpose(1, 2), mixed), probs, mixed  # (B, N, C), ...
        return torch.baddbmm(image, probs.transpose(1, 2), mixed), probs, mixed  # (B, N, C), ...

    # Factored paths for the layer after a cached first layer, whose image tokens are
    # LN(K + P^T M): K the fixed (N, C) image side, P (R, N) and M (R, C) the first layer's
    # image->token probabilities and mixed values, LN a row normalization (mean mu, inverse std
    # s per token) with gain g and bias beta. A product with a folded query f then splits into
    # s * (f_g K^T + (f_g M^T) P - sum(f_g) mu) + f.beta with f_g = f * g: the first term is a
    # per-head product with the cached projection of K * g, the second is of rank R, and no
    # product reads the (N, C) image tokens.

    def _folded_normed_scores(self, x: Tensor, weight: Tensor, normed: NormedImage, kg: Tensor) -> tuple[Tensor, Tensor]:
        """Scores of projected tokens x (B, T, D) against ``weight``-projected normed image tokens.

        Returns:
            (B, nh*T, N) scores without the per-row constant, and that (B, nh*T, 1) constant.
        """
        b, t, _ = x.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        c = weight.shape[1]
        folded = torch.einsum("bthd,hdc->bhtc", x.view(b, t, nh, hd), weight.view(nh, hd, c)).reshape(b, nh * t, c)
        folded_g = folded * normed.gain  # (B, nh*T, C)
        scores = _per_head_scores(x, kg)  # (B, nh*T, N)
        scores.baddbmm_(folded_g @ normed.mixed.transpose(1, 2), normed.probs)  # + rank-R term
        scores.addcmul_(folded_g.sum(-1, keepdim=True), normed.mean, value=-1.0)  # - sum(f_g) mu
        scores.mul_(normed.rstd)
        return scores, folded @ normed.bias[:, None]  # (B, nh*T, N), (B, nh*T, 1)

    def tokens_to_normed_image(
        self, tokens: Tensor, normed: NormedImage, kg_k: Tensor, kg_v: Tensor, pe_k: Tensor
    ) -> Tensor:
        """:meth:`tokens_to_image_pe` on image tokens given as a :class:`NormedImage`.

        Args:
            tokens: (B, T, C) queries (before ``q_proj``).
            normed: the image tokens, factored.
            kg_k: (nh, hd, N) ``k_proj`` (without bias) of the fixed image side times the gain.
            kg_v: (nh, N, hd) ``v_proj`` (without bias) of the same.
            pe_k: (nh, hd, N) ``k_proj`` of the positional encoding, without bias.

        Returns:
            (B, T, C), equal to ``tokens_to_image_pe(tokens, normed.materialized, pe_k)``.
        """
        b, t, _ = tokens.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        q = self.q_proj(tokens) * hd**-0.5  # (B, T, D)
        scores, _ = self._folded_normed_scores(q, self.k_proj.weight, normed, kg_k)  # row constants cancel
        scores.add_(_per_head_scores(q, pe_k))
        probs = scores.softmax(dim=-1)  # (B, nh*T, N)
        scaled = probs * normed.rstd  # (B, nh*T, N)
        out = _per_head_values(scaled, kg_v)  # (B, T, nh, hd)
        w_v = self.v_proj.weight  # (D, C)
        low = torch.bmm(scaled, normed.probs.transpose(1, 2)) @ ((normed.mixed * normed.gain) @ w_v.t())  # (B, nh*T, D)
        low.addcmul_(torch.bmm(scaled, normed.mean.transpose(1, 2)), w_v @ normed.gain, value=-1.0)
        low.add_(w_v @ normed.bias + self.v_proj.bias)  # each probability row sums to 1
        # Row h*T + t needs only head h's slice of D.
        low_heads = torch.diagonal(low.view(b, nh, t, nh, hd), dim1=1, dim2=3)  # (B, T, hd, nh)
        out = out + low_heads.permute(0, 1, 3, 2)  # (B, T, nh, hd)
        return self.out_proj(out.reshape(b, t, nh * hd))

    def normed_image_to_tokens_residual(
        self,
        normed: NormedImage,
        tokens_k: Tensor,
        tokens_v: Tensor,
        kg_q: Tensor,
        pe_q: Tensor,
        *,
        in_place: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`image_to_tokens_residual` on image tokens given as a :class:`NormedImage`.

        Args:
            normed: the image tokens, factored (``normed.materialized`` is the residual).
            tokens_k: (B, T, C) keys (before ``k_proj``).
            tokens_v: (B, T, C) values (before ``v_proj``).
            kg_q: (nh, hd, N) ``q_proj`` (without bias) of the fixed image side times the gain.
            pe_q: (nh, hd, N) ``q_proj`` of the positional encoding, without bias.
            in_place: add the attention into ``normed.materialized`` itself (which then no
                longer holds the normalized tokens) instead of a new tensor.
        """
        assert normed.materialized is not None
        b, t, _ = tokens_k.shape
        nh = self.num_heads
        hd = self.internal_dim // nh
        k = self.k_proj(tokens_k) * hd**-0.5  # (B, T, D)
        scores, row_constant = self._folded_normed_scores(k, self.q_proj.weight, normed, kg_q)
        bias_term = torch.einsum("bthd,hd->bht", k.view(b, t, nh, hd), self.q_proj.bias.view(nh, hd))
        scores.add_(row_constant + bias_term.reshape(b, nh * t, 1))  # softmax over T: these matter
        scores.add_(_per_head_scores(k, pe_q))
        return self._attend_tokens_residual(normed.materialized, scores, tokens_v, in_place=in_place)


@dataclass
class NormedImage:
    """Image tokens LN(K + P^T M) after a cached layer, with the factors behind them.

    K is the cache's fixed image side (``ImageSideCache.keys``) after the first layer, or, after
    the second, the first layer's output (``base``).

    Attributes:
        materialized: (B, N, C) the tokens themselves; None for a ``base`` whose tensor the
            next layer reused for its own residual (only the factors are read then).
        probs: (B, R, N) the layer's image->token probabilities P.
        mixed: (B, R, C) the layer's mixed values M (out_proj bias included).
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


def _per_head_values(weights: Tensor, side: Tensor) -> Tensor:
    """Weights (B, nh*T, N) over a cached per-head value side (nh, N, hd) -> (B, T, nh, hd)."""
    nh, n, hd = side.shape
    b = weights.shape[0]
    t = weights.shape[1] // nh
    per_head = weights.view(b, nh, t, n).transpose(0, 1).reshape(nh, b * t, n)  # (nh, B*T, N)
    return torch.bmm(per_head, side).view(nh, b, t, hd).permute(1, 2, 0, 3)  # (B, T, nh, hd)

def _per_head_scores(x: Tensor, side: Tensor) -> Tensor:
    """Token projections x (B, T, D) against a cached per-head side (nh, hd, N) -> (B, nh*T, N)."""
    b, t, _ = x.shape
    nh, _, n = side.shape
    scores = torch.bmm(tokens_by_head(x, nh), side)  # (nh, B*T, N)
    return scores.view(nh, b, t, n).transpose(0, 1).reshape(b, nh * t, n)  # (B, nh*T, N)


def _add_matmul_transposed_(out: Tensor, a: Tensor, x: Tensor) -> Tensor:
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


def _matmul_transposed(a: Tensor, x: Tensor) -> Tensor:
    """a (B, R, C) times x^T for x (B or 1, N, C) -> (B, R, N).

    With a shared x (batch 1) the B products become one (B*R, C) x (C, N) GEMM.
    """
    if x.shape[0] == 1:
        return a @ x[0].transpose(0, 1)  # (B, R, N)
    return a @ x.transpose(1, 2)  # (B, R, N)


def heads_transposed(x: Tensor, num_heads: int) -> Tensor:
    """(1, N, D) projection -> (nh, hd, N), contiguous: the right operand of per-head score products."""
    _, n, d = x.shape
    return x[0].view(n, num_heads, d // num_heads).permute(1, 2, 0).contiguous()  # (nh, hd, N)


def heads_first(x: Tensor, num_heads: int) -> Tensor:
    """(1, N, D) projection -> (nh, N, hd), contiguous: per-head values."""
    _, n, d = x.shape
    return x[0].view(n, num_heads, d // num_heads).transpose(0, 1).contiguous()  # (nh, N, hd)


def tokens_by_head(x: Tensor, num_heads: int) -> Tensor:
    """(B, T, D) token projection -> (nh, B*T, hd) for per-head products against an image side."""
    b, t, d = x.shape
    return x.view(b * t, num_heads, d // num_heads).transpose(0, 1)  # (nh, B*T, hd)


@dataclass
class ImageSideCache:
    """Prompt-independent decoder work for one image (prompts without a mask input).

    The first layer's image side is fully projected; for the later attentions only the
    positional-encoding part of the image side is fixed, so its projection is cached and the
    prompt-dependent image tokens enter through the folded low-rank products.

    Attributes:
        keys: (1, N, C) flattened image embedding plus the no-mask dense embedding.
        key_pe: (1, N, C) flattened dense positional encoding.
        first_t2i_k: (nh, hd, N) first token->image key projection of ``keys + key_pe``.
        first_t2i_v: (nh, N, hd) first token->image value projection of ``keys``.
        first_i2t_q: (nh, hd, N) first image->token query projection of ``keys + key_pe``.
        pe_t2i_k: per later layer, then the final attention: (nh, hd, N) key projection
            (without bias) of the positional encoding.
        pe_i2t_q: per later layer: (nh, hd, N) image->token query projection (without bias)
            of the positional encoding.
        second_t2i_k, second_t2i_v, second_i2t_q: for the second layer, which sees the image
            tokens as a :class:`NormedImage`: the (nh, hd, N) / (nh, N, hd) / (nh, hd, N)
            projections (without bias) of ``keys`` times the first layer's norm4 weight.
        upscale_keys: (N, 4 * C/4) ``keys`` times both layers' norm4 weights times the mask
            decoder's first upscaling matrix (set by ``MaskDecoder.prepare_image``), for
            upscaling image tokens given as a two-level :class:`NormedImage`.
    """

    keys: Tensor
    key_pe: Tensor
    first_t2i_k: Tensor
    first_t2i_v: Tensor
    first_i2t_q: Tensor
    pe_t2i_k: list[Tensor]
    pe_i2t_q: list[Tensor]
    second_t2i_k: Tensor | None = None
    second_t2i_v: Tensor | None = None
    second_i2t_q: Tensor | None = None
    upscale_keys: Tensor | None = None

    def nbytes(self) -> int:
        """Bytes held by all of this cache's tensors, the per-layer lists included (each storage once)."""
        return tensor_nbytes(self)


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
        return self.cross_attention(self.token_self_attention(queries, query_pe), keys, query_pe, key_pe)

    def cross_attention(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` after the token self-attention (same arguments and results)."""
        t2i = self.cross_attn_token_to_image
        i2t = self.cross_attn_image_to_token
        low_rank = t2i.low_rank_pays(queries.shape[1])
        keys_pe = keys + key_pe
        q = queries + query_pe
        attn = t2i.tokens_to_image(q, keys_pe, keys) if low_rank else t2i(q, keys_pe, keys)
        queries = self.token_mlp(self.norm2(queries + attn))

        q = queries + query_pe
        attn = i2t.image_to_tokens(keys_pe, q, queries) if low_rank else i2t(keys_pe, q, queries)
        keys = self.norm4(keys + attn)
        return queries, keys

    def forward_cached(
        self,
        queries: Tensor,
        keys: Tensor | NormedImage,
        query_pe: Tensor,
        cache: ImageSideCache,
        index: int,
        last: bool = False,
    ) -> tuple[Tensor, Tensor | NormedImage]:
        """:meth:`forward` with the image side's fixed parts taken from ``cache``.

        Args:
            queries: (B, T, C) tokens.
            keys: (1, N, C) ``cache.keys`` for the first layer; the first layer's output for the
                second; else (B, N, C) image tokens.
            query_pe: (B, T, C) the original prompt tokens.
            cache: :meth:`TwoWayTransformer.prepare_image` of the image.
            index: this layer's position in the stack.
            last: this is the last layer of the stack.

        Returns:
            updated queries (B, T, C) and image tokens: (B, N, C), or a :class:`NormedImage`
            from the first layer when the second layer can use it, and from the second layer
            when it is the last and read the first in factored form (for the upscaling).
        """
        queries = self.token_self_attention(queries, query_pe)
        t2i = self.cross_attn_token_to_image
        i2t = self.cross_attn_image_to_token
        normed = keys if isinstance(keys, NormedImage) else None
        image = image_tokens_of(keys)
        q = queries + query_pe
        if index == 0:
            attn = t2i.tokens_to_cached_image(q, cache.first_t2i_k, cache.first_t2i_v)
        elif not t2i.low_rank_pays(queries.shape[1]):  # many prompt tokens: project the image side
            return self.cross_attention(queries, image, query_pe, cache.key_pe)
        elif normed is not None:
            assert cache.second_t2i_k is not None and cache.second_t2i_v is not None
            attn = t2i.tokens_to_normed_image(q, normed, cache.second_t2i_k, cache.second_t2i_v, cache.pe_t2i_k[0])
        else:
            attn = t2i.tokens_to_image_pe(q, image, cache.pe_t2i_k[index - 1])
        queries = self.token_mlp(self.norm2(queries + attn))

        q = queries + query_pe
        if index == 0:
            pre, probs, mixed = i2t.image_to_tokens_residual(image, q, queries, cache.first_i2t_q, projected=True)
            if cache.second_t2i_k is None:
                return queries, self.norm4(pre)
            return queries, self._normed(pre, probs, mixed, base=None)
        if normed is not None:
            assert cache.second_i2t_q is not None
            # The last layer's residual goes into the first layer's output tensor, which
            # nothing reads afterwards (the upscaling reads only its factors).
            pre, probs, mixed = i2t.normed_image_to_tokens_residual(
                normed, q, queries, cache.second_i2t_q, cache.pe_i2t_q[0], in_place=last
            )
            if last:
                return queries, self._normed(pre, probs, mixed, base=dataclasses.replace(normed, materialized=None))
        else:
            pre, _, _ = i2t.image_to_tokens_residual(image, q, queries, cache.pe_i2t_q[index - 1], projected=False)
        return queries, self.norm4(pre)

    def _normed(self, pre: Tensor, probs: Tensor, mixed: Tensor, base: NormedImage | None) -> NormedImage:
        """norm4 of ``pre`` = K + P^T M (B, N, C), kept with its factors and statistics.

        The statistics are kept in the compute dtype: ``native_layer_norm`` returns them in
        float32 for half-precision input on CUDA (in the input dtype on CPU), and every
        factored product that reads them must not mix dtypes.
        """
        norm = self.norm4
        out, mean, rstd = torch.native_layer_norm(pre, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
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
        """Precompute the prompt-independent image-side projections (see :class:`ImageSideCache`).

        Args:
            image_embedding: (1, C, h, w) image embedding with the dense prompt embedding added.
            image_pe: (1, C, h, w) positional encoding.
        """
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # (1, N, C)
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()  # (1, N, C)
        pe_t2i_k: list[Tensor] = []
        pe_i2t_q: list[Tensor] = []
        if self.layers:
            first = self.layers[0]
            t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
            keys_pe = keys + key_pe
            first_t2i_k = heads_transposed(t2i.k_proj(keys_pe), t2i.num_heads)  # (nh, hd, N)
            first_t2i_v = heads_first(t2i.v_proj(keys), t2i.num_heads)  # (nh, N, hd)
            first_i2t_q = heads_transposed(i2t.q_proj(keys_pe), i2t.num_heads)  # (nh, hd, N)
        else:
            first_t2i_k = first_t2i_v = first_i2t_q = keys.new_zeros(0)
        for layer in self.layers[1:]:
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            pe_t2i_k.append(heads_transposed(F.linear(key_pe, t2i.k_proj.weight), t2i.num_heads))
            pe_i2t_q.append(heads_transposed(F.linear(key_pe, i2t.q_proj.weight), i2t.num_heads))
        final = self.final_attn_token_to_image
        pe_t2i_k.append(heads_transposed(F.linear(key_pe, final.k_proj.weight), final.num_heads))
        second: dict[str, Tensor] = {}
        if len(self.layers) > 1:
            keys_g = keys * self.layers[0].norm4.weight  # (1, N, C)
            t2i, i2t = self.layers[1].cross_attn_token_to_image, self.layers[1].cross_attn_image_to_token
            second["second_t2i_k"] = heads_transposed(F.linear(keys_g, t2i.k_proj.weight), t2i.num_heads)
            second["second_t2i_v"] = heads_first(F.linear(keys_g, t2i.v_proj.weight), t2i.num_heads)
            second["second_i2t_q"] = heads_transposed(F.linear(keys_g, i2t.q_proj.weight), i2t.num_heads)
        return ImageSideCache(
            **second,
            keys=keys,
            key_pe=key_pe,
            first_t2i_k=first_t2i_k,
            first_t2i_v=first_t2i_v,
            first_i2t_q=first_i2t_q,
            pe_t2i_k=pe_t2i_k,
            pe_i2t_q=pe_i2t_q,
        )

    def forward(
        self,
        image_embedding: Tensor | None,
        image_pe: Tensor | None,
        point_embedding: Tensor,
        cache: ImageSideCache | None = None,
        keep_tokens: int | None = None,
        factored: bool = False,
    ) -> tuple[Tensor, Tensor | NormedImage]:
        """Run the transformer.

        Args:
            image_embedding: (B or 1, C, h, w), unused when ``cache`` is given.
            image_pe: (1, C, h, w), unused when ``cache`` is given.
            point_embedding: (B, T, C) tokens.
            cache: from :meth:`prepare_image`.
            keep_tokens: return only the first K output tokens (the decoder reads only its IoU
                and mask tokens); the final attention, whose queries are independent of each
                other, then runs only for those.
            factored: return the image tokens as a :class:`NormedImage` when the cached path
                produced them in factored form (the mask decoder's upscaling reads the factors).

        Returns:
            tokens (B, K, C) (K = T by default) and image tokens (B, h*w, C), or with
            ``factored`` possibly their :class:`NormedImage`.

        All B prompts run together: callers with many prompts pass a few at a time
        (:data:`PROMPT_CHUNK`, as ``MaskDecoder.forward`` does), so that each prompt's ~4 MB of
        (N, C) intermediates stays in the CPU cache.
        """
        queries = point_embedding
        final = self.final_attn_token_to_image
        image: Tensor | NormedImage | None = None
        if cache is not None:
            image = cache.keys  # (1, N, C)
            last = len(self.layers) - 1
            for i, layer in enumerate(self.layers):
                queries, image = layer.forward_cached(queries, image, point_embedding, cache, i, last=i == last)
            keys = image_tokens_of(image)
        else:
            assert image_embedding is not None and image_pe is not None
            keys = image_embedding.flatten(2).transpose(1, 2)  # (B, N, C)
            key_pe = image_pe.flatten(2).transpose(1, 2)  # (1, N, C)
            for layer in self.layers:
                queries, keys = layer(queries, keys, point_embedding, key_pe)
        if keep_tokens is not None:
            queries, point_embedding = queries[:, :keep_tokens], point_embedding[:, :keep_tokens]  # (B, K, C)
        q = queries + point_embedding
        if not final.low_rank_pays(q.shape[1]):
            pe = cache.key_pe if cache is not None else key_pe
            attn = final(q, keys + pe, keys)
        elif cache is not None:
            attn = final.tokens_to_image_pe(q, keys, cache.pe_t2i_k[-1])
        else:
            attn = final.tokens_to_image(q, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        if isinstance(image, NormedImage):
            return queries, image if factored else keys
        if keys.shape[0] != queries.shape[0]:  # depth 0 with a shared image: give every prompt its copy
            keys = keys.expand(queries.shape[0], -1, -1)
        return queries, keys
