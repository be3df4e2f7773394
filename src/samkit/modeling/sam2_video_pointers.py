"""Object pointers of the video model: how a frame's pointer is made and how past ones are read.

An object pointer is one (C,) vector per object and frame, projected from the mask decoder's
output token (``obj_ptr_proj``). Two things happen to it here:

* :func:`mix_no_obj_ptr`: on a frame where the object is predicted absent it becomes (or moves
  towards, with ``soft_no_obj_ptr``) the learned ``no_obj_ptr``;
* :func:`object_pointer_memory`: when a later frame reads the memory bank, the pointers of the
  attended conditioning frames and of up to ``max_obj_ptrs_in_encoder - 1`` previous frames
  become memory tokens: each pointer split into C / mem_dim tokens, with a sine encoding
  (:func:`sine_1d_encoding`) of its frame distance, projected by ``obj_ptr_tpos_proj``.

Each function that needs the model takes the :class:`~samkit.modeling.sam2_video.Sam2Video`
whose parameters and flags it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .sam2_video import Sam2Video
    from .sam2_video_memory import FrameOutput

__all__ = ["mix_no_obj_ptr", "object_pointer_memory", "sine_1d_encoding"]


def sine_1d_encoding(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(N,) float positions -> (N, dim) encoding: dim/2 sines, then dim/2 cosines.

    Feature ``i`` of each half uses the frequency ``temperature ** (-2 * (i // 2) / (dim / 2))``.
    """
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)  # (dim/2,)
    angles = positions.unsqueeze(-1) / dim_t  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (N, dim)



def mix_no_obj_ptr(model: Sam2Video, obj_ptr: Tensor, lambda_is_obj_appearing: Tensor) -> Tensor:
    """(B, C) pointers, (B, 1) presence weights -> pointers with ``no_obj_ptr`` for absence."""
    if model.fixed_no_obj_ptr:
        obj_ptr = lambda_is_obj_appearing * obj_ptr
    return obj_ptr + (1 - lambda_is_obj_appearing) * model.no_obj_ptr


def object_pointer_memory(
    model: Sam2Video,
    frame_idx: int,
    selected_cond: dict[int, FrameOutput],
    unselected_cond: dict[int, FrameOutput],
    output_dict: dict[str, dict[int, FrameOutput]],
    num_frames: int,
    track_in_reverse: bool,
    batch: int,
    device: torch.device,
) -> tuple[Tensor | None, Tensor | None, int]:
    """The object-pointer tokens of the memory and their temporal encoding.

    Returns:
        ((P * C/mem_dim, B, mem_dim) tokens, the same-shape encoding, the token count), or
        (None, None, 0) without pointers.
    """
    c = model.hidden_dim
    max_ptrs = min(num_frames, model.max_obj_ptrs_in_encoder)
    if model.only_obj_ptrs_in_the_past_for_eval:
        ptr_cond = {
            t: out for t, out in selected_cond.items() if (t >= frame_idx if track_in_reverse else t <= frame_idx)
        }
    else:
        ptr_cond = selected_cond
    sign = -1 if track_in_reverse else 1
    pos_and_ptrs: list[tuple[int, Tensor]] = [
        ((frame_idx - t) * sign if model.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t), out["obj_ptr"])
        for t, out in ptr_cond.items()
    ]
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
        if t < 0 or (num_frames is not None and t >= num_frames):
            break
        out = output_dict["non_cond_frame_outputs"].get(t, unselected_cond.get(t))
        if out is not None:
            pos_and_ptrs.append((t_diff, out["obj_ptr"]))
    if not pos_and_ptrs:
        return None, None, 0
    pos_list = [p for p, _ in pos_and_ptrs]
    obj_ptrs = torch.stack([ptr.to(device) for _, ptr in pos_and_ptrs], dim=0)  # (P, B, C)
    if model.add_tpos_enc_to_obj_ptrs:
        t_diff_max = max_ptrs - 1
        tpos_dim = c if model.proj_tpos_enc_in_obj_ptrs else model.mem_dim
        distances = torch.tensor(pos_list, device=device, dtype=torch.float32) / t_diff_max  # (P,)
        obj_pos = model.obj_ptr_tpos_proj(sine_1d_encoding(distances, tpos_dim).to(obj_ptrs.dtype))  # (P, mem_dim)
        obj_pos = obj_pos.unsqueeze(1).expand(-1, batch, model.mem_dim)  # (P, B, mem_dim)
    else:
        obj_pos = obj_ptrs.new_zeros(len(pos_list), batch, model.mem_dim)  # (P, B, mem_dim)
    if model.mem_dim < c:
        # Each pointer becomes C / mem_dim tokens of mem_dim.
        split = c // model.mem_dim
        obj_ptrs = obj_ptrs.reshape(-1, batch, split, model.mem_dim)  # (P, B, split, mem_dim)
        obj_ptrs = obj_ptrs.permute(0, 2, 1, 3).flatten(0, 1)  # (P*split, B, mem_dim)
        obj_pos = obj_pos.repeat_interleave(split, dim=0)  # (P*split, B, mem_dim)
    return obj_ptrs, obj_pos, obj_ptrs.shape[0]
