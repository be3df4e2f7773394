"""Frozen configurations of the SAM 2 / SAM 2.1 image and video models.

The numbers are those of the official ``sam2==1.1.0`` yaml configs (``configs/sam2/*.yaml`` and
``configs/sam2.1/*.yaml``, with ``build_sam2``'s default ``apply_postprocessing=True``, which turns
on the dynamic single-mask fallback). SAM 2.0 and 2.1 share one image architecture: they differ
in their weights and in video-only modules, so each size has one trunk config used by both names.
The video models (:data:`SAM2_VIDEO_VARIANTS`) wrap the image config of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .config import PIXEL_MEAN, PIXEL_STD, MaskDecoderConfig, PromptEncoderConfig

__all__ = [
    "HieraConfig",
    "Sam2Config",
    "SAM2_VARIANTS",
    "SAM2_VIDEO_ONLY_PREFIXES",
    "MemoryAttentionConfig",
    "MemoryEncoderConfig",
    "Sam2VideoConfig",
    "SAM2_VIDEO_VARIANTS",
]


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk plus FPN neck (the official ``ImageEncoder(trunk=Hiera, neck=FpnNeck)``).

    Attributes:
        embed_dim: width of the first stage; each later stage multiplies it by ``dim_mul``.
        num_heads: heads of the first stage; each later stage multiplies them by ``head_mul``.
        stages: blocks per stage.
        global_att_blocks: indexes of the blocks that attend over the whole feature map.
        window_pos_embed_bkg_spatial_size: (h, w) of the background position embedding,
            resized (bicubic) to the first stage's grid.
        window_spec: window side per stage for the windowed blocks.
        q_pool: number of stage transitions that halve the grid by max-pooling the queries.
        q_stride: pooling stride at those transitions.
        dim_mul, head_mul: width and head multipliers at a stage transition.
        img_size: side of the square model input.
        patch_kernel, patch_stride, patch_padding: the stem convolution.
        mlp_ratio: hidden width of each block's MLP relative to its width.
        d_model: width of the neck's outputs.
        fpn_top_down_levels: levels that receive the upsampled coarser level (levels 0 and 1,
            the high-resolution ones, take lateral features only).
        scalp: coarsest levels dropped from the neck's output.
    """

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    q_pool: int = 3
    q_stride: int = 2
    dim_mul: float = 2.0
    head_mul: float = 2.0
    img_size: int = 1024
    patch_kernel: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    mlp_ratio: float = 4.0
    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    scalp: int = 1

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Width of every stage, finest first, e.g. (96, 192, 384, 768)."""
        return tuple(int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages)))

    @property
    def backbone_channel_list(self) -> tuple[int, ...]:
        """Stage widths coarsest first, the order of the neck's lateral convolutions."""
        return self.stage_dims[::-1]

    @property
    def grid_size(self) -> int:
        """Side of the image embedding grid the decoder reads (64 for 1024)."""
        return self.img_size // (self.patch_stride * int(self.q_stride) ** (len(self.stages) - 1 - self.scalp))


@dataclass(frozen=True)
class Sam2Config:
    """A whole SAM 2 image model: Hiera encoder, SAM prompt encoder, SAM 2 mask decoder.

    Attributes:
        name: registry name, e.g. ``"sam2.1_hiera_t"``.
        image_encoder: the trunk and neck.
        prompt_encoder, mask_decoder: the SAM heads (the same sizes as SAM 1).
        use_high_res_features: feed the stride-4 and stride-8 features into the upscaling.
        iou_prediction_use_sigmoid: IoU predictions pass through a sigmoid.
        pred_obj_scores: an object-score token and head.
        pred_obj_scores_mlp: the object-score head is a 3-layer MLP (else a linear layer).
        dynamic_multimask_via_stability: with ``multimask_output=False``, fall back to the best
            of the three multimask outputs when the single mask is unstable.
        dynamic_multimask_stability_delta, dynamic_multimask_stability_thresh: that test.
        directly_add_no_mem_embed: add ``no_mem_embed`` to the image embedding of a single image.
        pixel_mean, pixel_std: input normalization in 0..255 pixel units (ImageNet's).
        mask_threshold: logit threshold of binary masks.
        low_res_logit_limit: the predictor returns low-res logits clamped to +-this.
    """

    name: str
    image_encoder: HieraConfig
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    use_high_res_features: bool = True
    iou_prediction_use_sigmoid: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    directly_add_no_mem_embed: bool = True
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    mask_threshold: float = 0.0
    low_res_logit_limit: float = 32.0

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.image_encoder.img_size

    def with_overrides(self, **changes: object) -> "Sam2Config":
        """Return a copy with top-level fields replaced."""
        return replace(self, **changes)  # type: ignore[arg-type]


