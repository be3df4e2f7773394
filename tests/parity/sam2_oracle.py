"""The official ``sam2==1.1.0`` image model as an oracle: build, perturb, save, predict.

Test-only: samkit never imports ``sam2``. ``build_sam2`` defaults to ``apply_postprocessing=True``
(the dynamic single-mask fallback), which is what samkit's SAM 2 models do, so it is kept.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

NOISE_STD = 0.02

# samkit name -> the official config inside the installed sam2 package.
OFFICIAL_CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
}


def build_official(name: str) -> nn.Module:
    """The official SAM2Base of a samkit variant name, on the CPU, eval mode, default init."""
    from sam2.build_sam import build_sam2

    return build_sam2(OFFICIAL_CONFIGS[name], ckpt_path=None, device="cpu", apply_postprocessing=True)


def perturb_(model: nn.Module, seed: int, std: float = NOISE_STD) -> None:
    """Add seeded N(0, std) noise in place to every floating tensor of ``model.state_dict()``."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in model.state_dict().values():
        if tensor.dtype.is_floating_point:
            tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * std)


def perturbed_official(name: str, path: Path, seed: int) -> nn.Module:
    """Build the official model, perturb every tensor, save it as an official ``{"model": sd}`` file."""
    model = build_official(name)
    perturb_(model, seed)
    torch.save({"model": model.state_dict()}, path)
    return model
