"""The web app's labelled objects as a data set, written by samkit's annotation writers.

The page sends the objects of one image (each mask as COCO RLE, with a category name); this
module checks them, measures each mask (area, box) and hands them to the writers that
``samkit annotate`` uses: :func:`samkit.annotation.outputs.write_coco` (COCO instance
segmentation) and :func:`samkit.annotation.outputs.write_yolo` (YOLO-seg: ``classes.txt`` and
one label file of normalized polygons, returned here as a zip). The writers write files, so
each export runs in a temporary folder that is read back and removed.

Category ids follow the order of the request's ``categories`` (COCO ids 1, 2, ...; YOLO class
indices 0, 1, ...), so a client that sends the same list for every image gets one consistent
data set.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..annotation.outputs import AnnotatedImage, write_coco, write_yolo
from ..annotation.records import mask_boxes_xywh
from ..everything.rle import mask_to_rle, rle_to_coco, rle_to_mask
from .schemas import ExportRequest

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_PIXEL_BUDGET",
    "ExportFormat",
    "safe_file_name",
    "category_table",
    "export_dataset",
]

ExportFormat = Literal["coco", "yolo"]
EXPORT_FORMATS: tuple[str, ...] = ("coco", "yolo")
# Objects x image pixels one export may decode (each mask is decoded once): 100 masks of a
# 40-megapixel image, or 2000 of a 2-megapixel one.
EXPORT_PIXEL_BUDGET = 4_000_000_000


def _plain_text(text: str) -> bool:
    """No control characters (a newline would split a line of classes.txt). Lone surrogates
    (JSON "\ud800"), which no file could hold, never get past pydantic."""
    return not any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def safe_file_name(name: str) -> str:
    """The last path component of a client's file name (no folders reach the writers).

    Raises:
        ValueError: empty, ``.``/``..``, or holding control characters.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", "..") or not _plain_text(base):
        raise ValueError(f"file_name: {name[:80]!r} is not a usable file name")
    return base


def category_table(request: ExportRequest) -> list[dict[str, Any]]:
    """COCO categories ``[{"id": 1, "name": ...}, ...]`` in the request's order.

    Without ``categories`` in the request, the objects' categories in order of first use.

    Raises:
        ValueError: a name twice in ``categories``, or an object whose category is not in it.
    """
    for i, name in enumerate(request.categories):
        if not _plain_text(name):
            raise ValueError(f"categories[{i}]: {name[:80]!r} holds control characters")
    for i, obj in enumerate(request.objects):
        if not _plain_text(obj.category):
            raise ValueError(f"objects[{i}].category: {obj.category[:80]!r} holds control characters")
    if request.categories:
        names = list(request.categories)
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"categories: {name!r} is listed twice")
            seen.add(name)
        for i, obj in enumerate(request.objects):
            if obj.category not in seen:
                raise ValueError(f"objects[{i}].category: {obj.category!r} is not one of categories")
    else:
        names = list(dict.fromkeys(obj.category for obj in request.objects))
    return [{"id": i + 1, "name": name} for i, name in enumerate(names)]


def _annotated_image(request: ExportRequest, file_name: str, categories: list[dict[str, Any]]) -> AnnotatedImage:
    """The request's objects as the writers' records (area and box measured on the mask)."""
    category_ids = {c["name"]: c["id"] for c in categories}
    size = [request.height, request.width]
    records = []
    for i, obj in enumerate(request.objects):
        rle = obj.segmentation.model_dump()
        if list(rle["size"]) != size:
            raise ValueError(
                f"objects[{i}].segmentation: size {list(rle['size'])} is not the image's [height, width] {size}"
            )
        try:
            mask = rle_to_mask(rle)  # (H, W) bool
        except ValueError as exc:
            raise ValueError(f"objects[{i}].segmentation: {exc}") from None
        area = int(np.count_nonzero(mask))
        if area == 0:
            raise ValueError(f"objects[{i}].segmentation: the mask is empty")
        if len(obj.point_labels) != len(obj.point_coords):
            raise ValueError(
                f"objects[{i}].point_labels: {len(obj.point_labels)} labels for {len(obj.point_coords)} points"
            )
        if any(label not in (0, 1) for label in obj.point_labels):
            raise ValueError(f"objects[{i}].point_labels: each label is 1 (object) or 0 (background)")
        masks = torch.from_numpy(np.ascontiguousarray(mask))[None]  # (1, H, W)
        records.append(
            {
                "category_id": category_ids[obj.category],
                "segmentation": rle_to_coco(mask_to_rle(masks)[0]),  # re-encoded: canonical counts
                "area": area,
                "bbox": [int(v) for v in mask_boxes_xywh(masks)[0].tolist()],
                "score": None,  # no detector score: the web app's objects come from prompts
                "predicted_iou": obj.score,
                "box": list(obj.box) if obj.box is not None else None,
            }
        )
    return AnnotatedImage(
        image_id=1, file_name=file_name, source=file_name, height=request.height, width=request.width, records=records
    )


def export_dataset(request: ExportRequest, export_format: ExportFormat) -> tuple[bytes, str, str]:
    """Write the request's objects as a COCO file or a zipped YOLO-seg data set.

    Args:
        request: The objects of one image.
        export_format: "coco" (one JSON file; each annotation also keeps the object's prompt
            points as ``point_coords`` / ``point_labels``) or "yolo" (a zip of ``classes.txt``
            and ``labels/<image stem>.txt``).

    Returns:
        (content, media type, suggested file name).

    Raises:
        ValueError: objects that do not fit the image or the categories (message names the field).
        ImportError: OpenCV missing (YOLO polygons, COCO polygons).
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"format: expected one of {EXPORT_FORMATS}, got {export_format!r}")
    file_name = safe_file_name(request.file_name)
    categories = category_table(request)
    image = _annotated_image(request, file_name, categories)
    stem = file_name.rsplit(".", 1)[0] if "." in file_name.strip(".") else file_name
    with tempfile.TemporaryDirectory(prefix="samkit-export-") as folder:
        root = Path(folder)
        if export_format == "coco":
            info = {"description": "samkit web app"}
            path = write_coco(root / "coco.json", [image], categories, polygons=request.polygons, info=info)
            coco = json.loads(path.read_text(encoding="utf-8"))
            for annotation, obj in zip(coco["annotations"], request.objects, strict=True):
                annotation["point_coords"] = [list(p) for p in obj.point_coords]
                annotation["point_labels"] = list(obj.point_labels)
            return json.dumps(coco).encode("utf-8"), "application/json", f"{stem}_coco.json"
        write_yolo(root, [image], categories)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue(), "application/zip", f"{stem}_yolo.zip"