_TRUNKS: dict[str, HieraConfig] = {
    "t": HieraConfig(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "s": HieraConfig(
        embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "b+": HieraConfig(embed_dim=112, num_heads=2),
    "l": HieraConfig(
        embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
        window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8),
    ),
}

SAM2_VARIANTS: dict[str, Sam2Config] = {
    f"{family}_hiera_{size}": Sam2Config(name=f"{family}_hiera_{size}", image_encoder=trunk)
    for family in ("sam2.1", "sam2")
    for size, trunk in _TRUNKS.items()
}

# Checkpoint entries of the video model that an image model deliberately does not load:
# memory attention and encoder, object pointers, memory position encodings.
SAM2_VIDEO_ONLY_PREFIXES: tuple[str, ...] = (
    "memory_attention.",
    "memory_encoder.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "mask_downsample.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)


@dataclass(frozen=True)
class MemoryAttentionConfig:
    """The memory-attention stack that conditions a frame's features on the memory bank.

    Attributes:
        d_model: width of the frame tokens (the neck's ``d_model``).
        num_layers: layers, each self-attention -> cross-attention to memory -> MLP, pre-norm.
        num_heads: heads of both attentions (one in every released model).
        dim_feedforward: hidden width of each layer's ReLU MLP.
        kv_in_dim: width of the memory tokens the cross-attention reads (the memory width).
        rope_theta: base of the axial rotary position encoding.
        rope_feat_sizes: the official ``feat_sizes`` (the stride-16 grid of the input); samkit
            builds the rotary tables for the token grid it is given, as the official code
            does when the grid differs.
        pos_enc_at_input: add 0.1 x the frame's sine position encoding before the first layer.
        pos_enc_at_attn: add it to the self-attention queries and keys (off: RoPE only).
        pos_enc_at_cross_attn_queries: add it to the cross-attention queries (off).
        pos_enc_at_cross_attn_keys: add the memory position encoding to the cross-attention keys.
    """

    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 1
    dim_feedforward: int = 2048
    kv_in_dim: int = 64
    rope_theta: float = 10000.0
    rope_feat_sizes: tuple[int, int] = (64, 64)
    pos_enc_at_input: bool = True
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_queries: bool = False
    pos_enc_at_cross_attn_keys: bool = True


@dataclass(frozen=True)
class MemoryEncoderConfig:
    """The memory encoder: a frame's features fused with its (downsampled) predicted mask.

    Attributes:
        in_dim: width of the frame features (the neck's ``d_model``).
        out_dim: width of a memory token (64).
        mask_kernel_size, mask_stride, mask_padding: each convolution of the mask downsampler.
        mask_total_stride: the downsampler's overall stride (16: 1024 -> 64).
        fuser_layers: ConvNeXt blocks in the fuser.
        fuser_kernel_size, fuser_padding: their depthwise convolution.
    """

    in_dim: int = 256
    out_dim: int = 64
    mask_kernel_size: int = 3
    mask_stride: int = 2
    mask_padding: int = 1
    mask_total_stride: int = 16
    fuser_layers: int = 2
    fuser_kernel_size: int = 7
    fuser_padding: int = 3


@dataclass(frozen=True)
class Sam2VideoConfig:
    """A whole SAM 2 / 2.1 video model: the image model plus memory and object pointers.

    The flags carry the names of the official ``SAM2Base`` / ``SAM2VideoPredictor`` arguments
    and the values of ``configs/sam2.1/*.yaml`` and ``configs/sam2/*.yaml`` (identical for all
    sizes of one version; 2.0 has no temporal encoding of object pointers and no
    ``no_obj_embed_spatial``). ``binarize_mask_from_pts_for_mem_enc`` and ``fill_hole_area``
    are what ``build_sam2_video_predictor`` sets with its default ``apply_postprocessing=True``.

    Attributes:
        name: registry name, e.g. ``"sam2.1_hiera_t"``.
        image: the image model (encoder, prompt encoder, mask decoder).
        memory_attention, memory_encoder: the memory modules.
        num_maskmem: memory frames attended to: 1 conditioning slot + 6 previous frames.
        backbone_stride: stride of the image embedding (16).
        sigmoid_scale_for_mem_enc, sigmoid_bias_for_mem_enc: mask probability -> memory
            encoder input (``p * 20 - 10``).
        binarize_mask_from_pts_for_mem_enc: on frames with clicks, encode the thresholded mask.
        use_mask_input_as_output_without_sam: a mask prompt is taken as the output mask.
        max_cond_frames_in_attn: conditioning frames attended to (-1: all).
        multimask_output_in_sam: three masks for the first click(s) of a conditioning frame.
        multimask_min_pt_num, multimask_max_pt_num: clicks (a box counts 2) that get them.
        multimask_output_for_tracking: also three masks on tracked frames.
        use_multimask_token_for_obj_ptr: the object pointer comes from the chosen mask's token.
        memory_temporal_stride_for_eval: temporal stride r of the non-conditioning memory.
        non_overlap_masks_for_mem_enc: keep only the best object per pixel before encoding.
        use_obj_ptrs_in_encoder: cross-attend to object pointers of other frames.
        max_obj_ptrs_in_encoder: at most this many pointers.
        add_tpos_enc_to_obj_ptrs: a temporal sine encoding on the pointers.
        proj_tpos_enc_in_obj_ptrs: project it with ``obj_ptr_tpos_proj``.
        use_signed_tpos_enc_to_obj_ptrs: signed frame distance in that encoding.
        only_obj_ptrs_in_the_past_for_eval: pointers of conditioning frames in the future are
            not attended to.
        fixed_no_obj_ptr: an absent object's pointer is ``no_obj_ptr`` alone.
        soft_no_obj_ptr: mix ``no_obj_ptr`` in by the sigmoid of the object score (off).
        use_mlp_for_obj_ptr_proj: ``obj_ptr_proj`` is a 3-layer MLP (else a linear layer).
        no_obj_embed_spatial: add ``no_obj_embed_spatial`` to the memory of frames without
            the object.
        fill_hole_area: the predictor fills holes up to this area in its output masks.
        non_overlap_masks: the predictor keeps only the best object per pixel in its outputs.
        clear_non_cond_mem_around_input: the predictor clears memory around corrected frames.
        add_all_frames_to_correct_as_cond: corrected frames become conditioning frames.
    """

    name: str
    image: Sam2Config
    memory_attention: MemoryAttentionConfig = field(default_factory=MemoryAttentionConfig)
    memory_encoder: MemoryEncoderConfig = field(default_factory=MemoryEncoderConfig)
    num_maskmem: int = 7
    backbone_stride: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = True
    use_mask_input_as_output_without_sam: bool = True
    max_cond_frames_in_attn: int = -1
    multimask_output_in_sam: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    memory_temporal_stride_for_eval: int = 1
    non_overlap_masks_for_mem_enc: bool = False
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    only_obj_ptrs_in_the_past_for_eval: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    use_mlp_for_obj_ptr_proj: bool = True
    no_obj_embed_spatial: bool = True
    fill_hole_area: int = 8
    non_overlap_masks: bool = False
    clear_non_cond_mem_around_input: bool = False
    add_all_frames_to_correct_as_cond: bool = False

    @property
    def image_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.image.img_size

    def with_overrides(self, **changes: object) -> "Sam2VideoConfig":
        """Return a copy with top-level fields replaced."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def with_image_size(self, image_size: int) -> "Sam2VideoConfig":
        """The same model at another square input size (a multiple of 64; the official
        ``++model.image_size=...`` override): the encoder, the prompt encoder's grid and the
        RoPE grid follow; the weights are unchanged. Keeps the name."""
        if image_size % 64:
            raise ValueError(f"image_size must be a multiple of 64, got {image_size}")
        grid = image_size // self.backbone_stride
        image = replace(
            self.image,
            image_encoder=replace(self.image.image_encoder, img_size=image_size),
            prompt_encoder=replace(self.image.prompt_encoder, image_embedding_size=grid, input_image_size=image_size),
        )
        attention = replace(self.memory_attention, rope_feat_sizes=(grid, grid))
        return replace(self, image=image, memory_attention=attention)


# SAM 2.0 differs from 2.1 in these video flags only (configs/sam2/*.yaml vs configs/sam2.1/*.yaml).
_SAM20_VIDEO_FLAGS: dict[str, bool] = {
    "add_tpos_enc_to_obj_ptrs": False,
    "proj_tpos_enc_in_obj_ptrs": False,
    "use_signed_tpos_enc_to_obj_ptrs": False,
    "no_obj_embed_spatial": False,
}

SAM2_VIDEO_VARIANTS: dict[str, Sam2VideoConfig] = {
    name: Sam2VideoConfig(name=name, image=image).with_overrides(
        **(_SAM20_VIDEO_FLAGS if name.startswith("sam2_") else {})
    )
    for name, image in SAM2_VARIANTS.items()
}
