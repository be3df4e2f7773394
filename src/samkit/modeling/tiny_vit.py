"""TinyViT image encoder of MobileSAM (``vit_t``).

A convolutional stem and stage (MBConv blocks), then three stages of windowed
attention blocks with a learned per-offset attention bias and a depthwise "local"
convolution, joined by patch-merging convolutions; a neck maps to 256 channels.
Parameter names equal MobileSAM's checkpoint keys under ``image_encoder.``.

Layout: convolutions run on channels-last (B, C, H, W) tensors, attention stages on
(B, H, W, C) tokens; the two are the same memory, so switching is a free ``permute``.
Every convolution is followed by a BatchNorm in the checkpoint; the BatchNorm is folded
into the convolution's weight and bias when it is called (inference only: running
statistics are always used, whatever ``.training`` says).

The checkpoint's classification head (``norm_head``, ``head``) is not built: SAM never
uses it; :func:`samkit.build_sam` drops those keys.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TinyViTConfig
from .common import LayerNorm2d

__all__ = [
    "AttentionStage",
    "Conv2dBN",
    "ConvStage",
    "MBConv",
    "Neck",
    "PatchEmbed",
    "PatchMerging",
    "TinyViT",
    "TinyViTBlock",
    "TinyViTMlp",
    "WindowAttention",
    "bias_index",
    "merge_strides",
]


def _gelu_(x: Tensor) -> Tensor:
    """Exact GELU, in place when no gradient is tracked.

    The stem and first stage run on tensors of tens of MB; on CPU a fresh allocation of
    that size costs more (page faults) than the GELU itself.
    """
    if x.requires_grad:
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


def _to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) channels-last -> (B, H, W, C) contiguous (a free view when channels-last)."""
    return x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)


def _to_channels_last(x: Tensor) -> Tensor:
    """(B, H, W, C) tokens -> (B, C, H, W) with channels-last strides (a free view)."""
    return x.permute(0, 3, 1, 2)  # (B, C, H, W)


@functools.lru_cache(maxsize=1)
def _cpu_has_reduced_precision_conv() -> bool:
    # PyTorch hands bf16/fp16 convolutions to oneDNN only on AVX-512 x86 CPUs; elsewhere
    # it falls back to im2col and, for depthwise convolutions, a per-channel loop.
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, conv: nn.Conv2d) -> Tensor:
    """``F.conv2d`` with ``conv``'s geometry, computed in ``x.dtype``.

    Exception: on CPUs without reduced-precision oneDNN kernels a bf16/fp16 spatial
    convolution falls back to kernels >10x slower than float32 ones, so it is computed in
    float32 there (at least as accurate) and cast back.

    Args:
        x: (B, I, H, W) input.
        weight: (O, I/groups, k, k) weight, any floating dtype.
        bias: (O,) bias or None.
        conv: the module whose stride, padding, dilation and groups apply.
    """
    compute = x.dtype
    if x.device.type == "cpu" and compute in (torch.bfloat16, torch.float16) and not _cpu_has_reduced_precision_conv():
        compute = torch.float32
    out = F.conv2d(
        x.to(compute),
        weight.to(compute),
        None if bias is None else bias.to(compute),
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
    )
    return out.to(x.dtype)


class Conv2dBN(nn.Module):
    """Bias-free convolution ``c`` followed by an eval-mode BatchNorm ``bn``, folded into one conv.

    The folded weight and bias are computed in float32 at every call (a few thousand
    weights: negligible next to the convolution), so loading new weights needs no cache
    invalidation; they are then cast to the input's dtype.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.pointwise = kernel_size == 1 and stride == 1 and padding == 0 and groups == 1

    def folded(self) -> tuple[Tensor, Tensor]:
        """Float32 weight (O, I/groups, k, k) and bias (O,) of the single equivalent convolution."""
        bn = self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)  # (O,)
        weight = self.c.weight.float() * scale.view(-1, 1, 1, 1)  # (O, I/g, k, k)
        bias = bn.bias.float() - bn.running_mean.float() * scale  # (O,)
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        """(B, I, H, W) -> (B, O, H', W'); keeps channels-last strides."""
        weight, bias = self.folded()
        if self.pointwise:
            # A 1x1 convolution is a matmul over channels: on channels-last memory the
            # token view is free, and the GEMM path does not depend on the thread count
            # (single-threaded PyTorch sends 1x1 convolutions to a slow im2col kernel).
            out = F.linear(_to_tokens(x), weight.flatten(1).to(x.dtype), bias.to(x.dtype))  # (B, H, W, O)
            return _to_channels_last(out)  # (B, O, H, W)
        return _conv2d(x, weight, bias, self.c)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions (``seq.0``, ``seq.2``) with a GELU between: /4 resolution."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, C, S/4, S/4) channels-last."""
        x = self.seq[0](x.contiguous(memory_format=torch.channels_last))  # (B, C/2, S/2, S/2)
        return self.seq[2](_gelu_(x))  # seq[1] is the GELU, applied in place


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = _gelu_(self.conv1(x))  # (B, hidden, H, W)
        y = _gelu_(self.conv2(y))
        y = self.conv3(y)  # (B, C, H, W)
        return _gelu_(y.add_(x))


