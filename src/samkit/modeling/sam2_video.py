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
* its parts, each written in its own module (functions taking the model) and exposed here as
  methods: :meth:`prepare_memory_conditioned_features` (``sam2_video_memory.py``: reading the
  memory bank; object-pointer tokens in ``sam2_video_pointers.py``), :meth:`forward_sam_heads`,
  :meth:`use_mask_as_output`, :meth:`use_multimask` (``sam2_video_heads.py``),
  :meth:`encode_new_memory`, :meth:`apply_non_overlapping_constraints`
  (``sam2_video_memory_encoding.py``).

This module holds the parameters (:meth:`Sam2Video.__init__`), the frame features and
:meth:`track_step`, which composes the parts.

The memory bank (``output_dict``) is the official one: ``{"cond_frame_outputs": {t: out},
"non_cond_frame_outputs": {t: out}}`` with ``out`` the dictionaries :meth:`track_step` returns.

Inference only: no training branches (dropout, ``self.training`` cases) are kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config_sam2 import Sam2VideoConfig
from . import sam2_video_heads, sam2_video_memory, sam2_video_memory_encoding
from .common import MLP
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .sam2 import Sam2
from .sam2_video_heads import NO_OBJ_SCORE, SamHeadsOutput
from .sam2_video_memory import FrameOutput, select_closest_cond_frames
from .sam2_video_pointers import sine_1d_encoding

__all__ = ["NO_OBJ_SCORE", "Sam2Video", "sine_1d_encoding", "select_closest_cond_frames"]

BackboneOut = dict[str, Any]


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

    # ---------------------------------------------------------------- parts (see their modules)

    def use_multimask(self, is_init_cond_frame: bool, point_inputs: dict[str, Tensor] | None) -> bool:
        """Whether the SAM head outputs three masks: :func:`.sam2_video_heads.use_multimask`."""
        return sam2_video_heads.use_multimask(self, is_init_cond_frame, point_inputs)

    def forward_sam_heads(
        self,
        backbone_features: Tensor,
        point_inputs: dict[str, Tensor] | None = None,
        mask_inputs: Tensor | None = None,
        high_res_features: list[Tensor] | None = None,
        multimask_output: bool = False,
    ) -> SamHeadsOutput:
        """Prompt encoder + mask decoder on (B, C, h, w) features: :func:`.sam2_video_heads.forward_sam_heads`."""
        return sam2_video_heads.forward_sam_heads(
            self, backbone_features, point_inputs, mask_inputs, high_res_features, multimask_output
        )

    def use_mask_as_output(
        self, backbone_features: Tensor, high_res_features: list[Tensor] | None, mask_inputs: Tensor
    ) -> SamHeadsOutput:
        """A (B, 1, S, S) mask prompt taken as the output: :func:`.sam2_video_heads.use_mask_as_output`."""
        return sam2_video_heads.use_mask_as_output(self, backbone_features, high_res_features, mask_inputs)

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
        """The frame's features fused with the memory bank -> (B, C, h, w).

        See :func:`.sam2_video_memory.prepare_memory_conditioned_features`.
        """
        return sam2_video_memory.prepare_memory_conditioned_features(
            self,
            frame_idx,
            is_init_cond_frame,
            current_vision_feats,
            current_vision_pos_embeds,
            feat_sizes,
            output_dict,
            num_frames,
            track_in_reverse,
        )

    def apply_non_overlapping_constraints(self, pred_masks: Tensor) -> Tensor:
        """(N_obj, 1, H, W) logits, each pixel kept for its best object only.

        See :func:`.sam2_video_memory_encoding.apply_non_overlapping_constraints`.
        """
        return sam2_video_memory_encoding.apply_non_overlapping_constraints(pred_masks)

    def encode_new_memory(
        self,
        current_vision_feats: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        pred_masks_high_res: Tensor,
        object_score_logits: Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[Tensor, list[Tensor]]:
        """A frame and its (B, 1, S, S) mask logits -> (B, mem_dim, h, w) memory and [its encoding].

        See :func:`.sam2_video_memory_encoding.encode_new_memory`.
        """
        return sam2_video_memory_encoding.encode_new_memory(
            self, current_vision_feats, feat_sizes, pred_masks_high_res, object_score_logits, is_mask_from_pts
        )

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
