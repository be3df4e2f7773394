"""Reading the video model's memory bank: a frame's features conditioned on past frames.

The memory bank (``output_dict``) is the official one: ``{"cond_frame_outputs": {t: out},
"non_cond_frame_outputs": {t: out}}`` with ``out`` the :data:`FrameOutput` dictionaries
``Sam2Video.track_step`` returns. For a frame it:

* picks the frames to read (:func:`select_closest_cond_frames` for the conditioning frames,
  :func:`memory_frame_indices` for the ``num_maskmem - 1`` previous ones, stride
  ``memory_temporal_stride_for_eval``);
* turns each into ``h*w`` memory tokens with their spatial + temporal (``maskmem_tpos_enc``)
  position encoding, adds the object-pointer tokens (``sam2_video_pointers.py``), and
* fuses the frame's stride-16 features with them in the memory attention
  (:func:`prepare_memory_conditioned_features`); an initial conditioning frame reads no memory
  and gets ``no_mem_embed`` instead.

Stored memory features may be in any float dtype (the official predictor keeps them in
bfloat16); they are cast to the frame features' dtype when read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .sam2_video_pointers import object_pointer_memory

if TYPE_CHECKING:  # pragma: no cover
    from .sam2_video import Sam2Video

__all__ = ["FrameOutput", "memory_frame_indices", "prepare_memory_conditioned_features", "select_closest_cond_frames"]

#: One object batch's output on one frame, as ``Sam2Video.track_step`` returns it.
FrameOutput = dict[str, Any]


def select_closest_cond_frames(
    frame_idx: int, cond_frame_outputs: dict[int, FrameOutput], max_cond_frame_num: int
) -> tuple[dict[int, FrameOutput], dict[int, FrameOutput]]:
    """Split the conditioning frames into the (at most ``max_cond_frame_num``) attended ones and the rest.

    Kept: the closest conditioning frame before ``frame_idx``, the closest at or after it, then
    the temporally closest others. ``-1`` keeps all.

    Returns:
        (selected, unselected) dictionaries, both keyed by frame index.
    """
    if max_cond_frame_num == -1 or len(cond_frame_outputs) <= max_cond_frame_num:
        return cond_frame_outputs, {}
    if max_cond_frame_num < 2:
        raise ValueError("max_cond_frames_in_attn must allow 2 or more conditioning frames")
    selected: dict[int, FrameOutput] = {}
    before = max((t for t in cond_frame_outputs if t < frame_idx), default=None)
    if before is not None:
        selected[before] = cond_frame_outputs[before]
    after = min((t for t in cond_frame_outputs if t >= frame_idx), default=None)
    if after is not None:
        selected[after] = cond_frame_outputs[after]
    remaining = max_cond_frame_num - len(selected)
    others = sorted((t for t in cond_frame_outputs if t not in selected), key=lambda t: abs(t - frame_idx))
    selected.update((t, cond_frame_outputs[t]) for t in others[:remaining])
    unselected = {t: out for t, out in cond_frame_outputs.items() if t not in selected}
    return selected, unselected


def memory_frame_indices(
    frame_idx: int, num_maskmem: int, stride: int, track_in_reverse: bool
) -> list[tuple[int, int]]:
    """(t_pos, frame index) of the non-conditioning memory slots, t_pos = 1 .. num_maskmem - 1.

    The slot t_pos = num_maskmem - 1 is the previous frame; the others step back by the
    memory stride ``r`` (``stride``, the model's ``memory_temporal_stride_for_eval``) from the
    nearest multiple of ``r`` two frames back.
    """
    slots = []
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos  # frames before the current one
        if t_rel == 1:
            prev = frame_idx + 1 if track_in_reverse else frame_idx - 1
        elif not track_in_reverse:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        slots.append((t_pos, prev))
    return slots


def prepare_memory_conditioned_features(
    model: Sam2Video,
    frame_idx: int,
    is_init_cond_frame: bool,
    current_vision_feats: list[Tensor],
    current_vision_pos_embeds: list[Tensor],
    feat_sizes: list[tuple[int, int]],
    output_dict: dict[str, dict[int, FrameOutput]],
    num_frames: int,
    track_in_reverse: bool = False,
) -> Tensor:
    """Fuse the frame's stride-16 features with the memory bank -> (B, C, h, w).

    Memory = the conditioning frames (t_pos 0), up to ``num_maskmem - 1`` previous
    non-conditioning frames, each ``h*w`` tokens with spatial + temporal position encoding,
    then the object pointers of the attended conditioning frames and of up to
    ``max_obj_ptrs_in_encoder - 1`` previous frames (each pointer split into C / mem_dim
    tokens, with a sine encoding of its frame distance).
    """
    b = current_vision_feats[-1].size(1)
    c = model.hidden_dim
    h, w = feat_sizes[-1]
    device = current_vision_feats[-1].device
    dtype = current_vision_feats[-1].dtype
    if model.num_maskmem == 0:  # no memory: the image features as they are
        return current_vision_feats[-1].permute(1, 2, 0).view(b, c, h, w)

    num_obj_ptr_tokens = 0
    if is_init_cond_frame:
        if model.directly_add_no_mem_embed:
            feats = current_vision_feats[-1] + model.no_mem_embed  # (HW, B, C)
            return feats.permute(1, 2, 0).view(b, c, h, w)
        # One dummy memory token, so that the attention has something to read.
        memory = model.no_mem_embed.expand(1, b, model.mem_dim)
        memory_pos = model.no_mem_pos_enc.expand(1, b, model.mem_dim)
    else:
        cond_outputs = output_dict["cond_frame_outputs"]
        if not cond_outputs:
            raise ValueError("a tracked frame needs at least one conditioning frame in output_dict")
        selected, unselected = select_closest_cond_frames(frame_idx, cond_outputs, model.max_cond_frames_in_attn)
        slots: list[tuple[int, FrameOutput | None]] = [(0, out) for out in selected.values()]
        slot_frames = memory_frame_indices(
            frame_idx, model.num_maskmem, model.memory_temporal_stride_for_eval, track_in_reverse
        )
        for t_pos, prev_idx in slot_frames:
            out = output_dict["non_cond_frame_outputs"].get(prev_idx)
            if out is None:
                # An unattended conditioning frame among the last frames counts as a normal one.
                out = unselected.get(prev_idx)
            slots.append((t_pos, out))
        memories: list[Tensor] = []
        positions: list[Tensor] = []
        for t_pos, prev in slots:
            if prev is None:
                continue
            feats = prev["maskmem_features"].to(device=device, dtype=dtype, non_blocking=True)
            memories.append(feats.flatten(2).permute(2, 0, 1))  # (hw, B, C_mem)
            spatial = prev["maskmem_pos_enc"][-1].to(device=device, dtype=dtype)
            spatial = spatial.flatten(2).permute(2, 0, 1)  # (hw, B, C_mem)
            positions.append(spatial + model.maskmem_tpos_enc[model.num_maskmem - t_pos - 1])

        if model.use_obj_ptrs_in_encoder:
            ptrs, ptr_pos, num_obj_ptr_tokens = object_pointer_memory(
                model, frame_idx, selected, unselected, output_dict, num_frames, track_in_reverse, b, device
            )
            if ptrs is not None:
                memories.append(ptrs.to(dtype))
                positions.append(ptr_pos.to(dtype))
        memory = torch.cat(memories, dim=0)  # (M, B, C_mem)
        memory_pos = torch.cat(positions, dim=0)  # (M, B, C_mem)

    conditioned = model.memory_attention(
        curr=current_vision_feats[-1],
        memory=memory,
        curr_pos=current_vision_pos_embeds[-1],
        memory_pos=memory_pos,
        num_obj_ptr_tokens=num_obj_ptr_tokens,
    )  # (HW, B, C)
    return conditioned.permute(1, 2, 0).view(b, c, h, w)
