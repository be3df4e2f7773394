"""Detector boxes in: COCO results, COCO data sets with box-only annotations, YOLO txt folders.

Every reader gives a :class:`DetectionSet`: the images (COCO ids and file names), the categories
(as given) and the detections per image, boxes as XYXY pixels or, for YOLO, normalized centre
boxes that become pixels once the image size is known. A row that cannot be used (malformed,
unknown image, unknown category, empty box) is kept in ``bad_rows`` with where it is (file and
line) and why; it is never silently dropped. Boxes outside the image are found later, when the
image is read (:func:`clip_box`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inputs import InputFile
from .json_lines import array_items_with_lines

__all__ = [
    "BadRow",
    "Detection",
    "DetectionSet",
    "ImageRecord",
    "clip_box",
    "read_coco_boxes",
    "read_coco_results",
    "read_detections",
    "read_yolo",
]


@dataclass(frozen=True)
class Detection:
    """One detector box.

    Attributes:
        category_id: the input's category id (YOLO: the class index).
        box: (x0, y0, x1, y1) in pixels; with ``normalized`` (YOLO) (cx, cy, w, h) in [0, 1].
        score: the detector's confidence, if the input has one.
        where: the row's place in its file, e.g. ``results.json line 12``.
        normalized: ``box`` is YOLO's normalized centre box.
    """

    category_id: int
    box: tuple[float, float, float, float]
    score: float | None
    where: str
    normalized: bool = False

    def pixel_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The box as (x0, y0, x1, y1) pixels of an image of ``height`` x ``width``."""
        if not self.normalized:
            return self.box
        cx, cy, w, h = self.box
        return ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)


@dataclass(frozen=True)
class ImageRecord:
    """An image named by the detections.

    Attributes:
        id: COCO image id (YOLO: 1, 2, ... in input order).
        file_name: the data set's file name (YOLO: the image's path below its input folder).
        width, height: as the data set gives them (None when it does not).
    """

    id: int
    file_name: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class BadRow:
    """A detection row that was skipped: where it is and why."""

    where: str
    reason: str

    def line(self) -> str:
        """``where: reason``."""
        return f"{self.where}: {self.reason}"


@dataclass
class DetectionSet:
    """What a detection input holds.

    Attributes:
        images: image id -> record, in the input's order.
        categories: COCO category dicts (``id``, ``name``, ...), in the input's order.
        detections: image id -> its detections, in the input's order.
        bad_rows: rows skipped while reading.
        below_score: detections dropped by the minimum score.
        digest: sha256 of the input files (a change invalidates earlier outputs).
        files: image id -> the input image file (YOLO inputs are matched while reading).
    """

    images: dict[int, ImageRecord] = field(default_factory=dict)
    categories: list[dict[str, Any]] = field(default_factory=list)
    detections: dict[int, list[Detection]] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)
    below_score: int = 0
    digest: str = ""
    files: dict[int, InputFile] = field(default_factory=dict)

    @property
    def num_detections(self) -> int:
        """Detections kept, over all images."""
        return sum(len(d) for d in self.detections.values())


def clip_box(box: Sequence[float], height: int, width: int) -> tuple[float, float, float, float] | None:
    """The box clipped to the image, or None when it lies outside it (or is empty there).

    Detectors often give boxes that overhang the image by a little; those are clipped. A box
    that does not overlap the image with a positive area is a bad row.

    Args:
        box: (x0, y0, x1, y1) pixels.
        height, width: image size.
    """
    x0, y0, x1, y1 = (min(max(float(v), 0.0), float(limit)) for v, limit in zip(box, (width, height, width, height), strict=True))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


# --------------------------------------------------------------------------- helpers


