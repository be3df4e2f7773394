"""GPU test subset, run by ``bench/gpu_check.sh`` on a machine with a CUDA GPU (never in CI).

These live outside ``tests/`` because they need a GPU: the CPU suite emulates the CUDA-only
behaviour (``tests/model/test_cuda_dtype_emulation.py``, ``tests/everything/test_no_float64.py``),
and these check the real thing. They fail, rather than skip, without CUDA.

* parity on CUDA fp32: samkit against the official code on the same perturbed vit_b weights;
* bf16 and fp16 consistency: the half-precision decoder (CUDA only) runs predict,
  predict_torch, segment-everything, and stays close to fp32;
* the web server's upload path (decode, embed, warm-up predict) and a predict, on a bf16 model;
* no float64 tensor on the GPU while segmenting everything.
"""

from __future__ import annotations

import asyncio
import collections
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import samkit
from samkit.benchmark import benchmark_image, benchmark_prompts, load_baselines, mask_iou

REPO = Path(__file__).resolve().parents[2]
DEVICE = torch.device("cuda")


@pytest.fixture(scope="session", autouse=True)
def exact_fp32() -> None:
    """A CUDA GPU, with TF32 off: fp32 parity means fp32 arithmetic on both sides."""
    assert torch.cuda.is_available(), "the GPU subset needs a CUDA GPU"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def baselines() -> Any:
    return load_baselines(REPO / "bench" / "baselines.py")


@pytest.fixture(scope="session")
def checkpoint(baselines: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A perturbed official-format vit_b checkpoint (the same weights for both sides)."""
    return baselines.make_checkpoint("vit_b", tmp_path_factory.mktemp("ckpt") / "vit_b.pth", seed=0)


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    return benchmark_image()


@pytest.fixture(scope="session")
def fp32(checkpoint: str, image: np.ndarray) -> samkit.SamPredictor:
    predictor = samkit.SamPredictor(samkit.build_sam("vit_b", checkpoint, device=DEVICE))
    predictor.set_image(image)
    return predictor


@pytest.fixture(scope="session")
def bf16(checkpoint: str, image: np.ndarray) -> samkit.SamPredictor:
    predictor = samkit.SamPredictor(samkit.build_sam("vit_b", checkpoint, device=DEVICE, dtype=torch.bfloat16))
    predictor.set_image(image)
    return predictor


def test_parity_with_the_official_code_on_cuda_fp32(
    baselines: Any, checkpoint: str, image: np.ndarray, fp32: samkit.SamPredictor
) -> None:
    official = baselines.predictor(baselines.build_model("vit_b", checkpoint).to(DEVICE))
    official.set_image(image)
    reference = official.features.float()
    scale = float(reference.abs().max())
    assert float((fp32.features.float() - reference).abs().max()) <= 1e-4 * max(1.0, scale)
    for prompt in benchmark_prompts(*image.shape[:2]):
        theirs, their_scores, _ = official.predict(return_logits=True, **prompt)
        ours, our_scores, _ = fp32.predict(return_logits=True, **prompt)
        np.testing.assert_allclose(our_scores, their_scores, atol=1e-3)
        differ = (theirs > 0) != (ours > 0)
        assert not (differ & (np.abs(theirs) >= 1e-2)).any(), f"masks differ beyond |logit| >= 1e-2 for {prompt}"


def test_bf16_decoder_runs_every_path_and_stays_close(
    fp32: samkit.SamPredictor, bf16: samkit.SamPredictor, image: np.ndarray
) -> None:
    assert bf16.model.dtype == torch.bfloat16  # on CUDA the decoder follows the fast mode
    ious = []
    for prompt in benchmark_prompts(*image.shape[:2]):
        m32, _, _ = fp32.predict(**prompt)
        m16, s16, _ = bf16.predict(**prompt)
        assert np.isfinite(s16).all()
        ious.extend(mask_iou(a, b) for a, b in zip(m32, m16))
    assert float(np.mean(ious)) >= 0.95, f"bf16 mean mask IoU vs fp32 {np.mean(ious):.3f}"
    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    points = torch.as_tensor(np.stack([rng.uniform(0, w, 64), rng.uniform(0, h, 64)], -1)[:, None], dtype=torch.float32)
    coords = bf16.transform.apply_coords_torch(points, (h, w)).to(DEVICE)
    masks, scores, _ = bf16.predict_torch(coords, torch.ones(64, 1, dtype=torch.int64, device=DEVICE))
    assert masks.shape == (64, 3, h, w) and bool(torch.isfinite(scores).all())
    records = samkit.SamAutomaticMaskGenerator(
        bf16.model, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0
    ).generate(image)
    assert records


def test_fp16_decoder_predicts(checkpoint: str, image: np.ndarray) -> None:
    predictor = samkit.SamPredictor(samkit.build_sam("vit_b", checkpoint, device=DEVICE, dtype=torch.float16))
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[400.0, 300.0]]), point_labels=np.array([1]))
    assert masks.shape[0] == 3 and np.isfinite(scores).all()


def test_server_upload_path_on_a_bf16_model(bf16: samkit.SamPredictor) -> None:
    from samkit.server.service import SegmentationService

    buffer = io.BytesIO()
    Image.fromarray(benchmark_image(240, 320, seed=1)).save(buffer, format="PNG")
    service = SegmentationService(bf16.model)

    async def upload_and_predict() -> dict[str, Any]:
        entry, _ = await service.add_image(buffer.getvalue())  # decode, embed, warm-up predict
        return await service.predict(
            entry.image_id, points=[(160.0, 120.0)], labels=[1], box=None, mask_input_id=None,
            multimask=True, output_format="rle",
        )

    try:
        answer = asyncio.run(upload_and_predict())
    finally:
        service.close()
    assert len(answer["masks"]) == 3 and all(np.isfinite(answer["scores"]))


class _Float64OnDevice(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten((args, kwargs, out))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type == "cuda" for t in flat):
            self.ops[str(func)] += 1
        return out


def test_no_float64_on_the_gpu(fp32: samkit.SamPredictor, image: np.ndarray) -> None:
    generator = samkit.SamAutomaticMaskGenerator(fp32.model, points_per_side=8, crop_n_layers=1)
    with _Float64OnDevice() as guard:
        generator.generate(image)
        fp32.predict(point_coords=np.array([[400.0, 300.0]]), point_labels=np.array([1]))
    assert not guard.ops, dict(guard.ops)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
