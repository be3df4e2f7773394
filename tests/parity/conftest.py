"""Fixtures for parity tests against the official ``segment_anything`` implementation.

The official package is the oracle: both implementations load the SAME official-format
checkpoint and are compared through their public predictor APIs. Official default init
leaves ``rel_pos_*`` and ``pos_embed`` at zero, so every floating tensor is perturbed with
seeded N(0, 0.02) noise before saving, which makes those paths matter.
"""

from __future__ import annotations

import ctypes
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import Tensor, nn

from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig

NOISE_STD = 0.02

logger = logging.getLogger("samkit.tests.parity")


# --------------------------------------------------------------------------- images


def make_structured_image(height: int, width: int, seed: int) -> np.ndarray:
    """A seeded synthetic photo-like image: colour gradients, flat shapes, sensor noise.

    Structured content (edges, flat regions) exercises the encoder and gives masks with
    real boundaries, unlike pure noise.

    Returns:
        (height, width, 3) uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    yn, xn = y / max(height - 1, 1), x / max(width - 1, 1)
    image = np.stack([30 + 190 * xn, 40 + 160 * yn, 60 + 120 * (1 - 0.5 * (xn + yn))], axis=-1)  # (H, W, 3)
    short = min(height, width)
    for _ in range(8):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.06, 0.3) * short
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        if rng.random() < 0.5:
            inside = (x - cx) ** 2 + (y - cy) ** 2 < radius**2
        else:
            aspect = rng.uniform(0.4, 2.0)
            inside = (np.abs(x - cx) < radius) & (np.abs(y - cy) < radius * aspect)
        image[inside] = color
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- checkpoints


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS.

    After a vit_h model (2.5 GB) is freed, glibc keeps most of its pages; the next model
    would then be allocated on top (measured: peak RSS 8.4 GB instead of 5.9 GB when the
    official and samkit vit_h models are loaded one after the other). ``malloc_trim``
    returns them. A no-op where the C library is not glibc.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


@torch.no_grad()
def perturb_state_dict_(model: nn.Module, seed: int, std: float = NOISE_STD) -> None:
    """Add seeded N(0, std) noise in place to every floating tensor of ``model.state_dict()``."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in model.state_dict().values():
        if tensor.dtype.is_floating_point:
            tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * std)