class PatchMerging(nn.Module):
    """1x1 conv to ``out_dim``, depthwise 3x3 conv with ``stride``, 1x1 conv (GELUs between)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_dim, H/stride, W/stride) (sizes rounded up)."""
        x = _gelu_(self.conv1(x))
        x = _gelu_(self.conv2(x))
        return self.conv3(x)


def bias_index(window_size: int) -> Tensor:
    """Index of each (query, key) pair of a ``ws x ws`` window into the per-offset bias table.

    MobileSAM numbers the offsets (|dy|, |dx|) in order of first appearance, scanning
    query-major then key-major in row-major order; the first query (0, 0) already meets
    every offset, in row-major order, so offset (|dy|, |dx|) has index ``|dy| * ws + |dx|``.

    Returns:
        (N, N) int64 index, N = ws * ws.
    """
    coords = torch.arange(window_size)
    rows = coords.repeat_interleave(window_size)  # (N,)
    cols = coords.repeat(window_size)  # (N,)
    dy = (rows[:, None] - rows[None, :]).abs()  # (N, N)
    dx = (cols[:, None] - cols[None, :]).abs()  # (N, N)
    return dy * window_size + dx


class WindowAttention(nn.Module):
    """Pre-norm multi-head attention inside ``ws x ws`` windows with a learned offset bias.

    Attributes:
        attention_biases: (nh, ws*ws) learned bias per head and (|dy|, |dx|) offset.
        attention_bias_idxs: (N, N) non-persistent index into it (not in the checkpoint).
    """

    attention_bias_idxs: Tensor

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        # Output features are ordered (head, [q | k | v], head_dim).
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", bias_index(window_size), persistent=False)

    def bias(self, dtype: torch.dtype) -> Tensor:
        """(1, nh, N, N) additive attention bias of one window.

        4-D on purpose: the fused CPU SDPA kernel accepts a (1 | B, 1 | nh, N, N) mask and
        silently falls back to the materializing math path for a 3-D one.
        """
        n = self.attention_bias_idxs.shape[0]
        # index_select on the flat index is ~15x faster than advanced indexing here.
        table = self.attention_biases.index_select(1, self.attention_bias_idxs.view(-1))  # (nh, N*N)
        return table.view(1, self.num_heads, n, n).to(dtype)  # (1, nh, N, N)

    def forward(self, x: Tensor) -> Tensor:
        """Attention over windows of a token grid, zero-padded bottom/right to whole windows.

        As in MobileSAM the *un-normalized* tokens are padded with zeros and normalized
        inside the attention (a padded token normalizes to exactly ``norm.bias``); padded
        tokens take part as keys, their outputs are dropped.

        Args:
            x: (B, H, W, C) tokens.

        Returns:
            (B, H, W, C) attention output after ``proj`` (without the residual).
        """
        b, h, w, c = x.shape
        ws, nh, hd = self.window_size, self.num_heads, self.head_dim
        pad_h = (ws - h % ws) % ws
        pad_w = (ws - w % ws) % ws
        hp, wp = h + pad_h, w + pad_w
        if pad_h or pad_w:
            # Padding the C-wide input (as MobileSAM does) moves a third of the bytes that
            # filling the 3C-wide qkv would; the extra qkv rows are cheap.
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
        qkv = self.qkv(self.norm(x))  # (B, Hp, Wp, 3C)
        n_h, n_w = hp // ws, wp // ws
        qkv = qkv.view(b, n_h, ws, n_w, ws, nh, 3 * hd)  # (B, nH, ws, nW, ws, nh, 3hd)
        windows = qkv.permute(0, 1, 3, 5, 2, 4, 6).reshape(b * n_h * n_w, nh, ws * ws, 3 * hd)  # (B*nW, nh, N, 3hd)
        q, k, v = windows.split(hd, dim=-1)  # each (B*nW, nh, N, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(q.dtype))  # (B*nW, nh, N, hd)
        # reshape, not view: fused GPU kernels may return a head-transposed layout.
        out = out.reshape(b, n_h, n_w, nh, ws, ws, hd)  # (B, nH, nW, nh, ws, ws, hd)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, c)  # (B, Hp, Wp, C)
        # Projecting the padded grid costs a little extra matmul but saves a copy of the crop.
        return self.proj(out)[:, :h, :w]  # (B, H, W, C)


