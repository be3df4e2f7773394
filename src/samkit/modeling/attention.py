"""Attention building blocks of the ViT image encoder.

Windows, decomposed relative-position bias and one attention function with two
paths: a fused path on ``F.scaled_dot_product_attention`` (the bias goes in as
``attn_mask``, queries are processed in chunks so the (chunk, N) bias stays small)
and a reference path that materializes the scores, kept for tests.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .workspace import Workspace, linear_into

__all__ = [
    "window_partition",
    "window_unpartition",
    "relative_position_table",
    "decomposed_rel_pos_terms",
    "rel_pos_attention",
    "reference_rel_pos_attention",
    "ViTAttention",
]

# Query rows per SDPA call in global attention: the (B, nh, chunk, N) bias then
# stays a few tens of MB instead of (nh, 4096, 4096) floats.
DEFAULT_QUERY_CHUNK = 1024


def window_partition(
    x: Tensor, window_size: int, out: Tensor | None = None
) -> tuple[Tensor, tuple[int, int]]:
    """Split a token grid into non-overlapping windows, zero-padding bottom/right.

    Args:
        x: (B, H, W, C) tokens.
        window_size: window side ``ws``.
        out: (B*nW, ws, ws, C) tensor to write the windows into (e.g. a :class:`Workspace` buffer).

    Returns:
        windows (B*nW, ws, ws, C) and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    n_h, n_w = hp // window_size, wp // window_size
    x = x.view(b, n_h, window_size, n_w, window_size, c).permute(0, 1, 3, 2, 4, 5)  # (B, nH, nW, ws, ws, C)
    if out is None:
        return x.reshape(-1, window_size, window_size, c), (hp, wp)  # (B*nH*nW, ws, ws, C)
    out.view(b, n_h, n_w, window_size, window_size, c).copy_(x)
    return out, (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`, dropping the padding.

    Args:
        windows: (B*nW, ws, ws, C).
        window_size: window side ``ws``.
        padded_hw: (Hp, Wp) returned by :func:`window_partition`.
        hw: original (H, W).

    Returns:
        (B, H, W, C) tokens.
    """
    hp, wp = padded_hw
    h, w = hw
    n_h, n_w = hp // window_size, wp // window_size
    b = windows.shape[0] // (n_h * n_w)
    x = windows.view(b, n_h, n_w, window_size, window_size, -1)  # (B, nH, nW, ws, ws, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)  # (B, Hp, Wp, C)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


@functools.lru_cache(maxsize=32)
def _relative_index(q_size: int, k_size: int, device: torch.device) -> Tensor:
    """(q_size, k_size) long index into a rel-pos table of length 2*max(q,k)-1 (cached).

    Built outside inference mode even when first asked for inside it: a cached inference
    tensor would break a later forward under autograd (fine-tuning after predicting).
    """
    with torch.inference_mode(False):
        q_coords = torch.arange(q_size, device=device)[:, None] * max(k_size / q_size, 1.0)
        k_coords = torch.arange(k_size, device=device)[None, :] * max(q_size / k_size, 1.0)
        relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
        return relative.long()


def relative_position_table(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative-position embeddings for every (query, key) coordinate pair along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: (L, hd) learned table; resized linearly if L != 2*max(q,k)-1.

    Returns:
        (q_size, k_size, hd) embeddings.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),  # (1, hd, L)
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)  # (L', hd)
    return rel_pos[_relative_index(q_size, k_size, rel_pos.device)]


def decomposed_rel_pos_terms(
    q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Per-query height and width bias terms of decomposed relative positions.

    The bias of query (i, j) towards key (k, l) is ``rel_h[i, j, k] + rel_w[i, j, l]``.

    Args:
        q: (B, nh, N, hd) unscaled queries, N = H*W.
        rel_pos_h: (2H-1, hd) table.
        rel_pos_w: (2W-1, hd) table.
        hw: (H, W) of the (square-attention) token grid.

    Returns:
        rel_h (B, nh, N, H) and rel_w (B, nh, N, W).
    """
    h, w = hw
    b, nh, n, hd = q.shape
    table_h = relative_position_table(h, h, rel_pos_h).to(q.dtype)  # (H, H, hd)
    table_w = relative_position_table(w, w, rel_pos_w).to(q.dtype)  # (W, W, hd)
    r_q = q.reshape(b, nh, h, w, hd)  # (B, nh, H, W, hd)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, table_h).reshape(b, nh, n, h)  # (B, nh, N, H)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, table_w).reshape(b, nh, n, w)  # (B, nh, N, W)
    return rel_h, rel_w


def _bias_from_terms(rel_h: Tensor, rel_w: Tensor) -> Tensor:
    """(B, nh, n, H) + (B, nh, n, W) -> (B, nh, n, H*W) additive bias."""
    b, nh, n, h = rel_h.shape
    w = rel_w.shape[-1]
    return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, nh, n, h * w)


def rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_pos_h: Tensor | None,
    rel_pos_w: Tensor | None,
    hw: tuple[int, int],
    *,
    query_chunk: int | None = DEFAULT_QUERY_CHUNK,
    workspace: Workspace | None = None,
) -> Tensor:
    """Softmax attention with decomposed relative-position bias on fused SDPA kernels.

    Args:
        q, k, v: (B, nh, N, hd), N = H*W.
        rel_pos_h, rel_pos_w: tables, or None for no relative positions.
        hw: (H, W) token grid.
        query_chunk: process this many query rows per SDPA call (None: all at once).
        workspace: where the chunks' bias buffer comes from (shared by the encoder's blocks).

    Returns:
        (B, nh, N, hd) attention output.
    """
    if rel_pos_h is None or rel_pos_w is None:
        return F.scaled_dot_product_attention(q, k, v)
    n = q.shape[2]
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, hw)
    if query_chunk is None or n <= query_chunk:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_bias_from_terms(rel_h, rel_w))
    b, nh, _, _ = q.shape
    h, w = hw
    if torch.jit.is_tracing():
        # ONNX export traces this function: the same chunks, written without in-place ops
        # (out= buffers and slice assignment do not translate to an ONNX graph).
        outputs = []
        for start in range(0, n, query_chunk):
            stop = min(start + query_chunk, n)
            bias = rel_h[:, :, start:stop, :, None] + rel_w[:, :, start:stop, None, :]  # (B, nh, c, H, W)
            outputs.append(
                F.scaled_dot_product_attention(
                    q[:, :, start:stop], k, v, attn_mask=bias.reshape(b, nh, stop - start, h * w)
                )
            )  # (B, nh, c, hd)
        return torch.cat(outputs, dim=2)  # (B, nh, N, hd)
    out = torch.empty_like(q)
    # One bias buffer reused by every chunk: fresh 100+ MB allocations cost page faults each time.
    shape = (b, nh, query_chunk, h, w)
    buffer = workspace.get("rel_pos_bias", shape, q) if workspace is not None else q.new_empty(shape)  # (B, nh, c, H, W)
    for start in range(0, n, query_chunk):
        stop = min(start + query_chunk, n)
        bias = buffer[:, :, : stop - start]
        torch.add(
            rel_h[:, :, start:stop, :, None], rel_w[:, :, start:stop, None, :], out=bias
        )  # (B, nh, c, H, W)
        out[:, :, start:stop] = F.scaled_dot_product_attention(
            q[:, :, start:stop], k, v, attn_mask=bias.view(b, nh, stop - start, h * w)
        )
    return out


def reference_rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_pos_h: Tensor | None,
    rel_pos_w: Tensor | None,
    hw: tuple[int, int],
) -> Tensor:
    """Readable materialized-scores version of :func:`rel_pos_attention` (for tests).

    Args and returns as :func:`rel_pos_attention`.
    """
    scale = q.shape[-1] ** -0.5
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, nh, N, N)
    if rel_pos_h is not None and rel_pos_w is not None:
        rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, hw)
        scores = scores + _bias_from_terms(rel_h, rel_w)
    return scores.softmax(dim=-1) @ v


class ViTAttention(nn.Module):
    """Multi-head self-attention over a (H, W) token grid with decomposed rel-pos bias.

    Parameter names match the official checkpoint: ``qkv``, ``proj``, ``rel_pos_h``,
    ``rel_pos_w``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))

    def split_heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, 3*C) projected tokens -> q, k, v each (B, nh, N, hd)."""
        b, n, _ = qkv.shape
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, nh, N, hd)
        return qkv[0], qkv[1], qkv[2]

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        hw: tuple[int, int],
        *,
        reference: bool = False,
        workspace: Workspace | None = None,
    ) -> Tensor:
        """q, k, v (B, nh, N, hd) -> merged heads (B, N, C), before ``proj``."""
        rel_h = self.rel_pos_h if self.use_rel_pos else None
        rel_w = self.rel_pos_w if self.use_rel_pos else None
        if reference:
            out = reference_rel_pos_attention(q, k, v, rel_h, rel_w, hw)
        else:
            out = rel_pos_attention(q, k, v, rel_h, rel_w, hw, workspace=workspace)
        b, nh, n, hd = out.shape
        return out.transpose(1, 2).reshape(b, n, nh * hd)  # (B, N, C)

    def forward(self, x: Tensor, *, reference: bool = False, workspace: Workspace | None = None) -> Tensor:
        """Attention over a full grid.

        Args:
            x: (B, H, W, C) tokens.
            reference: use the materialized-scores path (slow; for tests).
            workspace: scratch buffers shared with the other blocks (see :class:`Workspace`).

        Returns:
            (B, H, W, C).
        """
        b, h, w, c = x.shape
        qkv = linear_into(workspace, "qkv", x.reshape(b, h * w, c), self.qkv)  # (B, N, 3C)
        q, k, v = self.split_heads(qkv)  # (B, nh, N, hd)
        out = self.attend(q, k, v, (h, w), reference=reference, workspace=workspace)  # (B, N, C)
        return self.proj(out).view(b, h, w, c)
