"""Building SAM 2 / SAM 2.1 image models (``build_sam("sam2.1_hiera_t")`` ends here).

Official checkpoints are ``{"model": state_dict}`` files of the whole video model; they load
through samkit's strict loader with the video-only entries
(:data:`~samkit.config_sam2.SAM2_VIDEO_ONLY_PREFIXES`) set aside by name: every other key must
fit the image model exactly. SAM 2.0 and 2.1 share the image architecture, so the one key that
only 2.1 files carry (``no_obj_embed_spatial``) tells the two apart, and a file of the other
version is refused.

Video models (:func:`build_sam_video`) load the same files with nothing set aside: every key
of the checkpoint, video modules included, must be used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

from .config_sam2 import SAM2_VARIANTS, SAM2_VIDEO_ONLY_PREFIXES, SAM2_VIDEO_VARIANTS, Sam2Config, Sam2VideoConfig
from .modeling.sam2 import Sam2
from .modeling.sam2_video import Sam2Video
from .downloads import resolve_checkpoint
from .weights import CheckpointError, load_state_dict_strict, read_state_dict

__all__ = ["is_sam2_variant", "get_sam2_config", "build_sam2_model", "get_sam2_video_config", "build_sam_video"]

logger = logging.getLogger(__name__)

_SAM21_ONLY_KEY = "no_obj_embed_spatial"


def is_sam2_variant(variant: object) -> bool:
    """Whether ``variant`` names (or is) a SAM 2 / 2.1 image model."""
    if isinstance(variant, Sam2Config):
        return True
    return isinstance(variant, str) and variant.strip().lower() in SAM2_VARIANTS


def get_sam2_config(variant: str | Sam2Config) -> Sam2Config:
    """Look up ``"sam2.1_hiera_t"``, ``"sam2_hiera_b+"``, ... or pass a :class:`Sam2Config` through.

    Raises:
        ValueError: unknown name.
    """
    if isinstance(variant, Sam2Config):
        return variant
    key = variant.strip().lower()
    if key not in SAM2_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: expected one of {sorted(SAM2_VARIANTS)}")
    return SAM2_VARIANTS[key]


def _check_version(state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse a SAM 2.0 file for a 2.1 model and the reverse (same shapes, other weights)."""
    if not any(k.startswith(("memory_attention.", "memory_encoder.")) for k in state_dict):
        return  # an image-only file: nothing tells the versions apart
    has_21_key = _SAM21_ONLY_KEY in state_dict
    wants_21 = name.startswith("sam2.1_")
    if has_21_key != wants_21:
        found = "SAM 2.1" if has_21_key else "SAM 2.0"
        raise CheckpointError(f"checkpoint is a {found} file, not {name} (see its {_SAM21_ONLY_KEY!r} entry)")


def build_sam2_model(
    variant: str | Sam2Config,
    checkpoint: str | os.PathLike[str] | None,
    *,
    device: torch.device | str | None,
    dtype: torch.dtype,
    progress: bool,
) -> Sam2:
    """Build a SAM 2 image model in eval mode and load its weights (see :func:`samkit.build_sam`).

    Args:
        variant: a SAM 2 name or a :class:`Sam2Config`.
        checkpoint: an official ``.pt`` file (or a safetensors / plain state dict); None
            downloads the official file of a named variant, and leaves a custom config random.
        device: where the model lives.
        dtype: float32, or bfloat16/float16 for the image encoder.
        progress: show a download progress bar.

    Raises:
        samkit.weights.CheckpointError: missing, corrupt, unsafe, wrong-version or mismatched checkpoint.
    """
    config = get_sam2_config(variant)
    name = config.name if SAM2_VARIANTS.get(config.name) == config else None
    model = Sam2(config)
    if checkpoint is None and name is None:
        logger.info("custom config %r without checkpoint: weights are randomly initialised", config.name)
    else:
        path = resolve_checkpoint(name or config.name, checkpoint, progress=progress)
        state_dict = read_state_dict(path)
        if name is not None:
            _check_version(state_dict, name)
        load_state_dict_strict(model, state_dict, variant=name or config.name, ignore_prefixes=SAM2_VIDEO_ONLY_PREFIXES)
        logger.info("loaded %s weights from %s", config.name, path)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    if dtype != torch.float32:
        model.image_encoder.to(dtype)
        if model.device.type == "cuda":
            model.sam_mask_decoder.to(dtype)
    return model


def get_sam2_video_config(variant: str | Sam2VideoConfig) -> Sam2VideoConfig:
    """Look up a video model by its SAM 2 name (``"sam2.1_hiera_t"``, ...) or pass a config through.

    Raises:
        ValueError: unknown name.
    """
    if isinstance(variant, Sam2VideoConfig):
        return variant
    key = variant.strip().lower()
    if key not in SAM2_VIDEO_VARIANTS:
        raise ValueError(f"unknown video variant {variant!r}: expected one of {sorted(SAM2_VIDEO_VARIANTS)}")
    return SAM2_VIDEO_VARIANTS[key]


def build_sam_video(
    name: str | Sam2VideoConfig,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> Sam2Video:
    """Build a SAM 2 / 2.1 video model in eval mode with its official weights.

    Args:
        name: ``"sam2.1_hiera_t"``, ``"sam2.1_hiera_s"``, ``"sam2.1_hiera_b+"``,
            ``"sam2.1_hiera_l"``, the same four ``"sam2_hiera_*"`` (SAM 2.0), or a
            :class:`~samkit.config_sam2.Sam2VideoConfig`.
        checkpoint: an official ``{"model": state_dict}`` ``.pt`` file (or a safetensors /
            plain state dict) read with ``weights_only``; None downloads the official file of
            a named variant and leaves a custom config random.
        device: where the model lives.
        dtype: None / float32 (exact), or bfloat16 / float16 for the image encoder only (the
            memory modules and heads stay float32).
        progress: show a download progress bar.

    Raises:
        samkit.weights.CheckpointError: missing, corrupt, unsafe, wrong-version or mismatched
            checkpoint; missing, unknown and mis-shaped keys are named.
        ValueError: unknown name or unsupported dtype.
    """
    config = get_sam2_video_config(name)
    official = config.name if SAM2_VIDEO_VARIANTS.get(config.name) == config else None
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    model = Sam2Video(config)
    if checkpoint is None and official is None:
        logger.info("custom video config %r without checkpoint: weights are randomly initialised", config.name)
    else:
        path = resolve_checkpoint(official or config.name, checkpoint, progress=progress)
        state_dict = read_state_dict(path)
        if official is not None:
            _check_version(state_dict, official)
        load_state_dict_strict(model, state_dict, variant=official or config.name)
        logger.info("loaded %s video weights from %s", config.name, path)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    if dtype != torch.float32:
        model.image_encoder.to(dtype)
    return model