def _digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def _read_json_array(path: Path, key: str | None) -> tuple[Any, list[tuple[Any, int]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    try:
        return array_items_with_lines(text, key)
    except ValueError as exc:
        raise ValueError(f"{path}: not a usable JSON file ({exc})") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _coco_images_and_categories(document: Any, path: Path) -> tuple[dict[int, ImageRecord], list[dict[str, Any]]]:
    """The ``images`` and ``categories`` of a COCO data set."""
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise ValueError(f"{path}: not a COCO data set (no 'images' list)")
    images: dict[int, ImageRecord] = {}
    for i, image in enumerate(document["images"]):
        image_id = _integer(image.get("id")) if isinstance(image, dict) else None
        name = image.get("file_name") if isinstance(image, dict) else None
        if image_id is None or not isinstance(name, str) or not name:
            raise ValueError(f"{path}: images[{i}] needs an integer 'id' and a 'file_name'")
        width, height = _integer(image.get("width")), _integer(image.get("height"))
        images[image_id] = ImageRecord(image_id, name, width, height)
    categories = document.get("categories")
    if not isinstance(categories, list) or not all(isinstance(c, dict) and _integer(c.get("id")) is not None for c in categories):
        raise ValueError(f"{path}: not a COCO data set ('categories' must be a list of objects with an integer 'id')")
    return images, [dict(c) for c in categories]


def _coco_detection(row: Any, where: str, images: dict[int, ImageRecord], category_ids: set[int]) -> tuple[int, Detection] | BadRow:
    """A COCO annotation or result row -> (image id, detection), or why it cannot be used."""
    if not isinstance(row, dict):
        return BadRow(where, "not a JSON object")
    image_id = _integer(row.get("image_id"))
    if image_id is None:
        return BadRow(where, "no integer 'image_id'")
    if image_id not in images:
        return BadRow(where, f"unknown image id {image_id}")
    category_id = _integer(row.get("category_id"))
    if category_id is None:
        return BadRow(where, "no integer 'category_id'")
    if category_id not in category_ids:
        return BadRow(where, f"unknown category id {category_id}")
    bbox = row.get("bbox")
    values = [_number(v) for v in bbox] if isinstance(bbox, list) else []
    if len(values) != 4 or any(v is None for v in values):
        return BadRow(where, "'bbox' must be 4 finite numbers [x, y, w, h]")
    x, y, w, h = (float(v) for v in values)  # type: ignore[arg-type]
    if w <= 0 or h <= 0:
        return BadRow(where, f"empty box (w={w:g}, h={h:g})")
    score = row.get("score")
    if score is not None and _number(score) is None:
        return BadRow(where, "'score' must be a finite number")
    return image_id, Detection(category_id, (x, y, x + w, y + h), None if score is None else float(score), where)


def _collect(
    rows: list[tuple[Any, int]], path: Path, result: DetectionSet, min_score: float | None
) -> None:
    category_ids = {int(c["id"]) for c in result.categories}
    for row, line in rows:
        found = _coco_detection(row, f"{path.name} line {line}", result.images, category_ids)
        if isinstance(found, BadRow):
            result.bad_rows.append(found)
            continue
        image_id, detection = found
        if min_score is not None and (detection.score is None or detection.score < min_score):
            result.below_score += 1
            continue
        result.detections.setdefault(image_id, []).append(detection)


# --------------------------------------------------------------------------- readers


def read_coco_results(
    results: str | os.PathLike[str], dataset: str | os.PathLike[str], *, min_score: float | None = None
) -> DetectionSet:
    """A COCO results file (``[{image_id, category_id, bbox, score}, ...]``) and its data set.

    Args:
        results: the results file (a JSON array; ``bbox`` is [x, y, w, h] in pixels).
        dataset: the COCO data set file that names the images and the categories.
        min_score: drop detections scoring below it (and those without a score).

    Raises:
        FileNotFoundError, ValueError: a file is missing or not of the expected shape.
    """
    results_path, dataset_path = Path(results), Path(dataset)
    document, _ = _read_json_array(dataset_path, "annotations")  # its own annotations are not used
    images, categories = _coco_images_and_categories(document, dataset_path)
    _, rows = _read_json_array(results_path, None)
    result = DetectionSet(images=images, categories=categories, digest=_digest(results_path, dataset_path))
    _collect(rows, results_path, result, min_score)
    return result


def read_coco_boxes(dataset: str | os.PathLike[str], *, min_score: float | None = None) -> DetectionSet:
    """A COCO data set whose annotations carry boxes (any segmentation in them is ignored).

    Args:
        dataset: the COCO data set file.
        min_score: drop annotations scoring below it (and those without a ``score``).
    """
    path = Path(dataset)
    document, rows = _read_json_array(path, "annotations")
    images, categories = _coco_images_and_categories(document, path)
    result = DetectionSet(images=images, categories=categories, digest=_digest(path))
    _collect(rows, path, result, min_score)
    return result


def _read_classes(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise FileNotFoundError(f"classes file not found: {path}") from None
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{path}: the classes file names no class")
    return names


def _yolo_row(text: str, where: str, num_classes: int) -> Detection | BadRow:
    parts = text.split()
    if len(parts) not in (5, 6):
        return BadRow(where, f"expected 'class cx cy w h [score]', got {len(parts)} field(s)")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return BadRow(where, "fields must be numbers")
    if not all(math.isfinite(v) for v in values) or not values[0].is_integer():
        return BadRow(where, "fields must be finite numbers and the class an integer")
    class_id = int(values[0])
    if not 0 <= class_id < num_classes:
        return BadRow(where, f"unknown class {class_id} (the classes file names {num_classes})")
    cx, cy, w, h = values[1:5]
    if w <= 0 or h <= 0:
        return BadRow(where, f"empty box (w={w:g}, h={h:g})")
    score = values[5] if len(values) == 6 else None
    return Detection(class_id, (cx, cy, w, h), score, where, normalized=True)


def _stem(relative: str) -> str:
    """``a/b.png`` -> ``a/b``."""
    return relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative


def read_yolo(
    labels: str | os.PathLike[str],
    classes: str | os.PathLike[str],
    image_files: Sequence[InputFile],
    *,
    min_score: float | None = None,
) -> DetectionSet:
    """A folder of YOLO txt files (``class cx cy w h [score]`` per line, normalized) and a classes file.

    A label file belongs to the image with the same path below its input folder, less the
    suffix (``labels/train/a.txt`` to ``images/train/a.jpg``), or else to the only image with its
    stem. Images without a label file have no detections; a label file without an image is a
    bad row. Category ids are the class indices (0, 1, ...), named by the classes file's lines.

    Args:
        labels: the folder of txt files (searched recursively; ``classes.txt`` is not a label file).
        classes: the classes file, one name per line.
        image_files: the input images (see :func:`samkit.inputs.expand_inputs`).
        min_score: drop detections scoring below it (and those without a score column).
    """
    folder, classes_path = Path(labels), Path(classes)
    if not folder.is_dir():
        raise FileNotFoundError(f"YOLO labels: not a folder: {folder}")
    names = _read_classes(classes_path)
    label_files = sorted(
        p for p in folder.rglob("*.txt") if p.is_file() and p.resolve() != classes_path.resolve() and not p.name.startswith(".")
    )
    result = DetectionSet(
        categories=[{"id": i, "name": n, "supercategory": n} for i, n in enumerate(names)],
        digest=_digest(classes_path, *label_files),
    )
    by_stem: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    for image_id, entry in enumerate(image_files, start=1):
        result.images[image_id] = ImageRecord(image_id, entry.relative)
        result.files[image_id] = entry
        by_stem.setdefault(_stem(entry.relative), []).append(image_id)
        by_name.setdefault(entry.path.stem, []).append(image_id)
    for label_file in label_files:
        relative = label_file.relative_to(folder).as_posix()
        candidates = by_stem.get(_stem(relative)) or by_name.get(label_file.stem, [])
        if len(candidates) != 1:
            why = "no input image" if not candidates else f"{len(candidates)} input images"
            result.bad_rows.append(BadRow(relative, f"unknown image: {why} named {label_file.stem!r}"))
            continue
        image_id = candidates[0]
        for number, text in enumerate(label_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not text.strip():
                continue
            found = _yolo_row(text, f"{relative} line {number}", len(names))
            if isinstance(found, BadRow):
                result.bad_rows.append(found)
            elif min_score is not None and (found.score is None or found.score < min_score):
                result.below_score += 1
            else:
                result.detections.setdefault(image_id, []).append(found)
    return result


def read_detections(
    boxes: str | os.PathLike[str],
    image_files: Sequence[InputFile],
    *,
    dataset: str | os.PathLike[str] | None = None,
    classes: str | os.PathLike[str] | None = None,
    min_score: float | None = None,
) -> DetectionSet:
    """Read detections of any supported kind, by what ``boxes`` is.

    * a folder: YOLO txt files; ``classes`` defaults to ``classes.txt`` in it;
    * a JSON array: COCO results; ``dataset`` (the COCO data set) is required;
    * a JSON object: a COCO data set with box annotations.

    Raises:
        FileNotFoundError, ValueError: the input is missing, of an unknown kind, or lacks its
            companion file.
    """
    path = Path(boxes)
    if path.is_dir():
        classes_path = Path(classes) if classes is not None else path / "classes.txt"
        return read_yolo(path, classes_path, image_files, min_score=min_score)
    if not path.is_file():
        raise FileNotFoundError(f"detections: no such file or folder: {path}")
    head = path.read_text(encoding="utf-8").lstrip()[:1]
    if head == "[":
        if dataset is None:
            raise ValueError(f"{path} is a COCO results file: give the COCO data set that names its images (--dataset)")
        return read_coco_results(path, dataset, min_score=min_score)
    if head == "{":
        return read_coco_boxes(path, min_score=min_score)
    raise ValueError(f"{path}: neither a COCO JSON file nor a folder of YOLO txt files")
