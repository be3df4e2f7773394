"""No float64 tensor on the model's device (Apple's MPS has no float64).

A dispatch-mode guard records every operation that reads or makes a float64 tensor on the
model's device while samkit predicts and segments everything. On these CPU-only test machines
the model's device is the CPU, so the guard holds samkit to the stricter rule that its own
float64 arithmetic (the reference's precision for prompt points and stability counts) runs in
numpy, which no torch device ever sees.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import samkit
from samkit.everything import SamAutomaticMaskGenerator
from samkit.everything.filters import provably_unstable, stability_bounds
from samkit.transforms import preprocess_shape

from .conftest import make_image
from .test_job import tiny_config


class Float64Guard(TorchDispatchMode):
    """Counts operations that touch a float64 tensor on ``device`` (inputs or outputs)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten((args, kwargs, out))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device == self.device for t in flat):
            self.ops[str(func)] += 1
        return out


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    return samkit.build_sam(tiny_config())


def test_predict_has_no_float64(model: Any) -> None:
    predictor = samkit.SamPredictor(model)
    predictor.set_image(make_image(90, 120, seed=1))  # the encoder is guarded by the everything tests
    with Float64Guard(model.device) as recorder:
        _predict_every_way(predictor)
    assert not recorder.ops, f"float64 operations on {model.device}: {dict(recorder.ops)}"


def _predict_every_way(predictor: samkit.SamPredictor) -> None:
    """Points, a box, a mask input, several points with a background one, predict_torch."""
    _, scores, low_res = predictor.predict(point_coords=np.array([[60.5, 40.25]]), point_labels=np.array([1]))
    predictor.predict(box=np.array([10.0, 10.0, 100.0, 80.0]), multimask_output=False)
    predictor.predict(
        point_coords=np.array([[60.0, 40.0], [5.0, 5.0]]),
        point_labels=np.array([1, 0]),
        mask_input=low_res[int(np.argmax(scores))][None],
    )
    coords = predictor.transform.apply_coords_torch(torch.tensor([[[60.0, 40.0]], [[20.0, 70.0]]]), (90, 120))
    predictor.predict_torch(coords, torch.ones(2, 1, dtype=torch.int64))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},  # every mask upscaled and post-processed
        {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.5, "crop_n_layers": 1, "points_per_side": 2},  # bounds, crops
    ],
    ids=["all-masks", "bounds-and-crops"],
)
def test_everything_has_no_float64(model: Any, kwargs: dict[str, Any]) -> None:
    image = make_image(70, 100, seed=2)
    generator = SamAutomaticMaskGenerator(model, **{"points_per_side": 4, "output_mode": "coco_rle", **kwargs})
    with Float64Guard(model.device) as recorder:
        records = generator.generate(image)
    assert not recorder.ops, f"float64 operations on {model.device}: {dict(recorder.ops)}"
    assert generator.last_stats["prompts"] > 0
    if kwargs["stability_score_thresh"] == 0.0:
        assert records  # the guard watched masks being post-processed and encoded


def test_stability_bounds_of_a_large_image_have_no_float64() -> None:
    """Above 2**24 output pixels the counts pass float32's exact range: still no float64."""
    g = torch.Generator().manual_seed(0)
    low = torch.randn(3, 256, 256, generator=g) * 4  # (3, 256, 256)
    low[2] = -5.0  # empty
    size = (4500, 4000)  # 18 MP
    input_size = preprocess_shape(*size, 1024)
    with Float64Guard(torch.device("cpu")) as recorder:
        upper, lower = stability_bounds(low, input_size, size, 1024, (1.0, -1.0))
        pruned = provably_unstable(upper, lower, 0.9)
    assert not recorder.ops, dict(recorder.ops)
    assert upper.dtype == lower.dtype == torch.int64
    assert (upper <= size[0] * size[1]).all() and (lower <= size[0] * size[1]).all()
    assert int(upper[2]) == 0 and bool(pruned[2])  # the empty mask: provably unstable
    # exact integer counts: the low-threshold pixels of a mask with all logits far above it
    full = torch.full((1, 256, 256), 50.0)
    upper, lower = stability_bounds(full, input_size, size, 1024, (1.0, -1.0))
    assert int(upper[0]) == int(lower[0]) == size[0] * size[1]


def test_hq_everything_has_no_float64() -> None:
    """HQ-SAM's segment-everything decoder normalizes its float64 points on the host too."""
    from .test_hq_generator import small_hq_config

    torch.manual_seed(0)
    hq_model = samkit.build_sam(small_hq_config())
    generator = SamAutomaticMaskGenerator(hq_model, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    with Float64Guard(hq_model.device) as recorder:
        records = generator.generate(make_image(60, 80, seed=3))
    assert not recorder.ops, f"float64 operations on {hq_model.device}: {dict(recorder.ops)}"
    assert records
