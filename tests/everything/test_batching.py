"""Batch sizes per device (samkit.batching): the accelerators' large batches give the same
segment-everything records and masks as the CPU's small ones, and logits equal to float
rounding (other GEMM sizes round differently in the last bits); both run here, on the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

import samkit
import samkit.batching
from samkit.batching import ACCELERATOR_BATCHING, CPU_BATCHING, batching_for
from samkit.everything import SamAutomaticMaskGenerator
from samkit.everything.decode import PointDecoder
from samkit.modeling.mask_decoder import MaskDecoder

from .conftest import make_image
from .test_job import tiny_config


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    return samkit.build_sam(tiny_config())


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts PointDecoder.run calls and MaskDecoder.forward calls that decode (not split)."""
    counts = {"run": 0, "decoder": 0}
    run, forward = PointDecoder.run, MaskDecoder.forward

    def counting_run(self: Any, coords: Any) -> Any:
        counts["run"] += 1
        return run(self, coords)

    def counting_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["decoder"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(PointDecoder, "run", counting_run)
    monkeypatch.setattr(MaskDecoder, "forward", counting_forward)
    yield counts


def _as_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(samkit.batching, "batching_for", lambda device: ACCELERATOR_BATCHING)


def test_batching_per_device() -> None:
    assert batching_for("cpu") is CPU_BATCHING and batching_for(torch.device("cpu")) is CPU_BATCHING
    assert batching_for("cuda") is batching_for("cuda:1") is batching_for("mps") is ACCELERATOR_BATCHING
    assert ACCELERATOR_BATCHING.prompt_chunk > CPU_BATCHING.prompt_chunk
    assert ACCELERATOR_BATCHING.upscale_tile > CPU_BATCHING.upscale_tile
    assert ACCELERATOR_BATCHING.postprocess_pixels > CPU_BATCHING.postprocess_pixels


def test_predict_torch_same_with_accelerator_batching(
    model: Any, counted: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = samkit.SamPredictor(model)
    predictor.set_image(make_image(90, 120, seed=3))
    g = torch.Generator().manual_seed(0)
    coords = predictor.transform.apply_coords_torch(torch.rand(10, 1, 2, generator=g) * torch.tensor([120.0, 90.0]), (90, 120))
    labels = torch.ones(10, 1, dtype=torch.int64)
    cpu = predictor.predict_torch(coords, labels)
    assert counted["decoder"] == 1 + 3  # split into chunks of 4, 4, 2
    _as_accelerator(monkeypatch)
    counted["decoder"] = 0
    accelerator = predictor.predict_torch(coords, labels)
    assert counted["decoder"] == 1  # one chunk of 10
    # Other GEMM sizes round differently in the last bits (~1e-6); the masks are the same
    # wherever the logit is not within that rounding of the threshold.
    masks, scores, low_res = accelerator
    torch.testing.assert_close(scores, cpu[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(low_res, cpu[2], rtol=1e-5, atol=1e-5)
    logits = predictor.predict_torch(coords, labels, return_logits=True)[0]  # (10, 3, H, W), accelerator batching
    assert not ((masks != cpu[0]) & (logits.abs() >= 1e-4)).any()


def test_everything_same_with_accelerator_batching(
    model: Any, counted: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(70, 100, seed=4)
    kwargs = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "output_mode": "coco_rle"}
    cpu = SamAutomaticMaskGenerator(model, **kwargs).generate(image)
    runs_cpu = counted["run"]
    _as_accelerator(monkeypatch)
    counted["run"] = 0
    accelerator = SamAutomaticMaskGenerator(model, **kwargs).generate(image)
    assert (runs_cpu, counted["run"]) == (4, 1)  # 16 points: 4 host syncs on the CPU, 1 on a GPU
    assert accelerator and accelerator == cpu


def test_upscaling_tile_does_not_change_logits(model: Any) -> None:
    decoder = model.mask_decoder
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 256, 32, generator=g)  # (B, N, C), a 16x16 grid
    hyper = torch.randn(2, 3, 4, generator=g)  # (B, M, C/8)
    whole = decoder.masks_from_image_tokens(tokens, hyper, (16, 16), tile=256)
    for tile in (7, 64, None):  # equal up to the rounding of other GEMM sizes
        torch.testing.assert_close(decoder.masks_from_image_tokens(tokens, hyper, (16, 16), tile=tile), whole, rtol=1e-5, atol=1e-6)


def _count_forward(monkeypatch: pytest.MonkeyPatch, cls: type) -> dict[str, int]:
    counts = {"calls": 0}
    forward = cls.forward

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["calls"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counting)
    return counts


def test_sam2_and_hq_decoders_chunk_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM 2's and HQ-SAM's decoders take their prompt chunk from samkit.batching too: 9 prompts
    are 3 chunks (+ the splitting call) on the CPU, one call with the accelerators' batching,
    with the same outputs."""
    from samkit.build_sam2 import get_sam2_config
    from samkit.modeling.hq_decoder import HQMaskDecoder
    from samkit.modeling.sam2 import Sam2
    from samkit.modeling.sam2_mask_decoder import Sam2MaskDecoder

    from .test_hq_generator import small_hq_config

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    sam2_decoder = Sam2(get_sam2_config("sam2.1_hiera_t")).sam_mask_decoder.eval()
    c = 256
    features = torch.randn(1, c, 16, 16, generator=g)  # (1, C, h, w)
    pe = torch.randn(1, c, 16, 16, generator=g)
    sparse = torch.randn(9, 3, c, generator=g)  # (B, T, C)
    high_res = (torch.randn(1, c // 8, 64, 64, generator=g), torch.randn(1, c // 4, 32, 32, generator=g))

    hq_model = samkit.build_sam(small_hq_config())
    hq_decoder = hq_model.mask_decoder
    hc = hq_model.prompt_encoder.embed_dim
    h, w = hq_model.prompt_encoder.image_embedding_size
    hq_args = (torch.randn(1, hc, h, w, generator=g), torch.randn(1, hc, h, w, generator=g), torch.randn(9, 3, hc, generator=g))
    early = torch.randn(1, hq_model.config.early_feature_dim, h, w, generator=g)  # (1, C_early, h, w)
    hq_features = hq_decoder.hq_features(hq_args[0], early)

    def run() -> tuple[list[Tensor], dict[str, int], dict[str, int]]:
        sam2_counts = _count_forward(monkeypatch, Sam2MaskDecoder)
        hq_counts = _count_forward(monkeypatch, HQMaskDecoder)
        with torch.inference_mode():
            out = list(sam2_decoder(features, pe, sparse, torch.zeros(1, c, 16, 16), True, high_res))
            out += list(hq_decoder(*hq_args, torch.zeros(1, hc, h, w), True, hq_features=hq_features))
        return out, sam2_counts, hq_counts

    cpu_out, cpu_sam2, cpu_hq = run()
    monkeypatch.undo()
    _as_accelerator(monkeypatch)
    acc_out, acc_sam2, acc_hq = run()
    assert (cpu_sam2["calls"], cpu_hq["calls"]) == (4, 4)  # split + ceil(9 / 4) chunks each
    assert (acc_sam2["calls"], acc_hq["calls"]) == (1, 1)
    for a, b in zip(cpu_out, acc_out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
