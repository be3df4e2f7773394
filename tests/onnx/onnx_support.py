"""Helpers of the ONNX tests: tiny perturbed models, the official oracle, comparisons.

(A uniquely named module, not a package: a ``tests/onnx`` package would shadow ``onnx``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from samkit.config import (
    ImageEncoderConfig,
    MaskDecoderConfig,
    PromptEncoderConfig,
    SamConfig,
)
from samkit.modeling import Sam

NOISE_STD = 0.02


def tiny_config(img_size: int) -> SamConfig:
    """A small SAM at ``img_size`` (grid img_size/16; windows of 6 or 14 need padding).

    At 1024 the decoder interface has the official sizes (64x64 embedding grid, 256x256
    mask input) and the global-attention block runs the chunked attention path (4096 tokens).
    """
    grid = img_size // 16
    return SamConfig(
        name=f"tiny{img_size}",
        image_encoder=ImageEncoderConfig(
            img_size=img_size,
            embed_dim=32 if img_size < 1024 else 16,
            depth=2,
            num_heads=2,
            window_size=6 if img_size < 1024 else 14,
            global_attn_indexes=(1,),
            out_chans=32,
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=grid, input_image_size=img_size),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32
        ),
    )


def perturbed_sam(config: SamConfig, seed: int) -> Sam:
    """samkit model with random init plus N(0, 0.02) on every tensor (rel-pos and pos-embed included)."""
    torch.manual_seed(seed)
    sam = Sam(config)  # random init (build_sam would fetch the official weights of a known variant)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in sam.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * NOISE_STD)
    sam.prompt_encoder.clear_cache()
    return sam.eval()


def official_sam(config: SamConfig, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The official ``segment_anything`` Sam with ``config``'s architecture and the given weights."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        TwoWayTransformer,
    )
    from segment_anything.modeling import Sam as OfficialSam

    enc, pe, dec = config.image_encoder, config.prompt_encoder, config.mask_decoder
    assert isinstance(enc, ImageEncoderConfig)
    model = OfficialSam(
        image_encoder=ImageEncoderViT(
            img_size=enc.img_size,
            patch_size=enc.patch_size,
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            mlp_ratio=enc.mlp_ratio,
            out_chans=enc.out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=enc.window_size,
            global_attn_indexes=enc.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=pe.embed_dim,
            image_embedding_size=(pe.image_embedding_size, pe.image_embedding_size),
            input_image_size=(pe.input_image_size, pe.input_image_size),
            mask_in_chans=pe.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=dec.transformer_dim, mlp_dim=dec.transformer_mlp_dim,
                num_heads=dec.transformer_num_heads,
            ),
            transformer_dim=dec.transformer_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
    )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def structured_image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 with a gradient, a few flat shapes and mild noise (not pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=-1)
    for _ in range(4):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = rng.integers(max(height, width) // 10, max(height, width) // 4)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, size=3)
    image = image + rng.integers(-8, 9, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def assert_logits_close(ours: np.ndarray, ref: np.ndarray, *, what: str, tol: float = 1e-3) -> None:
    """Max |difference| <= tol * max(1, max |ref|): float rounding of one graph vs another."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max()))
    diff = float(np.abs(ours - ref).max())
    assert diff <= tol * scale, f"{what}: max |diff| {diff:.3g} > {tol} * {scale:.3g}"


def assert_masks_match(ours: np.ndarray, ref_logits: np.ndarray, *, what: str, threshold: float = 0.0) -> None:
    """Binary masks equal, except where the reference logit is within 1e-3 of the threshold."""
    ours = np.asarray(ours).astype(bool)
    ref = np.asarray(ref_logits) > threshold
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    differ = ours != ref
    near = np.abs(np.asarray(ref_logits) - threshold) < 1e-3
    assert not (differ & ~near).any(), f"{what}: {int((differ & ~near).sum())} mask pixels differ away from 0"


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@dataclass(frozen=True)
class Exported:
    """A perturbed tiny model and the graphs exported from it."""

    sam: Sam
    dir: Path

    def path(self, name: str) -> Path:
        """A file in the export directory."""
        return self.dir / name


def perturb_(model: nn.Module, seed: int) -> nn.Module:
    """Add seeded N(0, 0.02) noise to every floating tensor of ``model.state_dict()``; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * NOISE_STD)
    model.prompt_encoder.clear_cache()  # type: ignore[operator]
    return model.eval()


def perturbed_variant(name: str, seed: int) -> nn.Module:
    """A real-size registry variant (``sam2.1_hiera_t``, ``hq_vit_tiny``, ...), random init + noise, float32 CPU."""
    from samkit.build_sam2 import get_sam2_config, is_sam2_variant
    from samkit.config import get_config
    from samkit.modeling.hq_sam import HQSam
    from samkit.modeling.sam2 import Sam2

    torch.manual_seed(seed)
    model: nn.Module = Sam2(get_sam2_config(name)) if is_sam2_variant(name) else HQSam(get_config(name))  # type: ignore[arg-type]
    return perturb_(model, seed)


@dataclass(frozen=True)
class CliExport:
    """A perturbed variant, its checkpoint file, and the graphs ``samkit export-onnx`` wrote from it."""

    model: nn.Module
    checkpoint: Path
    dir: Path
    report: dict[str, object]
