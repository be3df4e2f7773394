"""A duck-typed stand-in for ``Sam2Video``: instant tiny outputs, and a check of what it reads.

On every tracked frame it compares the memory bank it is handed with the official selection
rule: every frame the official tracker would read (the ``num_maskmem - 1`` memory slots and the
``max_obj_ptrs - 1`` pointer frames) that has an output must still be in the bank; misses are
recorded in ``misses``.
"""

from __future__ import annotations

from typing import Any

import torch


class ReadCheckingModel:
    """Duck-typed Sam2Video: instant outputs, records reads the official would make but cannot."""

    image_size = 16
    num_maskmem = 7
    memory_temporal_stride_for_eval = 1
    use_obj_ptrs_in_encoder = True
    max_obj_ptrs_in_encoder = 16
    fill_hole_area = 0
    non_overlap_masks = False
    clear_non_cond_mem_around_input = False
    add_all_frames_to_correct_as_cond = False
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.produced: set[int] = set()
        self.misses: list[tuple[int, int]] = []

    def eval(self) -> ReadCheckingModel:
        return self

    def forward_image(self, images: torch.Tensor) -> dict[str, Any]:
        return {"backbone_fpn": [images[:, :1, :1, :1]], "vision_pos_enc": [images[:, :1, :1, :1]]}

    def prepare_backbone_features(self, out: dict[str, Any]) -> tuple[Any, list[Any], list[Any], list[Any]]:
        feats = out["backbone_fpn"][0].flatten(2).permute(2, 0, 1)  # (1, 1, 1)
        return out, [feats], [feats], [(1, 1)]

    def official_reads(self, frame_idx: int, reverse: bool, num_frames: int) -> set[int]:
        step = -1 if reverse else 1  # forward tracking reads earlier frames
        slots = {frame_idx - step * t for t in range(1, self.num_maskmem)}  # stride 1
        pointers = {frame_idx - step * t for t in range(1, min(num_frames, self.max_obj_ptrs_in_encoder))}
        return {t for t in slots | pointers if 0 <= t < num_frames}

    def track_step(self, frame_idx: int, is_init_cond_frame: bool, output_dict: dict[str, Any], num_frames: int,
                   track_in_reverse: bool = False, run_mem_encoder: bool = True, **_: Any) -> dict[str, Any]:
        if not is_init_cond_frame:
            bank = set(output_dict["cond_frame_outputs"]) | set(output_dict["non_cond_frame_outputs"])
            for t in self.official_reads(frame_idx, track_in_reverse, num_frames):
                if t in self.produced and t not in bank:
                    self.misses.append((frame_idx, t))
        self.produced.add(frame_idx)
        memory = torch.zeros(1, 2, 1, 1) if run_mem_encoder else None
        return {
            "pred_masks": torch.zeros(1, 1, 4, 4),
            "obj_ptr": torch.zeros(1, 8),
            "object_score_logits": torch.ones(1, 1),
            "maskmem_features": memory,
            "maskmem_pos_enc": None if memory is None else [memory],
        }

    def encode_new_memory(self, **_: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return torch.zeros(1, 2, 1, 1), [torch.zeros(1, 2, 1, 1)]
