"""``samkit.annotate``: boxes in, masks out as COCO / YOLO-seg / Label Studio; bad rows; resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from samkit import SamPredictor, annotate, load_image
from samkit.annotation.detections import BadRow
from samkit.everything.polygons import mask_to_polygons
from samkit.labelstudio.brush import brush_rle_to_mask
from samkit.modeling import Sam

from .conftest import CATEGORIES, IMAGE_SIZES


def _reference_mask(predictor: SamPredictor, box: list[float], multimask: bool = True) -> np.ndarray:
    masks, scores, _ = predictor.predict(box=np.array(box), multimask_output=multimask)
    return masks[int(np.argmax(scores))]


def test_coco_boxes_to_all_formats(tiny_model: Sam, dataset: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = annotate(dataset["root"], dataset["coco_path"], out, model=tiny_model, fmt="all", recursive=True, batch_size=1)
    assert (summary.done, summary.skipped, summary.failed, summary.bad_rows) == (3, 0, 0, [])
    assert summary.masks == len(dataset["coco"]["annotations"]) == 6

    coco = COCO(str(summary.outputs["coco"]))  # pycocotools loads it
    assert sorted(coco.getImgIds()) == sorted(IMAGE_SIZES)
    assert coco.loadCats(coco.getCatIds()) == CATEGORIES
    predictor = SamPredictor(tiny_model)
    by_image = {img["id"]: img for img in dataset["coco"]["images"]}
    inputs = {(a["image_id"], a["category_id"]): a for a in dataset["coco"]["annotations"]}  # one of each per image
    masks: dict[int, np.ndarray] = {}
    for image_id in IMAGE_SIZES:
        predictor.set_image(load_image(dataset["root"] / by_image[image_id]["file_name"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == 2
        for ann in anns:
            source = inputs[(image_id, ann["category_id"])]
            x, y, w, h = source["bbox"]
            assert ann["prompt_box"] == pytest.approx([x, y, x + w, y + h])  # the input box (inside the image)
            assert ann["score"] == pytest.approx(source["score"])
            mask = coco.annToMask(ann).astype(bool)
            expected = _reference_mask(predictor, ann["prompt_box"])
            assert np.array_equal(mask, expected)  # the batched decode gives predict(box=...)'s mask
            assert ann["area"] == int(expected.sum()) == int(mask_utils.area(coco.annToRLE(ann)))
            assert ann["bbox"] == [int(v) for v in mask_utils.toBbox(coco.annToRLE(ann))]
            predictor_scores = predictor.predict(box=np.array(ann["prompt_box"]))[1]
            assert ann["predicted_iou"] == pytest.approx(float(predictor_scores.max()), abs=1e-6)
            masks[ann["id"]] = mask

    # YOLO-seg: one line per instance; the polygon rasterizes back to the mask.
    classes = (out / "classes.txt").read_text().split()
    assert classes == ["square", "disc"]
    ious = []
    for image in coco.loadImgs(sorted(IMAGE_SIZES)):
        label = out / "labels" / (image["file_name"].rsplit(".", 1)[0] + ".txt")
        lines = label.read_text().splitlines()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(lines) == len(anns)
        for line, ann in zip(lines, anns, strict=True):
            values = line.split()
            assert classes[int(values[0])] == coco.loadCats([ann["category_id"]])[0]["name"]
            xy = np.array(values[1:], dtype=float).reshape(-1, 2) * [image["width"], image["height"]]
            raster = np.zeros((image["height"], image["width"]), np.uint8)
            cv2.fillPoly(raster, [np.rint(xy).astype(np.int32).reshape(-1, 1, 2)], 1)
            mask = masks[ann["id"]]
            ious.append((raster.astype(bool) & mask).sum() / (raster.astype(bool) | mask).sum())
    assert min(ious) >= 0.9, ious

    # Label Studio tasks: brush RLE of the same masks, labelled with the category names.
    tasks = json.loads(summary.outputs["labelstudio"].read_text())
    assert len(tasks) == 3
    for task, image in zip(tasks, coco.loadImgs(coco.getImgIds()), strict=True):
        assert task["data"]["image"] == "/data/local-files/?d=" + image["file_name"]
        results = task["predictions"][0]["result"]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        for result, ann in zip(results, anns, strict=True):
            assert result["type"] == "brushlabels" and result["original_width"] == image["width"]
            decoded = brush_rle_to_mask(result["value"]["rle"], image["height"], image["width"])
            assert np.array_equal(decoded, masks[ann["id"]])
            assert result["value"]["brushlabels"] == [coco.loadCats([ann["category_id"]])[0]["name"]]


def test_single_mask_polygons_and_min_score_from_results_file(tiny_model: Sam, dataset: dict[str, Any], tmp_path: Path) -> None:
    results = [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in dataset["coco"]["annotations"]]
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    summary = annotate(
        dataset["root"], results_path, tmp_path / "out", model=tiny_model, dataset=dataset["coco_path"], recursive=True,
        min_score=0.45, multimask="single", segmentation="polygons",
    )
    kept = [r for r in results if r["score"] >= 0.45]
    assert summary.below_score == len(results) - len(kept) == 2 and summary.masks == len(kept)
    coco = COCO(str(summary.outputs["coco"]))
    predictor = SamPredictor(tiny_model)
    files = {img["id"]: img["file_name"] for img in dataset["coco"]["images"]}
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert isinstance(ann["segmentation"], list) and ann["score"] >= 0.45
        predictor.set_image(load_image(dataset["root"] / files[ann["image_id"]]))
        expected = _reference_mask(predictor, ann["prompt_box"], multimask=False)
        assert ann["area"] == int(expected.sum())
        assert ann["segmentation"] == mask_to_polygons(expected)  # the outer contours of predict(box=...)'s mask
        assert coco.annToMask(ann).any()  # pycocotools rasterizes them


def test_yolo_folder_round_trip(tiny_model: Sam, dataset: dict[str, Any], tmp_path: Path) -> None:
    labels = tmp_path / "yolo"
    (labels / "sub").mkdir(parents=True)
    (labels / "classes.txt").write_text("square\ndisc\n")
    index = {3: 0, 8: 1}
    for image in dataset["coco"]["images"]:
        rows = []
        for a in dataset["coco"]["annotations"]:
            if a["image_id"] == image["id"]:
                x, y, w, h = a["bbox"]
                W, H = image["width"], image["height"]
                rows.append(f"{index[a['category_id']]} {(x + w / 2) / W} {(y + h / 2) / H} {w / W} {h / H}")
        (labels / (image["file_name"].rsplit(".", 1)[0] + ".txt")).write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = annotate(dataset["root"], labels, out, model=tiny_model, fmt="all", recursive=True)
    assert (summary.done, summary.bad_rows, summary.masks) == (3, [], 6)
    coco = COCO(str(summary.outputs["coco"]))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["square", "disc"]
    assert sorted(i["file_name"] for i in coco.loadImgs(coco.getImgIds())) == sorted(i["file_name"] for i in dataset["coco"]["images"])
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs([ann["image_id"]])[0]
        source = next(
            a for a in dataset["coco"]["annotations"]
            if next(i for i in dataset["coco"]["images"] if i["id"] == a["image_id"])["file_name"] == image["file_name"]
            and index[a["category_id"]] == ann["category_id"] and abs(a["bbox"][0] - ann["prompt_box"][0]) < 1e-6
        )
        x, y, w, h = source["bbox"]
        assert ann["prompt_box"] == pytest.approx([x, y, x + w, y + h])
        assert "score" not in ann  # YOLO rows without a score column
    # The YOLO-seg output of a YOLO input uses the same class indices.
    assert (out / "classes.txt").read_text() == "square\ndisc\n"
    assert all(line.split()[0] in ("0", "1") for f in (out / "labels").rglob("*.txt") for line in f.read_text().splitlines())


def test_bad_rows_are_reported_with_their_line_and_skipped(tiny_model: Sam, dataset: dict[str, Any], tmp_path: Path) -> None:
    coco = dataset["coco"]
    good = {"image_id": 11, "category_id": 3, "bbox": [10, 10, 30, 20], "score": 0.9}
    rows = [
        good,
        {"image_id": 99, "category_id": 3, "bbox": [1, 1, 5, 5]},  # unknown image
        {"image_id": 11, "category_id": 5, "bbox": [1, 1, 5, 5]},  # unknown category
        {"image_id": 11, "category_id": 3, "bbox": [500, 500, 10, 10]},  # outside the 360x270 image
        {"image_id": 11, "category_id": 3, "bbox": [1, 1, 0, 5]},  # empty
        {"image_id": 12, "category_id": 8, "bbox": [1, "x", 5, 5]},  # malformed
        {"image_id": 12, "category_id": 8, "bbox": [-5, -5, 20, 20]},  # overhangs: clipped, kept
    ]
    results_path = tmp_path / "results.json"
    results_path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")  # row i on line i + 2
    reported: list[BadRow] = []
    summary = annotate(dataset["root"], results_path, tmp_path / "out", model=tiny_model, dataset=dataset["coco_path"],
                       recursive=True, on_bad_row=reported.append)
    lines = sorted(r.where for r in reported)
    assert lines == [f"results.json line {n}" for n in (3, 4, 5, 6, 7)]
    reasons = {r.where: r.reason for r in reported}
    assert "unknown image id 99" in reasons["results.json line 3"]
    assert "unknown category id 5" in reasons["results.json line 4"]
    assert "outside the 360x270 image" in reasons["results.json line 5"]
    assert "empty box" in reasons["results.json line 6"]
    assert "bbox" in reasons["results.json line 7"]
    assert summary.masks == 2
    out = json.loads(summary.outputs["coco"].read_text())
    assert sorted(a["prompt_box"] for a in out["annotations"]) == [[0.0, 0.0, 15.0, 15.0], [10.0, 10.0, 40.0, 30.0]]
    assert len(coco["images"]) == 3  # the data set is unchanged; image 17 has no detections and no annotations
    assert {i["id"] for i in out["images"]} == {11, 12, 17}


def test_rerun_skips_complete_images_and_redoes_on_changed_settings(tiny_model: Sam, dataset: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = annotate(dataset["root"], dataset["coco_path"], out, model=tiny_model, recursive=True)
    before = (out / "annotations.json").read_text()
    again = annotate(dataset["root"], dataset["coco_path"], out, model=tiny_model, recursive=True)
    assert (first.done, again.done, again.skipped) == (3, 0, 3)
    assert json.loads((out / "annotations.json").read_text())["annotations"] == json.loads(before)["annotations"]
    changed = annotate(dataset["root"], dataset["coco_path"], out, model=tiny_model, recursive=True, multimask="single")
    assert (changed.done, changed.skipped) == (3, 0)


def test_bad_options_and_inputs_raise(tiny_model: Sam, dataset: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        annotate(dataset["root"], dataset["coco_path"], tmp_path / "o", model=tiny_model, fmt="voc")
    results_path = tmp_path / "results.json"
    results_path.write_text("[]")
    with pytest.raises(ValueError, match="--dataset"):
        annotate(dataset["root"], results_path, tmp_path / "o", model=tiny_model)
    with pytest.raises(FileNotFoundError, match="classes"):
        annotate(dataset["root"], tmp_path, tmp_path / "o", model=tiny_model)


def test_yolo_bad_rows_and_label_files_without_an_image(tiny_model: Sam, dataset: dict[str, Any], tmp_path: Path) -> None:
    labels = tmp_path / "yolo"
    labels.mkdir()
    (labels / "names.txt").write_text("square\ndisc\n")
    (labels / "img11.txt").write_text("0 0.5 0.5 0.2 0.2 0.9\n0 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\n1 0.5 0.5 0 0.2\n\n1 0.3 0.3 0.1 0.1 0.2\n")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    reported: list[BadRow] = []
    summary = annotate(dataset["root"], labels, tmp_path / "out", model=tiny_model, classes=labels / "names.txt",
                       recursive=True, min_score=0.5, on_bad_row=reported.append)
    reasons = {r.where: r.reason for r in reported}
    assert set(reasons) == {"img11.txt line 2", "img11.txt line 3", "img11.txt line 4", "orphan.txt"}
    assert "expected 'class cx cy w h [score]'" in reasons["img11.txt line 2"]
    assert "unknown class 7" in reasons["img11.txt line 3"]
    assert "empty box" in reasons["img11.txt line 4"]
    assert "unknown image" in reasons["orphan.txt"]
    assert (summary.masks, summary.below_score, summary.done) == (1, 1, 3)  # images without a label file: no masks


@pytest.mark.parametrize("multimask", ["best", "single"])
def test_sam2_model_masks_are_the_predictors(multimask: str, dataset: dict[str, Any], tmp_path: Path) -> None:
    """A SAM 2.1 model (tiny, random weights): each mask is ``predict(box=...)``'s for its box on
    every image (landscape, portrait, square: SAM 2 stretches each to its square)."""
    from server.support import make_tiny_sam2_model

    model = make_tiny_sam2_model(4)
    summary = annotate(dataset["root"], dataset["coco_path"], tmp_path / "out", model=model, recursive=True,
                       multimask=multimask, batch_size=1)
    assert (summary.done, summary.masks, summary.bad_rows) == (3, 6, [])
    coco = COCO(str(summary.outputs["coco"]))
    assert coco.dataset["info"]["settings"]["model"] == "tiny_sam2.1"
    predictor = SamPredictor(model)
    files = {img["id"]: img["file_name"] for img in dataset["coco"]["images"]}
    for image_id in IMAGE_SIZES:
        predictor.set_image(load_image(dataset["root"] / files[image_id]))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            masks, scores, _ = predictor.predict(box=np.array(ann["prompt_box"]), multimask_output=multimask == "best")
            assert np.array_equal(coco.annToMask(ann).astype(bool), masks[int(np.argmax(scores))]), ann["id"]
            assert ann["predicted_iou"] == pytest.approx(float(scores.max()), abs=1e-6)