class TinyViTMlp(nn.Module):
    """Pre-norm feed-forward block: norm -> fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., C)."""
        return self.fc2(_gelu_(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention + residual, depthwise local conv, MLP + residual."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = TinyViTMlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + self.attn(x)
        x = _to_tokens(self.local_conv(_to_channels_last(x)))  # (B, H, W, C)
        return self.mlp(x).add_(x)


class ConvStage(nn.Module):
    """First stage (``layers.0``): MBConv blocks, then an optional patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) channels-last -> (B, C', H', W') channels-last."""
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class AttentionStage(nn.Module):
    """A TinyViT attention stage (``layers.i``, i >= 1): blocks, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) channels-last -> (B, C', H', W') channels-last."""
        tokens = _to_tokens(x)  # (B, H, W, C)
        for block in self.blocks:
            tokens = block(tokens)
        x = _to_channels_last(tokens)  # (B, C, H, W)
        return x if self.downsample is None else self.downsample(x)


class Neck(nn.Sequential):
    """1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (children ``0``..``3``, as in the checkpoint)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_chans, H, W)."""
        for module in self:
            x = _conv2d(x, module.weight, module.bias, module) if isinstance(module, nn.Conv2d) else module(x)
        return x


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def merge_strides(config: TinyViTConfig) -> tuple[int, ...]:
    """Stride of each patch merging: 2 until the grid reaches ``img_size / 16``, then 1.

    For MobileSAM (1024 input, 4 stages) this is (2, 2, 1): 256 -> 128 -> 64 -> 64. (The
    reference code keys stride 1 on the output width being 320, 448 or 576; for MobileSAM's
    widths both rules agree, and this one also works for small test configs.)

    Raises:
        ValueError: the stages cannot reach ``img_size / 16``.
    """
    res = _ceil_div(_ceil_div(config.img_size, 2), 2)  # the stem: two stride-2 3x3 convs, padding 1
    strides = []
    for _ in range(len(config.embed_dims) - 1):
        stride = 2 if res > config.grid_size else 1
        res = _ceil_div(res, stride)
        strides.append(stride)
    if res != config.grid_size:
        raise ValueError(
            f"TinyViT with {len(config.embed_dims)} stages reaches a {res}x{res} grid, "
            f"expected img_size/16 = {config.grid_size}"
        )
    return tuple(strides)


class TinyViT(nn.Module):
    """MobileSAM's TinyViT image encoder.

    Maps a normalized, padded (B, 3, S, S) image to a (B, out_chans, S/16, S/16) embedding.
    Submodules ``patch_embed``, ``layers.0`` (:class:`ConvStage`), ``layers.1..`` (
    :class:`AttentionStage`) and ``neck`` carry MobileSAM's parameter names. The ImageNet
    classification head of the checkpoint (``config.num_classes`` outputs) is not built.
    """

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        n_stages = len(config.embed_dims)
        if not (len(config.depths) == len(config.num_heads) == len(config.window_sizes) == n_stages):
            raise ValueError("embed_dims, depths, num_heads and window_sizes must have the same length")
        self.config = config
        self.img_size = config.img_size
        strides = merge_strides(config)
        dims = config.embed_dims
        self.patch_embed = PatchEmbed(config.in_chans, dims[0])
        layers: list[nn.Module] = []
        for i in range(n_stages):
            downsample = PatchMerging(dims[i], dims[i + 1], strides[i]) if i < n_stages - 1 else None
            if i == 0:
                layers.append(ConvStage(dims[0], config.depths[0], config.mbconv_expand_ratio, downsample))
            else:
                layers.append(
                    AttentionStage(
                        dims[i],
                        config.depths[i],
                        config.num_heads[i],
                        config.window_sizes[i],
                        config.mlp_ratio,
                        config.local_conv_size,
                        downsample,
                    )
                )
        self.layers = nn.ModuleList(layers)
        self.neck = Neck(dims[-1], config.out_chans)

    def forward(self, x: Tensor) -> Tensor:
        """Encode images.

        Args:
            x: (B, 3, S, S) normalized, padded images (S = ``img_size``).

        Returns:
            (B, out_chans, S/16, S/16) image embeddings (channels-last strides).
        """
        x = self.patch_embed(x)  # (B, C0, S/4, S/4)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)  # (B, out_chans, S/16, S/16)

    def forward_with_early_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode images and also return the output of stage 1 (``layers.1``), HQ-SAM's early features.

        Args:
            x: (B, 3, S, S) normalized, padded images.

        Returns:
            (B, out_chans, S/16, S/16) image embeddings and the (B, C2, S/16, S/16) stage-1 output
            (C2 = ``embed_dims[2]``, after its patch merging; channels-last strides).
        """
        if len(self.layers) < 3:
            raise ValueError("HQ-SAM's early features need a TinyViT with at least 3 stages")
        x = self.patch_embed(x)  # (B, C0, S/4, S/4)
        early = x
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == 1:
                early = x  # (B, C2, S/16, S/16); later stages read it without writing into it
        return self.neck(x), early  # (B, out_chans, S/16, S/16), (B, C2, S/16, S/16)
