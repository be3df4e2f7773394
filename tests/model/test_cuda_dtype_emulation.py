"""The half-precision decoder as it runs on CUDA, emulated on the CPU.

On CUDA, ``build_sam(dtype=torch.bfloat16)`` casts the mask decoder to bf16 too, and
``torch.native_layer_norm`` returns float32 mean/rstd for half-precision input (the CPU returns
them in the input dtype). The decoder's factored paths read those statistics, so on CUDA every
prompt decode without a mask input used to fail with "expected m1 and m2 to have the same dtype".
These tests reproduce both conditions on the CPU: the decoder cast to bf16, and LayerNorm
patched to return float32 statistics, and run every user-facing path under them. They also
require that no operation mixes float32 and bf16 tensors while the model decodes, and that the
outputs equal those of the same bf16 model with the CPU's LayerNorm (the statistics, rounded to
the compute dtype, are the same numbers either way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import samkit
from samkit.config import SamConfig
from samkit.modeling import Sam

pytestmark = pytest.mark.usefixtures("one_thread")

HALF_DTYPES = (torch.bfloat16, torch.float16)
# Casts are where dtypes are meant to meet.
_CASTS = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


class CudaLayerNorm:
    """Replacement for ``torch.native_layer_norm`` with CUDA's statistics dtype (float32)."""

    def __init__(self, original: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.original = original
        self.half_calls = 0

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, mean, rstd = self.original(x, *args, **kwargs)
        if x.dtype in HALF_DTYPES:
            self.half_calls += 1
            return out, mean.float(), rstd.float()
        return out, mean, rstd


class MixedDtypeRecorder(TorchDispatchMode):
    """Records every operation (other than a cast) whose tensor operands mix floating dtypes.

    Zero-dimensional tensors are left out: they are scalars that type promotion ignores.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in _CASTS:
            flat, _ = tree_flatten((args, kwargs))
            dtypes = {t.dtype for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 0}
            if len(dtypes) > 1:
                self.mixed.append(f"{func}: {sorted(map(str, dtypes))}")
        return func(*args, **kwargs)


@pytest.fixture
def cuda_layer_norm(monkeypatch: pytest.MonkeyPatch) -> CudaLayerNorm:
    """LayerNorm statistics as CUDA returns them, for this test (every thread)."""
    patched = CudaLayerNorm(torch.native_layer_norm)
    monkeypatch.setattr(torch, "native_layer_norm", patched)
    return patched


def to_cuda_half_layout(model: Sam, dtype: torch.dtype = torch.bfloat16) -> Sam:
    """``model`` with encoder and mask decoder in ``dtype``, as ``build_sam`` makes it on CUDA."""
    model.image_encoder.to(dtype)
    model.mask_decoder.to(dtype)
    return model


@pytest.fixture(scope="module")
def bf16_model(perturbed_model: Callable[..., Sam], tiny_config: Callable[..., SamConfig]) -> Sam:
    return to_cuda_half_layout(perturbed_model(tiny_config(), seed=1))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """(240, 320, 3) uint8 with flat rectangles on a gradient."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:240, 0:320]
    picture = np.stack([x * 200 // 320, y * 200 // 240, (x + y) // 3], axis=-1).astype(np.uint8)
    for _ in range(4):
        y0, x0 = int(rng.integers(0, 120)), int(rng.integers(0, 160))
        picture[y0 : y0 + 80, x0 : x0 + 100] = rng.integers(0, 255, 3)
    return picture


@pytest.fixture(scope="module")
def predictor(bf16_model: Sam, image: np.ndarray) -> samkit.SamPredictor:
    p = samkit.SamPredictor(bf16_model)
    p.set_image(image)
    return p


@pytest.fixture
def no_mixed_dtypes() -> Iterator[MixedDtypeRecorder]:
    """Fails the test if an operation in its body mixes float32 and half tensors."""
    with MixedDtypeRecorder() as recorder:
        yield recorder
    assert not recorder.mixed, "operations mixing dtypes:\n" + "\n".join(sorted(set(recorder.mixed)))


PROMPTS = [
    {"point_coords": np.array([[150.0, 120.0]]), "point_labels": np.array([1]), "multimask_output": True},
    {"point_coords": np.array([[60.0, 50.0], [250.0, 200.0]]), "point_labels": np.array([1, 0]), "multimask_output": False},
    {"box": np.array([40.0, 30.0, 220.0, 180.0]), "multimask_output": True},
]


@pytest.mark.parametrize("kwargs", PROMPTS, ids=["point", "two-points-single", "box"])
def test_predict_with_cuda_layer_norm(
    predictor: samkit.SamPredictor, kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = predictor.predict(**kwargs)  # the CPU's LayerNorm: statistics already in bf16
    patched = CudaLayerNorm(torch.native_layer_norm)
    monkeypatch.setattr(torch, "native_layer_norm", patched)
    with MixedDtypeRecorder() as recorder:
        masks, scores, low_res = predictor.predict(**kwargs)
    assert patched.half_calls > 0  # the emulation really ran on half-precision input
    assert not recorder.mixed, sorted(set(recorder.mixed))
    np.testing.assert_array_equal(masks, expected[0])
    np.testing.assert_array_equal(scores, expected[1])
    np.testing.assert_array_equal(low_res, expected[2])
    assert scores.dtype == np.float32 and masks.dtype == np.bool_


def test_predict_with_mask_input_and_cuda_layer_norm(
    predictor: samkit.SamPredictor, cuda_layer_norm: CudaLayerNorm, no_mixed_dtypes: MixedDtypeRecorder
) -> None:
    _, scores, low_res = predictor.predict(point_coords=np.array([[150.0, 120.0]]), point_labels=np.array([1]))
    best = low_res[int(np.argmax(scores))][None]  # (1, 4h, 4w)
    masks, _, _ = predictor.predict(
        point_coords=np.array([[150.0, 120.0]]), point_labels=np.array([1]), mask_input=best, multimask_output=False
    )
    assert masks.shape == (1, 240, 320)


def test_predict_torch_many_prompts_with_cuda_layer_norm(
    predictor: samkit.SamPredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 9 one-point prompts (few tokens: the factored paths): more than one decoder chunk, and a
    # partial last chunk.
    generator = torch.Generator().manual_seed(0)
    coords = predictor.transform.apply_coords_torch(
        torch.rand(9, 1, 2, generator=generator) * torch.tensor([320.0, 240.0]), (240, 320)
    )
    labels = torch.ones(9, 1, dtype=torch.int64)
    expected = predictor.predict_torch(coords, labels, multimask_output=True)
    patched = CudaLayerNorm(torch.native_layer_norm)
    monkeypatch.setattr(torch, "native_layer_norm", patched)
    with MixedDtypeRecorder() as recorder:
        masks, scores, low_res = predictor.predict_torch(coords, labels, multimask_output=True)
    assert patched.half_calls > 0
    assert not recorder.mixed, sorted(set(recorder.mixed))
    assert masks.shape == (9, 3, 240, 320)
    torch.testing.assert_close(scores, expected[1], rtol=0, atol=0)
    torch.testing.assert_close(low_res, expected[2], rtol=0, atol=0)
    assert torch.equal(masks, expected[0])


def test_everything_with_cuda_layer_norm(bf16_model: Sam, image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    # Thresholds at zero: every mask goes through upscaling, stability and postprocessing.
    generator = samkit.SamAutomaticMaskGenerator(
        bf16_model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="coco_rle"
    )
    expected = generator.generate(image)
    patched = CudaLayerNorm(torch.native_layer_norm)
    monkeypatch.setattr(torch, "native_layer_norm", patched)
    with MixedDtypeRecorder() as recorder:
        records = generator.generate(image)
    assert patched.half_calls > 0
    assert not recorder.mixed, sorted(set(recorder.mixed))
    assert len(records) > 0
    assert records == expected


def test_server_upload_with_cuda_layer_norm(bf16_model: Sam, cuda_layer_norm: CudaLayerNorm) -> None:
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from samkit.server import create_app

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(buffer, format="PNG")
    with TestClient(create_app(bf16_model)) as client:
        # The upload encodes the image and warms the decoder up with one predict (a 500 before).
        uploaded = client.post("/api/images", files={"file": ("a.png", buffer.getvalue(), "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        image_id = uploaded.json()["id"]
        answer = client.post(f"/api/images/{image_id}/predict", json={"points": [[60, 45]], "labels": [1]})
        assert answer.status_code == 200, answer.text
    assert cuda_layer_norm.half_calls > 0


def test_float16_decoder_with_cuda_layer_norm(
    image: np.ndarray,
    perturbed_model: Callable[..., Sam],
    tiny_config: Callable[..., SamConfig],
    cuda_layer_norm: CudaLayerNorm,
    no_mixed_dtypes: MixedDtypeRecorder,
) -> None:
    p = samkit.SamPredictor(to_cuda_half_layout(perturbed_model(tiny_config(), seed=2), torch.float16))
    p.set_image(image)
    masks, scores, _ = p.predict(point_coords=np.array([[150.0, 120.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 240, 320) and np.isfinite(scores).all()
    assert cuda_layer_norm.half_calls > 0
