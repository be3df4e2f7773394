"""Helpers for the video server tests: a tiny SAM 2.1 video model, a short mp4 clip, a poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from samkit.config_sam2 import MemoryAttentionConfig, MemoryEncoderConfig, Sam2VideoConfig
from samkit.modeling.sam2_video import Sam2Video

from .support import TINY_SAM2_CONFIG

# The tiny SAM 2.1 image model (256-pixel inputs) plus one memory-attention layer and a small
# memory encoder: tracking 7 frames takes ~0.1 s on a CPU.
TINY_VIDEO_CONFIG = Sam2VideoConfig(
    name="tiny_sam2.1_video",
    image=TINY_SAM2_CONFIG,
    memory_attention=MemoryAttentionConfig(
        d_model=32, num_layers=1, dim_feedforward=64, kv_in_dim=16, rope_feat_sizes=(16, 16)
    ),
    memory_encoder=MemoryEncoderConfig(in_dim=32, out_dim=16, fuser_layers=1),
)

CLIP_W, CLIP_H, CLIP_FRAMES, CLIP_FPS = 120, 72, 7, 12.0


def make_tiny_video_model(seed: int = 1) -> Sam2Video:
    """A random tiny Sam2Video whose object-score head says "present" (random weights say absent),
    so masks are partial rather than empty (seed 1: 30-65 % of the frame)."""
    torch.manual_seed(seed)
    model = Sam2Video(TINY_VIDEO_CONFIG).eval().requires_grad_(False)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(2.0)
    return model


def write_mp4(path: Path, num_frames: int = CLIP_FRAMES, width: int = CLIP_W, height: int = CLIP_H) -> Path:
    """A clip of a red disc moving right and a green box moving left and down over a gradient (mp4v)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([40 + 150 * x / width, 60 + 120 * y / height, 90 + 0 * x], axis=-1)  # (H, W, 3) RGB
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, (width, height))
    assert writer.isOpened()
    for t in range(num_frames):
        frame = background.copy()
        cx, cy = 0.25 * width + t * 0.05 * width, 0.5 * height
        frame[(x - cx) ** 2 + (y - cy) ** 2 < (0.18 * height) ** 2] = (220, 40, 40)
        bx, by = 0.7 * width - t * 0.03 * width, 0.3 * height + t * 0.02 * height
        frame[(np.abs(x - bx) < 0.12 * width) & (np.abs(y - by) < 0.15 * height)] = (30, 200, 60)
        writer.write(np.ascontiguousarray(frame.astype(np.uint8)[..., ::-1]))  # RGB -> BGR
    writer.release()
    return path


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
