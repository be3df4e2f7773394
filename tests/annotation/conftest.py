"""A tiny random SAM and a small synthetic detection data set (COCO and YOLO forms)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from samkit.modeling import Sam

TINY = SamConfig(
    name="annotate_tiny",
    image_encoder=ImageEncoderConfig(
        img_size=256, embed_dim=64, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,), out_chans=32
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=16, input_image_size=256),
    mask_decoder=MaskDecoderConfig(transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32),
)

# Three images of different sizes; image ids and category ids deliberately not 1, 2, 3.
IMAGE_SIZES = {11: (270, 360), 12: (360, 240), 17: (192, 192)}
CATEGORIES = [{"id": 3, "name": "square", "supercategory": "shape"}, {"id": 8, "name": "disc", "supercategory": "shape"}]


@pytest.fixture(scope="session")
def tiny_model() -> Sam:
    """A tiny SAM with seeded random weights (read-only)."""
    torch.manual_seed(0)
    return Sam(TINY).eval()


def _shape_image(height: int, width: int, seed: int) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """An image with a square and a disc on a gradient, and their (category id, XYWH box)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 2 % 256, y * 3 % 256, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    s0, s1 = int(rng.integers(4, width // 3)), int(rng.integers(4, height // 3))
    image[s1 : s1 + 60, s0 : s0 + 72] = (220, 30, 30)
    cx, cy, r = width * 0.65, height * 0.6, min(height, width) * 0.2
    image[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = (30, 200, 40)
    boxes = [(3, [float(s0), float(s1), 72.0, 60.0]), (8, [cx - r, cy - r, 2 * r, 2 * r])]
    return image, boxes


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Any]:
    """Images under ``images/`` (one in a subfolder) and a COCO data set with box-only annotations."""
    root = tmp_path / "images"
    images, annotations = [], []
    for seed, (image_id, (h, w)) in enumerate(IMAGE_SIZES.items()):
        name = f"sub/img{image_id}.png" if image_id == 17 else f"img{image_id}.png"
        pixels, boxes = _shape_image(h, w, seed)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for category_id, bbox in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id, "bbox": bbox,
                                "score": 0.3 + 0.1 * len(annotations)})
    coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco, indent=1))
    return {"root": root, "coco_path": path, "coco": coco}
