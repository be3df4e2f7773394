"""Frozen configurations of the SAM 2 / SAM 2.1 image models.

The numbers are those of the official ``sam2==1.1.0`` yaml configs (``configs/sam2/*.yaml`` and
``configs/sam2.1/*.yaml``, with ``build_sam2``'s default ``apply_postprocessing=True``, which turns
on the dynamic single-mask fallback). SAM 2.0 and 2.1 share one image architecture: they differ
in their weights and in video-only modules, so each size has one trunk config used by both names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .config import PIXEL_MEAN, PIXEL_STD, MaskDecoderConfig, PromptEncoderConfig

__all__ = ["HieraConfig", "Sam2Config", "SAM2_VARIANTS", "SAM2_VIDEO_ONLY_PREFIXES"]


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
