"""Machine facts and the automatic dtype choice."""

from __future__ import annotations

import logging

import pytest
import torch

from samkit import build_sam
from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from samkit.hardware import RELEVANT_CPU_FLAGS, auto_dtype, cpu_has_fast_bf16, cpu_has_int8_dot_product, machine_info


def test_machine_info_header_names_cpu_flags_and_capability() -> None:
    info = machine_info()
    header = info.header()
    assert info.cpu and info.cpu in header
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in header
    assert set(info.cpu_flags) <= set(RELEVANT_CPU_FLAGS)
    assert list(info.cpu_flags) == [f for f in RELEVANT_CPU_FLAGS if f in info.cpu_flags]  # stable order


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (frozenset({"avx2", "fma"}), torch.float32),
        (frozenset({"avx2", "avx512f", "avx512_vnni"}), torch.float32),  # VNNI is int8, not bf16
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), torch.bfloat16),
        (frozenset({"amx_tile", "amx_bf16"}), torch.bfloat16),
        (frozenset(), torch.float32),
    ],
)
def test_auto_dtype_on_cpu_follows_bf16_matrix_instructions(flags: frozenset[str], expected: torch.dtype) -> None:
    dtype, reason = auto_dtype("cpu", cpu_flags=flags)
    assert dtype == expected and reason
    assert cpu_has_fast_bf16(flags) == (expected == torch.bfloat16)


def test_auto_dtype_elsewhere_is_float32_without_support() -> None:
    assert auto_dtype("meta")[0] == torch.float32
    if not torch.cuda.is_available():
        assert auto_dtype("cuda")[0] == torch.float32


def _tiny_config() -> SamConfig:
    """A 2-block windowed encoder on 64x64 inputs: builds in milliseconds."""
    return SamConfig(
        name="tiny_auto",
        image_encoder=ImageEncoderConfig(img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,), out_chans=32),
        prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=4, input_image_size=64),
        mask_decoder=MaskDecoderConfig(transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32),
    )


def test_build_sam_dtype_auto_picks_and_says(caplog: pytest.LogCaptureFixture) -> None:
    expected, _ = auto_dtype("cpu")
    with caplog.at_level(logging.INFO, logger="samkit.build"):
        model = build_sam(_tiny_config(), dtype="auto")
    assert next(model.image_encoder.parameters()).dtype == expected
    assert any("dtype auto: " + str(expected).removeprefix("torch.") in r.getMessage() for r in caplog.records)


def test_build_sam_rejects_unknown_dtype_name() -> None:
    with pytest.raises(ValueError, match="'auto'"):
        build_sam(_tiny_config(), dtype="float8")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (frozenset({"avx2", "fma"}), False),
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), False),
        (frozenset({"avx512f", "avx512_vnni"}), True),
        (frozenset({"avx2", "avx_vnni"}), True),
        (frozenset({"amx_int8"}), True),
        (frozenset({"fp", "asimd", "asimddp"}), True),
    ],
)
def test_int8_dot_product_flags(flags: frozenset[str], expected: bool) -> None:
    assert cpu_has_int8_dot_product(flags) is expected
