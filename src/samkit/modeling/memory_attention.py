"""SAM 2 memory attention: a frame's tokens attend to themselves and to the memory bank.

Rotary position encoding (RoPE), axial over the (h, w) token grid: a head of width ``d`` is
split into ``d/2`` pairs; pair ``i < d/4`` is rotated by ``x * f_i`` and pair ``d/4 + i`` by
``y * f_i`` (``x, y`` the token's column and row, ``f_i = theta ** (-4 i / d)``), i.e. each
pair ``(a, b)`` becomes ``(a cos - b sin, a sin + b cos)``. Rotating queries and keys this way
makes their dot product depend on the offset between the two tokens only. The official code
does the rotation with complex tensors; here it is written with real cosine/sine tables,
which gives the same products and also runs where complex dtypes are missing (MPS, ONNX).

Memory keys: the memory is ``n`` frames of ``h*w`` spatial tokens each, followed by object
pointer tokens. Every memory frame has the grid of the current frame, so its keys are rotated
with the query tables repeated ``n`` times (``rope_k_repeat``); the trailing pointer tokens
(``num_k_exclude_rope``) carry no position and are left unrotated.

Layer (pre-norm, as the released configs): ``x += SelfAttn(LN1(x))`` (RoPE on queries and
keys), ``x += CrossAttn(q=LN2(x), k=memory + memory_pos, v=memory)`` (RoPE on the queries and
the spatial memory keys; keys and values read 64-wide memory tokens), ``x += MLP(LN3(x))``
(ReLU). The stack adds ``0.1 * pos`` to its input and ends with a LayerNorm.

Parameter names equal the official checkpoint keys below ``memory_attention.``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config_sam2 import MemoryAttentionConfig

__all__ = [
    "axial_rope_angles",
    "RopeTables",
    "rope_tables",
    "apply_rope",
    "RoPEAttention",
    "MemoryAttentionLayer",
    "MemoryAttention",
]


def axial_rope_angles(head_dim: int, width: int, height: int, theta: float = 10000.0) -> Tensor:
    """Rotation angles of an axial RoPE over a (height, width) grid, row-major tokens.

    Args:
        head_dim: width of one attention head (a multiple of 4).
        width, height: the token grid.
        theta: frequency base.

    Returns:
        (height * width, head_dim / 2) float32 angles: the first ``head_dim / 4`` columns are
        the column index times the frequencies, the rest the row index times them.
    """
    if head_dim % 4:
        raise ValueError(f"axial RoPE needs a head width divisible by 4, got {head_dim}")
    exponents = torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim  # (d/4,)
    freqs = 1.0 / (theta**exponents)  # (d/4,)
    token = torch.arange(width * height, dtype=torch.float32)  # (N,)
    col = token % width  # (N,)
    row = torch.div(token, width, rounding_mode="floor")  # (N,)
    return torch.cat([torch.outer(col, freqs), torch.outer(row, freqs)], dim=-1)  # (N, d/2)


class RopeTables:
    """Cosine and sine of the RoPE angles, (N, d/2) float32 each, on one device."""

    def __init__(self, angles: Tensor) -> None:
        self.cos = angles.cos()
        self.sin = angles.sin()

    @property
    def num_tokens(self) -> int:
        """Tokens of the grid the tables cover."""
        return self.cos.shape[0]


_TABLES: dict[tuple[int, int, float, torch.device], RopeTables] = {}


def rope_tables(head_dim: int, num_tokens: int, theta: float, device: torch.device) -> RopeTables:
    """The (cached) tables of a square grid of ``num_tokens`` tokens.

    Raises:
        ValueError: ``num_tokens`` is not a square (the official model assumes square grids).
    """
    key = (head_dim, num_tokens, theta, device)
    tables = _TABLES.get(key)
    if tables is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"RoPE attention expects a square token grid, got {num_tokens} tokens")
        tables = RopeTables(axial_rope_angles(head_dim, side, side, theta).to(device))
        _TABLES[key] = tables
    return tables


def apply_rope(x: Tensor, tables: RopeTables, num_exclude: int = 0) -> Tensor:
    """Rotate the feature pairs of ``x`` by the table angles, computed in float32.

    Args:
        x: (B, nh, r * N + E, d) tokens: ``r`` copies of the N-token grid one after the other
            (r = 1 for queries), each given the same rotation, then ``E`` tokens left as they are.
        tables: cosine / sine, (N, d/2).
        num_exclude: E, the trailing tokens without position (object pointers).

    Returns:
        (B, nh, r * N + E, d) in the dtype of ``x``.
    """
    b, nh, length, d = x.shape
    n = tables.num_tokens
    num_rope = length - num_exclude
    if num_rope % n:
        raise ValueError(f"{num_rope} tokens are not whole copies of the {n}-token RoPE grid")
    source = x.float()
    out = torch.empty_like(source)  # (B, nh, L, d)
    src = source[:, :, :num_rope].view(b, nh, num_rope // n, n, d // 2, 2)  # (B, nh, r, N, d/2, 2)
    dst = out[:, :, :num_rope].view(b, nh, num_rope // n, n, d // 2, 2)
    a, c = src[..., 0], src[..., 1]  # (B, nh, r, N, d/2) each
    cos, sin = tables.cos, tables.sin  # (N, d/2), broadcast over (B, nh, r)
    # (a, c) -> (a cos - c sin, a sin + c cos), written in place: no stacking copy.
    torch.mul(a, cos, out=dst[..., 0])
    dst[..., 0].addcmul_(c, sin, value=-1.0)
    torch.mul(a, sin, out=dst[..., 1])
    dst[..., 1].addcmul_(c, cos)
    if num_exclude:
        out[:, :, num_rope:] = source[:, :, num_rope:]
    return out.to(x.dtype)


class RoPEAttention(nn.Module):
    """Multi-head attention with axial RoPE on queries and (the leading) keys.

    Args:
        embedding_dim: width of the queries and of the output.
        num_heads: heads.
        kv_in_dim: width of the key/value inputs (None: ``embedding_dim``).
        rope_theta: RoPE frequency base.
        rope_k_repeat: keys may be several copies of the query grid (cross-attention to memory).
        downsample_rate: internal width = ``embedding_dim / downsample_rate``.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        *,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        downsample_rate: int = 1,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide the internal width")
        kv_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(kv_dim, self.internal_dim)
        self.v_proj = nn.Linear(kv_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, nh, N, C/nh)."""
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, nh, N, hd)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        """Attend from ``q`` to ``k``/``v``.

        Args:
            q: (B, Nq, C) queries on a square grid.
            k: (B, Nk, C_kv) keys: ``Nk - num_k_exclude_rope`` tokens on (copies of) the query
                grid, then ``num_k_exclude_rope`` tokens without position.
            v: (B, Nk, C_kv) values.
            num_k_exclude_rope: trailing keys left unrotated.

        Returns:
            (B, Nq, C).
        """
        q = self.split_heads(self.q_proj(q))  # (B, nh, Nq, hd)
        k = self.split_heads(self.k_proj(k))  # (B, nh, Nk, hd)
        v = self.split_heads(self.v_proj(v))  # (B, nh, Nk, hd)
        nq, nk = q.shape[-2], k.shape[-2]
        if nq != nk and not self.rope_k_repeat:
            raise ValueError(f"{nk} keys for {nq} queries: only a rope_k_repeat attention takes memory keys")
        tables = rope_tables(q.shape[-1], nq, self.rope_theta, q.device)
        q = apply_rope(q, tables)
        if nk > num_k_exclude_rope:
            k = apply_rope(k, tables, num_exclude=num_k_exclude_rope)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, Nq, hd)
        b, nh, n, hd = out.shape
        out = out.transpose(1, 2).reshape(b, n, nh * hd)  # (B, Nq, C)
        return self.out_proj(out)


class MemoryAttentionLayer(nn.Module):
    """Self-attention, cross-attention to memory, MLP; each pre-normed with a residual."""

    def __init__(self, config: MemoryAttentionConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = RoPEAttention(d, config.num_heads, rope_theta=config.rope_theta)
        self.cross_attn_image = RoPEAttention(
            d, config.num_heads, kv_in_dim=config.kv_in_dim, rope_theta=config.rope_theta, rope_k_repeat=True
        )
        self.linear1 = nn.Linear(d, config.dim_feedforward)
        self.linear2 = nn.Linear(config.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.pos_enc_at_attn = config.pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = config.pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = config.pos_enc_at_cross_attn_keys

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        """One layer.

        Args:
            tgt: (B, N, C) frame tokens.
            memory: (B, M, C_mem) memory tokens (spatial memories, then object pointers).
            pos: (B, M, C_mem) memory position encoding.
            query_pos: (B, N, C) frame position encoding.
            num_k_exclude_rope: trailing memory tokens without RoPE (the object pointers).

        Returns:
            (B, N, C).
        """
        x = self.norm1(tgt)
        qk = x + query_pos if self.pos_enc_at_attn else x
        tgt = tgt + self.self_attn(qk, qk, x)
        x = self.norm2(tgt)
        tgt = tgt + self.cross_attn_image(
            x + query_pos if self.pos_enc_at_cross_attn_queries else x,
            memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            memory,
            num_k_exclude_rope=num_k_exclude_rope,
        )
        x = self.norm3(tgt)
        return tgt + self.linear2(F.relu(self.linear1(x)))


class MemoryAttention(nn.Module):
    """The stack of memory-attention layers and its final LayerNorm."""

    def __init__(self, config: MemoryAttentionConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.layers = nn.ModuleList(MemoryAttentionLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.pos_enc_at_input = config.pos_enc_at_input

    def forward(
        self,
        curr: Tensor,
        memory: Tensor,
        curr_pos: Tensor,
        memory_pos: Tensor,
        num_obj_ptr_tokens: int = 0,
    ) -> Tensor:
        """Condition a frame's tokens on the memory (sequence-first, as the official code).

        Args:
            curr: (N, B, C) frame tokens (the stride-16 level, flattened row-major).
            memory: (M, B, C_mem) memory tokens.
            curr_pos: (N, B, C) the frame's sine position encoding.
            memory_pos: (M, B, C_mem) the memory's position encoding.
            num_obj_ptr_tokens: trailing memory tokens that are object pointers.

        Returns:
            (N, B, C) conditioned tokens.
        """
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(f"batch of the frame ({curr.shape[1]}) and of the memory ({memory.shape[1]}) differ")
        x = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
        x = x.transpose(0, 1)  # (B, N, C)
        query_pos = curr_pos.transpose(0, 1)  # (B, N, C)
        memory = memory.transpose(0, 1)  # (B, M, C_mem)
        memory_pos = memory_pos.transpose(0, 1)  # (B, M, C_mem)
        for layer in self.layers:
            x = layer(x, memory, memory_pos, query_pos, num_k_exclude_rope=num_obj_ptr_tokens)
        return self.norm(x).transpose(0, 1)  # (N, B, C)
