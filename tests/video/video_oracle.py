"""The official ``sam2==1.1.0`` video predictor as an oracle, and a synthetic clip.

Test-only: samkit never imports ``sam2``. The official model is built with
``build_sam2_video_predictor`` (its default ``apply_postprocessing=True``: dynamic single-mask
fallback, binarized click masks in memory, ``fill_hole_area=8``), every floating tensor perturbed
with seeded N(0, 0.02) noise (as ``tests/parity/sam2_oracle.py`` does for the image model) and
saved as an official ``{"model": state_dict}`` file for samkit's strict loader.

``image_size`` below 1024 (the yaml value) is set with the hydra override the official builder
takes (``++model.image_size``) and with ``Sam2VideoConfig.with_image_size`` on samkit's side:
every module follows it, so the CI tests can track a clip in seconds instead of the ~7 s per
frame the official hiera_t costs at 1024 on 2 cores.

Hole filling: the official fills holes with connected components from its compiled extension
``sam2._C``, which is not built here (the official then warns and skips the step).
``opencv_connected_components`` gives the official the same 8-connected labelling computed with
OpenCV, so both sides run the documented post-processing (see ``samkit.video.masks``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

NOISE_STD = 0.02

OFFICIAL_CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
}


def perturb_(model: nn.Module, seed: int, std: float = NOISE_STD) -> None:
    """Add seeded N(0, std) noise in place to every floating tensor of ``model.state_dict()``."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in model.state_dict().values():
        if tensor.dtype.is_floating_point:
            tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * std)


def perturbed_official_video(
    name: str, path: Path, seed: int, image_size: int = 1024, object_score_bias: float = 0.5
) -> nn.Module:
    """The official SAM2VideoPredictor on the CPU, perturbed, saved to ``path`` as ``{"model": sd}``.

    ``object_score_bias`` is added to the bias of the object-score head's last layer: with
    perturbed default-init weights every object score is about -0.2, so every object would be
    "absent" on every frame and every mask the -1024 placeholder; +0.5 makes them present, so
    that the masks (and corrections) carry information.
    """
    from sam2.build_sam import build_sam2_video_predictor

    overrides = [] if image_size == 1024 else [f"++model.image_size={image_size}"]
    model = build_sam2_video_predictor(OFFICIAL_CONFIGS[name], None, device="cpu", hydra_overrides_extra=overrides)
    perturb_(model, seed)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(object_score_bias)
    torch.save({"model": model.state_dict()}, path)
    return model


def opencv_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``sam2._C.get_connected_componnets`` returns, computed with OpenCV.

    Args:
        mask: (N, 1, H, W) binary.

    Returns:
        (labels, areas), both (N, 1, H, W) int32: the 8-connected component label of each
        nonzero pixel (0 elsewhere) and that component's pixel count (0 elsewhere).
    """
    import cv2

    binary = mask.to(torch.uint8).cpu().numpy()
    labels = np.zeros(binary.shape, np.int32)
    areas = np.zeros(binary.shape, np.int32)
    for i in range(binary.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(binary[i, 0], connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        area[0] = 0
        labels[i, 0], areas[i, 0] = lab, area[lab]
    return torch.from_numpy(labels), torch.from_numpy(areas)


def write_clip(folder: Path, num_frames: int = 8, height: int = 72, width: int = 120, seed: int = 0) -> Path:
    """A synthetic clip of moving shapes as JPEG files ``00000.jpg, 00001.jpg, ...``.

    A red disc moves right, a green box moves left and down over a colour gradient with
    sensor noise; non-square frames.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([40 + 150 * x / width, 60 + 120 * y / height, 90 + 0 * x], axis=-1)  # (H, W, 3)
    for t in range(num_frames):
        frame = background.copy()
        cx, cy = 0.25 * width + t * 0.05 * width, 0.5 * height
        frame[(x - cx) ** 2 + (y - cy) ** 2 < (0.18 * height) ** 2] = (220, 40, 40)
        bx, by = 0.7 * width - t * 0.03 * width, 0.3 * height + t * 0.02 * height
        frame[(np.abs(x - bx) < 0.12 * width) & (np.abs(y - by) < 0.15 * height)] = (30, 200, 60)
        frame += rng.normal(0.0, 4.0, size=frame.shape)
        image = Image.fromarray(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
        image.save(folder / f"{t:05d}.jpg", quality=95)
    return folder


def write_present_objects_checkpoint(path: Path) -> Path:
    """A random sam2.1_hiera_t video checkpoint in the official ``{"model": state_dict}`` form,
    with the object-score head biased so that objects are present (random weights say absent)."""
    from samkit.build_sam2 import get_sam2_video_config
    from samkit.modeling.sam2_video import Sam2Video

    torch.manual_seed(0)
    model = Sam2Video(get_sam2_video_config("sam2.1_hiera_t")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(2.0)
    torch.save({"model": model.state_dict()}, path)
    return path
