"""Prompt encoder: points, boxes and mask prompts -> sparse and dense embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import PromptEncoderConfig
from .common import LayerNorm2d

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]

# Point labels understood by the prompt encoder.
LABEL_PADDING = -1  # "not a point"
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature positional encoding of normalized (x, y) coordinates."""

    positional_encoding_gaussian_matrix: Tensor

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """(..., 2) coordinates in [0, 1] -> (..., 2*num_pos_feats) features."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """Dense encoding of an (h, w) grid of cell centres -> (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self.encode(torch.stack([x_embed, y_embed], dim=-1))  # (h, w, C)
        return pe.permute(2, 0, 1)  # (C, h, w)

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Encode pixel coordinates of an ``image_size`` = (H, W) image: (B, N, 2) -> (B, N, C)."""
        size_xy = coords.new_tensor([float(image_size[1]), float(image_size[0])])
        return self.encode((coords / size_xy).float())


class PromptEncoder(nn.Module):
    """SAM's prompt encoder.

    Sparse prompts (points, box corners) become one ``embed_dim`` token each; a mask
    prompt (B, 1, 256, 256) becomes a dense (B, embed_dim, 64, 64) embedding, or the
    learned ``no_mask_embed`` when absent.
    """

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.image_embedding_size = (config.image_embedding_size, config.image_embedding_size)
        self.input_image_size = (config.input_image_size, config.input_image_size)
        self.pe_layer = PositionEmbeddingRandom(config.embed_dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, config.embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, config.embed_dim)
        c = config.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.Conv2d(c // 4, c, kernel_size=2, stride=2),
            LayerNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, config.embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, config.embed_dim)
        self._dense_pe_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """(H, W) of a mask prompt: 4x the embedding grid (256, 256)."""
        return (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image embedding grid, (1, C, 64, 64).

        A constant of the weights; cached per device/dtype and invalidated when the
        model is reloaded (see :meth:`clear_cache`).
        """
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        key = (matrix.device, matrix.dtype)
        cached = self._dense_pe_cache.get(key)
        if cached is None:
            cached = self.pe_layer(self.image_embedding_size).unsqueeze(0).to(matrix.dtype)
            self._dense_pe_cache[key] = cached
        return cached

    def clear_cache(self) -> None:
        """Forget cached constants (call after changing weights in place)."""
        self._dense_pe_cache.clear()

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def,override]
        self.clear_cache()
        return super()._apply(fn, recurse)

    def embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """Point prompts -> tokens.

        Args:
            points: (B, N, 2) pixel coordinates in the 1024-space.
            labels: (B, N) in {-1, 0, 1, 2, 3}.
            pad: append one "not a point" token (done when no box is given).

        Returns:
            (B, N(+1), C) sparse embeddings.
        """
        points = points + 0.5  # shift to the pixel centre
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)  # (B, N+1, 2)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)  # (B, N+1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)  # (B, N, C)
        return self._with_label_embeddings(embedding, labels)

    def embed_normalized_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """:meth:`embed_points` for points already normalized by the caller.

        For callers that compute ``(pixel + 0.5) / (W, H)`` themselves, e.g. in float64 on the
        host, so that no float64 tensor reaches the model's device (Apple's MPS has none).

        Args:
            coords: (B, N, 2) float32 ``((x + 0.5) / W, (y + 0.5) / H)`` in the 1024-space.
            labels: (B, N) in {-1, 0, 1, 2, 3}.
            pad: append one "not a point" token (done when no box is given).

        Returns:
            (B, N(+1), C) sparse embeddings, equal to :meth:`embed_points` of the pixel points.
        """
        if pad:  # the padding token's coordinates are never read: its label replaces its encoding
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)  # (B, N+1, 2)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)  # (B, N+1)
        return self._with_label_embeddings(self.pe_layer.encode(coords.float()), labels)

    def _with_label_embeddings(self, embedding: Tensor, labels: Tensor) -> Tensor:
        """(B, N, C) positional encodings of points with (B, N) labels -> their sparse embeddings."""
        lab = labels.unsqueeze(-1)  # (B, N, 1)
        embedding = torch.where(lab == LABEL_PADDING, self.not_a_point_embed.weight.to(embedding.dtype), embedding)
        for value, table in enumerate(self.point_embeddings):
            embedding = torch.where(lab == value, embedding + table.weight.to(embedding.dtype), embedding)
        return embedding

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """(B, 4) XYXY boxes in the 1024-space -> (B, 2, C) corner tokens."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)  # (B, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)  # (B, 2, C)
        corner_types = torch.stack([self.point_embeddings[2].weight[0], self.point_embeddings[3].weight[0]])  # (2, C)
        return embedding + corner_types.to(embedding.dtype)

    def embed_masks(self, masks: Tensor) -> Tensor:
        """(B, 1, 256, 256) mask logits -> (B, C, 64, 64)."""
        return self.mask_downscaling(masks)

    @staticmethod
    def batch_size(points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None) -> int:
        """Number of prompts in a batch, from whichever input is present."""
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Embed a batch of prompts.

        Args:
            points: ((B, N, 2) coords, (B, N) labels) in the 1024-space, or None.
            boxes: (B, 4) boxes in the 1024-space, or None.
            masks: (B, 1, 256, 256) mask logits, or None.

        Returns:
            sparse (B, T, C) and dense (B, C, 64, 64) embeddings.
        """
        bs = self.batch_size(points, boxes, masks)
        dtype = self.no_mask_embed.weight.dtype
        device = self.no_mask_embed.weight.device
        parts: list[Tensor] = []
        if points is not None:
            coords, labels = points
            parts.append(self.embed_points(coords, labels, pad=boxes is None).to(dtype))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes).to(dtype))
        if parts:
            sparse = torch.cat(parts, dim=1)
        else:
            sparse = torch.empty((bs, 0, self.embed_dim), dtype=dtype, device=device)
        if masks is not None:
            dense = self.embed_masks(masks.to(dtype))
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)  # (B, C, 64, 64)
        return sparse, dense
