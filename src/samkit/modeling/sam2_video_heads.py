"""The SAM heads of the video model: prompts + (memory-conditioned) frame features -> masks.

* :func:`forward_sam_heads`: prompt encoder and mask decoder on one frame's features (the
  official ``SAM2Base._forward_sam_heads``): the decoder's output choice, the best of three masks
  by predicted IoU, ``NO_OBJ_SCORE`` everywhere on objects predicted absent, the masks upscaled to
  the input size and the object pointer from the chosen output token;
* :func:`use_mask_as_output`: a mask prompt taken as the output (logits +-10), its pointer still
  from the heads;
* :func:`use_multimask`: whether a frame's clicks get three masks.

Each function takes the :class:`~samkit.modeling.sam2_video.Sam2Video` whose modules and flags
it uses; the model exposes them as methods under the official names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .sam2_video_pointers import mix_no_obj_ptr

if TYPE_CHECKING:  # pragma: no cover
    from .sam2_video import Sam2Video

__all__ = ["NO_OBJ_SCORE", "SamHeadsOutput", "forward_sam_heads", "use_mask_as_output", "use_multimask"]

# Mask logit given to every pixel of a frame where the object is predicted absent.
NO_OBJ_SCORE = -1024.0

# A mask prompt taken as the output becomes logits of +-10 (sigmoid(-10) = 4.5e-5).
MASK_AS_OUTPUT_SCALE, MASK_AS_OUTPUT_BIAS = 20.0, -10.0

#: low_res_multimasks, high_res_multimasks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits
SamHeadsOutput = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def use_multimask(model: Sam2Video, is_init_cond_frame: bool, point_inputs: dict[str, Tensor] | None) -> bool:
    """Whether the SAM head outputs three masks for these clicks on this frame."""
    num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
    return (
        model.multimask_output_in_sam
        and (is_init_cond_frame or model.multimask_output_for_tracking)
        and (model.multimask_min_pt_num <= num_pts <= model.multimask_max_pt_num)
    )


def forward_sam_heads(
    model: Sam2Video,
    backbone_features: Tensor,
    point_inputs: dict[str, Tensor] | None = None,
    mask_inputs: Tensor | None = None,
    high_res_features: list[Tensor] | None = None,
    multimask_output: bool = False,
) -> SamHeadsOutput:
    """Prompt encoder + mask decoder on (memory-conditioned) frame features.

    Args:
        model: the video model (prompt encoder, mask decoder, ``obj_ptr_proj``, flags).
        backbone_features: (B, C, h, w).
        point_inputs: ``{"point_coords": (B, P, 2) float32 in the S x S input space,
            "point_labels": (B, P) int32}`` or None (one padding point is used).
        mask_inputs: (B, 1, H, W) mask prompt (resized to 4h x 4w, antialiased, if needed).
        high_res_features: [(B, C/8, 4h, 4w), (B, C/4, 2h, 2w)] projected levels.
        multimask_output: three masks (the best by predicted IoU is chosen) or one.

    Returns:
        low_res_multimasks (B, M, 4h, 4w), high_res_multimasks (B, M, S, S), ious (B, M),
        low_res_masks (B, 1, 4h, 4w), high_res_masks (B, 1, S, S), obj_ptr (B, C),
        object_score_logits (B, 1); masks float32, -1024 where the object is absent.
    """
    b = backbone_features.size(0)
    device = backbone_features.device
    dtype = model.dtype
    pe = model.sam_prompt_encoder
    if point_inputs is not None:
        coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        if coords.size(0) != b or labels.size(0) != b:
            raise ValueError(f"point inputs for {coords.size(0)} objects, features for {b}")
    else:
        coords = torch.zeros(b, 1, 2, device=device)
        labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
    mask_prompt = None
    if mask_inputs is not None:
        if mask_inputs.dim() != 4 or tuple(mask_inputs.shape[:2]) != (b, 1):
            raise ValueError(f"mask_inputs must be ({b}, 1, H, W), got {tuple(mask_inputs.shape)}")
        mask_prompt = mask_inputs
        if tuple(mask_inputs.shape[-2:]) != pe.mask_input_size:
            mask_prompt = F.interpolate(
                mask_inputs.float(), size=pe.mask_input_size, mode="bilinear", align_corners=False, antialias=True
            )
    sparse, dense = pe((coords.float(), labels), None, mask_prompt)
    levels = None if high_res_features is None else tuple(f.to(dtype) for f in high_res_features)
    decoder = model.sam_mask_decoder
    all_masks, all_ious, mask_tokens, object_score_logits = decoder.predict_all_masks_and_tokens(
        backbone_features.to(dtype),
        pe.get_dense_pe().to(dtype),
        sparse.to(dtype),
        dense.to(dtype),
        levels,  # type: ignore[arg-type]
        None,
    )
    # The decoder's output choice (as its forward), keeping the matching output token.
    if multimask_output:
        low_res_multimasks, ious = all_masks[:, 1:], all_ious[:, 1:]
    elif decoder.dynamic_multimask_via_stability:
        low_res_multimasks, ious = decoder.single_mask_with_fallback(all_masks, all_ious)
    else:
        low_res_multimasks, ious = all_masks[:, 0:1], all_ious[:, 0:1]
    if multimask_output and model.use_multimask_token_for_obj_ptr:
        sam_output_tokens = mask_tokens[:, 1:]  # (B, 3, C)
    else:
        sam_output_tokens = mask_tokens[:, 0:1]  # (B, 1, C): the single-mask token, always
    is_obj_appearing = object_score_logits > 0  # (B, 1)
    if model.pred_obj_scores:
        # The spatial memory gets a hard choice between object and no object.
        low_res_multimasks = torch.where(is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE)
    low_res_multimasks = low_res_multimasks.float()
    high_res_multimasks = F.interpolate(
        low_res_multimasks, size=(model.image_size, model.image_size), mode="bilinear", align_corners=False
    )  # (B, M, S, S)
    sam_output_token = sam_output_tokens[:, 0]  # (B, C)
    if multimask_output:
        best = torch.argmax(ious, dim=-1)  # (B,)
        rows = torch.arange(b, device=device)
        low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)  # (B, 1, 4h, 4w)
        high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)  # (B, 1, S, S)
        if sam_output_tokens.size(1) > 1:
            sam_output_token = sam_output_tokens[rows, best]  # (B, C)
    else:
        low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks
    obj_ptr = model.obj_ptr_proj(sam_output_token)  # (B, C)
    if model.pred_obj_scores:
        lambda_is_obj_appearing = object_score_logits.sigmoid() if model.soft_no_obj_ptr else is_obj_appearing.float()
        obj_ptr = mix_no_obj_ptr(model, obj_ptr, lambda_is_obj_appearing)
    return (
        low_res_multimasks,
        high_res_multimasks,
        ious,
        low_res_masks,
        high_res_masks,
        obj_ptr,
        object_score_logits,
    )


def use_mask_as_output(
    model: Sam2Video, backbone_features: Tensor, high_res_features: list[Tensor] | None, mask_inputs: Tensor
) -> SamHeadsOutput:
    """A (B, 1, S, S) mask prompt taken as the output (logits +-10), same outputs as :func:`forward_sam_heads`.

    The object pointer still comes from the SAM heads, prompted with the mask
    (``mask_downsample``: S -> S/4); presence is whether the mask has any positive pixel.
    """
    mask_float = mask_inputs.float()
    high_res_masks = mask_float * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS  # (B, 1, S, S)
    low_res_masks = F.interpolate(
        high_res_masks,
        size=(high_res_masks.size(-2) // 4, high_res_masks.size(-1) // 4),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )  # (B, 1, S/4, S/4)
    ious = mask_inputs.new_ones(mask_inputs.size(0), 1).float()
    if not model.use_obj_ptrs_in_encoder:
        obj_ptr = torch.zeros(mask_inputs.size(0), model.hidden_dim, device=mask_inputs.device)
    else:
        downsampled = model.mask_downsample(mask_float.to(model.mask_downsample.weight.dtype))
        obj_ptr = forward_sam_heads(
            model, backbone_features, mask_inputs=downsampled, high_res_features=high_res_features
        )[5]
    is_obj_appearing = torch.any(mask_inputs.flatten(1).float() > 0.0, dim=1)[..., None]  # (B, 1)
    lambda_is_obj_appearing = is_obj_appearing.float()
    object_score_logits = MASK_AS_OUTPUT_SCALE * lambda_is_obj_appearing + MASK_AS_OUTPUT_BIAS
    if model.pred_obj_scores:
        obj_ptr = mix_no_obj_ptr(model, obj_ptr, lambda_is_obj_appearing)
    return low_res_masks, high_res_masks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits
