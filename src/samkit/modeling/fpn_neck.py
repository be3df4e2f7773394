"""FPN neck of the SAM 2 image encoder, and its sine position encoding.

Each stage output of the trunk goes through a 1x1 convolution to ``d_model`` channels
(``convs.i.conv``, coarsest stage first). Going from coarse to fine, a level listed in
``fpn_top_down_levels`` adds the previous (coarser) result upsampled 2x (nearest); the other
levels keep their lateral features only. ``scalp`` drops the coarsest levels from the output.

The sine position encoding of each level is used by the video model's memory attention
only; an image model never needs it, so :meth:`FpnNeck.forward` computes it on request.

Parameter names equal the official checkpoint keys below ``image_encoder.neck.``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config_sam2 import HieraConfig
from .hiera import Hiera

__all__ = ["sine_position_encoding", "FpnNeck", "Sam2ImageEncoder"]


def sine_position_encoding(
    height: int,
    width: int,
    channels: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
) -> Tensor:
    """Normalized 2-D sine/cosine position encoding of an (H, W) grid -> (channels, H, W).

    Positions 1..H (rows) and 1..W (columns) are scaled to (0, 2 pi]; each axis gets
    ``channels / 2`` features, frequencies ``temperature ** (2 * (i // 2) / (channels / 2))``,
    sine on even and cosine on odd features; rows first, then columns.
    """
    feats = channels // 2
    eps = 1e-6
    scale = 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale  # (H,)
    x = x / (x[-1:] + eps) * scale  # (W,)
    dim_t = torch.arange(feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / feats)  # (F,)

    def encode(pos: Tensor) -> Tensor:
        angles = pos[:, None] / dim_t  # (L, F)
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)  # (L, F)

    pos_y = encode(y)[:, None, :].expand(height, width, feats)  # (H, W, F)
    pos_x = encode(x)[None, :, :].expand(height, width, feats)  # (H, W, F)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # (2F, H, W)


class LateralConv(nn.Module):
    """One level's 1x1 convolution (name ``conv``, as in the checkpoint)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        return self.conv(x)


class FpnNeck(nn.Module):
    """Feature pyramid over the trunk's stage outputs."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.backbone_channel_list = list(config.backbone_channel_list)
        self.convs = nn.ModuleList(LateralConv(c, config.d_model) for c in self.backbone_channel_list)
        self.fpn_top_down_levels = set(config.fpn_top_down_levels)

    def forward(self, stage_outputs: list[Tensor], with_positions: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """Stage outputs, finest first [(B, C_i, H_i, W_i)] -> ([(B, d, H_i, W_i)], positions).

        Args:
            stage_outputs: the trunk's outputs.
            with_positions: also return each level's (B, d, H_i, W_i) sine position encoding
                (else an empty list).
        """
        n = len(self.convs) - 1
        levels: list[Tensor] = [stage_outputs[0]] * (n + 1)
        previous: Tensor | None = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](stage_outputs[i])  # (B, d, H_i, W_i)
            if i in self.fpn_top_down_levels and previous is not None:
                top_down = F.interpolate(previous.float(), scale_factor=2.0, mode="nearest")  # (B, d, 2H, 2W)
                previous = lateral + top_down
            else:
                previous = lateral
            levels[i] = previous
        positions: list[Tensor] = []
        if with_positions:
            for level in levels:
                b, _, h, w = level.shape
                pe = sine_position_encoding(h, w, self.d_model, device=level.device).to(level.dtype)
                positions.append(pe.unsqueeze(0).expand(b, -1, -1, -1))  # (B, d, H, W)
        return levels, positions


class Sam2ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck, without the ``scalp`` coarsest levels (names ``trunk``, ``neck``)."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = Hiera(config)
        self.neck = FpnNeck(config)
        if self.trunk.channel_list != self.neck.backbone_channel_list:
            raise ValueError("trunk and neck channel lists differ")
        self.scalp = config.scalp

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, S, S) -> feature levels finest first, e.g. [(B, 256, S/4, S/4), (.., S/8, ..), (.., S/16, ..)]."""
        levels, _ = self.neck(self.trunk(images))
        return levels[: len(levels) - self.scalp]
