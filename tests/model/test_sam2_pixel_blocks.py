"""The SAM 2 decoder's pixel-block upscaling (the fast path) against its reference path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from samkit.modeling.pixel_blocks import conv_transpose_as_matrix, masks_from_pixel_blocks, to_pixel_blocks
from tests.server.support import make_tiny_sam2_model


def test_conv_transpose_as_matrix_is_the_convolution_per_pixel() -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(8, 3, kernel_size=2, stride=2)
    x = torch.randn(2, 8, 5, 7)  # (B, C_in, h, w)
    matrix, bias = conv_transpose_as_matrix(conv)
    blocks = (x.permute(0, 2, 3, 1) @ matrix + bias).view(2, 5, 7, 2, 2, 3)  # (B, h, w, a, b, C_out)
    image = blocks.permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 10, 14)  # (B, C_out, 2h, 2w)
    torch.testing.assert_close(image, conv(x), rtol=1e-5, atol=1e-6)


def test_conv_transpose_as_matrix_refuses_other_convolutions() -> None:
    with pytest.raises(ValueError, match="kernel-2 stride-2"):
        conv_transpose_as_matrix(nn.ConvTranspose2d(4, 4, kernel_size=3, stride=2))


def test_pixel_blocks_round_trip() -> None:
    """Two-level blocks of an image, read back by masks_from_pixel_blocks, give the image."""
    image = torch.arange(2 * 3 * 12 * 20, dtype=torch.float32).view(2, 3, 12, 20)  # (B, M, 4h, 4w)
    blocks = to_pixel_blocks(image, 2)  # (B, h, w, 2, 2, 2, 2, M)
    assert blocks.shape == (2, 3, 5, 2, 2, 2, 2, 3)
    assert blocks[1, 2, 4, 1, 0, 1, 1, 2] == image[1, 2, 4 * 2 + 2 * 1 + 1, 4 * 4 + 2 * 0 + 1]
    torch.testing.assert_close(masks_from_pixel_blocks(blocks), image, rtol=0, atol=0)
    one = to_pixel_blocks(image[:, :, :6, :10], 1)  # (B, h, w, 2, 2, M)
    assert one[0, 1, 3, 1, 0, 2] == image[0, 2, 3, 6]
    with pytest.raises(ValueError, match="levels"):
        to_pixel_blocks(image, 3)


@pytest.fixture(scope="module")
def tiny_sam2() -> torch.nn.Module:
    model = make_tiny_sam2_model().eval()
    with torch.no_grad():  # make the upscaling matter: random LayerNorm and biases, not 1 / 0
        for p in model.sam_mask_decoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["points", "box"])
def test_fast_decode_matches_reference(tiny_sam2: torch.nn.Module, multimask: bool, prompt: str) -> None:
    model = tiny_sam2
    torch.manual_seed(1)
    with torch.inference_mode():
        image = torch.rand(1, 3, 256, 256) * 255
        embedding, cache = model.encode_for_decoding(model.preprocess(image))
        assert cache.high_res_blocks is not None
        b = 5
        points = torch.rand(b, 2, 2) * 256 if prompt == "points" else None
        labels = torch.randint(0, 2, (b, 2)) if prompt == "points" else None
        boxes = torch.sort(torch.rand(b, 2, 2) * 256, dim=1).values.reshape(b, 4) if prompt == "box" else None
        sparse, dense = model.sam_prompt_encoder(model.point_prompts(points, labels, boxes), None, None)
        decoder = model.sam_mask_decoder
        pe = model.sam_prompt_encoder.get_dense_pe()
        calls = []
        original = decoder.masks_on_pixel_blocks
        decoder.masks_on_pixel_blocks = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
        try:
            fast = decoder(embedding, pe, sparse, dense, multimask, cache.high_res_features, cache=cache.side,
                           high_res_blocks=cache.high_res_blocks)
        finally:
            del decoder.masks_on_pixel_blocks
        assert calls, "the pixel-block path did not run"
        ref = decoder(embedding, pe, sparse, dense, multimask, cache.high_res_features, reference=True)
    scale = ref[0].abs().max().item()
    assert scale > 0.5  # logits of some size, so that the tolerance below means something
    for got, want in zip(fast, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * max(scale, 1.0))
    # masks_from_pixel_blocks in the wrong order would still be close in value range: check a pixel map
    assert (fast[0] > 0).eq(ref[0] > 0).float().mean() > 0.999


def test_predictor_uses_the_blocks_and_matches_reference(tiny_sam2: torch.nn.Module) -> None:
    """SamPredictor.predict goes through the cache's pixel blocks; same masks as the reference decode."""
    from samkit import SamPredictor

    predictor = SamPredictor(tiny_sam2)
    image = (torch.rand(180, 240, 3) * 255).to(torch.uint8).numpy()
    predictor.set_image(image)
    cache = predictor.decoder_cache
    assert cache is not None and cache.high_res_blocks is not None
    coords = predictor.transform.apply_coords_torch(torch.tensor([[[100.0, 80.0]]]), predictor.original_size)
    labels = torch.ones(1, 1, dtype=torch.int64)
    low, _, = tiny_sam2.decode(predictor.features, coords, labels, cache=cache)
    with torch.inference_mode():
        sparse, dense = tiny_sam2.sam_prompt_encoder(tiny_sam2.point_prompts(coords, labels, None), None, None)
        ref, _, _ = tiny_sam2.sam_mask_decoder(predictor.features, tiny_sam2.sam_prompt_encoder.get_dense_pe(), sparse,
                                               dense, True, cache.high_res_features, reference=True)
    torch.testing.assert_close(low, ref, rtol=0, atol=1e-4 * max(ref.abs().max().item(), 1.0))
