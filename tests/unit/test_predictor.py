"""SamPredictor on a tiny model: input validation, box batches, embedding files, image formats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import samkit
from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from samkit.modeling import Sam


def _tiny_config(name: str = "tiny_predictor", dim: int = 32) -> SamConfig:
    """img_size 1024 (so masks are 256x256 as in SAM) with a 2-block, windowed-only encoder."""
    return SamConfig(
        name=name,
        image_encoder=ImageEncoderConfig(
            img_size=1024, embed_dim=32, depth=2, num_heads=2, window_size=16, global_attn_indexes=(), out_chans=dim
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=dim, image_embedding_size=64, input_image_size=1024),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=dim, transformer_mlp_dim=2 * dim, transformer_num_heads=2, iou_head_hidden_dim=dim
        ),
    )


@torch.no_grad()
def _perturbed(config: SamConfig, seed: int) -> Sam:
    torch.manual_seed(seed)
    model = samkit.build_sam(config)
    g = torch.Generator().manual_seed(seed)
    for tensor in model.state_dict().values():
        if tensor.dtype.is_floating_point:
            tensor.add_(torch.randn(tensor.shape, generator=g) * 0.02)
    model.prompt_encoder.clear_cache()
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny model: one thread is faster than two (OpenMP synchronisation dominates)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Sam:
    return _perturbed(_tiny_config(), seed=0)


def _image(h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], axis=-1).astype(np.int64)
    image[h // 4 : h // 2, w // 3 : 2 * w // 3] = rng.integers(0, 256, 3)
    return np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return _image()


@pytest.fixture
def predictor(model: Sam, image: np.ndarray) -> samkit.SamPredictor:
    p = samkit.SamPredictor(model)
    p.set_image(image)
    return p


# --------------------------------------------------------------------------- before set_image


def test_predict_before_set_image_raises(model: Sam, tmp_path: Path) -> None:
    p = samkit.SamPredictor(model)
    assert not p.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict_torch(torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="set_image"):
        p.get_image_embedding()
    with pytest.raises(RuntimeError, match="set_image"):
        p.save_embedding(tmp_path / "e.safetensors")


def test_reset_image_forgets_the_image(predictor: samkit.SamPredictor) -> None:
    predictor.reset_image()
    assert not predictor.is_image_set and predictor.features is None
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))


def test_set_image_state(predictor: samkit.SamPredictor, model: Sam) -> None:
    assert predictor.is_image_set
    assert predictor.original_size == (90, 120)
    assert predictor.input_size == (768, 1024)
    assert predictor.get_image_embedding().shape == (1, 32, 64, 64)
    masks, scores, low_res = predictor.predict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 90, 120) and masks.dtype == np.bool_
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert low_res.shape == (3, 256, 256) and low_res.dtype == np.float32


# --------------------------------------------------------------------------- prompt validation

POINT = np.array([[60.0, 40.0]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"point_coords": POINT, "point_labels": np.array([2])}, ValueError, "point_labels"),
        ({"point_coords": POINT, "point_labels": np.array([-1])}, ValueError, "point_labels"),
        (
            {"point_coords": np.array([60.0, 40.0]), "point_labels": np.array([1])},
            ValueError,
            r"point_coords.*\(N, 2\)",
        ),
        ({"point_coords": np.array([[60.0, 40.0, 1.0]]), "point_labels": np.array([1])}, ValueError, "point_coords"),
        ({"point_coords": np.array([[np.nan, 40.0]]), "point_labels": np.array([1])}, ValueError, "point_coords.*NaN"),
        ({"point_coords": np.array([[np.inf, 40.0]]), "point_labels": np.array([1])}, ValueError, "point_coords.*inf"),
        (
            {"point_coords": np.array([[1.0, 2.0], [3.0, 4.0]]), "point_labels": np.array([1])},
            ValueError,
            "point_labels",
        ),
        ({"point_coords": POINT}, ValueError, "point_labels"),
        ({"point_labels": np.array([1])}, ValueError, "point_labels"),
        ({"box": np.array([1.0, 2.0, 3.0])}, ValueError, r"box.*\(4,\) or \(B, 4\)"),
        ({"box": np.zeros((2, 2, 4))}, ValueError, r"box.*\(4,\) or \(B, 4\)"),
        ({"box": np.array([50.0, 2.0, 10.0, 30.0])}, ValueError, "box.*x1 < x0"),
        ({"box": np.array([5.0, 2.0, 10.0, np.nan])}, ValueError, "box.*NaN"),
        ({"box": np.array([5.0, 2.0, np.inf, 30.0])}, ValueError, "box.*inf"),
        (
            {"point_coords": POINT, "point_labels": [1], "mask_input": np.zeros((256, 256))},
            ValueError,
            r"mask_input.*\(1, 256, 256\)",
        ),
        (
            {"point_coords": POINT, "point_labels": [1], "mask_input": np.zeros((1, 64, 64))},
            ValueError,
            r"mask_input.*\(1, 256, 256\)",
        ),
        ({"point_coords": "60,40", "point_labels": [1]}, TypeError, "point_coords"),
    ],
)
def test_predict_validation_names_the_argument(
    predictor: samkit.SamPredictor, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        predictor.predict(**kwargs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.zeros(1, 2), torch.ones(1, 1)), r"point_coords: expected shape \(B, N, 2\)"),
        ((torch.zeros(1, 2, 2), torch.ones(1, 3)), "point_labels: expected shape"),
        ((torch.zeros(1, 1, 2), None), "point_labels: required"),
        ((torch.full((1, 1, 2), float("nan")), torch.ones(1, 1)), "point_coords: contains NaN"),
        ((torch.zeros(1, 1, 2), torch.full((1, 1), 4)), "point_labels: labels must be"),
        ((None, None, torch.zeros(4)), r"boxes: expected shape \(B, 4\)"),
        ((None, None, torch.tensor([[5.0, 0.0, 1.0, 1.0]])), "boxes: every box"),
        ((torch.zeros(2, 1, 2), torch.ones(2, 1), torch.zeros(3, 4)), "prompt batch sizes differ"),
        ((None, None, None, torch.zeros(1, 256, 256)), r"mask_input: expected shape \(B, 1, 256, 256\)"),
    ],
)
def test_predict_torch_validation(predictor: samkit.SamPredictor, args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        predictor.predict_torch(*args)


def test_predict_torch_rejects_numpy(predictor: samkit.SamPredictor) -> None:
    with pytest.raises(TypeError, match="point_coords: expected a torch.Tensor"):
        predictor.predict_torch(np.zeros((1, 1, 2)), torch.ones(1, 1))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- image validation


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (np.zeros((4, 5, 3, 2), np.uint8), {}, ValueError, r"image: expected shape \(H, W\) or \(H, W, C\)"),
        (np.zeros(5, np.uint8), {}, ValueError, "image: expected shape"),
        (np.zeros((4, 5, 7), np.uint8), {}, ValueError, "image: expected 1, 2, 3 or 4 channels"),
        (np.full((4, 5, 3), "a"), {}, TypeError, "image: expected a numeric array"),
        (np.zeros((4, 5, 3), object), {}, TypeError, "image: expected a numeric array"),
        ([[0, 1], [2, 3]], {}, TypeError, "image: expected a numpy array or PIL image"),
        (np.zeros((0, 5, 3), np.uint8), {}, ValueError, "image: empty image"),
        (np.zeros((5, 0), np.uint8), {}, ValueError, "image: empty image"),
        (np.full((4, 5, 3), 2.0), {}, ValueError, r"image: float values must lie in \[0, 1\]"),
        (np.zeros((4, 5, 3), np.uint8), {"image_format": "rgb"}, ValueError, "image_format"),
        (np.zeros((4, 5, 3), np.uint8), {"image_format": "HSV"}, ValueError, "image_format"),
    ],
)
def test_set_image_validation(
    model: Sam, image: Any, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    p = samkit.SamPredictor(model)
    with pytest.raises(error, match=match):
        p.set_image(image, **kwargs)
    assert not p.is_image_set


def test_set_torch_image_validation(model: Sam) -> None:
    p = samkit.SamPredictor(model)
    with pytest.raises(ValueError, match="transformed_image: expected shape"):
        p.set_torch_image(torch.zeros(1, 3, 500, 600), (50, 60))
    with pytest.raises(ValueError, match="transformed_image: expected shape"):
        p.set_torch_image(torch.zeros(3, 768, 1024), (50, 60))
    with pytest.raises(TypeError, match="transformed_image"):
        p.set_torch_image(np.zeros((1, 3, 768, 1024)), (50, 60))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- box batches


def test_box_batch_equals_single_boxes(predictor: samkit.SamPredictor) -> None:
    boxes = np.array([[10.0, 5.0, 70.0, 60.0], [40.0, 20.0, 115.0, 85.0], [0.0, 0.0, 119.0, 89.0]])
    for extra in ({}, {"point_coords": np.array([[50.0, 40.0]]), "point_labels": np.array([1])}):
        logits, scores, low_res = predictor.predict(box=boxes, **extra, return_logits=True)
        masks, mask_scores, _ = predictor.predict(box=boxes, **extra)
        assert logits.shape == (3, 3, 90, 120) and masks.shape == (3, 3, 90, 120)
        assert scores.shape == (3, 3) and low_res.shape == (3, 3, 256, 256)
        np.testing.assert_array_equal(mask_scores, scores)
        for i in range(3):
            one_logits, one_scores, one_low = predictor.predict(box=boxes[i], **extra, return_logits=True)
            np.testing.assert_allclose(logits[i], one_logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(scores[i], one_scores, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(low_res[i], one_low, rtol=1e-5, atol=1e-5)
            one_masks, _, _ = predictor.predict(box=boxes[i], **extra)
            decided = np.abs(one_logits) > 1e-4
            np.testing.assert_array_equal(masks[i][decided], one_masks[decided])
        assert not np.allclose(low_res[0], low_res[1])  # the boxes do matter


def test_box_batch_single_mask_and_mask_input(predictor: samkit.SamPredictor) -> None:
    boxes = np.array([[10.0, 5.0, 70.0, 60.0], [40.0, 20.0, 115.0, 85.0]])
    _, scores, low_res = predictor.predict(point_coords=POINT, point_labels=[1])
    mask_input = low_res[np.argmax(scores)][None]  # (1, 256, 256)
    logits, scores, low = predictor.predict(
        box=boxes, mask_input=mask_input, multimask_output=False, return_logits=True
    )
    assert logits.shape == (2, 1, 90, 120) and scores.shape == (2, 1) and low.shape == (2, 1, 256, 256)
    for i in range(2):
        one_logits, _, _ = predictor.predict(
            box=boxes[i], mask_input=mask_input, multimask_output=False, return_logits=True
        )
        np.testing.assert_allclose(logits[i], one_logits, rtol=1e-5, atol=1e-5)


def test_box_of_shape_1x4_is_unbatched(predictor: samkit.SamPredictor) -> None:
    box = np.array([[10.0, 5.0, 70.0, 60.0]])
    masks, scores, low_res = predictor.predict(box=box)
    assert masks.shape == (3, 90, 120) and scores.shape == (3,) and low_res.shape == (3, 256, 256)
    flat_masks, flat_scores, _ = predictor.predict(box=box[0])
    np.testing.assert_array_equal(masks, flat_masks)
    np.testing.assert_array_equal(scores, flat_scores)


def test_predict_without_prompts(predictor: samkit.SamPredictor) -> None:
    masks, scores, low_res = predictor.predict(multimask_output=False)
    assert masks.shape == (1, 90, 120) and scores.shape == (1,) and low_res.shape == (1, 256, 256)


# --------------------------------------------------------------------------- embedding files


def test_save_load_embedding_round_trip(predictor: samkit.SamPredictor, model: Sam, tmp_path: Path) -> None:
    path = tmp_path / "embedding.safetensors"
    predictor.save_embedding(path)
    loaded = samkit.SamPredictor(model)
    loaded.load_embedding(path)
    assert loaded.is_image_set
    assert loaded.original_size == predictor.original_size
    assert loaded.input_size == predictor.input_size
    assert torch.equal(loaded.get_image_embedding(), predictor.get_image_embedding())
    prompts = [
        {"point_coords": np.array([[60.0, 40.0], [10.0, 80.0]]), "point_labels": np.array([1, 0])},
        {"box": np.array([10.0, 5.0, 70.0, 60.0]), "multimask_output": False},
    ]
    for kwargs in prompts:
        expected = predictor.predict(**kwargs, return_logits=True)
        for a, b in zip(loaded.predict(**kwargs, return_logits=True), expected, strict=True):
            np.testing.assert_array_equal(a, b)


def test_load_embedding_into_a_different_model_fails(predictor: samkit.SamPredictor, tmp_path: Path) -> None:
    path = tmp_path / "embedding.safetensors"
    predictor.save_embedding(path)
    other = samkit.SamPredictor(_perturbed(_tiny_config(name="other_tiny"), seed=1))
    with pytest.raises(ValueError, match="embedding was computed by model 'tiny_predictor'"):
        other.load_embedding(path)
    assert not other.is_image_set


def test_load_embedding_checks_the_shape(predictor: samkit.SamPredictor, tmp_path: Path) -> None:
    """A same-named config of another width must be refused with a clear error, not fail later."""
    path = tmp_path / "embedding.safetensors"
    predictor.save_embedding(path)
    wider = samkit.SamPredictor(_perturbed(_tiny_config(dim=48), seed=2))
    with pytest.raises(ValueError, match=r"embedding has shape \(1, 32, 64, 64\), expected \(1, 48, 64, 64\)"):
        wider.load_embedding(path)
    assert not wider.is_image_set


def test_load_embedding_bad_files(model: Sam, tmp_path: Path) -> None:
    p = samkit.SamPredictor(model)
    with pytest.raises(FileNotFoundError, match="embedding file not found"):
        p.load_embedding(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read embedding"):
        p.load_embedding(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"features": torch.zeros(1, 32, 64, 64)}, str(foreign))
    with pytest.raises(ValueError, match="not a samkit embedding file"):
        p.load_embedding(foreign)


# --------------------------------------------------------------------------- image formats


@pytest.fixture(scope="module")
def rgb_features(model: Sam, image: np.ndarray) -> torch.Tensor:
    p = samkit.SamPredictor(model)
    p.set_image(image)
    return p.get_image_embedding().clone()


def _features(model: Sam, image: Any, **kwargs: Any) -> torch.Tensor:
    p = samkit.SamPredictor(model)
    p.set_image(image, **kwargs)
    assert p.original_size == (90, 120)
    return p.get_image_embedding()


def test_set_image_pil_equals_array(model: Sam, image: np.ndarray, rgb_features: torch.Tensor) -> None:
    assert torch.equal(_features(model, Image.fromarray(image)), rgb_features)


def test_set_image_bgr_equals_rgb_reversed(model: Sam, image: np.ndarray, rgb_features: torch.Tensor) -> None:
    bgr = np.ascontiguousarray(image[..., ::-1])
    assert torch.equal(_features(model, bgr, image_format="BGR"), rgb_features)
    assert torch.equal(_features(model, image[..., ::-1], image_format="BGR"), rgb_features)  # a strided view
    assert not torch.equal(_features(model, bgr), rgb_features)  # BGR read as RGB differs


def test_set_image_rgba_drops_alpha(model: Sam, image: np.ndarray, rgb_features: torch.Tensor) -> None:
    alpha = np.random.default_rng(1).integers(0, 256, image.shape[:2], dtype=np.uint8)
    rgba = np.dstack([image, alpha])
    assert torch.equal(_features(model, rgba), rgb_features)
    assert torch.equal(_features(model, Image.fromarray(rgba, mode="RGBA")), rgb_features)


def test_set_image_uint16_is_scaled(model: Sam, image: np.ndarray, rgb_features: torch.Tensor) -> None:
    low_byte = np.random.default_rng(2).integers(0, 256, image.shape, dtype=np.uint16)
    image16 = image.astype(np.uint16) * np.uint16(256) + low_byte  # (x * 256 + low) >> 8 == x
    assert torch.equal(_features(model, image16), rgb_features)


def test_set_image_grayscale(model: Sam, image: np.ndarray) -> None:
    grey = image[..., 1]
    expected = _features(model, np.repeat(grey[..., None], 3, axis=2))
    assert torch.equal(_features(model, grey), expected)
    assert torch.equal(_features(model, grey[..., None]), expected)
    assert torch.equal(_features(model, Image.fromarray(grey, mode="L")), expected)


def test_set_image_bool_and_float(model: Sam, image: np.ndarray) -> None:
    as_float = image.astype(np.float64) / 255.0
    rgb = _features(model, image)
    assert torch.equal(_features(model, as_float), rgb)
    mask = image[..., 0] > 128
    assert torch.equal(_features(model, mask), _features(model, mask.astype(np.uint8) * 255))


def test_set_image_tiny_image(model: Sam) -> None:
    """A 7x10 image is upscaled to 717x1024; prompts and masks stay in its 7x10 pixels."""
    p = samkit.SamPredictor(model)
    p.set_image(_image(7, 10, seed=3))
    assert p.original_size == (7, 10) and p.input_size == (717, 1024)
    masks, _, _ = p.predict(point_coords=np.array([[4.0, 3.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 7, 10)


# --------------------------------------------------------------------------- the two halves of predict_torch


def test_decode_low_res_then_upscale_masks_is_predict_torch(predictor: samkit.SamPredictor) -> None:
    """predict_torch = decode_low_res + upscale_masks; upscaling a chosen subset gives those masks."""
    coords = predictor.transform.apply_coords_torch(torch.tensor([[[30.0, 40.0]], [[80.0, 20.0]]]), predictor.original_size)
    labels = torch.ones(2, 1, dtype=torch.int64)
    masks, iou, low = predictor.predict_torch(coords, labels, multimask_output=True)
    logits, _, _ = predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    low_res, iou_half = predictor.decode_low_res(coords, labels, multimask_output=True)
    torch.testing.assert_close(iou_half, iou, rtol=0, atol=0)
    torch.testing.assert_close(low_res, low, rtol=0, atol=0)
    torch.testing.assert_close(predictor.upscale_masks(low_res, return_logits=True), logits, rtol=0, atol=0)
    best = iou.argmax(dim=1)  # (B,)
    kept = predictor.upscale_masks(low_res[torch.arange(2), best])  # (B, H, W)
    assert kept.dtype == torch.bool and kept.any()
    torch.testing.assert_close(kept, masks[torch.arange(2), best], rtol=0, atol=0)


def test_upscale_masks_needs_an_image(model: Sam) -> None:
    with pytest.raises(RuntimeError, match="set_image"):
        samkit.SamPredictor(model).upscale_masks(torch.zeros(1, 1, 256, 256))
