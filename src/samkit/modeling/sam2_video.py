"""SAM 2 / 2.1 video model: the image model plus memory attention, memory encoder, object pointers.

:class:`Sam2Video` extends :class:`~samkit.modeling.sam2.Sam2` (same encoder, prompt encoder and
mask decoder, same parameter names) with the video-only parameters of the official checkpoints,
under their checkpoint names. Its per-frame methods carry the names and arguments of the
official ``SAM2Base`` methods without the leading underscore, so that a video predictor written
against the official state logic can call them:

* :meth:`forward_image` / :meth:`prepare_backbone_features`: a frame's three feature levels
  (stride 4 and 8 already projected for the decoder, stride 16) and their sine position
  encodings, flattened sequence-first ``(HW, B, C)``;
* :meth:`track_step`: one frame of one batch of objects: condition the stride-16 features on the
  memory bank (or add ``no_mem_embed`` on an initial conditioning frame), run the SAM heads on
  the prompts (or take a mask prompt as the output), and encode the new memory;
* :meth:`prepare_memory_conditioned_features`, :meth:`forward_sam_heads`,
  :meth:`use_mask_as_output`, :meth:`encode_new_memory`: its parts.

The memory bank (``output_dict``) is the official one: ``{"cond_frame_outputs": {t: out},
"non_cond_frame_outputs": {t: out}}`` with ``out`` the dictionaries :meth:`track_step` returns.
Stored memory features may be in any float dtype (the official predictor keeps them in
bfloat16); they are cast to the model's dtype when read.

Inference only: no training branches (dropout, ``self.training`` cases) are kept.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config_sam2 import Sam2VideoConfig
from .common import MLP
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .sam2 import Sam2

__all__ = ["NO_OBJ_SCORE", "Sam2Video", "sine_1d_encoding", "select_closest_cond_frames"]

# Mask logit given to every pixel of a frame where the object is predicted absent.
NO_OBJ_SCORE = -1024.0

# A mask prompt taken as the output becomes logits of +-10 (sigmoid(-10) = 4.5e-5).
MASK_AS_OUTPUT_SCALE, MASK_AS_OUTPUT_BIAS = 20.0, -10.0

BackboneOut = dict[str, Any]
FrameOutput = dict[str, Any]
SamHeadsOutput = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def sine_1d_encoding(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(N,) float positions -> (N, dim) encoding: dim/2 sines, then dim/2 cosines.

    Feature ``i`` of each half uses the frequency ``temperature ** (-2 * (i // 2) / (dim / 2))``.
    """
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)  # (dim/2,)
    angles = positions.unsqueeze(-1) / dim_t  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (N, dim)


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


