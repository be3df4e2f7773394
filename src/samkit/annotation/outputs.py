"""Writing annotated images as a data set: COCO instance segmentation, YOLO-seg, Label Studio tasks.

Each writer takes the :class:`AnnotatedImage` s of a run (complete images, in input order) and
writes its files atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..everything.polygons import mask_to_polygons
from ..everything.rle import rle_to_mask
from ..io import atomic_write_text
from ..labelstudio.brush import mask_to_brush_rle
from .detections import BadRow
from .polygon import mask_to_single_polygon

__all__ = [
    "COCO_FILE",
    "FORMATS",
    "LABELSTUDIO_FILE",
    "YOLO_LABELS",
    "AnnotatedImage",
    "write_coco",
    "write_labelstudio",
    "write_yolo",
]

FORMATS = ("coco", "yolo", "labelstudio", "all")
COCO_FILE = "annotations.json"
YOLO_LABELS = "labels"
YOLO_CLASSES = "classes.txt"
LABELSTUDIO_FILE = "labelstudio_tasks.json"


@dataclass
class AnnotatedImage:
    """The masks found for one image's boxes.

    Attributes:
        image_id: the input's image id.
        file_name: the image's name in the outputs (COCO ``file_name``; YOLO's label path).
        source: the image file read.
        height, width: image size.
        records: one dict per kept detection (see :func:`samkit.annotation.records.instance_records`).
        rejected: detections of this image that were skipped (box outside the image).
        seconds: time spent on the image.
    """

    image_id: int
    file_name: str
    source: str
    height: int
    width: int
    records: list[dict[str, Any]]
    rejected: list[BadRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (read back with :meth:`from_json`)."""
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "source": self.source,
            "height": self.height,
            "width": self.width,
            "records": self.records,
            "rejected": [[r.where, r.reason] for r in self.rejected],
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> AnnotatedImage:
        """Inverse of :meth:`to_json`."""
        return AnnotatedImage(
            image_id=int(data["image_id"]),
            file_name=str(data["file_name"]),
            source=str(data["source"]),
            height=int(data["height"]),
            width=int(data["width"]),
            records=list(data["records"]),
            rejected=[BadRow(w, r) for w, r in data["rejected"]],
        )


def write_coco(
    path: str | os.PathLike[str],
    images: Sequence[AnnotatedImage],
    categories: Sequence[dict[str, Any]],
    *,
    polygons: bool = False,
    info: dict[str, Any] | None = None,
) -> Path:
    """COCO instance segmentation: the input's image ids and categories kept.

    Each annotation carries ``segmentation`` (COCO RLE, or polygons with ``polygons``), ``area``
    (pixels of the mask), ``bbox`` (from the mask), ``score`` (the detection's score, when the
    input has one), ``predicted_iou`` (SAM's) and ``prompt_box`` (the box decoded, XYXY).
    """
    out_images, annotations = [], []
    for image in images:
        out_images.append({"id": image.image_id, "file_name": image.file_name, "height": image.height, "width": image.width})
        for rec in image.records:
            segmentation: Any = rec["segmentation"]
            if polygons:
                segmentation = mask_to_polygons(rle_to_mask(segmentation))
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image.image_id,
                "category_id": rec["category_id"],
                "segmentation": segmentation,
                "area": rec["area"],
                "bbox": rec["bbox"],
                "iscrowd": 0,
                "predicted_iou": rec["predicted_iou"],
                "prompt_box": rec["box"],
            }
            if rec["score"] is not None:
                annotation["score"] = rec["score"]
            annotations.append(annotation)
    coco = {
        "info": {"description": "samkit annotate", **(info or {})},
        "images": out_images,
        "annotations": annotations,
        "categories": list(categories),
    }
    target = Path(path)
    atomic_write_text(target, json.dumps(coco))
    return target


def _label_path(file_name: str) -> str:
    """``train/a.jpg`` -> ``train/a.txt``."""
    head, _, name = file_name.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{stem}.txt" if head else f"{stem}.txt"


def write_yolo(folder: str | os.PathLike[str], images: Sequence[AnnotatedImage], categories: Sequence[dict[str, Any]]) -> Path:
    """YOLO-seg: ``labels/<image path less suffix>.txt`` per image and ``classes.txt``.

    Each line is ``class x1 y1 x2 y2 ...``: the class index (the category's position in
    ``categories``, which for YOLO inputs is the input's class index) and one polygon per
    instance (:func:`samkit.annotation.polygon.mask_to_single_polygon`), normalized to [0, 1].
    An empty mask gets no line.

    Returns:
        the labels folder.
    """
    root = Path(folder)
    labels = root / YOLO_LABELS
    index = {int(c["id"]): i for i, c in enumerate(categories)}
    for image in images:
        lines = []
        for rec in image.records:
            polygon = mask_to_single_polygon(rle_to_mask(rec["segmentation"]))  # (K, 2) x, y
            if len(polygon) == 0:
                continue
            coords = " ".join(f"{x / image.width:.6f} {y / image.height:.6f}" for x, y in polygon.tolist())
            lines.append(f"{index[int(rec['category_id'])]} {coords}")
        target = labels / _label_path(image.file_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, "".join(line + "\n" for line in lines))
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / YOLO_CLASSES, "".join(f"{c.get('name', c['id'])}\n" for c in categories))
    return labels


def write_labelstudio(
    path: str | os.PathLike[str],
    images: Sequence[AnnotatedImage],
    categories: Sequence[dict[str, Any]],
    *,
    image_url_prefix: str = "/data/local-files/?d=",
    from_name: str = "label",
    to_name: str = "image",
    model_version: str = "samkit",
) -> Path:
    """Label Studio tasks with pre-annotations (import them into a project).

    Each task is ``{"data": {to_name: prefix + file_name}, "predictions": [...]}``; each mask is a
    ``brushlabels`` result in Label Studio's brush RLE, labelled with the category's name, with
    SAM's predicted IoU as its score. The project's labeling config needs
    ``<Image name="image" value="$image"/>`` and ``<BrushLabels name="label" toName="image">``
    with a ``<Label value=...>`` per category name (names: ``from_name``/``to_name``).
    """
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    tasks = []
    for image in images:
        results = []
        for i, rec in enumerate(image.records):
            results.append(
                {
                    "id": f"samkit-{image.image_id}-{i}",
                    "type": "brushlabels",
                    "from_name": from_name,
                    "to_name": to_name,
                    "original_width": image.width,
                    "original_height": image.height,
                    "image_rotation": 0,
                    "value": {
                        "format": "rle",
                        "rle": mask_to_brush_rle(rle_to_mask(rec["segmentation"])),
                        "brushlabels": [names[int(rec["category_id"])]],
                    },
                    "score": rec["predicted_iou"],
                }
            )
        scores = [r["score"] for r in results]
        prediction = {"model_version": model_version, "score": sum(scores) / len(scores) if scores else 0.0, "result": results}
        tasks.append({"data": {to_name: image_url_prefix + image.file_name}, "predictions": [prediction]})
    target = Path(path)
    atomic_write_text(target, json.dumps(tasks))
    return target
