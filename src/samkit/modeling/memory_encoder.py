"""SAM 2 memory encoder: a frame's features fused with its predicted mask into memory tokens.

``memory = out_proj(Fuser(pix_feat_proj(features) + MaskDownSampler(mask)))``, with a 2-D sine
position encoding of the memory grid:

* the mask (B, 1, 1024, 1024), already turned into the encoder's input scale by the caller
  (``sigmoid * 20 - 10``, or 0/1 * 20 - 10 for clicked frames), goes down 16x through four
  stride-2 3x3 convolutions (channels 1 -> 4 -> 16 -> 64 -> 256, each followed by a
  channel LayerNorm and GELU) and a 1x1 convolution;
* the fuser is two ConvNeXt blocks (7x7 depthwise convolution, LayerNorm, 4x MLP with GELU,
  layer scale ``gamma``, residual);
* ``out_proj`` narrows 256 -> 64 channels.

Parameter names equal the official checkpoint keys below ``memory_encoder.`` (the downsampler's
``encoder.{0,1,3,4,...,12}``: GELUs hold no weights but keep their index).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config_sam2 import MemoryEncoderConfig
from .common import LayerNorm2d
from .fpn_neck import sine_position_encoding

__all__ = ["MaskDownSampler", "CXBlock", "Fuser", "MemoryEncoder"]


class MaskDownSampler(nn.Module):
    """(B, 1, H, W) mask -> (B, C, H/16, W/16): strided convolutions widening by stride**2."""

    def __init__(self, config: MemoryEncoderConfig) -> None:
        super().__init__()
        num_layers = round(math.log(config.mask_total_stride) / math.log(config.mask_stride))
        if config.mask_stride**num_layers != config.mask_total_stride:
            raise ValueError("mask_total_stride must be a power of mask_stride")
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(num_layers):
            wider = channels * config.mask_stride**2
            layers += [
                nn.Conv2d(
                    channels,
                    wider,
                    kernel_size=config.mask_kernel_size,
                    stride=config.mask_stride,
                    padding=config.mask_padding,
                ),
                LayerNorm2d(wider),
                nn.GELU(),
            ]
            channels = wider
        layers.append(nn.Conv2d(channels, config.in_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, mask: Tensor) -> Tensor:
        """(B, 1, H, W) -> (B, C, H/16, W/16)."""
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, LayerNorm, pointwise MLP (GELU), layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # over channels, applied channels-last
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))  # (B, H, W, C)
        return x + (self.gamma * y).permute(0, 3, 1, 2)  # (B, C, H, W)


class Fuser(nn.Module):
    """A stack of :class:`CXBlock` (names ``layers.i``)."""

    def __init__(self, config: MemoryEncoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CXBlock(config.in_dim, config.fuser_kernel_size, config.fuser_padding) for _ in range(config.fuser_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Frame features + mask -> memory features and their position encoding."""

    def __init__(self, config: MemoryEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.mask_downsampler = MaskDownSampler(config)
        self.pix_feat_proj = nn.Conv2d(config.in_dim, config.in_dim, kernel_size=1)
        self.fuser = Fuser(config)
        self.out_proj = nn.Conv2d(config.in_dim, config.out_dim, kernel_size=1)

    def forward(self, pix_feat: Tensor, mask_for_mem: Tensor) -> tuple[Tensor, Tensor]:
        """Encode one frame's memory.

        Args:
            pix_feat: (B, C, h, w) stride-16 frame features.
            mask_for_mem: (B, 1, 16h, 16w) mask in the encoder's input scale (no sigmoid
                applied here).

        Returns:
            (B, C_mem, h, w) memory features and their (B, C_mem, h, w) sine position encoding.
        """
        masks = self.mask_downsampler(mask_for_mem)  # (B, C, h, w)
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks  # (B, C, h, w)
        x = self.out_proj(self.fuser(x))  # (B, C_mem, h, w)
        b, c, h, w = x.shape
        pos = sine_position_encoding(h, w, c, device=x.device).to(x.dtype)  # (C_mem, h, w)
        return x, pos.unsqueeze(0).expand(b, -1, -1, -1)  # (B, C_mem, h, w)
