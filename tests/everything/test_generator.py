"""Generator arguments, the split decoder, and behaviour that needs no reference run."""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pytest
import torch

import samkit
from samkit.everything import SamAutomaticMaskGenerator
from samkit.everything.decode import PointDecoder

from .conftest import make_image
from .test_job import tiny_config


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(1)
    return samkit.build_sam(tiny_config())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"points_per_side": 2.5}, "points_per_side"),
        ({"points_per_side": None}, "point_grids"),
        ({"point_grids": [np.zeros((4, 2))]}, "points_per_side, point_grids"),
        ({"points_per_side": None, "point_grids": [np.full((3, 2), 1.5)]}, "point_grids"),
        ({"points_per_side": None, "point_grids": [np.zeros((3, 2))], "crop_n_layers": 1}, "point_grids"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"pred_iou_thresh": float("inf")}, "pred_iou_thresh"),  # any finite value is official
        ({"stability_score_thresh": float("nan")}, "stability_score_thresh"),
        ({"stability_score_offset": -1.0}, "stability_score_offset"),
        ({"box_nms_thresh": -0.1}, "box_nms_thresh"),
        ({"crop_n_layers": -1}, "crop_n_layers"),
        ({"crop_n_layers": True}, "crop_n_layers"),
        ({"crop_nms_thresh": 2.0}, "crop_nms_thresh"),
        ({"crop_overlap_ratio": 1.0}, "crop_overlap_ratio"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor"),
        ({"min_mask_region_area": -5}, "min_mask_region_area"),
        ({"output_mode": "png"}, "output_mode"),
    ],
)
def test_bad_arguments_name_the_argument(model: Any, kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SamAutomaticMaskGenerator(model, **kwargs)


def test_model_type_is_checked() -> None:
    with pytest.raises(TypeError, match="model"):
        SamAutomaticMaskGenerator(object())  # type: ignore[arg-type]


def test_missing_opencv_is_a_clear_error(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_cv2(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "cv2":
            raise ImportError("No module named 'cv2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    monkeypatch.setattr(builtins, "__import__", no_cv2)
    for kwargs in ({"min_mask_region_area": 10}, {"output_mode": "polygons"}):
        with pytest.raises(ImportError, match="opencv-python-headless"):
            SamAutomaticMaskGenerator(model, **kwargs)


@torch.inference_mode()
def test_point_decoder_equals_model_decode(model: Any) -> None:
    """The split decode (IoU first, masks for selected outputs) equals ``Sam.decode``."""
    features = torch.randn(1, 32, 16, 16)
    cache = model.decoder_cache(features)
    points = torch.rand(9, 2, dtype=torch.float64) * 256
    low_res, iou = model.decode(features, points.float()[:, None], torch.ones(9, 1, dtype=torch.int64), cache=cache)
    decoder = PointDecoder(model, features, cache)
    batch = decoder.run(points)
    torch.testing.assert_close(batch.iou, iou, rtol=1e-5, atol=1e-5)
    prompt = torch.tensor([0, 0, 4, 8, 2])
    output = torch.tensor([2, 0, 1, 2, 0])
    torch.testing.assert_close(decoder.masks(batch, prompt, output), low_res[prompt, output], rtol=1e-4, atol=1e-4)
    assert decoder.masks(batch, prompt[:0], output[:0]).shape == (0, 64, 64)


def test_batch_size_and_progress_do_not_change_results(model: Any, capsys: Any) -> None:
    image = make_image(50, 70, seed=2)
    kwargs = {"points_per_side": 5, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    a = SamAutomaticMaskGenerator(model, points_per_batch=64, **kwargs).generate(image)
    b = SamAutomaticMaskGenerator(model, points_per_batch=7, progress=True, **kwargs).generate(image)
    assert len(a) == len(b) == 75
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["segmentation"], y["segmentation"])
        assert x["bbox"] == y["bbox"] and x["point_coords"] == y["point_coords"]
    assert "prompt batches" in capsys.readouterr().err


def test_point_grids_and_image_types(model: Any) -> None:
    image = make_image(40, 30, seed=4)
    grid = np.array([[0.5, 0.5], [0.1, 0.9]])
    gen = SamAutomaticMaskGenerator(
        model, points_per_side=None, point_grids=[grid], pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    records = gen.generate(image)
    assert sorted({tuple(r["point_coords"][0]) for r in records}) == [(3.0, 36.0), (15.0, 20.0)]
    from PIL import Image

    again = gen.generate(Image.fromarray(image))
    assert [r["area"] for r in again] == [r["area"] for r in records]


@pytest.mark.parametrize("size", [(2, 3), (1, 700)], ids=["2x3", "1x700"])
def test_tiny_and_thin_images_with_crop_layers(model: Any, size: tuple[int, int]) -> None:
    """Images a few pixels across: deep crop layers' empty crops are skipped, thin sides keep a row."""
    gen = SamAutomaticMaskGenerator(
        model, points_per_side=2, crop_n_layers=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    records = gen.generate(make_image(*size, seed=5))
    assert records  # filters off: every crop layer's prompts give masks (else the loop below checks nothing)
    for r in records:
        assert r["segmentation"].shape == size
        x0, y0, w, h = r["crop_box"]
        assert w > 0 and h > 0 and x0 + w <= size[1] and y0 + h <= size[0]
    assert gen.last_stats["prompts"] > 0
