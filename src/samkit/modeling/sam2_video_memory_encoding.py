"""Writing the video model's memory: a frame's features and predicted mask -> memory features.

:func:`encode_new_memory` (the official ``SAM2Base._encode_new_memory``) prepares the mask for
the memory encoder (optionally one object per pixel, :func:`apply_non_overlapping_constraints`;
thresholded on clicked frames, else its sigmoid; then ``* 20 - 10``), runs the memory encoder on
the frame's stride-16 features and the mask, and adds ``no_obj_embed_spatial`` on frames where
the object is predicted absent. The result is what later frames read
(``sam2_video_memory.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .sam2_video import Sam2Video

__all__ = ["apply_non_overlapping_constraints", "encode_new_memory"]


def apply_non_overlapping_constraints(pred_masks: Tensor) -> Tensor:
    """(N_obj, 1, H, W) logits -> the same, each pixel kept only for its highest-scoring object.

    The other objects' logits there are clamped to at most -10.
    """
    n = pred_masks.size(0)
    if n == 1:
        return pred_masks
    winner = torch.argmax(pred_masks, dim=0, keepdim=True)  # (1, 1, H, W)
    keep = winner == torch.arange(n, device=pred_masks.device)[:, None, None, None]  # (N, 1, H, W)
    return torch.where(keep, pred_masks, torch.clamp(pred_masks, max=-10.0))


def encode_new_memory(
    model: Sam2Video,
    current_vision_feats: list[Tensor],
    feat_sizes: list[tuple[int, int]],
    pred_masks_high_res: Tensor,
    object_score_logits: Tensor,
    is_mask_from_pts: bool,
) -> tuple[Tensor, list[Tensor]]:
    """Encode a frame and its (B, 1, S, S) predicted mask logits into memory.

    Returns:
        (B, mem_dim, h, w) memory features in the model's dtype (float32; the official
        predictor stores them as bfloat16) and ``[(B, mem_dim, h, w)]`` their position
        encoding.
    """
    b = current_vision_feats[-1].size(1)
    h, w = feat_sizes[-1]
    pix_feat = current_vision_feats[-1].permute(1, 2, 0).view(b, model.hidden_dim, h, w)  # (B, C, h, w)
    if model.non_overlap_masks_for_mem_enc:
        pred_masks_high_res = apply_non_overlapping_constraints(pred_masks_high_res)
    if model.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts:
        mask_for_mem = (pred_masks_high_res > 0).float()
    else:
        mask_for_mem = torch.sigmoid(pred_masks_high_res)
    if model.sigmoid_scale_for_mem_enc != 1.0:
        mask_for_mem = mask_for_mem * model.sigmoid_scale_for_mem_enc
    if model.sigmoid_bias_for_mem_enc != 0.0:
        mask_for_mem = mask_for_mem + model.sigmoid_bias_for_mem_enc
    weight_dtype = model.memory_encoder.pix_feat_proj.weight.dtype
    features, pos = model.memory_encoder(pix_feat.to(weight_dtype), mask_for_mem.to(weight_dtype))
    if model.no_obj_embed_spatial is not None:
        # Frames where the object is predicted absent get the no-object embedding.
        absent = 1 - (object_score_logits > 0).float()  # (B, 1)
        features = features + absent[..., None, None] * model.no_obj_embed_spatial[..., None, None]
    return features, [pos]
