"""A tiny seeded SAM, a few small images (one unreadable, two with the same name) and box detections."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from samkit import build_sam
from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from samkit.modeling import Sam

TINY = SamConfig(
    name="jobs_tiny",
    image_encoder=ImageEncoderConfig(
        img_size=256, embed_dim=32, depth=1, num_heads=2, window_size=4, global_attn_indexes=(0,), out_chans=32
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=16, input_image_size=256),
    mask_decoder=MaskDecoderConfig(transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32),
)
# A small grid and no filtering, so that the random model gives masks quickly.
GENERATOR_KWARGS = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
# Image sizes (height, width) by path below the images folder.
IMAGES = {"a/one.png": (48, 64), "b/one.png": (64, 40), "b/two.jpg": (40, 56)}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random weights (every tensor perturbed), saved once."""
    torch.manual_seed(0)
    model = Sam(TINY)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for t in model.state_dict().values():
            if t.dtype.is_floating_point:
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_factory(tiny_checkpoint: Path) -> Callable[[], Sam]:
    """A picklable factory of the tiny model (what a Ray actor calls)."""
    return functools.partial(build_sam, TINY, tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def tiny_model(tiny_factory: Callable[[], Sam]) -> Sam:
    return tiny_factory()


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IMAGES with a square and a gradient, plus ``b/bad.png``, which is not an image."""
    root = tmp_path_factory.mktemp("images")
    for i, (name, (h, w)) in enumerate(IMAGES.items()):
        y, x = np.mgrid[0:h, 0:w]
        pixels = np.stack([x * 4 % 256, y * 5 % 256, np.full_like(x, 40 * i)], axis=-1).astype(np.uint8)
        pixels[h // 4 : h // 2, w // 3 : w // 2 + 6] = (230, 20, 20)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name, quality=95)
    (root / "b" / "bad.png").write_bytes(b"not an image")
    return root


def write_detections(image_dir: Path, path: Path) -> Path:
    """A COCO data set with box annotations for IMAGES: two good boxes per image, one box
    outside its image and one of an unknown category (two bad rows), and the unreadable file."""
    images, annotations = [], []
    names = [*IMAGES, "b/bad.png"]
    for image_id, name in enumerate(names, start=5):
        h, w = IMAGES.get(name, (32, 32))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for category_id, bbox in ((2, [w / 3, h / 4, w / 6 + 6, h / 4]), (4, [2.0, 3.0, w / 2, h / 2])):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": bbox, "score": 0.5 + 0.05 * len(annotations)})
    annotations.append({"id": 90, "image_id": 5, "category_id": 2, "bbox": [500.0, 500.0, 10.0, 10.0], "score": 0.9})
    annotations.append({"id": 91, "image_id": 6, "category_id": 77, "bbox": [1.0, 1.0, 10.0, 10.0], "score": 0.9})
    categories = [{"id": 2, "name": "square", "supercategory": "shape"}, {"id": 4, "name": "corner", "supercategory": "shape"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}, indent=1))
    return path


def tree(out: Path) -> dict[str, bytes]:
    """Every file under ``out``: relative path -> content."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def generator_kwargs() -> dict[str, Any]:
    return dict(GENERATOR_KWARGS)
