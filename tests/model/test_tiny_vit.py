"""Unit tests of the TinyViT (MobileSAM ``vit_t``) image encoder on tiny configs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import samkit
from samkit.config import (
    VARIANTS,
    MaskDecoderConfig,
    PromptEncoderConfig,
    SamConfig,
    TinyViTConfig,
)
from samkit.modeling.tiny_vit import (
    Conv2dBN,
    TinyViT,
    WindowAttention,
    bias_index,
    merge_strides,
)

TINY = TinyViTConfig(
    img_size=256,
    embed_dims=(16, 32, 40, 64),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 4),
    window_sizes=(7, 7, 14, 7),
    out_chans=32,
)


def _randomize_(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, positive BatchNorm variances, non-zero attention biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(torch.exp(0.3 * noise))
            elif name.endswith("attention_biases"):
                t.copy_(noise)
            else:
                t.add_(0.1 * noise)


def _offset_index_by_enumeration(ws: int) -> torch.Tensor:
    """MobileSAM's definition: offsets (|dy|, |dx|) numbered in order of first appearance."""
    points = list(itertools.product(range(ws), range(ws)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            offsets.setdefault(off, len(offsets))
            idxs.append(offsets[off])
    return torch.tensor(idxs).view(len(points), len(points))


@pytest.mark.parametrize("ws", [1, 2, 5, 7, 14])
def test_bias_index_matches_first_appearance_enumeration(ws: int) -> None:
    expected = _offset_index_by_enumeration(ws)
    assert torch.equal(bias_index(ws), expected)
    assert int(expected.max()) + 1 == ws * ws


def _eager_window_attention(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Readable reference: pad raw tokens, normalize, per-window scores + bias, softmax."""
    b, h, w, c = x.shape
    ws, nh = attn.window_size, attn.num_heads
    hd = c // nh
    ph, pw = -h % ws, -w % ws
    xp = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    out = torch.zeros(b, hp, wp, c)
    bias = attn.attention_biases[:, _offset_index_by_enumeration(ws)]  # (nh, N, N)
    for i in range(0, hp, ws):
        for j in range(0, wp, ws):
            win = attn.norm(xp[:, i : i + ws, j : j + ws].reshape(b, ws * ws, c))
            qkv = attn.qkv(win).view(b, ws * ws, nh, 3 * hd)
            q, k, v = (t.transpose(1, 2) for t in qkv.split(hd, dim=-1))  # (B, nh, N, hd)
            scores = (q @ k.transpose(-2, -1)) * hd**-0.5 + bias
            y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, ws, ws, c)
            out[:, i : i + ws, j : j + ws] = attn.proj(y)
    return out[:, :h, :w]


@pytest.mark.parametrize("hw", [(14, 14), (10, 12), (7, 3)])
def test_window_attention_matches_eager_reference(hw: tuple[int, int]) -> None:
    attn = WindowAttention(dim=32, num_heads=4, window_size=7).eval()
    _randomize_(attn, seed=0)
    x = torch.randn(2, *hw, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _eager_window_attention(attn, x), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "groups"),
    [(1, 1, 0, 1), (3, 1, 1, 24), (3, 2, 1, 24), (3, 2, 1, 1)],
    ids=["pointwise", "depthwise", "depthwise_stride2", "full_stride2"],
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv2d_bn_equals_conv_then_batchnorm(
    kernel: int, stride: int, padding: int, groups: int, channels_last: bool
) -> None:
    m = Conv2dBN(24, 24, kernel, stride, padding, groups).eval()
    _randomize_(m, seed=2)
    x = torch.randn(2, 24, 11, 9, generator=torch.Generator().manual_seed(3))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = m.bn(m.c(x))
        torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


def test_merge_strides() -> None:
    vit_t = VARIANTS["vit_t"].image_encoder
    assert isinstance(vit_t, TinyViTConfig)
    assert merge_strides(vit_t) == (2, 2, 1)
    assert merge_strides(TINY) == (2, 2, 1)
    with pytest.raises(ValueError, match="grid"):
        merge_strides(TinyViTConfig(embed_dims=(64, 128), depths=(2, 2), num_heads=(2, 4), window_sizes=(7, 7)))


def test_state_dict_has_no_head_and_no_index_buffer() -> None:
    keys = set(TinyViT(TINY).state_dict())
    assert not any(k.startswith(("head.", "norm_head.")) for k in keys)
    assert not any("attention_bias_idxs" in k for k in keys)
    assert "layers.1.blocks.0.attn.attention_biases" in keys
    assert "layers.0.blocks.0.conv2.bn.running_var" in keys
    assert "patch_embed.seq.2.c.weight" in keys


def test_encoder_shapes_and_batch_equals_single() -> None:
    enc = TinyViT(TINY).eval()
    _randomize_(enc, seed=4)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        out = enc(x)
        assert out.shape == (2, 32, 16, 16)
        assert torch.isfinite(out).all()
        for i in range(2):
            torch.testing.assert_close(out[i : i + 1], enc(x[i : i + 1]), atol=1e-5, rtol=1e-5)


def test_encoder_backward_works() -> None:
    """In-place shortcuts must not break autograd (e.g. for fine-tuning)."""
    enc = TinyViT(TINY).train()
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    enc(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert enc.layers[1].blocks[0].attn.attention_biases.grad is not None


def _tiny_sam() -> SamConfig:
    return SamConfig(
        name="tiny_t",
        image_encoder=TINY,
        prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=16, input_image_size=256),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32
        ),
    )


def test_predictor_float32_and_bfloat16(tmp_path: Path) -> None:
    exact = samkit.build_sam(_tiny_sam())
    _randomize_(exact.image_encoder, seed=6)
    path = tmp_path / "tiny_t.pt"
    torch.save(exact.state_dict(), path)
    fast = samkit.build_sam(_tiny_sam(), path, dtype=torch.bfloat16)
    assert fast.encoder_dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in fast.image_encoder.parameters())

    image = np.random.default_rng(7).integers(0, 256, size=(150, 200, 3), dtype=np.uint8)
    results = []
    for model in (exact, fast):
        predictor = samkit.SamPredictor(model)
        predictor.set_image(image)
        masks, iou, low = predictor.predict(np.array([[90.0, 70.0]]), np.array([1]))
        assert masks.shape == (3, 150, 200) and iou.shape == (3,) and low.shape == (3, 64, 64)
        results.append((predictor.get_image_embedding(), iou))
    (emb32, iou32), (emb16, iou16) = results
    assert emb16.dtype == fast.dtype and emb32.dtype == torch.float32
    cosine = F.cosine_similarity(emb16.double().flatten(), emb32.double().flatten(), dim=0)
    assert cosine > 0.999
    assert not torch.equal(emb16.float(), emb32)  # the encoder did run in bf16
    assert np.abs(iou16 - iou32).max() < 0.05
