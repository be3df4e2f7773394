"""bfloat16 mode: ``build_sam(config, dtype=torch.bfloat16)`` runs the image encoder in bf16
(and the mask decoder too on CUDA; on CPU it stays fp32), keeps the prompt encoder in fp32,
and gives masks close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import samkit
from samkit.modeling import Sam

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bf16_sam(tiny_sam: Sam, tiny_checkpoint: Path) -> Sam:
    return samkit.build_sam(tiny_sam.config, tiny_checkpoint, dtype=torch.bfloat16)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients with a few flat rectangles: (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 200 // w, y * 200 // h, (x + y) * 100 // (h + w)], axis=-1).astype(np.float64)
    for _ in range(4):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        image[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)


def _decoder_dtype(model: Sam) -> torch.dtype:
    """The mask decoder follows the bf16 mode on CUDA only (small CPU matmuls are slower in bf16)."""
    return torch.bfloat16 if model.device.type == "cuda" else torch.float32


def test_bf16_dtypes(bf16_sam: Sam, tiny_sam: Sam) -> None:
    assert bf16_sam.encoder_dtype == torch.bfloat16
    assert bf16_sam.dtype == _decoder_dtype(bf16_sam)
    for name, tensor in bf16_sam.state_dict().items():
        if name.startswith("prompt_encoder."):
            assert tensor.dtype == torch.float32, name
        elif name.startswith("mask_decoder."):
            assert tensor.dtype == _decoder_dtype(bf16_sam), name
        else:
            assert tensor.dtype == torch.bfloat16, name
    # the same weights, rounded to bf16
    reference = tiny_sam.state_dict()
    for name, tensor in bf16_sam.state_dict().items():
        torch.testing.assert_close(tensor, reference[name].to(tensor.dtype), rtol=0, atol=0, msg=name)


def test_bf16_from_string_dtype(tiny_sam: Sam, tiny_checkpoint: Path) -> None:
    model = samkit.build_sam(tiny_sam.config, tiny_checkpoint, dtype="bf16")
    assert model.encoder_dtype == torch.bfloat16
    assert model.prompt_encoder.no_mask_embed.weight.dtype == torch.float32


@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
def test_bf16_masks_close_to_fp32(bf16_sam: Sam, tiny_sam: Sam, multimask: bool) -> None:
    image = _image(240, 320, seed=3)
    fp32 = samkit.SamPredictor(tiny_sam)
    bf16 = samkit.SamPredictor(bf16_sam)
    fp32.set_image(image)
    bf16.set_image(image)
    assert bf16.get_image_embedding().dtype == bf16_sam.dtype  # handed to the decoder in its dtype
    prompts = [
        {"point_coords": np.array([[150.0, 120.0]]), "point_labels": np.array([1])},
        {"point_coords": np.array([[60.0, 50.0], [250.0, 200.0]]), "point_labels": np.array([1, 0])},
        {"box": np.array([40.0, 30.0, 220.0, 180.0])},
    ]
    checked = 0
    for kwargs in prompts:
        masks32, scores32, low32 = fp32.predict(**kwargs, multimask_output=multimask)
        masks16, scores16, low16 = bf16.predict(**kwargs, multimask_output=multimask)
        assert masks16.shape == masks32.shape and masks16.dtype == np.bool_
        assert scores16.dtype == np.float32 and low16.dtype == np.float32
        np.testing.assert_allclose(scores16, scores32, atol=0.02)
        for m32, m16 in zip(masks32, masks16, strict=True):
            if not 0.005 < m32.mean() < 0.995:
                continue  # IoU of (nearly) empty or full masks says nothing
            iou = (m32 & m16).sum() / (m32 | m16).sum()
            assert iou > 0.9, f"bf16 mask IoU {iou:.3f} with fp32 for {kwargs}"
            checked += 1
    assert checked >= len(prompts)  # the comparison is not vacuous
    # the encoder really computes in bf16: the logits are close, not equal
    assert not np.array_equal(low16, low32)
