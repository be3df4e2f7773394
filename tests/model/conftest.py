"""Tiny SAM configurations and perturbed weights for fast model tests.

samkit's default init, like the official one, leaves ``rel_pos_*`` and ``pos_embed`` at
zero; every test model here has all floating tensors perturbed (seeded) so those paths
carry real values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import samkit
from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from samkit.modeling import Sam


def make_tiny_config(
    img_size: int = 320,
    *,
    window_size: int = 7,
    depth: int = 3,
    global_attn_indexes: tuple[int, ...] = (1,),
    embed_dim: int = 64,
    num_heads: int = 2,
    prompt_dim: int = 32,
    name: str = "tiny",
) -> SamConfig:
    """A small SAM. The default (img 320 -> grid 20, window 7) needs window padding."""
    grid = img_size // 16
    return SamConfig(
        name=name,
        image_encoder=ImageEncoderConfig(
            img_size=img_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            window_size=window_size,
            global_attn_indexes=global_attn_indexes,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=prompt_dim, image_embedding_size=grid, input_image_size=img_size),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=prompt_dim,
            transformer_mlp_dim=2 * prompt_dim,
            transformer_num_heads=2,
            iou_head_hidden_dim=prompt_dim,
        ),
    )


@torch.no_grad()
def perturb_(module: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Add seeded N(0, std) noise in place to every floating tensor of ``module.state_dict()``."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in module.state_dict().values():
        if tensor.dtype.is_floating_point:
            tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * std)
    if isinstance(module, Sam):
        module.prompt_encoder.clear_cache()
    return module


def build_perturbed(config: SamConfig, seed: int = 0) -> Sam:
    """``build_sam(config)`` (random init, eval) with every floating tensor perturbed."""
    torch.manual_seed(seed)
    return perturb_(samkit.build_sam(config), seed)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., SamConfig]:
    """Factory of tiny configs; see :func:`make_tiny_config`."""
    return make_tiny_config


@pytest.fixture(scope="session")
def perturbed_model() -> Callable[..., Sam]:
    """Factory ``(config, seed=0) -> Sam`` with all floating tensors perturbed."""
    return build_perturbed


@pytest.fixture(scope="module")
def tiny_sam() -> Sam:
    """A perturbed fp32 tiny SAM (grid 20, window 7); do not modify it in tests."""
    return build_perturbed(make_tiny_config(), seed=1)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_sam: Sam) -> Path:
    """``tiny_sam``'s weights as a ``torch.save`` checkpoint (official format)."""
    path = tmp_path_factory.mktemp("tiny_ckpt") / "tiny.pth"
    torch.save(tiny_sam.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run tiny models on one thread: for ops this small, OpenMP synchronisation across
    threads costs more than it saves (several times more on a loaded 2-core machine).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
