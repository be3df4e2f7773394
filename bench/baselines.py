"""Reference implementations that ``samkit bench`` measures samkit against.

This file is the only place the benchmark touches the official code; it lives outside
``src/samkit`` on purpose (the package never imports the oracles). It needs the bench
extra: ``pip install -e ".[bench]"`` (segment-anything, torchvision, mobilesam-mirror, timm).

Every function returns objects with the official API (``SamPredictor``,
``SamAutomaticMaskGenerator``), which samkit's classes mirror.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def official_available() -> bool:
    """True when the official ``segment_anything`` package imports."""
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        return False
    return True


def mobilesam_available() -> bool:
    """True when the reference MobileSAM package imports."""
    try:
        import mobile_sam  # noqa: F401
    except ImportError:
        return False
    return True


def _perturb_(model: torch.nn.Module, seed: int) -> None:
    """Add N(0, 0.02) noise to every floating tensor (official init leaves rel_pos/pos_embed at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            noise = torch.randn(tensor.shape, generator=generator) * 0.02
            if name.endswith("running_var"):
                tensor.copy_(tensor.abs() + noise.abs())  # keep BN variances positive
            else:
                tensor.add_(noise)


def make_checkpoint(variant: str, path: str | os.PathLike[str], seed: int = 0) -> str:
    """Write a perturbed official-format checkpoint for ``variant`` to ``path``."""
    if variant == "vit_t":
        from mobile_sam import sam_model_registry as registry
    else:
        from segment_anything import sam_model_registry as registry
    model = registry[variant]()
    _perturb_(model, seed)
    torch.save(model.state_dict(), path)
    return os.fspath(path)


def build_model(variant: str, checkpoint: str) -> torch.nn.Module:
    """The reference model for ``variant`` with the given checkpoint, in eval mode."""
    if variant == "vit_t":
        from mobile_sam import sam_model_registry as registry
    else:
        from segment_anything import sam_model_registry as registry
    return registry[variant](checkpoint=checkpoint).eval()


def predictor(model: torch.nn.Module, variant: str = "vit_b") -> Any:
    """The reference ``SamPredictor`` for a model."""
    if variant == "vit_t":
        from mobile_sam import SamPredictor
    else:
        from segment_anything import SamPredictor
    return SamPredictor(model)


def mask_generator(model: torch.nn.Module, **kwargs: Any) -> Any:
    """The official ``SamAutomaticMaskGenerator``."""
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(model, **kwargs)
