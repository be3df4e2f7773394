"""Export-friendly torch wrappers around a :class:`samkit.modeling.Sam`.

They are traced by :mod:`samkit.onnx.export`; they use only the public parts of
``Sam`` (image encoder, prompt encoder, mask decoder sub-modules) and add nothing
learned.

Decoder interface (the one of the official SAM ONNX export, so existing front ends
work unchanged):

==================  =================  ==================================================
input               shape / dtype      meaning
==================  =================  ==================================================
image_embeddings    (1, C, h, w) f32   encoder output (C, h, w = 256, 64, 64 for SAM)
point_coords        (1, N, 2) f32      x, y in the resized (longest side 1024) image
point_labels        (1, N) f32         1 fg, 0 bg, 2 box top-left, 3 box bottom-right,
                                       -1 padding ("not a point")
mask_input          (1, 1, 4h, 4w) f32 low-res logits of a previous prediction
has_mask_input      (1,) f32           1 to use ``mask_input``, 0 to ignore it
orig_im_size        (2,) f32           (H, W) of the original image
==================  =================  ==================================================

Outputs: ``masks`` (1, M, H, W) logits at the original size, ``iou_predictions``
(1, M), ``low_res_masks`` (1, M, 4h, 4w). M = 4 (token 0 = the single-mask output,
tokens 1..3 = the three multimask outputs) unless exported with
``return_single_mask``, which picks one mask in the graph as the official export
does: the best of tokens 1..3 by predicted IoU when N <= 2 points (one click plus
the padding point, or a box), else token 0.

Unlike the official interface, the graph does not append a padding point: callers
do (a point at (0, 0) with label -1 when there is no box), exactly as with the
official export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling import Sam
from .mask_upscaling import upscale_padded

__all__ = ["DecoderForExport", "EncoderForExport", "RawEncoderForExport"]


class EncoderForExport(nn.Module):
    """Preprocessed (1, 3, S, S) float image -> (1, C, S/16, S/16) embedding."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: Tensor) -> Tensor:
        """(1, 3, S, S) normalized, zero-padded image -> (1, C, h, w) embedding."""
        return self.image_encoder(image)


class RawEncoderForExport(nn.Module):
    """Resized uint8 pixels (h, w, 3) -> embedding; normalization and padding in the graph.

    The input is the image already resized so its longest side is S (1024): resizing
    with Pillow's antialiased bilinear filter is kept outside the graph because no ONNX
    operator reproduces it exactly.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.img_size = sam.img_size
        self.register_buffer("mean", sam.pixel_mean.detach().float().clone(), persistent=False)  # (3, 1, 1)
        self.register_buffer("std", sam.pixel_std.detach().float().clone(), persistent=False)  # (3, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        """(h, w, 3) uint8 RGB, longest side S -> (1, C, S/16, S/16) embedding."""
        x = image.permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, h, w)
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        x = F.pad(x, (0, self.img_size - w, 0, self.img_size - h))  # (1, 3, S, S)
        return self.image_encoder(x)


class DecoderForExport(nn.Module):
    """Prompt encoder + mask decoder + mask upscaling with the official ONNX interface.

    Args:
        sam: the model whose prompt encoder and mask decoder are exported.
        return_single_mask: pick one mask in the graph (see module docstring) instead of
            returning all four.
    """

    def __init__(self, sam: Sam, return_single_mask: bool = False) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = sam.img_size
        self.return_single_mask = return_single_mask
        self.register_buffer("image_pe", sam.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)
        token0 = torch.zeros(1, sam.mask_decoder.num_mask_tokens)
        token0[0, 0] = 1.0
        self.register_buffer("token0", token0, persistent=False)  # (1, T) one-hot of the single-mask token

    def _dense_embedding(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        """Blend the mask embedding and the learned no-mask embedding: (1, C, h, w)."""
        pe = self.prompt_encoder
        masked = pe.embed_masks(mask_input)  # (1, C, h, w)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        use = has_mask_input.reshape(1, 1, 1, 1)
        return use * masked + (1 - use) * no_mask

    def _select_single(self, masks: Tensor, iou: Tensor, num_points: Tensor) -> tuple[Tensor, Tensor]:
        """One mask per prompt: best multimask output for <= 2 points, else token 0.

        Args:
            masks: (B, T, 4h, 4w) logits; iou: (B, T); num_points: (B, 1) float point counts.
        """
        many = (num_points > 2).to(iou.dtype)  # (B, 1) 1.0 when the single-mask token is wanted
        # Push token 0 far above (many points) or below (few) the others; no control flow.
        score = iou + (2 * many - 1) * 1000.0 * self.token0  # (B, T)
        best = torch.argmax(score, dim=1, keepdim=True)  # (B, 1)
        index = best[:, :, None, None].expand(-1, -1, masks.shape[2], masks.shape[3])  # (B, 1, 4h, 4w)
        return torch.gather(masks, 1, index), torch.gather(iou, 1, best)

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode one prompt set (shapes in the module docstring).

        Returns:
            masks (1, M, H, W) logits, iou_predictions (1, M), low_res_masks (1, M, 4h, 4w).
        """
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, pad=False)  # (1, N, C)
        dense = self._dense_embedding(mask_input, has_mask_input)  # (1, C, h, w)
        low_res, iou = self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense)  # reference path
        if self.return_single_mask:
            num_points = torch.ones_like(point_labels).sum(dim=1, keepdim=True)  # (1, 1), dynamic N
            low_res, iou = self._select_single(low_res, iou, num_points)
        return upscale_padded(low_res, orig_im_size, self.img_size), iou, low_res
