"""The fused attention path (SDPA, query chunks, bias-filled window padding) equals the
readable reference path and a literal zero-padding implementation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from samkit.config import SamConfig
from samkit.modeling import Sam
from samkit.modeling import attention as attention_module
from samkit.modeling.attention import (
    reference_rel_pos_attention,
    rel_pos_attention,
    window_partition,
    window_unpartition,
)
from samkit.modeling.image_encoder import ViTBlock
from samkit.modeling.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize(
    ("img_size", "window_size", "input_hw"),
    [
        (320, 7, (320, 320)),  # grid 20, windows padded to 21
        (256, 4, (256, 256)),  # grid 16, windows tile exactly
        (320, 7, (256, 320)),  # non-square input: pos_embed and global rel-pos tables resized
    ],
    ids=["grid20-window7", "grid16-window4", "non-square"],
)
def test_encoder_fused_equals_reference(
    tiny_config: Callable[..., SamConfig],
    perturbed_model: Callable[..., Sam],
    img_size: int,
    window_size: int,
    input_hw: tuple[int, int],
) -> None:
    model = perturbed_model(tiny_config(img_size, window_size=window_size), seed=img_size + window_size)
    encoder = model.image_encoder
    x = torch.randn(2, 3, *input_hw, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)
    with torch.inference_mode():
        fused = encoder(x)
        reference = encoder(x, reference=True)
    grid = (input_hw[0] // 16, input_hw[1] // 16)
    assert fused.shape == (2, model.config.prompt_encoder.embed_dim, *grid)
    _assert_close(fused, reference)
    # The two batch items are independent: encoding one alone gives the same rows.
    with torch.inference_mode():
        single = encoder(x[1:])
    _assert_close(single, fused[1:])


def _random_qkv(b: int, nh: int, hw: tuple[int, int], hd: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    n = hw[0] * hw[1]
    q, k, v = (torch.randn(b, nh, n, hd, generator=g) for _ in range(3))  # (B, nh, N, hd)
    rel_h = torch.randn(2 * hw[0] - 1, hd, generator=g) * 0.5
    rel_w = torch.randn(2 * hw[1] - 1, hd, generator=g) * 0.5
    return q, k, v, rel_h, rel_w


@pytest.mark.parametrize("query_chunk", [1, 5, 16, 62, 63, 64, 1000, None])
@pytest.mark.parametrize("hw", [(7, 9), (8, 8)], ids=["7x9", "8x8"])
def test_query_chunking_equals_reference(query_chunk: int | None, hw: tuple[int, int]) -> None:
    q, k, v, rel_h, rel_w = _random_qkv(2, 3, hw, 8, seed=hw[0] * 10 + hw[1])
    expected = reference_rel_pos_attention(q, k, v, rel_h, rel_w, hw)
    actual = rel_pos_attention(q, k, v, rel_h, rel_w, hw, query_chunk=query_chunk)
    assert actual.shape == q.shape
    _assert_close(actual, expected)


def test_query_chunks_split_the_sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """With query_chunk=c the fused path really runs ceil(N / c) SDPA calls of at most c rows."""
    hw = (7, 9)
    q, k, v, rel_h, rel_w = _random_qkv(1, 2, hw, 8, seed=3)
    rows: list[int] = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(query: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        rows.append(query.shape[2])
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counting_sdpa)
    out = rel_pos_attention(q, k, v, rel_h, rel_w, hw, query_chunk=10)
    n = hw[0] * hw[1]
    assert rows == [10] * (n // 10) + [n % 10]
    assert len(rows) == math.ceil(n / 10)
    _assert_close(out, reference_rel_pos_attention(q, k, v, rel_h, rel_w, hw))


def test_attention_without_rel_pos_equals_reference() -> None:
    q, k, v, _, _ = _random_qkv(2, 2, (5, 6), 8, seed=4)
    expected = reference_rel_pos_attention(q, k, v, None, None, (5, 6))
    _assert_close(rel_pos_attention(q, k, v, None, None, (5, 6), query_chunk=7), expected)


def test_rel_pos_bias_changes_attention() -> None:
    """Guard for the tests above: the bias tables are not a no-op."""
    hw = (6, 6)
    q, k, v, rel_h, rel_w = _random_qkv(1, 2, hw, 8, seed=5)
    with_bias = rel_pos_attention(q, k, v, rel_h, rel_w, hw)
    without = rel_pos_attention(q, k, v, None, None, hw)
    assert float((with_bias - without).abs().max()) > 1e-2


@pytest.mark.parametrize("hw", [(14, 14), (10, 13), (3, 5)])
def test_window_partition_round_trip(hw: tuple[int, int]) -> None:
    ws = 7
    x = torch.randn(2, *hw, 4)  # (B, H, W, C)
    windows, padded = window_partition(x, ws)
    n_windows = math.ceil(hw[0] / ws) * math.ceil(hw[1] / ws)
    assert windows.shape == (2 * n_windows, ws, ws, 4)
    assert padded == (math.ceil(hw[0] / ws) * ws, math.ceil(hw[1] / ws) * ws)
    torch.testing.assert_close(window_unpartition(windows, ws, padded, hw), x, rtol=0, atol=0)
    # the first window is the top-left ws x ws patch (zero-padded where the grid ends)
    top_left = torch.zeros(ws, ws, 4)
    h0, w0 = min(ws, hw[0]), min(ws, hw[1])
    top_left[:h0, :w0] = x[0, :h0, :w0]
    torch.testing.assert_close(windows[0], top_left, rtol=0, atol=0)


@pytest.mark.parametrize("reference", [False, True], ids=["fused", "reference"])
@pytest.mark.parametrize("grid", [(10, 10), (20, 20), (9, 16)])
def test_windowed_block_equals_zero_padding_before_qkv(tiny_sam: Sam, grid: tuple[int, int], reference: bool) -> None:
    """samkit fills window padding with the qkv bias instead of projecting zero tokens;
    compare with the literal computation: pad the normalized tokens with zeros, attend
    within windows (padding included as keys), crop."""
    block = next(b for b in tiny_sam.image_encoder.blocks if b.window_size > 0)
    assert isinstance(block, ViTBlock)
    ws = block.window_size
    x = torch.randn(2, *grid, block.norm1.normalized_shape[0], generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        normed = block.norm1(x)
        windows, padded = window_partition(normed, ws)  # zeros in the padding
        attended = block.attn(windows, reference=True)  # (B*nW, ws, ws, C), full attention per window
        y = x + window_unpartition(attended, ws, padded, grid)
        expected = y + block.mlp(block.norm2(y))
        actual = block(x, reference=reference)
    _assert_close(actual, expected)


@pytest.mark.parametrize(("img_size", "window_size"), [(320, 7), (256, 4)], ids=["padded-windows", "exact-windows"])
def test_encoder_workspace_gives_identical_embeddings(
    tiny_config: Callable[..., SamConfig],
    perturbed_model: Callable[..., Sam],
    monkeypatch: pytest.MonkeyPatch,
    img_size: int,
    window_size: int,
) -> None:
    """Scratch buffers shared across blocks (inference) change no bit of the embedding."""
    encoder = perturbed_model(tiny_config(img_size, window_size=window_size), seed=3).image_encoder
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(4))
    requested: list[str] = []
    get = Workspace.get

    def recording_get(self: Any, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        requested.append(name)
        return get(self, name, shape, like)

    monkeypatch.setattr(Workspace, "get", recording_get)
    with torch.inference_mode():
        shared = encoder(x)
    assert {"qkv", "qkv_windows", "mlp_hidden"} <= set(requested)
    assert ("qkv_padded" in requested) == (img_size // 16 % window_size != 0)
    monkeypatch.setattr(Workspace, "usable", staticmethod(lambda: False))
    requested.clear()
    with torch.inference_mode():
        fresh = encoder(x)
    assert requested == []
    assert torch.equal(shared, fresh)


def test_encoder_workspace_is_off_under_autograd(
    tiny_config: Callable[..., SamConfig], perturbed_model: Callable[..., Sam]
) -> None:
    """With gradients on (fine-tuning), the encoder allocates normally and backpropagates."""
    encoder = perturbed_model(tiny_config(256, window_size=7), seed=5).image_encoder
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    trainable = [p for p in encoder.parameters() if p.is_floating_point()]
    for p in trainable:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            assert not Workspace.usable()
            encoder(x).square().mean().backward()
        assert all(p.grad is not None for p in trainable)
    finally:
        for p in trainable:
            p.grad = None
            p.requires_grad_(False)
    with torch.no_grad():
        assert Workspace.usable()


def test_chunked_global_attention_takes_its_bias_buffer_from_the_workspace() -> None:
    q, k, v, rel_h, rel_w = _random_qkv(1, 2, (6, 5), 8, seed=7)
    ws = Workspace()
    with torch.inference_mode():
        plain = rel_pos_attention(q, k, v, rel_h, rel_w, (6, 5), query_chunk=8)
        shared = rel_pos_attention(q, k, v, rel_h, rel_w, (6, 5), query_chunk=8, workspace=ws)
        again = rel_pos_attention(q, k, v, rel_h, rel_w, (6, 5), query_chunk=8, workspace=ws)
    assert torch.equal(plain, shared) and torch.equal(plain, again)
    assert ws.get("rel_pos_bias", (1, 2, 8, 6, 5), q) is not None and len(ws._buffers) == 1


def test_workspace_reuses_a_buffer_by_name_and_shape() -> None:
    ws = Workspace()
    like = torch.zeros(1)
    a = ws.get("a", (4, 5), like)
    assert ws.get("a", (4, 5), like) is a
    assert ws.get("b", (4, 5), like) is not a
    assert ws.get("a", (5, 4), like).shape == (5, 4)
    assert ws.get("a", (5, 4), like.double()).dtype == torch.float64
