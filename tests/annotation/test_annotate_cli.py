"""``samkit annotate`` on the command line: a run with a real (random-weight) MobileSAM checkpoint, user errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from samkit import build_sam
from samkit.cli import main
from samkit.config import VARIANTS


@pytest.fixture(scope="module")
def vit_t_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vit_t_random.pth"
    torch.save(build_sam(VARIANTS["vit_t"].with_overrides(name="vit_t_random")).state_dict(), path)
    return path


def test_cli_writes_every_format_and_reports_bad_rows(
    vit_t_checkpoint: Path, dataset: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = dict(dataset["coco"])
    coco["annotations"] = [*coco["annotations"], {"id": 99, "image_id": 11, "category_id": 42, "bbox": [1, 1, 5, 5]}]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(coco, indent=1))
    out = tmp_path / "out"
    argv = ["annotate", str(dataset["root"]), "-r", "--boxes", str(boxes), "--out", str(out), "--format", "labelstudio",
            "--model", "vit_t", "--checkpoint", str(vit_t_checkpoint), "--threads", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "3 image(s) annotated" in captured.out and "1 bad row(s)" in captured.out
    assert "unknown category id 42" in captured.err and "boxes.json line" in captured.err
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    assert [len(t["predictions"][0]["result"]) for t in tasks] == [2, 2, 2]
    assert not (out / "annotations.json").exists()
    rerun = [("coco" if arg == "labelstudio" else arg) for arg in argv]
    assert main(rerun) == 0  # rerun, another format: the stored masks are reused
    assert "0 image(s) annotated, 3 already complete" in capsys.readouterr().out
    written = json.loads((out / "annotations.json").read_text())
    assert len(written["annotations"]) == 6 and written["categories"] == coco["categories"]


@pytest.mark.parametrize(
    "extra, message",
    [(["--batch-size", "0"], "--batch-size"), (["--dataset", "missing.json"], "--dataset: no such file")],
)
def test_cli_user_errors_exit_2(extra: list[str], message: str, dataset: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["annotate", str(dataset["root"]), "--boxes", str(dataset["coco_path"]), "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_with_an_hq_model_gives_the_predictors_masks(dataset: dict[str, Any], tmp_path: Path) -> None:
    """``samkit annotate --model hq_vit_tiny``: each COCO mask is the HQ predictor's best mask for its box."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from samkit import SamPredictor, load_image

    torch.manual_seed(0)
    checkpoint = tmp_path / "hq_vit_tiny_random.pth"
    torch.save(build_sam(VARIANTS["hq_vit_tiny"].with_overrides(name="hq_vit_tiny_random")).state_dict(), checkpoint)
    out = tmp_path / "out"
    argv = ["annotate", str(dataset["root"]), "-r", "--boxes", str(dataset["coco_path"]), "--out", str(out),
            "--format", "coco", "--model", "hq_vit_tiny", "--checkpoint", str(checkpoint), "--threads", "2", "--no-progress"]
    assert main(argv) == 0
    written = json.loads((out / "annotations.json").read_text())
    assert len(written["annotations"]) == 6
    predictor = SamPredictor(build_sam("hq_vit_tiny", checkpoint))
    files = {im["id"]: im["file_name"] for im in dataset["coco"]["images"]}
    boxes = {a["id"]: a["bbox"] for a in dataset["coco"]["annotations"]}
    for ann in written["annotations"]:
        predictor.set_image(load_image(dataset["root"] / files[ann["image_id"]]))
        x, y, w, h = boxes[ann["id"]] if ann["id"] in boxes else ann["bbox"]
        masks, scores, _ = predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=True)
        rle = ann["segmentation"]
        if isinstance(rle["counts"], str):
            rle = {**rle, "counts": rle["counts"].encode()}
        got = mask_utils.decode(rle).astype(bool)
        assert np.array_equal(got, masks[int(np.argmax(scores))]), ann["id"]


def test_cli_with_a_sam21_model_gives_the_predictors_masks(dataset: dict[str, Any], tmp_path: Path) -> None:
    """``samkit annotate --model sam2.1_hiera_t``: each COCO mask is the SAM 2.1 predictor's best mask
    for its box, on a 240x360 image (boxes mapped into SAM 2's stretched square, not SAM 1's
    longest-side frame). One image: each SAM 2.1 hiera_t embedding costs seconds on a CPU."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from samkit import SamPredictor, load_image
    from samkit.build_sam2 import get_sam2_config
    from samkit.modeling.sam2 import Sam2

    torch.manual_seed(0)
    model = Sam2(get_sam2_config("sam2.1_hiera_t")).eval()
    checkpoint = tmp_path / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    out = tmp_path / "out"
    argv = ["annotate", str(dataset["root"] / "img12.png"), "--boxes", str(dataset["coco_path"]), "--out", str(out), "--format", "coco",
            "--model", "sam2.1_hiera_t", "--checkpoint", str(checkpoint), "--device", "cpu", "--threads", "2", "--no-progress"]
    assert main(argv) == 0  # the other images' detections: bad rows (not among the inputs), not a failure
    written = json.loads((out / "annotations.json").read_text())
    assert written["info"]["settings"]["model"] == "sam2.1_hiera_t"
    detected = sorted([a["image_id"], *a["bbox"][:2], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                      for a in dataset["coco"]["annotations"] if a["image_id"] == 12)
    np.testing.assert_allclose(sorted([a["image_id"], *a["prompt_box"]] for a in written["annotations"]), detected, rtol=0, atol=1e-4)
    predictor = SamPredictor(model)  # the checkpoint's weights; loading it is checked in tests/cli/test_segment_sam2_cli.py
    predictor.set_image(load_image(dataset["root"] / "img12.png"))
    for ann in written["annotations"]:
        masks, scores, _ = predictor.predict(box=np.array(ann["prompt_box"]), multimask_output=True)
        rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), masks[int(np.argmax(scores))]), ann["id"]
        assert ann["predicted_iou"] == pytest.approx(float(scores.max()), abs=1e-5)
