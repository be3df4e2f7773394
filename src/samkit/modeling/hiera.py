"""Hiera trunk of the SAM 2 image encoder.

A stem convolution (stride 4) turns the image into a grid of tokens; four stages of
transformer blocks follow. The first block of stages 2-4 halves the grid by max-pooling its
queries (q-pooling, 2x2) and doubles the width and the number of heads; its shortcut is a
linear projection pooled the same way. Most blocks attend within non-overlapping windows
(mask units; the window side per stage is ``window_spec``; the first block of a stage still
uses the previous stage's window, which q-pooling halves); the ``global_att_blocks`` attend
over the whole grid. The position embedding is "windowed absolute": a background embedding
resized (bicubic) to the grid plus one window-sized embedding tiled over it.

Parameter names equal the official checkpoint keys below ``image_encoder.trunk.``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config_sam2 import HieraConfig

__all__ = ["Hiera", "HieraBlock", "HieraAttention"]


class HieraMLP(nn.Module):
    """Two linear layers with GELU between them (names ``layers.0``, ``layers.1``)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden_dim), nn.Linear(hidden_dim, dim)])

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., C)."""
        return self.layers[1](F.gelu(self.layers[0](x)))


def pool_grid(x: Tensor, stride: int) -> Tensor:
    """Max-pool a (B, H, W, C) grid by ``stride`` (floor) -> (B, H/stride, W/stride, C)."""
    y = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)  # (B, C, H', W')
    return y.permute(0, 2, 3, 1)  # (B, H', W', C)


def partition_windows(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """Split a (B, H, W, C) grid, zero-padded bottom/right to multiples of ``window``.

    Returns:
        (B * nW, window, window, C) windows and the padded (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)  # (B, nH, ws, nW, ws, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)  # (B*nW, ws, ws, C)
    return windows, (hp, wp)


def merge_windows(windows: Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`partition_windows`: (B * nW, ws, ws, C) -> (B, H, W, C), padding cut."""
    hp, wp = padded
    h, w = size
    c = windows.shape[-1]
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, c)  # (B, nH, nW, ws, ws, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)  # (B, Hp, Wp, C)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


class HieraAttention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid, optionally with q-pooling."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H', W', C_out); H' = H / q_stride with q-pooling, else H."""
        b, h, w, _ = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).view(b, h * w, 3, nh, -1)  # (B, N, 3, nh, hd)
        q, k, v = qkv.unbind(2)  # each (B, N, nh, hd)
        if self.q_stride:
            q = pool_grid(q.reshape(b, h, w, -1), self.q_stride)  # (B, H', W', C_out)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, nh, -1)  # (B, N', nh, hd)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, nh, N', hd)
        out = out.transpose(1, 2).reshape(b, h, w, -1)  # (B, H', W', C_out)
        return self.proj(out)


class HieraBlock(nn.Module):
    """Pre-norm transformer block on a (B, H, W, C) grid: windowed or global attention, MLP.

    Args:
        dim: input width.
        dim_out: output width (twice ``dim`` at a stage transition, which also pools).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``dim_out``.
        q_stride: pooling stride of the queries and the shortcut, or None.
        window_size: window side, 0 for global attention.
    """

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float, q_stride: int | None, window_size: int
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = HieraAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = HieraMLP(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H', W', C_out)."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)  # (B, H, W, C_out)
            if self.q_stride:
                shortcut = pool_grid(shortcut, self.q_stride)  # (B, H', W', C_out)
        window = self.window_size
        if window > 0:
            x, _ = partition_windows(x, window)  # (B*nW, ws, ws, C)
        x = self.attn(x)  # (B*nW, ws', ws', C_out) or (B, H', W', C_out)
        if window > 0:
            if self.q_stride:
                window //= self.q_stride
            h, w = shortcut.shape[1:3]
            padded = (h + (-h % window), w + (-w % window))
            x = merge_windows(x, window, padded, (h, w))  # (B, H', W', C_out)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Stem convolution: (B, 3, S, S) -> (B, S/4, S/4, C) (name ``proj``)."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            3, config.embed_dim, config.patch_kernel, stride=config.patch_stride, padding=config.patch_padding
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, H, W, C)."""
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)


class Hiera(nn.Module):
    """Hierarchical vision transformer; returns the output of every stage.

    Attributes:
        stage_ends: index of the last block of each stage.
        channel_list: stage widths, coarsest first (the neck's order).
    """

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.config = config
        stages = config.stages
        if len(stages) != len(config.window_spec):
            raise ValueError("stages and window_spec must have one entry per stage")
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][: config.q_pool]
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.window_pos_embed_bkg_spatial_size))
        first_window = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, config.embed_dim, first_window, first_window))
        self.blocks = nn.ModuleList()
        dim, heads, stage = config.embed_dim, config.num_heads, 0
        for i in range(sum(stages)):
            # A stage's first block still uses the previous stage's window (q-pooling halves it).
            window = 0 if i in config.global_att_blocks else config.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out = int(dim * config.dim_mul)
                heads = int(heads * config.head_mul)
                stage += 1
            q_stride = config.q_stride if i in q_pool_blocks else None
            self.blocks.append(HieraBlock(dim, dim_out, heads, config.mlp_ratio, q_stride, window))
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def position_embedding(self, size: tuple[int, int]) -> Tensor:
        """Windowed absolute position embedding of an (H, W) grid -> (1, H, W, C)."""
        pos = F.interpolate(self.pos_embed, size=size, mode="bicubic")  # (1, C, H, W)
        window = self.pos_embed_window
        reps = (size[0] // window.shape[-2], size[1] // window.shape[-1])
        pos = pos + window.repeat(1, 1, *reps)  # (1, C, H, W); repeat, not tile: no If nodes in ONNX
        return pos.permute(0, 2, 3, 1)  # (1, H, W, C)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, S, S) -> the output of every stage, finest first: [(B, C_i, H_i, W_i)]."""
        x = self.patch_embed(images)  # (B, H, W, C)
        x = x + self.position_embedding((x.shape[1], x.shape[2]))
        outputs: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))  # (B, C_i, H_i, W_i)
        return outputs
