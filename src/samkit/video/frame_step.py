"""One object on one frame through the video model, and what the session keeps of it.

The video predictor's model side:

* :func:`image_features`: a frame's features, computed once per frame (``FeatureCache``: the
  objects of a frame are run one after the other on the same features);
* :func:`run_frame`: ``Sam2Video.track_step`` for one object, reading its stored outputs
  through ``MemoryView`` (the official memory-bank dictionaries), and the compact
  ``FrameOutput`` to store (hole-filled low-res logits, pointer, score, bf16 memory);
* :func:`encode_prompted_memory`: the memory of a prompted frame, encoded when propagation
  starts (from its hole-filled mask, after the prompts of every object are in);
* :func:`store_memory`: memory features as stored (bfloat16, as the official), with one copy of
  their position encoding per session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .masks import fill_holes
from .state import FeatureCache, FrameOutput, MemoryView, ObjectTrack, VideoState

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling.sam2_video import Sam2Video

__all__ = ["encode_prompted_memory", "image_features", "run_frame", "store_memory"]


def image_features(
    model: Sam2Video, state: VideoState, frame_idx: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
    """A frame's features for one object, from the one-frame cache when it is there.

    Returns:
        (features [(H_i W_i, 1, C_i)], position encodings [(H_i W_i, 1, C)], sizes [(H_i, W_i)]).
    """
    cache = state.features
    if cache.frame_idx != frame_idx or cache.backbone_out is None:
        image = state.frames.model_input(frame_idx, int(model.image_size), state.frames_device)  # (3, S, S)
        backbone_out = model.forward_image(image.to(state.device).float().unsqueeze(0))
        state.features = cache = FeatureCache(frame_idx, backbone_out)
    _, feats, pos, sizes = model.prepare_backbone_features(cache.backbone_out)
    return feats, pos, sizes


def run_frame(
    model: Sam2Video,
    state: VideoState,
    obj: ObjectTrack,
    frame_idx: int,
    *,
    is_init_cond_frame: bool,
    reverse: bool,
    run_mem_encoder: bool,
    point_inputs: dict[str, torch.Tensor] | None = None,
    mask_inputs: torch.Tensor | None = None,
    prev_sam_mask_logits: torch.Tensor | None = None,
) -> tuple[FrameOutput, torch.Tensor]:
    """One object on one frame through the model.

    Returns:
        (the compact output to store, (1, 1, S/4, S/4) mask logits on the model's device).
    """
    feats, pos, sizes = image_features(model, state, frame_idx)
    memory_bank = {
        "cond_frame_outputs": MemoryView(obj.cond, state.maskmem_pos_enc),
        "non_cond_frame_outputs": MemoryView(obj.non_cond, state.maskmem_pos_enc),
    }
    out = model.track_step(
        frame_idx=frame_idx,
        is_init_cond_frame=is_init_cond_frame,
        current_vision_feats=feats,
        current_vision_pos_embeds=pos,
        feat_sizes=sizes,
        point_inputs=point_inputs,
        mask_inputs=mask_inputs,
        output_dict=memory_bank,
        num_frames=state.num_frames,
        track_in_reverse=reverse,
        run_mem_encoder=run_mem_encoder,
        prev_sam_mask_logits=prev_sam_mask_logits,
    )
    features = out["maskmem_features"]
    if features is not None:
        features = store_memory(state, features, out["maskmem_pos_enc"])
    pred_masks = out["pred_masks"].float()  # (1, 1, S/4, S/4)
    if model.fill_hole_area > 0:
        pred_masks = fill_holes(pred_masks, model.fill_hole_area)
    compact = FrameOutput(
        pred_masks=pred_masks.to(state.storage_device),
        obj_ptr=out["obj_ptr"],
        object_score_logits=out["object_score_logits"],
        maskmem_features=features,
    )
    return compact, pred_masks


def store_memory(state: VideoState, features: torch.Tensor, pos_enc: list[torch.Tensor]) -> torch.Tensor:
    """Memory features as stored (bfloat16, as the official); keep one copy of the encoding.

    Returns:
        (1, mem_dim, h, w) bfloat16 on the storage device.
    """
    if state.maskmem_pos_enc is None:
        state.maskmem_pos_enc = [p[0:1].clone() for p in pos_enc]  # the same for every frame and object
    return features.to(torch.bfloat16).to(state.storage_device)


def encode_prompted_memory(model: Sam2Video, state: VideoState, frame_idx: int, out: FrameOutput) -> None:
    """Encode the memory of a prompted frame from its (hole-filled) mask, in place."""
    size = int(model.image_size)
    high_res = F.interpolate(
        out.pred_masks.to(state.device), size=(size, size), mode="bilinear", align_corners=False
    )  # (1, 1, S, S)
    feats, _, sizes = image_features(model, state, frame_idx)
    features, pos_enc = model.encode_new_memory(
        current_vision_feats=feats,
        feat_sizes=sizes,
        pred_masks_high_res=high_res,
        object_score_logits=out.object_score_logits,
        is_mask_from_pts=True,  # the user interacted with this frame
    )
    out.maskmem_features = store_memory(state, features, pos_enc)
