"""Frozen model configurations for every SAM variant samkit knows.

A :class:`SamConfig` fully determines the architecture; parameter names of the
modules built from it equal the official checkpoint keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = [
    "ImageEncoderConfig",
    "TinyViTConfig",
    "PromptEncoderConfig",
    "MaskDecoderConfig",
    "SamConfig",
    "HQSamConfig",
    "VARIANTS",
    "get_config",
]

PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """ViT image encoder (SAM's ``ImageEncoderViT``)."""

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True

    @property
    def grid_size(self) -> int:
        """Side of the token grid, e.g. 64 for 1024 / 16."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class TinyViTConfig:
    """TinyViT image encoder used by MobileSAM (``vit_t``)."""

    img_size: int = 1024
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256
    num_classes: int = 1000

    @property
    def grid_size(self) -> int:
        """Side of the output token grid (64 for a 1024 input)."""
        return self.img_size // 16


@dataclass(frozen=True)
class PromptEncoderConfig:
    """Prompt encoder: points, boxes and mask prompts -> sparse and dense embeddings."""

    embed_dim: int = 256
    image_embedding_size: int = 64
    input_image_size: int = 1024
    mask_in_chans: int = 16


@dataclass(frozen=True)
class MaskDecoderConfig:
    """Two-way-transformer mask decoder."""

    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class SamConfig:
    """A whole SAM model: image encoder, prompt encoder, mask decoder."""

    name: str
    image_encoder: ImageEncoderConfig | TinyViTConfig
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    mask_threshold: float = 0.0

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024 for the official models)."""
        return self.image_encoder.img_size

    def with_overrides(self, **changes: object) -> "SamConfig":
        """Return a copy with top-level fields replaced."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class HQSamConfig(SamConfig):
    """HQ-SAM (Ke et al., 2023): a SAM 1 encoder and decoder plus an HQ output token.

    The HQ decoder fuses the final image embedding with early encoder features: the tokens
    after the first global-attention block of a ViT, or after the second stage of TinyViT.
    """

    @property
    def early_feature_dim(self) -> int:
        """Channels of the early encoder features the HQ decoder reads (ViT width; TinyViT: 160)."""
        encoder = self.image_encoder
        if isinstance(encoder, ImageEncoderConfig):
            return encoder.embed_dim
        if len(encoder.embed_dims) < 3:
            raise ValueError("HQ-SAM with TinyViT needs at least 3 stages (it reads the output of stage 1)")
        return encoder.embed_dims[2]  # stage 1 ends with the patch merging to the next width


VARIANTS: dict[str, SamConfig] = {
    "vit_b": SamConfig(
        name="vit_b",
        image_encoder=ImageEncoderConfig(
            embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)
        ),
    ),
    "vit_l": SamConfig(
        name="vit_l",
        image_encoder=ImageEncoderConfig(
            embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
        ),
    ),
    "vit_h": SamConfig(
        name="vit_h",
        image_encoder=ImageEncoderConfig(
            embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
        ),
    ),
    "vit_t": SamConfig(name="vit_t", image_encoder=TinyViTConfig()),
}
# HQ-SAM: the encoders of SAM 1 (hq_vit_b/l/h) and of MobileSAM (hq_vit_tiny) under an HQ decoder.
VARIANTS.update(
    {f"hq_{base}": HQSamConfig(name=f"hq_{base}", image_encoder=VARIANTS[base].image_encoder) for base in ("vit_b", "vit_l", "vit_h")}
)
VARIANTS["hq_vit_tiny"] = HQSamConfig(name="hq_vit_tiny", image_encoder=TinyViTConfig())


def get_config(variant: str | SamConfig) -> SamConfig:
    """Look up a variant name ("vit_b", "vit_l", "vit_h", "vit_t", "hq_vit_b", ...) or pass a config through.

    Raises:
        ValueError: unknown variant name.
        TypeError: neither a string nor a SamConfig.
    """
    if isinstance(variant, SamConfig):
        return variant
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a variant name or a SamConfig, got {type(variant).__name__}")
    key = variant.strip().lower()
    if key in ("default",):
        key = "vit_h"
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: expected one of {sorted(VARIANTS)}")
    return VARIANTS[key]
