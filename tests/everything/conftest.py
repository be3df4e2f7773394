"""Models, images and comparisons for the segment-everything tests.

Parity needs masks that survive the generator's filters. A randomly perturbed SAM predicts IoUs
near 0 and noisy, image-wide masks (every box is the whole image, so NMS keeps one), which would
make a parity test on "0 or 1 mask" prove little. ``construct_decoder_`` (in ``bench/baselines.py``,
shared with ``samkit bench``; loaded here by path) therefore turns a perturbed official model into
one that behaves like a (toy) trained SAM, by choosing decoder weights, which both implementations
then load from the same checkpoint: point-local nested masks with sharp edges and predicted IoUs
that straddle the thresholds.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from samkit.benchmark import load_baselines
from samkit.config import (
    ImageEncoderConfig,
    MaskDecoderConfig,
    PromptEncoderConfig,
    SamConfig,
)

NOISE_STD = 0.02
BASELINES = load_baselines(Path(__file__).resolve().parents[2] / "bench" / "baselines.py")
construct_decoder_ = BASELINES.construct_decoder_


# --------------------------------------------------------------------------- images


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """A seeded photo-like image: gradient background, flat shapes, sensor noise. (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([40 + 120 * x / width, 60 + 100 * y / height, np.full_like(x, 90.0)], axis=-1)  # (H, W, 3)
    short = min(height, width)
    for i in range(14):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.25) * short, rng.uniform(0.05, 0.25) * short
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1 if i % 2 else (abs(x - cx) < rx) & (abs(y - cy) < ry)
        image[inside] = rng.uniform(0, 255, size=3)
    image += rng.normal(0.0, 4.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- models


def small_config(img_size: int = 1024, dim: int = 64) -> SamConfig:
    """A small SAM with the real input size (1024 -> 256x256 low-res masks): a 2-block encoder and
    a narrow single-head decoder. The generator's cost is then mostly mask post-processing."""
    grid = img_size // 16
    return SamConfig(
        name="everything_small",
        image_encoder=ImageEncoderConfig(
            img_size=img_size, embed_dim=64, depth=2, num_heads=2, window_size=14, global_attn_indexes=(1,), out_chans=dim
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=dim, image_embedding_size=grid, input_image_size=img_size),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=dim, transformer_mlp_dim=2 * dim, transformer_num_heads=1, iou_head_hidden_dim=dim
        ),
    )


def build_official_small(img_size: int = 1024, dim: int = 64) -> nn.Module:
    """The official ``Sam`` with the architecture of :func:`small_config`."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=16,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=4.0,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2 * dim, num_heads=1),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dim,
        ),
    ).eval()


@torch.no_grad()
def perturb_(model: nn.Module, seed: int, std: float = NOISE_STD) -> None:
    """Add seeded N(0, std) noise to every floating tensor of the state dict, in place."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in model.state_dict().values():
        if tensor.dtype.is_floating_point:
            tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * std)


def memoize_encoder_(model: nn.Module) -> nn.Module:
    """Make ``model.image_encoder`` return a stored result for an input it has already encoded.

    The encoder is deterministic, so this only skips repeated work (the vit_b encoder takes
    seconds per image); the state dict is unchanged (the instance's ``forward`` is wrapped).
    """
    encoder = model.image_encoder
    forward = encoder.forward
    memo: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}

    def memoized(x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), hash(x.detach().cpu().numpy().tobytes()))
        if key not in memo:
            memo[key] = forward(x)
        return memo[key].clone()

    encoder.forward = memoized  # type: ignore[method-assign]
    return model


def construct_official(builder: Callable[[], nn.Module], seed: int, image: np.ndarray, **kwargs: Any) -> nn.Module:
    """Build (initial weights seeded too), perturb and construct an official model (eval mode).

    Its image encoder is memoized (:func:`memoize_encoder_`), so generating on ``image`` later
    reuses the encoding made during the construction.
    """
    torch.manual_seed(seed)
    model = memoize_encoder_(builder().eval())
    perturb_(model, seed)
    construct_decoder_(model, image, **kwargs)
    return model


def save_constructed(builder: Callable[[], nn.Module], path: Path, seed: int, image: np.ndarray, **kwargs: Any) -> Path:
    """Build, perturb and construct an official model (:func:`construct_official`); save its state dict."""
    model = construct_official(builder, seed, image, **kwargs)
    torch.save(model.state_dict(), path)
    del model
    gc.collect()
    return path


