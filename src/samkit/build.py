"""``build_sam``: a ready-to-use, eval-mode SAM from a variant name and a checkpoint."""

from __future__ import annotations

import logging
import os

import torch

from .hardware import auto_dtype
from .config import VARIANTS, HQSamConfig, SamConfig, get_config
from .modeling import Sam
from .build_sam2 import build_sam2_model, is_sam2_variant
from .modeling.hq_sam import HQSam
from .downloads import resolve_checkpoint
from .weights import load_state_dict_strict, read_state_dict

__all__ = ["build_sam", "sam_model_registry", "SUPPORTED_DTYPES"]

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# MobileSAM checkpoints carry TinyViT's unused classification head.
_IGNORED_PREFIXES = {"vit_t": ("image_encoder.head.", "image_encoder.norm_head.")}
_IGNORED_PREFIXES["hq_vit_tiny"] = _IGNORED_PREFIXES["vit_t"]  # HQ-SAM's light model: the same TinyViT


def _parse_dtype(dtype: torch.dtype | str | None, device: torch.device | str | None = None) -> torch.dtype:
    """The torch dtype a ``dtype`` argument names; ``"auto"`` asks :func:`samkit.hardware.auto_dtype`."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype.lower() == "auto":
        chosen, reason = auto_dtype(device)
        logger.info("dtype auto: %s (%s)", str(chosen).removeprefix("torch."), reason)
        return chosen
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
        if dtype.lower() not in names:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
        return names[dtype.lower()]
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


def _official_variant(config: SamConfig) -> str | None:
    """Name of the official variant this config is, or None for a custom config."""
    for name, known in VARIANTS.items():
        if known == config:
            return name
    return None


def build_sam(
    variant: str | SamConfig,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
) -> Sam:
    """Build a SAM model in eval mode and load its weights.

    Args:
        variant: "vit_b", "vit_l", "vit_h", "vit_t", HQ-SAM's "hq_vit_b", "hq_vit_l", "hq_vit_h",
            "hq_vit_tiny" (an :class:`samkit.modeling.hq_sam.HQSam`) or a :class:`SamConfig`; SAM 2.1
            "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l" and SAM 2.0
            "sam2_hiera_t", ... (an :class:`samkit.modeling.sam2.Sam2`) or a ``Sam2Config``.
        checkpoint: a ``.pth``/``.pt`` or ``.safetensors`` file. ``None`` downloads the official
            file of a named variant into the cache (``$SAMKIT_HOME``), verified by sha256;
            for a custom :class:`SamConfig`, ``None`` leaves the weights randomly initialised.
        device: where the model lives (default CPU).
        dtype: ``torch.float32`` (default, exact) or ``torch.bfloat16`` (fast mode: the image
            encoder, ~98% of the work, runs in bf16). float16 works on GPUs. On CPUs the prompt
            encoder and mask decoder stay float32 (their small matrices run slower in bf16 there);
            on CUDA the mask decoder follows ``dtype`` too. ``"auto"`` picks the fastest mode the
            hardware runs accurately (bfloat16 on CUDA and on CPUs with AVX-512 BF16 or AMX, else
            float32; see :func:`samkit.hardware.auto_dtype`) and logs which.
        progress: show a progress bar when downloading.

    Returns:
        The model, in eval mode, with ``requires_grad`` off.

    Raises:
        ValueError / TypeError: bad arguments.
        samkit.weights.CheckpointError: missing, corrupt, unsafe or mismatched checkpoint.
    """
    if is_sam2_variant(variant):  # SAM 2 / 2.1: Hiera encoder, own decoder and loader rules
        return build_sam2_model(variant, checkpoint, device=device, dtype=_parse_dtype(dtype, device), progress=progress)  # type: ignore[return-value]
    config = get_config(variant)
    target_dtype = _parse_dtype(dtype, device)
    name = _official_variant(config)
    model = HQSam(config) if isinstance(config, HQSamConfig) else Sam(config)
    if checkpoint is None and name is None:
        logger.info("custom config %r without checkpoint: weights are randomly initialised", config.name)
    else:
        path = resolve_checkpoint(name or config.name, checkpoint, progress=progress)
        state_dict = read_state_dict(path)
        load_state_dict_strict(
            model, state_dict, variant=name or config.name, ignore_prefixes=_IGNORED_PREFIXES.get(config.name, ())
        )
        logger.info("loaded %s weights from %s", config.name, path)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    if target_dtype != torch.float32:
        # The prompt encoder is tiny and sees raw pixel coordinates: keep it in float32.
        model.image_encoder.to(target_dtype)
        if model.device.type == "cuda":
            model.mask_decoder.to(target_dtype)
    return model


def _registry_builder(name: str):  # type: ignore[no-untyped-def]
    def build(checkpoint: str | os.PathLike[str] | None = None) -> Sam:
        return build_sam(name, checkpoint)

    return build


# Drop-in for code written against the official ``sam_model_registry[name](checkpoint=...)``.
# Every model samkit builds is there under its samkit name (HQ-SAM: "hq_vit_b", ...; SAM 2.x:
# "sam2.1_hiera_t", ...), so one registry serves code written for any of the official packages.
sam_model_registry = {name: _registry_builder(name) for name in ("vit_b", "vit_l", "vit_h", "vit_t")}
sam_model_registry["default"] = sam_model_registry["vit_h"]
for _name in ("hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny") + tuple(
    f"{family}_hiera_{size}" for family in ("sam2.1", "sam2") for size in ("t", "s", "b+", "l")
):
    sam_model_registry[_name] = _registry_builder(_name)
del _name
