"""What the video predictor returns: every object's mask on a frame, at the video resolution.

* :func:`video_masks`: (N_obj, 1, h, w) low-res logits -> (N_obj, 1, H, W) on the model's
  device, with the non-overlap rule between objects when the model's ``non_overlap_masks`` is set
  (the resizing itself is ``masks.to_video_resolution``);
* :func:`consolidated_video_masks`: after a prompt, every object's newest result on that frame
  (its pending prompt result, else its stored one); an object without one is ``NO_OBJ_SCORE``
  everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import to_video_resolution
from .state import VideoState

__all__ = ["NO_OBJ_SCORE", "consolidated_video_masks", "video_masks"]

# Logit of every pixel of an object that has no result on a frame (the official placeholder).
NO_OBJ_SCORE = -1024.0


def video_masks(state: VideoState, masks: torch.Tensor, non_overlap: bool) -> torch.Tensor:
    """(N_obj, 1, h, w) logits -> (N_obj, 1, H, W) on the model's device, non-overlap applied if set."""
    return to_video_resolution(masks.to(state.device), state.video_height, state.video_width, non_overlap=non_overlap)


def consolidated_video_masks(state: VideoState, frame_idx: int, is_cond: bool, non_overlap: bool) -> torch.Tensor:
    """Every object's newest mask on a frame at the video resolution.

    For each object: its pending prompt result of the same kind (conditioning or not), else
    its stored result; objects without one get NO_OBJ_SCORE.

    Returns:
        (N_obj, 1, H, W) float32 logits.
    """
    height, width = state.video_height, state.video_width
    masks = torch.full(
        (len(state.objects), 1, height, width), NO_OBJ_SCORE, dtype=torch.float32, device=state.storage_device
    )  # (N_obj, 1, H, W)
    for i, obj in enumerate(state.objects):
        temp = obj.temp_cond if is_cond else obj.temp_non_cond
        out = temp.get(frame_idx) or obj.cond.get(frame_idx) or obj.non_cond.get(frame_idx)
        if out is None:
            continue
        low_res = out.pred_masks
        if tuple(low_res.shape[-2:]) != (height, width):
            low_res = F.interpolate(low_res, size=(height, width), mode="bilinear", align_corners=False)
        masks[i : i + 1] = low_res
    return video_masks(state, masks, non_overlap)