class Sam2Video(Sam2):
    """SAM 2 / 2.1 video model (per-frame math; the predictor keeps the state).

    Attributes:
        video_config: the whole configuration; its flags are also attributes under their
            official names (``num_maskmem``, ``image_size``, ``max_obj_ptrs_in_encoder``,
            ``add_all_frames_to_correct_as_cond``, ``fill_hole_area``, ...).
        hidden_dim: width of the frame features (256).
        mem_dim: width of a memory token (64).
    """

    def __init__(self, config: Sam2VideoConfig) -> None:
        super().__init__(config.image)
        self.video_config = config
        for name in (
            "num_maskmem",
            "backbone_stride",
            "sigmoid_scale_for_mem_enc",
            "sigmoid_bias_for_mem_enc",
            "binarize_mask_from_pts_for_mem_enc",
            "use_mask_input_as_output_without_sam",
            "max_cond_frames_in_attn",
            "multimask_output_in_sam",
            "multimask_min_pt_num",
            "multimask_max_pt_num",
            "multimask_output_for_tracking",
            "use_multimask_token_for_obj_ptr",
            "memory_temporal_stride_for_eval",
            "non_overlap_masks_for_mem_enc",
            "use_obj_ptrs_in_encoder",
            "max_obj_ptrs_in_encoder",
            "add_tpos_enc_to_obj_ptrs",
            "proj_tpos_enc_in_obj_ptrs",
            "use_signed_tpos_enc_to_obj_ptrs",
            "only_obj_ptrs_in_the_past_for_eval",
            "fixed_no_obj_ptr",
            "soft_no_obj_ptr",
            "fill_hole_area",
            "non_overlap_masks",
            "clear_non_cond_mem_around_input",
            "add_all_frames_to_correct_as_cond",
        ):
            setattr(self, name, getattr(config, name))
        image = config.image
        self.image_size = config.image_size
        self.hidden_dim = image.image_encoder.d_model
        self.mem_dim = config.memory_encoder.out_dim
        self.pred_obj_scores = image.pred_obj_scores
        self.directly_add_no_mem_embed = image.directly_add_no_mem_embed
        self.use_high_res_features_in_sam = image.use_high_res_features
        self.num_feature_levels = 3 if image.use_high_res_features else 1
        if config.proj_tpos_enc_in_obj_ptrs and not config.add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs")
        if config.fixed_no_obj_ptr and not (image.pred_obj_scores and config.use_obj_ptrs_in_encoder):
            raise ValueError("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder")

        self.memory_attention = MemoryAttention(config.memory_attention)
        self.memory_encoder = MemoryEncoder(config.memory_encoder)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, self.mem_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        if config.use_obj_ptrs_in_encoder:
            # Mask prompt (1024) -> SAM logit scale at stride 4, to get a pointer from a mask.
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        if image.pred_obj_scores and config.use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
        self.no_obj_embed_spatial: nn.Parameter | None = None
        if config.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, self.mem_dim))
        self.obj_ptr_proj: nn.Module = nn.Identity()
        if config.use_obj_ptrs_in_encoder:
            d = self.hidden_dim
            self.obj_ptr_proj = MLP(d, d, d, 3) if config.use_mlp_for_obj_ptr_proj else nn.Linear(d, d)
        self.obj_ptr_tpos_proj: nn.Module = nn.Identity()
        if config.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)

    # ---------------------------------------------------------------- image features

    @torch.inference_mode()
    def forward_image(self, img_batch: Tensor) -> BackboneOut:
        """(B, 3, S, S) normalized frames -> the official ``backbone_out`` dictionary.

        Returns:
            ``{"backbone_fpn": [l0, l1, l2], "vision_pos_enc": [p0, p1, p2],
            "vision_features": l2}`` with ``l0`` (B, C/8, S/4, S/4) and ``l1`` (B, C/4, S/8, S/8)
            already through the decoder's ``conv_s0`` / ``conv_s1``, ``l2`` (B, C, S/16, S/16),
            and ``p_i`` (B, C, H_i, W_i) sine encodings, all in the model's dtype.
        """
        encoder = self.image_encoder
        images = img_batch.to(device=self.device, dtype=self.encoder_dtype)
        levels, positions = encoder.neck(encoder.trunk(images), with_positions=True)
        keep = len(levels) - encoder.scalp
        dtype = self.dtype
        fpn = [x.to(dtype) for x in levels[:keep]]
        pos = [p.to(dtype) for p in positions[:keep]]
        if self.use_high_res_features_in_sam:
            fpn[0], fpn[1] = self.sam_mask_decoder.project_high_res(fpn[0], fpn[1])
        return {"vision_features": fpn[-1], "vision_pos_enc": pos, "backbone_fpn": fpn}

    def prepare_backbone_features(
        self, backbone_out: BackboneOut
    ) -> tuple[BackboneOut, list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """Flatten the levels the heads use to sequence-first tokens.

        Returns:
            (a shallow copy of ``backbone_out``, features [(H_i W_i, B, C_i)], position
            encodings [(H_i W_i, B, C)], feature sizes [(H_i, W_i)]), finest level first.
        """
        backbone_out = backbone_out.copy()
        n = self.num_feature_levels
        feature_maps = backbone_out["backbone_fpn"][-n:]
        pos_maps = backbone_out["vision_pos_enc"][-n:]
        feat_sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in pos_maps]
        vision_feats = [x.flatten(2).permute(2, 0, 1) for x in feature_maps]  # (HW, B, C)
        vision_pos_embeds = [x.flatten(2).permute(2, 0, 1) for x in pos_maps]  # (HW, B, C)
        return backbone_out, vision_feats, vision_pos_embeds, feat_sizes

    # ---------------------------------------------------------------- SAM heads

    def use_multimask(self, is_init_cond_frame: bool, point_inputs: dict[str, Tensor] | None) -> bool:
        """Whether the SAM head outputs three masks for these clicks on this frame."""
        num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
        return (
            self.multimask_output_in_sam
            and (is_init_cond_frame or self.multimask_output_for_tracking)
            and (self.multimask_min_pt_num <= num_pts <= self.multimask_max_pt_num)
        )

    def forward_sam_heads(
        self,
        backbone_features: Tensor,
        point_inputs: dict[str, Tensor] | None = None,
        mask_inputs: Tensor | None = None,
        high_res_features: list[Tensor] | None = None,
        multimask_output: bool = False,
    ) -> SamHeadsOutput:
        """Prompt encoder + mask decoder on (memory-conditioned) frame features.

        Args:
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
        dtype = self.dtype
        pe = self.sam_prompt_encoder
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
        decoder = self.sam_mask_decoder
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
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_output_tokens = mask_tokens[:, 1:]  # (B, 3, C)
        else:
            sam_output_tokens = mask_tokens[:, 0:1]  # (B, 1, C): the single-mask token, always
        is_obj_appearing = object_score_logits > 0  # (B, 1)
        if self.pred_obj_scores:
            # The spatial memory gets a hard choice between object and no object.
            low_res_multimasks = torch.where(is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE)
        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
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
        obj_ptr = self.obj_ptr_proj(sam_output_token)  # (B, C)
        if self.pred_obj_scores:
            obj_ptr = self.mix_no_obj_ptr(obj_ptr, object_score_logits.sigmoid() if self.soft_no_obj_ptr else is_obj_appearing.float())
        return (
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )

    def mix_no_obj_ptr(self, obj_ptr: Tensor, lambda_is_obj_appearing: Tensor) -> Tensor:
        """(B, C) pointers, (B, 1) presence weights -> pointers with ``no_obj_ptr`` for absence."""
        if self.fixed_no_obj_ptr:
            obj_ptr = lambda_is_obj_appearing * obj_ptr
        return obj_ptr + (1 - lambda_is_obj_appearing) * self.no_obj_ptr

    def use_mask_as_output(
        self, backbone_features: Tensor, high_res_features: list[Tensor] | None, mask_inputs: Tensor
    ) -> SamHeadsOutput:
        """A (B, 1, S, S) mask prompt taken as the output (logits +-10), same outputs as :meth:`forward_sam_heads`.

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
        if not self.use_obj_ptrs_in_encoder:
            obj_ptr = torch.zeros(mask_inputs.size(0), self.hidden_dim, device=mask_inputs.device)
        else:
            downsampled = self.mask_downsample(mask_float.to(self.mask_downsample.weight.dtype))
            obj_ptr = self.forward_sam_heads(
                backbone_features, mask_inputs=downsampled, high_res_features=high_res_features
            )[5]
        is_obj_appearing = torch.any(mask_inputs.flatten(1).float() > 0.0, dim=1)[..., None]  # (B, 1)
        lambda_is_obj_appearing = is_obj_appearing.float()
        object_score_logits = MASK_AS_OUTPUT_SCALE * lambda_is_obj_appearing + MASK_AS_OUTPUT_BIAS
        if self.pred_obj_scores:
            obj_ptr = self.mix_no_obj_ptr(obj_ptr, lambda_is_obj_appearing)
        return low_res_masks, high_res_masks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits

    # ---------------------------------------------------------------- memory

    def memory_frame_indices(self, frame_idx: int, track_in_reverse: bool) -> list[tuple[int, int]]:
        """(t_pos, frame index) of the non-conditioning memory slots, t_pos = 1 .. num_maskmem - 1.

        The slot t_pos = num_maskmem - 1 is the previous frame; the others step back by the
        memory stride ``r`` from the nearest multiple of ``r`` two frames back.
        """
        stride = self.memory_temporal_stride_for_eval
        slots = []
        for t_pos in range(1, self.num_maskmem):
            t_rel = self.num_maskmem - t_pos  # frames before the current one
            if t_rel == 1:
                prev = frame_idx + 1 if track_in_reverse else frame_idx - 1
            elif not track_in_reverse:
                prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
            else:
                prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
            slots.append((t_pos, prev))
        return slots

    def prepare_memory_conditioned_features(
        self,
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
        c = self.hidden_dim
        h, w = feat_sizes[-1]
        device = current_vision_feats[-1].device
        dtype = current_vision_feats[-1].dtype
        if self.num_maskmem == 0:  # no memory: the image features as they are
            return current_vision_feats[-1].permute(1, 2, 0).view(b, c, h, w)

        num_obj_ptr_tokens = 0
        if is_init_cond_frame:
            if self.directly_add_no_mem_embed:
                feats = current_vision_feats[-1] + self.no_mem_embed  # (HW, B, C)
                return feats.permute(1, 2, 0).view(b, c, h, w)
            # One dummy memory token, so that the attention has something to read.
            memory = self.no_mem_embed.expand(1, b, self.mem_dim)
            memory_pos = self.no_mem_pos_enc.expand(1, b, self.mem_dim)
        else:
            cond_outputs = output_dict["cond_frame_outputs"]
            if not cond_outputs:
                raise ValueError("a tracked frame needs at least one conditioning frame in output_dict")
            selected, unselected = select_closest_cond_frames(frame_idx, cond_outputs, self.max_cond_frames_in_attn)
            slots: list[tuple[int, FrameOutput | None]] = [(0, out) for out in selected.values()]
            for t_pos, prev_idx in self.memory_frame_indices(frame_idx, track_in_reverse):
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
                positions.append(spatial + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1])

            if self.use_obj_ptrs_in_encoder:
                ptrs, ptr_pos, num_obj_ptr_tokens = self.object_pointer_memory(
                    frame_idx, selected, unselected, output_dict, num_frames, track_in_reverse, b, device
                )
                if ptrs is not None:
                    memories.append(ptrs.to(dtype))
                    positions.append(ptr_pos.to(dtype))
            memory = torch.cat(memories, dim=0)  # (M, B, C_mem)
            memory_pos = torch.cat(positions, dim=0)  # (M, B, C_mem)

        conditioned = self.memory_attention(
            curr=current_vision_feats[-1],
            memory=memory,
            curr_pos=current_vision_pos_embeds[-1],
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )  # (HW, B, C)
        return conditioned.permute(1, 2, 0).view(b, c, h, w)

    def object_pointer_memory(
        self,
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
        c = self.hidden_dim
        max_ptrs = min(num_frames, self.max_obj_ptrs_in_encoder)
        if self.only_obj_ptrs_in_the_past_for_eval:
            ptr_cond = {
                t: out for t, out in selected_cond.items() if (t >= frame_idx if track_in_reverse else t <= frame_idx)
            }
        else:
            ptr_cond = selected_cond
        sign = -1 if track_in_reverse else 1
        pos_and_ptrs: list[tuple[int, Tensor]] = [
            ((frame_idx - t) * sign if self.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t), out["obj_ptr"])
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
        if self.add_tpos_enc_to_obj_ptrs:
            t_diff_max = max_ptrs - 1
            tpos_dim = c if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
            distances = torch.tensor(pos_list, device=device, dtype=torch.float32) / t_diff_max  # (P,)
            obj_pos = self.obj_ptr_tpos_proj(sine_1d_encoding(distances, tpos_dim).to(obj_ptrs.dtype))  # (P, mem_dim)
            obj_pos = obj_pos.unsqueeze(1).expand(-1, batch, self.mem_dim)  # (P, B, mem_dim)
        else:
            obj_pos = obj_ptrs.new_zeros(len(pos_list), batch, self.mem_dim)  # (P, B, mem_dim)
        if self.mem_dim < c:
            # Each pointer becomes C / mem_dim tokens of mem_dim.
            split = c // self.mem_dim
            obj_ptrs = obj_ptrs.reshape(-1, batch, split, self.mem_dim)  # (P, B, split, mem_dim)
            obj_ptrs = obj_ptrs.permute(0, 2, 1, 3).flatten(0, 1)  # (P*split, B, mem_dim)
            obj_pos = obj_pos.repeat_interleave(split, dim=0)  # (P*split, B, mem_dim)
        return obj_ptrs, obj_pos, obj_ptrs.shape[0]

    def apply_non_overlapping_constraints(self, pred_masks: Tensor) -> Tensor:
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
        self,
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
        pix_feat = current_vision_feats[-1].permute(1, 2, 0).view(b, self.hidden_dim, h, w)  # (B, C, h, w)
        if self.non_overlap_masks_for_mem_enc:
            pred_masks_high_res = self.apply_non_overlapping_constraints(pred_masks_high_res)
        if self.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts:
            mask_for_mem = (pred_masks_high_res > 0).float()
        else:
            mask_for_mem = torch.sigmoid(pred_masks_high_res)
        if self.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_mem = mask_for_mem * self.sigmoid_scale_for_mem_enc
        if self.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_mem = mask_for_mem + self.sigmoid_bias_for_mem_enc
        weight_dtype = self.memory_encoder.pix_feat_proj.weight.dtype
        features, pos = self.memory_encoder(pix_feat.to(weight_dtype), mask_for_mem.to(weight_dtype))
        if self.no_obj_embed_spatial is not None:
            # Frames where the object is predicted absent get the no-object embedding.
            absent = 1 - (object_score_logits > 0).float()  # (B, 1)
            features = features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return features, [pos]

    # ---------------------------------------------------------------- one frame

    @torch.inference_mode()
    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[Tensor],
        current_vision_pos_embeds: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, Tensor] | None,
        mask_inputs: Tensor | None,
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: Tensor | None = None,
    ) -> FrameOutput:
        """Segment the objects on one frame and encode its memory.

        Args:
            frame_idx: index of the frame.
            is_init_cond_frame: a first prompted frame (no memory is read).
            current_vision_feats, current_vision_pos_embeds, feat_sizes: from
                :meth:`prepare_backbone_features` (batch = objects).
            point_inputs: clicks (see :meth:`forward_sam_heads`) or None.
            mask_inputs: (B, 1, S, S) mask prompt or None.
            output_dict: the memory bank.
            num_frames: frames in the video.
            track_in_reverse: tracking backwards in time.
            run_mem_encoder: also encode the memory of this frame.
            prev_sam_mask_logits: (B, 1, 4h, 4w) earlier logits fed with new clicks.

        Returns:
            ``{"point_inputs", "mask_inputs", "pred_masks" (B, 1, 4h, 4w), "pred_masks_high_res"
            (B, 1, S, S), "obj_ptr" (B, C), "object_score_logits" (B, 1), "maskmem_features"
            (B, mem_dim, h, w) or None, "maskmem_pos_enc" [(B, mem_dim, h, w)] or None}``.
        """
        current_out: FrameOutput = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
        if len(current_vision_feats) > 1:
            high_res_features: list[Tensor] | None = [
                x.permute(1, 2, 0).view(x.size(1), x.size(2), *size)  # (B, C_i, H_i, W_i)
                for x, size in zip(current_vision_feats[:-1], feat_sizes[:-1])
            ]
        else:
            high_res_features = None
        if mask_inputs is not None and self.use_mask_input_as_output_without_sam:
            pix_feat = current_vision_feats[-1].permute(1, 2, 0)
            pix_feat = pix_feat.view(-1, self.hidden_dim, *feat_sizes[-1])  # (B, C, h, w)
            sam_outputs = self.use_mask_as_output(pix_feat, high_res_features, mask_inputs)
        else:
            pix_feat = self.prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=current_vision_feats[-1:],
                current_vision_pos_embeds=current_vision_pos_embeds[-1:],
                feat_sizes=feat_sizes[-1:],
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=track_in_reverse,
            )
            if prev_sam_mask_logits is not None:
                if point_inputs is None or mask_inputs is not None:
                    raise ValueError("prev_sam_mask_logits goes with point inputs and without a mask input")
                mask_inputs = prev_sam_mask_logits
            sam_outputs = self.forward_sam_heads(
                pix_feat,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                high_res_features=high_res_features,
                multimask_output=self.use_multimask(is_init_cond_frame, point_inputs),
            )
        _, _, _, low_res_masks, high_res_masks, obj_ptr, object_score_logits = sam_outputs
        current_out["pred_masks"] = low_res_masks
        current_out["pred_masks_high_res"] = high_res_masks
        current_out["obj_ptr"] = obj_ptr
        current_out["object_score_logits"] = object_score_logits
        if run_mem_encoder and self.num_maskmem > 0:
            maskmem_features, maskmem_pos_enc = self.encode_new_memory(
                current_vision_feats, feat_sizes, high_res_masks, object_score_logits, point_inputs is not None
            )
            current_out["maskmem_features"] = maskmem_features
            current_out["maskmem_pos_enc"] = maskmem_pos_enc
        else:
            current_out["maskmem_features"] = None
            current_out["maskmem_pos_enc"] = None
        return current_out
