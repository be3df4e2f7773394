"""ViT image encoder: patch embedding, windowed/global blocks, neck to 256 channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ImageEncoderConfig
from .attention import ViTAttention, window_partition, window_unpartition
from .common import LayerNorm2d, MLPBlock
from .workspace import Workspace, linear_into

__all__ = ["PatchEmbed", "ViTBlock", "ImageEncoderViT"]


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with one strided convolution (``proj``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) image -> (B, H/p, W/p, C) tokens."""
        return self.proj(x).permute(0, 2, 3, 1)  # (B, Hp, Wp, C)


class ViTBlock(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        grid_size: int,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        side = window_size if window_size > 0 else grid_size
        self.attn = ViTAttention(
            dim, num_heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos, input_size=(side, side)
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def _windowed_attention(self, x: Tensor, *, reference: bool, workspace: Workspace | None = None) -> Tensor:
        """Attention inside ``ws x ws`` windows of a normalized grid.

        The official model zero-pads the normalized tokens before the qkv projection,
        so padded tokens project to exactly the qkv bias and take part as keys. We
        project only the real tokens and fill the padding with the bias: same
        result, ~20% less qkv and proj work at 64x64 tokens and 14x14 windows.

        Args:
            x: (B, H, W, C) normalized tokens.
            workspace: scratch buffers shared with the other blocks (see :class:`Workspace`).

        Returns:
            (B, H, W, C) attention output after ``proj``.
        """
        attn = self.attn
        ws = self.window_size
        b, h, w, c = x.shape
        qkv = linear_into(workspace, "qkv", x, attn.qkv)  # (B, H, W, 3C)
        pad_h = (ws - h % ws) % ws
        pad_w = (ws - w % ws) % ws
        hp, wp = h + pad_h, w + pad_w
        if pad_h or pad_w:
            fill = (attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(3 * c)).to(qkv.dtype)
            shape = (b, hp, wp, 3 * c)
            padded = workspace.get("qkv_padded", shape, qkv) if workspace is not None else qkv.new_empty(shape)
            padded[:, h:] = fill  # (B, Hp, Wp, 3C): bias rows below, bias columns right, qkv inside
            padded[:, :h, w:] = fill
            padded[:, :h, :w] = qkv
            qkv = padded
        windows_shape = (b * (hp // ws) * (wp // ws), ws, ws, 3 * c)
        out_buffer = workspace.get("qkv_windows", windows_shape, qkv) if workspace is not None else None
        windows, padded_hw = window_partition(qkv, ws, out=out_buffer)  # (B*nW, ws, ws, 3C)
        n_windows = windows.shape[0]
        q, k, v = attn.split_heads(windows.view(n_windows, ws * ws, 3 * c))  # (B*nW, nh, ws*ws, hd)
        out = attn.attend(q, k, v, (ws, ws), reference=reference, workspace=workspace)  # (B*nW, ws*ws, C)
        out = window_unpartition(out.view(n_windows, ws, ws, c), ws, padded_hw, (h, w))  # (B, H, W, C)
        return attn.proj(out)

    def forward(self, x: Tensor, *, reference: bool = False, workspace: Workspace | None = None) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C); ``workspace``: scratch shared by the blocks of one forward."""
        normed = self.norm1(x)
        if self.window_size > 0:
            x = x + self._windowed_attention(normed, reference=reference, workspace=workspace)
        else:
            x = x + self.attn(normed, reference=reference, workspace=workspace)
        return x + self._mlp(self.norm2(x), workspace)

    def _mlp(self, x: Tensor, workspace: Workspace | None) -> Tensor:
        """The MLP, its (B, H, W, hidden) activations in the workspace with GELU applied in place."""
        mlp = self.mlp
        act = mlp.act
        if workspace is None or not isinstance(act, nn.GELU):
            return mlp(x)
        hidden = linear_into(workspace, "mlp_hidden", x, mlp.lin1)  # (B, H, W, hidden)
        torch.ops.aten.gelu_(hidden, approximate=act.approximate)
        return mlp.lin2(hidden)  # (B, H, W, C)


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder.

    Maps a normalized, padded (B, 3, 1024, 1024) image to a (B, 256, 64, 64) embedding.
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.img_size
        grid = config.grid_size
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if config.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(
                config.embed_dim,
                config.num_heads,
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                use_rel_pos=config.use_rel_pos,
                window_size=0 if i in config.global_attn_indexes else config.window_size,
                grid_size=grid,
            )
            for i in range(config.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(config.embed_dim, config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward(self, x: Tensor, *, reference: bool = False) -> Tensor:
        """Encode images.

        Args:
            x: (B, 3, S, S) normalized, padded images (S = ``img_size``).
            reference: use the materialized-scores attention path (for tests).

        Returns:
            (B, 256, S/16, S/16) image embeddings.
        """
        return self._encode(x, reference=reference, early_features=None)

    def forward_with_early_features(self, x: Tensor, *, reference: bool = False) -> tuple[Tensor, Tensor]:
        """Encode images and also return the tokens after the first global-attention block.

        HQ-SAM's decoder fuses these early features with the final embedding.

        Args:
            x: (B, 3, S, S) normalized, padded images.
            reference: use the materialized-scores attention path (for tests).

        Returns:
            (B, 256, S/16, S/16) image embeddings and (B, C, S/16, S/16) early features
            (C = ``embed_dim``; a channels-first view of the block's output).
        """
        early: list[Tensor] = []
        embeddings = self._encode(x, reference=reference, early_features=early)
        if not early:
            raise ValueError("this encoder has no global-attention block: it has no early features")
        return embeddings, early[0].permute(0, 3, 1, 2)  # (B, C, H, W)

    def _encode(self, x: Tensor, *, reference: bool, early_features: list[Tensor] | None) -> Tensor:
        """:meth:`forward`; appends the first global block's (B, H, W, C) output to ``early_features``."""
        x = self.patch_embed(x)  # (B, 64, 64, C)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:
                pos = F.interpolate(
                    pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic", align_corners=False
                ).permute(0, 2, 3, 1)  # (1, H, W, C)
            x = x + pos
        workspace = Workspace() if Workspace.usable() else None  # freed when the forward returns
        for block in self.blocks:
            x = block(x, reference=reference, workspace=workspace)
            if early_features is not None and not early_features and block.window_size == 0:
                early_features.append(x)  # a fresh tensor: later blocks do not write into it
        return self.neck(x.permute(0, 3, 1, 2))  # (B, 256, 64, 64)
