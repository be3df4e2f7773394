"""Opt-in torch.compile of the image encoder, with the eager path as reference and fallback."""

from __future__ import annotations

import pytest
import torch

import samkit.compile as compile_module
from samkit import build_sam
from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig


def _tiny_config() -> SamConfig:
    """A 2-block encoder (one windowed, one global) on 64x64 inputs."""
    return SamConfig(
        name="tiny_compile",
        image_encoder=ImageEncoderConfig(img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=(1,), out_chans=32),
        prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=4, input_image_size=64),
        mask_decoder=MaskDecoderConfig(transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32),
    )


def _perturbed_pair(**kwargs: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    eager = build_sam(_tiny_config())
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    other = build_sam(_tiny_config(), **kwargs)  # type: ignore[arg-type]
    other.load_state_dict(eager.state_dict())
    return eager, other


def test_compiled_encoder_matches_eager_and_keeps_parameter_names() -> None:
    eager, compiled = _perturbed_pair(compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints still load and save
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = eager.image_encoder(x)
        got = compiled.image_encoder(x)
        again = compiled.image_encoder(x)
    state = compiled.image_encoder.compile_state
    assert state.compiled and state.error is None and state.compile_seconds is not None
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-4)


def test_no_compiler_warns_once_and_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compile_module, "c_compiler_available", lambda: False)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        eager, fallback = _perturbed_pair(compile=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fallback.image_encoder(x), eager.image_encoder(x), rtol=0, atol=0)
    assert not fallback.image_encoder.compile_state.compiled


def test_failed_compile_falls_back_to_eager_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"compiled": 0}

    def broken_compile(fn, **kwargs):  # type: ignore[no-untyped-def]
        def run(*args, **kw):  # type: ignore[no-untyped-def]
            calls["compiled"] += 1
            raise RuntimeError("InductorError: cannot build\ndetails")

        return run

    monkeypatch.setattr(compile_module.torch, "compile", broken_compile)
    eager, fallback = _perturbed_pair(compile=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode(), pytest.warns(UserWarning, match="compiling the encoder failed .*cannot build"):
        first = fallback.image_encoder(x)
    with torch.inference_mode():
        second = fallback.image_encoder(x)
        expected = eager.image_encoder(x)
    assert calls["compiled"] == 1  # not retried on every call
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