# --------------------------------------------------------------------------- comparisons


def _official_logits(
    official_model: nn.Module, image: np.ndarray, record: dict[str, Any], predictors: dict[tuple[int, ...], Any]
) -> np.ndarray:
    """The official full-size logits (3, h, w) of a record's prompt point, in its crop's frame.

    ``predictors`` caches one official predictor (one image encoding) per crop box.
    """
    from segment_anything import SamPredictor

    x0, y0, w, h = record["crop_box"]
    key = (x0, y0, w, h)
    if key not in predictors:
        predictors[key] = SamPredictor(official_model)
        predictors[key].set_image(image[y0 : y0 + h, x0 : x0 + w])
    x, y = record["point_coords"][0]
    logits, _, _ = predictors[key].predict(np.array([[x - x0, y - y0]]), np.array([1]), return_logits=True)
    return logits


def assert_same_records(
    ours: list[dict[str, Any]],
    official: list[dict[str, Any]],
    *,
    what: str,
    official_model: nn.Module | None = None,
    image: np.ndarray | None = None,
    eps: float = 1e-3,
) -> None:
    """One-to-one match: same count; every official mask has an unused samkit mask with IoU >= 0.99,
    the same point and crop box, and close scores.

    Areas and boxes must be equal, except that (given ``official_model`` and ``image``) pixels may
    differ where the official logit lies within ``eps`` of the threshold: the two decoders agree
    to float rounding, not bit for bit, so such pixels can fall either way.
    """
    assert len(ours) == len(official), f"{what}: {len(ours)} masks, official {len(official)}"
    used: set[int] = set()
    predictors: dict[tuple[int, ...], Any] = {}
    for j, ref in enumerate(official):
        ref_mask = np.asarray(ref["segmentation"], dtype=bool)
        best, best_iou, best_key = -1, -1.0, (-1.0, False)
        for i, rec in enumerate(ours):
            if i in used:
                continue
            mask = np.asarray(rec["segmentation"], dtype=bool)
            union = int(np.logical_or(mask, ref_mask).sum())
            iou = int(np.logical_and(mask, ref_mask).sum()) / union if union else 1.0
            # Ties (e.g. several empty masks once the filters are off) go to the same prompt point.
            key = (iou, bool(np.allclose(rec["point_coords"], ref["point_coords"], rtol=0, atol=1e-9)))
            if key > best_key:
                best, best_iou, best_key = i, iou, key
        assert best_iou >= 0.99, f"{what}: official mask {j} has no samkit match (best IoU {best_iou:.4f})"
        used.add(best)
        rec = ours[best]
        assert rec["crop_box"] == ref["crop_box"], f"{what}: mask {j} crop_box differs"
        np.testing.assert_allclose(rec["point_coords"], ref["point_coords"], rtol=0, atol=1e-9, err_msg=what)
        assert abs(rec["predicted_iou"] - ref["predicted_iou"]) < 1e-4, f"{what}: mask {j} predicted_iou differs"
        stability, ref_stability = float(rec["stability_score"]), float(ref["stability_score"])
        both_nan = np.isnan(stability) and np.isnan(ref_stability)  # empty masks: 0 / 0 on both sides
        assert both_nan or abs(stability - ref_stability) < 1e-3, f"{what}: mask {j} stability differs"
        if rec["area"] == ref["area"] and rec["bbox"] == ref["bbox"]:
            continue
        assert official_model is not None and image is not None, (
            f"{what}: mask {j} area/bbox {rec['area']}/{rec['bbox']} != official {ref['area']}/{ref['bbox']}"
        )
        x0, y0, w, h = ref["crop_box"]
        differ = (np.asarray(rec["segmentation"], dtype=bool) != ref_mask)[y0 : y0 + h, x0 : x0 + w]
        logits = _official_logits(official_model, image, ref, predictors)  # (3, h, w)
        crop_ref = ref_mask[y0 : y0 + h, x0 : x0 + w]
        output = int(np.argmin([np.count_nonzero((lg > 0) != crop_ref) for lg in logits]))
        worst = float(np.abs(logits[output][differ]).max())
        assert worst < eps, (
            f"{what}: mask {j}: {int(differ.sum())} pixels differ, one where the official logit is {worst:.3g}"
        )


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session folder for generated checkpoints."""
    return tmp_path_factory.mktemp("everything_checkpoints")
