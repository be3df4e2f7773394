"""Fixtures for the scale-out tests: a tiny model with fixed weights and a few small images."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samkit import build_sam
from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from samkit.modeling import Sam

TINY = SamConfig(
    name="tiny",
    image_encoder=ImageEncoderConfig(
        img_size=256, embed_dim=64, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,), out_chans=32
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=16, input_image_size=256),
    mask_decoder=MaskDecoderConfig(
        transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32
    ),
)
# Small grid and loose filters so that the tiny random model yields some masks quickly.
GENERATOR_KWARGS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fixed random weights for the tiny config, so every replica is the same model."""
    torch.manual_seed(0)
    model = Sam(TINY)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for t in model.state_dict().values():
            if t.dtype.is_floating_point:
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_factory(tiny_checkpoint: Path) -> Callable[[], Sam]:
    """A picklable model factory (what a Ray actor calls to build its replica)."""
    return functools.partial(build_sam, TINY, tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five small images of different sizes, two with the same file name in different folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    names = ["a/one.png", "a/two.jpg", "b/one.png", "b/three.png", "b/four.png"]
    for i, name in enumerate(names):
        h, w = 40 + 8 * i, 64 - 4 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 4) % 256, (yy * 5) % 256, rng.integers(0, 256, (h, w))], axis=-1).astype(np.uint8)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=95)
    return root


@pytest.fixture(scope="session")
def generator_kwargs() -> dict:
    """SamAutomaticMaskGenerator arguments used by the everything tests."""
    return dict(GENERATOR_KWARGS)
