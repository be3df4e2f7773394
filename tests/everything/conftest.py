"""Models, images and comparisons for the segment-everything tests.

Parity needs masks that survive the generator's filters. A randomly perturbed SAM predicts IoUs
near 0 and noisy, image-wide masks (every box is the whole image, so NMS keeps one), which would
make a parity test on "0 or 1 mask" prove little. :func:`construct_decoder_` therefore turns a
perturbed official model into one that behaves like a (toy) trained SAM, by choosing weights,
which both implementations then load from the same checkpoint:

* in the last two-way layer, image tokens attend to the prompt point through its positional
  encoding only (q/k projections pick matching sin/cos channels), so the attention to the point
  is a bump around it that also depends a little on the image content;
* that layer's output is scaled up so the bump dominates the image tokens, and the upscaling
  convolutions are made spatially uniform (no checkerboard);
* the hypernetwork outputs are fitted (least squares) so that mask k = {bump > tau_k}:
  three nested masks per point, like SAM's whole / part / sub-part, with sharp edges
  (stable) and boxes that differ from point to point;
* the IoU head's bias is shifted so its predictions straddle the thresholds.
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

from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig

NOISE_STD = 0.02


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
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

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


@torch.no_grad()
def construct_decoder_(
    model: nn.Module,
    image: np.ndarray,
    *,
    taus: tuple[float, float, float] = (0.6, 0.7, 0.8),
    sharpness: float = 60.0,
    iou_shift: float = 0.8,
    attention_gain: float = 4.0,
    pe_scale: float = 0.8,
) -> None:
    """Choose decoder weights of a perturbed official model so that it makes point-local masks.

    See the module docstring. ``image`` is used to fit the hypernetwork outputs (a few points).
    """
    from segment_anything import SamPredictor

    decoder, prompt_encoder = model.mask_decoder, model.prompt_encoder
    prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(pe_scale)  # lower frequencies: wider bumps
    decoder.iou_prediction_head.layers[-1].bias.add_(iou_shift)
    for module in decoder.output_upscaling:
        if isinstance(module, nn.ConvTranspose2d):  # same kernel at the 4 positions: no checkerboard
            module.weight.copy_(module.weight.mean(dim=(2, 3), keepdim=True).expand_as(module.weight))
    first, last = decoder.transformer.layers[0], decoder.transformer.layers[-1]
    first.norm4.weight.mul_(0.1)  # image tokens small next to the positional encoding ...
    first.norm4.bias.mul_(0.1)
    last.norm3.weight.mul_(0.05)  # ... and prompt tokens small next to theirs
    last.norm3.bias.mul_(0.05)
    attn = last.cross_attn_image_to_token
    attn.v_proj.weight.mul_(20.0)
    inner, dim = attn.q_proj.weight.shape
    heads = attn.num_heads
    per_head = inner // heads // 2  # frequencies per head: their sin and cos channels
    select = torch.zeros(inner, dim)
    for h in range(heads):
        for j in range(per_head):
            f = h * per_head + j
            select[h * 2 * per_head + j, f] = 1.0  # sin of frequency f
            select[h * 2 * per_head + per_head + j, dim // 2 + f] = 1.0  # cos of frequency f
    attn.q_proj.weight.copy_(select * attention_gain**0.5)
    attn.k_proj.weight.copy_(select * attention_gain**0.5)
    attn.q_proj.bias.zero_()
    attn.k_proj.bias.zero_()
    attn.out_proj.weight.mul_(30.0)
    used = select.sum(0) > 0  # token channels the q/k read: silence them in the learned embeddings
    for table in [decoder.iou_token.weight, decoder.mask_tokens.weight, prompt_encoder.not_a_point_embed.weight]:
        table[:, used] *= 0.05
    for embedding in prompt_encoder.point_embeddings:
        embedding.weight[:, used] *= 0.05

    # Fit the hypernetwork outputs: mask k ~ sharpness * (attention to the point - tau_k).
    predictor = SamPredictor(model)
    predictor.set_image(image)
    captured: dict[str, Any] = {}
    hooks = [
        attn.register_forward_hook(lambda m, a, kw, o: captured.__setitem__("qk", (kw["q"], kw["k"])), with_kwargs=True),
        decoder.output_upscaling.register_forward_hook(lambda m, i, o: captured.__setitem__("up", o)),
    ]
    rng = np.random.default_rng(0)
    n = 5
    points = np.stack([rng.uniform(0, image.shape[1], n), rng.uniform(0, image.shape[0], n)], axis=1)
    coords = torch.as_tensor(predictor.transform.apply_coords(points, image.shape[:2]))
    predictor.predict_torch(coords[:, None], torch.ones(n, 1, dtype=torch.int))
    for hook in hooks:
        hook.remove()
    q, k = captured["qk"]
    qh = attn._separate_heads(attn.q_proj(q), heads)  # (n, nh, N, hd)
    kh = attn._separate_heads(attn.k_proj(k), heads)  # (n, nh, T, hd)
    to_point = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)[..., -2].mean(1)  # (n, N)
    side = int(to_point.shape[1] ** 0.5)
    bump = nn.functional.interpolate(to_point.view(n, 1, side, side), scale_factor=4, mode="bilinear")  # (n, 1, 4s, 4s)
    upscaled = captured["up"]  # (n, C/8, 4s, 4s)
    features = upscaled.permute(0, 2, 3, 1).reshape(-1, upscaled.shape[1]).double()  # (n*16s^2, C/8)
    for tau, mlp in zip(taus, decoder.output_hypernetworks_mlps[1:]):
        target = (bump.reshape(-1).double() - tau) * sharpness
        weights = torch.linalg.lstsq(features, target[:, None]).solution[:, 0]
        mlp.layers[-1].weight.zero_()
        mlp.layers[-1].bias.copy_(weights.float())
    single = decoder.output_hypernetworks_mlps[0].layers[-1]
    single.weight.zero_()
    single.bias.copy_(decoder.output_hypernetworks_mlps[2].layers[-1].bias)


def save_constructed(builder: Callable[[], nn.Module], path: Path, seed: int, image: np.ndarray, **kwargs: Any) -> Path:
    """Build (initial weights seeded too), perturb and construct an official model; save its state dict."""
    torch.manual_seed(seed)
    model = builder().eval()
    perturb_(model, seed)
    construct_decoder_(model, image, **kwargs)
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
        best, best_iou = -1, -1.0
        for i, rec in enumerate(ours):
            if i in used:
                continue
            mask = np.asarray(rec["segmentation"], dtype=bool)
            union = int(np.logical_or(mask, ref_mask).sum())
            iou = int(np.logical_and(mask, ref_mask).sum()) / union if union else 1.0
            if iou > best_iou:
                best, best_iou = i, iou
        assert best_iou >= 0.99, f"{what}: official mask {j} has no samkit match (best IoU {best_iou:.4f})"
        used.add(best)
        rec = ours[best]
        assert rec["crop_box"] == ref["crop_box"], f"{what}: mask {j} crop_box differs"
        np.testing.assert_allclose(rec["point_coords"], ref["point_coords"], rtol=0, atol=1e-9, err_msg=what)
        assert abs(rec["predicted_iou"] - ref["predicted_iou"]) < 1e-4, f"{what}: mask {j} predicted_iou differs"
        assert abs(rec["stability_score"] - ref["stability_score"]) < 1e-3, f"{what}: mask {j} stability differs"
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