def save_perturbed_official(builder: Callable[[], nn.Module], path: Path, seed: int) -> Path:
    """Build an official model, perturb it, ``torch.save`` its state dict to ``path``.

    The model is freed before returning, so large variants do not stay in memory.
    """
    model = builder().eval()
    perturb_state_dict_(model, seed)
    torch.save(model.state_dict(), path)
    del model
    release_memory()
    return path


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``(builder, name, seed) -> path`` writing a perturbed official checkpoint."""
    root = tmp_path_factory.mktemp("official_checkpoints")

    def make(builder: Callable[[], nn.Module], name: str, seed: int) -> Path:
        return save_perturbed_official(builder, root / f"{name}_seed{seed}.pth", seed)

    return make


# --------------------------------------------------------------------------- tiny models


TINY_IMG_SIZE = 320  # grid 20: windows of 7 need padding to 21
TINY_WINDOW = 7


def tiny_samkit_config() -> SamConfig:
    """A small SAM whose windowed blocks need padding (grid 20, window 7)."""
    grid = TINY_IMG_SIZE // 16
    return SamConfig(
        name="tiny_parity",
        image_encoder=ImageEncoderConfig(
            img_size=TINY_IMG_SIZE,
            embed_dim=64,
            depth=3,
            num_heads=2,
            window_size=TINY_WINDOW,
            global_attn_indexes=(1,),
            out_chans=32,
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=grid, input_image_size=TINY_IMG_SIZE),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32
        ),
    )


def build_tiny_official() -> Sam:
    """The official ``Sam`` with the architecture of :func:`tiny_samkit_config`."""
    grid = TINY_IMG_SIZE // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=TINY_IMG_SIZE,
            patch_size=16,
            embed_dim=64,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            out_chans=32,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=TINY_WINDOW,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32,
            image_embedding_size=(grid, grid),
            input_image_size=(TINY_IMG_SIZE, TINY_IMG_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
    ).eval()


# --------------------------------------------------------------------------- comparisons


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x.detach().cpu() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))


def assert_close_scaled(
    actual: Tensor | np.ndarray,
    expected: Tensor | np.ndarray,
    *,
    tol: float = 1e-4,
    what: str = "",
) -> None:
    """``assert_close`` with rtol = tol and atol = tol * max(1, max|expected|).

    Float32 rounding differences grow with the magnitude of the values; an absolute
    tolerance relative to the tensor's scale keeps the check equally strict for
    embeddings (~1) and logits (~10s).
    """
    a, e = _as_tensor(actual), _as_tensor(expected)
    if a.dtype != e.dtype or not a.is_floating_point():
        a, e = a.double(), e.double()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != official {tuple(e.shape)}"
    assert torch.isfinite(e).all(), f"{what}: official output is not finite"
    scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
    logger.debug("%s: max |diff| / scale = %.3g (scale %.3g)", what, float((a - e).abs().max()) / scale, scale)
    torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def assert_masks_match(
    ours: np.ndarray, official: np.ndarray, official_logits: np.ndarray, *, what: str = "", eps: float = 1e-3
) -> None:
    """Binary masks must be identical except where the official logit is within ``eps`` of 0."""
    assert ours.shape == official.shape, f"{what}: mask shape {ours.shape} != official {official.shape}"
    assert ours.dtype == np.bool_ and official.dtype == np.bool_, f"{what}: masks are not boolean"
    differ = ours != official
    if differ.any():
        worst = float(np.abs(official_logits[differ]).max())
        assert worst < eps, (
            f"{what}: {int(differ.sum())} mask pixels differ, one where the official logit is {worst:.3g} "
            f"(allowed only where |logit| < {eps})"
        )


# --------------------------------------------------------------------------- prompts

PROMPT_CASES = ("point", "point_single", "pos_neg", "box", "box_points")


def prompt_kwargs(case: str, height: int, width: int) -> dict[str, Any]:
    """``predict`` keyword arguments of a named prompt case, in pixels of an (height, width) image.

    Positions are fractions of the image size so the same case makes sense on every image.
    """
    positive = [0.42 * width, 0.55 * height]
    negative = [0.78 * width, 0.22 * height]
    box = np.array([0.15 * width, 0.2 * height, 0.7 * width, 0.85 * height])
    one_point = {"point_coords": np.array([positive]), "point_labels": np.array([1])}
    two_points = {"point_coords": np.array([positive, negative]), "point_labels": np.array([1, 0])}
    cases: dict[str, dict[str, Any]] = {
        "point": {**one_point, "multimask_output": True},
        "point_single": {**one_point, "multimask_output": False},
        "pos_neg": {**two_points, "multimask_output": False},
        "box": {"box": box, "multimask_output": False},
        "box_points": {**two_points, "box": box, "multimask_output": True},
    }
    return cases[case]


@dataclass
class PredictOutputs:
    """What one ``predict`` call pair returns: logits with ``return_logits=True``, masks without."""

    logits: np.ndarray
    scores: np.ndarray
    low_res: np.ndarray
    masks: np.ndarray


def run_predict(predictor: Any, kwargs: dict[str, Any]) -> PredictOutputs:
    """``predictor.predict(**kwargs)`` with and without ``return_logits``."""
    logits, scores, low_res = predictor.predict(**kwargs, return_logits=True)
    masks, scores_again, _ = predictor.predict(**kwargs)
    np.testing.assert_array_equal(scores_again, scores, err_msg="scores depend on return_logits")
    return PredictOutputs(logits=logits, scores=scores, low_res=low_res, masks=masks)


def compare_outputs(ours: PredictOutputs, official: PredictOutputs, *, what: str, tol: float = 1e-4) -> None:
    """Logits (full size and low-res) and scores agree to ``tol`` relative to their scale; the
    boolean masks may differ only where the official logit is within 1e-3 of 0."""
    assert_close_scaled(ours.scores, official.scores, tol=tol, what=f"{what} iou predictions")
    assert_close_scaled(ours.low_res, official.low_res, tol=tol, what=f"{what} low-res logits")
    assert_close_scaled(ours.logits, official.logits, tol=tol, what=f"{what} full-size logits")
    assert_masks_match(ours.masks, official.masks, official.logits, what=f"{what} masks")


def compare_predict(ours: Any, official: Any, kwargs: dict[str, Any], *, what: str, tol: float = 1e-4) -> None:
    """Run the same ``predict`` on a samkit and an official predictor and compare the outputs."""
    compare_outputs(run_predict(ours, kwargs), run_predict(official, kwargs), what=what, tol=tol)


class ParityTools:
    """The helpers above, handed to test modules by the :func:`parity` fixture."""

    image = staticmethod(make_structured_image)
    release_memory = staticmethod(release_memory)
    perturb_ = staticmethod(perturb_state_dict_)
    close = staticmethod(assert_close_scaled)
    masks_match = staticmethod(assert_masks_match)
    prompt_cases = PROMPT_CASES
    prompt_kwargs = staticmethod(prompt_kwargs)
    run_predict = staticmethod(run_predict)
    compare_outputs = staticmethod(compare_outputs)
    compare_predict = staticmethod(compare_predict)
    tiny_config = staticmethod(tiny_samkit_config)
    build_tiny_official = staticmethod(build_tiny_official)


@pytest.fixture(scope="session")
def parity() -> type[ParityTools]:
    """Image factory, perturbation, tolerance checks and tiny-model builders for parity tests."""
    return ParityTools
