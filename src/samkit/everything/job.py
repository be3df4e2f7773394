"""``samkit everything`` over many images: its per-image work and its writer, on :mod:`samkit.jobs`.

* :func:`segment_task` is the pure per-image function: image -> :class:`SegmentedImage`
  (JSON-ready records with COCO RLE masks); :class:`SegmentWork` builds it in a Ray actor;
* :class:`OutputWriter` writes one image's outputs, and its done-marker last, and assembles the
  COCO file from the per-image results on disk (so a resumed run keeps earlier images);
* :func:`run_everything` ties them together with :func:`samkit.jobs.run_tasks`, on the local
  engine (default) or any :data:`samkit.jobs.Engine` (e.g. ``samkit.jobs.ray_engine(SegmentWork(...))``).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text, load_image, save_image
from ..pictures import draw_overlay, palette, save_mask_png
from ..jobs import Engine, ImageResult, ImageTask, JobSummary, Markers, build_model, collect_inputs, local_engine, run_tasks
from ..jobs.markers import read_json
from ..outputs import remove_stale_temp_files
from .rle import rle_to_mask

__all__ = [
    "COCO_FILE",
    "FORMATS",
    "ImageTask",
    "OutputWriter",
    "SegmentWork",
    "SegmentedImage",
    "collect_inputs",
    "run_everything",
    "segment_task",
]

logger = logging.getLogger(__name__)

FORMATS = ("png", "coco", "both")
COCO_FILE = "annotations.json"
RESULT_FILE = "result.json"
DONE_FILE = ".done"
OVERLAY_CHUNK = 32  # masks drawn at once: bounded memory for many masks
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
    "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


@dataclass
class SegmentedImage:
    """What :func:`segment_task` found in one image.

    Attributes:
        height, width: image size.
        records: generator records with ``segmentation`` as COCO RLE (string counts).
    """

    height: int
    width: int
    records: list[dict[str, Any]]


# --------------------------------------------------------------------------- work


def segment_task(generator: Any, task: ImageTask, *, progress: bool = False) -> SegmentedImage:
    """Segment one image (a pure function of the image and the generator settings).

    Args:
        generator: a :class:`samkit.SamAutomaticMaskGenerator` with ``output_mode="coco_rle"``.
        task: the image.
        progress: show a progress bar over prompt batches.

    Raises:
        samkit.io.ImageReadError: the file is not a readable image.
    """
    if generator.output_mode != "coco_rle":
        raise ValueError("generator: segment_task needs output_mode='coco_rle'")
    image = load_image(task.path)
    records = generator.generate(image, progress=progress)
    return SegmentedImage(height=int(image.shape[0]), width=int(image.shape[1]), records=records)


@dataclass(frozen=True)
class SegmentWork:
    """:func:`segment_task` as an :class:`samkit.jobs.ImageWork` (built in each Ray actor).

    Attributes:
        model_factory: builds the model; must pickle.
        generator_kwargs: :class:`samkit.SamAutomaticMaskGenerator` arguments (``output_mode``
            is always ``"coco_rle"``).
    """

    model_factory: Callable[[], Any]
    generator_kwargs: dict[str, Any] | None = None

    def build(self) -> Callable[[ImageTask], SegmentedImage]:
        """The generator around a new model replica, bound into :func:`segment_task`."""
        from .generator import SamAutomaticMaskGenerator

        kwargs = dict(self.generator_kwargs or {})
        kwargs["output_mode"] = "coco_rle"
        kwargs["progress"] = False
        generator = SamAutomaticMaskGenerator(build_model(self.model_factory), **kwargs)
        return functools.partial(segment_task, generator)


# --------------------------------------------------------------------------- outputs


def _metadata_csv(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    buffer.write(METADATA_HEADER + "\n")
    writer = csv.writer(buffer, lineterminator="\n")
    for i, rec in enumerate(records):
        x, y = rec["point_coords"][0]
        writer.writerow([i, rec["area"], *rec["bbox"], x, y, rec["predicted_iou"], rec["stability_score"], *rec["crop_box"]])
    return buffer.getvalue()


class OutputWriter:
    """Writes per-image outputs under ``out_dir/<name>/`` and the COCO file.

    Per image: ``result.json`` (the records, always; the COCO file is built from these),
    ``0.png, 1.png, ...`` and ``metadata.csv`` for the png format, ``overlay.png`` if asked,
    and ``.done`` last. Every file is written atomically. An image counts as complete when its
    ``.done`` marker exists and records the same settings (``signature``).

    Args:
        out_dir: output folder (created).
        fmt: ``"png"``, ``"coco"`` or ``"both"``.
        overlay: also write ``overlay.png``.
        signature: JSON-able settings that produced the outputs (model, generator options).
    """

    def __init__(self, out_dir: str | os.PathLike[str], fmt: str, *, overlay: bool, signature: dict[str, Any]) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"fmt: expected one of {', '.join(FORMATS)}; got {fmt!r}")
        self.out_dir = Path(out_dir)
        self.fmt = fmt
        self.overlay = overlay
        self.markers = Markers(signature)
        self.signature = self.markers.settings
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def image_dir(self, task: ImageTask) -> Path:
        """Folder of one image's outputs."""
        return self.out_dir / task.name

    def _marker(self, task: ImageTask) -> dict[str, Any]:
        return self.markers.marker(task.path, format=self.fmt, overlay=self.overlay)

    def is_complete(self, task: ImageTask) -> bool:
        """Whether the image's outputs are complete and were made with these settings."""
        recorded = read_json(self.image_dir(task) / DONE_FILE)
        return self.markers.matches(recorded, task.path, format=self.fmt, overlay=self.overlay)

    def write(self, result: ImageResult) -> int:
        """Write one image's outputs (``result.output``: a :class:`SegmentedImage`); the
        done-marker last. Returns the number of masks."""
        folder = self.image_dir(result.task)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / DONE_FILE
        marker.unlink(missing_ok=True)
        segmented: SegmentedImage = result.output
        records = segmented.records
        payload = {
            "file_name": result.task.file_name or result.task.path.name,
            "source": str(result.task.path),
            "height": segmented.height,
            "width": segmented.width,
            "annotations": records,
        }
        atomic_write_text(folder / RESULT_FILE, json.dumps(payload))
        if self.fmt in ("png", "both"):
            for stale in folder.glob("*.png"):  # masks of an interrupted earlier attempt
                if stale.stem.isdigit():
                    stale.unlink()
            for i, rec in enumerate(records):
                save_mask_png(folder / f"{i}.png", rle_to_mask(rec["segmentation"]))
            atomic_write_text(folder / "metadata.csv", _metadata_csv(records))
        if self.overlay:
            save_image(folder / "overlay.png", self._overlay(result))
        atomic_write_text(marker, json.dumps(self._marker(result.task), sort_keys=True))
        return len(records)

    @staticmethod
    def _overlay(result: ImageResult) -> np.ndarray:
        """All masks in distinct colours over the image, large masks first (small ones stay visible)."""
        picture = load_image(result.task.path)
        records = result.output.records
        order = np.argsort([-rec["area"] for rec in records], kind="stable")
        colors = palette(len(records))
        for start in range(0, len(order), OVERLAY_CHUNK):  # bounded memory for many masks
            chunk = order[start : start + OVERLAY_CHUNK]
            masks = np.stack([rle_to_mask(records[i]["segmentation"]) for i in chunk])  # (k, H, W)
            picture = draw_overlay(picture, masks, colors=colors[chunk])
        return picture

    def write_coco(self, tasks: Sequence[ImageTask]) -> Path:
        """Assemble ``annotations.json`` from the complete images among ``tasks``."""
        images, annotations = [], []
        for task in tasks:
            if not self.is_complete(task):
                continue
            data = json.loads((self.image_dir(task) / RESULT_FILE).read_text(encoding="utf-8"))
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": data["file_name"], "height": data["height"], "width": data["width"]})
            for rec in data["annotations"]:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "segmentation": rec["segmentation"],
                        "area": rec["area"],
                        "bbox": rec["bbox"],
                        "iscrowd": 0,
                        "score": rec["predicted_iou"],
                        "predicted_iou": rec["predicted_iou"],
                        "stability_score": rec["stability_score"],
                        "point_coords": rec["point_coords"],
                        "crop_box": rec["crop_box"],
                    }
                )
        coco = {
            "info": {"description": "samkit everything", "settings": self.signature},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
        }
        path = self.out_dir / COCO_FILE
        atomic_write_text(path, json.dumps(coco))
        return path


# --------------------------------------------------------------------------- job


def run_everything(
    generator: Any,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    fmt: str = "png",
    overlay: bool = False,
    signature: dict[str, Any] | None = None,
    progress: bool = False,
    on_failure: Callable[[ImageTask, str], None] | None = None,
    engine: Engine | None = None,
    recursive: bool = False,
) -> JobSummary:
    """Segment every input image and write the outputs; resumable.

    Images whose outputs are already complete (same settings) are skipped; a file that cannot be
    read as an image is reported (to ``on_failure`` when given, else as a log warning) and
    skipped; nothing under ``out_dir`` is read as an input. Whatever the engine,
    this process writes every output file (so an image's outputs are written once even when an
    engine retries it) and the files do not depend on the engine, given the same model, device
    and torch thread count.

    Args:
        generator: a :class:`samkit.SamAutomaticMaskGenerator` with ``output_mode="coco_rle"``;
            None when ``engine`` brings its own.
        inputs: image files, folders and glob patterns (see :mod:`samkit.inputs`).
        out_dir: output folder.
        fmt: ``"png"`` (mask PNGs + metadata.csv per image), ``"coco"`` (one COCO JSON) or ``"both"``.
        overlay: also write an overlay picture per image.
        signature: settings recorded in the done-markers (a change invalidates earlier outputs).
        progress: show progress: bars on a terminal (images, and prompt batches within an
            image), else a line about every 10 s (:mod:`samkit.progress`).
        on_failure: called with each failed task and the reason (the log then has it at INFO).
        engine: where :func:`segment_task` runs (default: :func:`samkit.jobs.local_engine` on
            ``generator``); e.g. ``samkit.jobs.ray_engine(SegmentWork(factory, kwargs), workers=4)``.
            Not called when every image is complete.
        recursive: also take the files of subfolders of the input folders.

    Returns:
        the counts, and the COCO file (``outputs["coco"]``, ``coco_path``) for the coco formats.

    Raises:
        ValueError: neither ``generator`` nor ``engine`` given, or a bad ``fmt``.
    """
    if engine is None:
        if generator is None:
            raise ValueError("generator: needed unless an engine is given")
        # Per-image prompt-batch bars only on a terminal; elsewhere the image count's lines suffice.
        bars = progress and sys.stderr.isatty()
        engine = local_engine(lambda task: segment_task(generator, task, progress=bars))
    summary = JobSummary("everything", engine=getattr(engine, "engine_name", "custom"))
    start = time.perf_counter()
    tasks = collect_inputs(inputs, recursive=recursive, exclude=[out_dir])
    remove_stale_temp_files(out_dir)  # left by a run killed mid-write
    writer = OutputWriter(out_dir, fmt, overlay=overlay, signature=signature or {})
    run_tasks(tasks, engine, writer, summary, progress=progress, on_failure=on_failure)
    if fmt in ("coco", "both"):
        summary.outputs["coco"] = writer.write_coco(tasks)
    summary.seconds = time.perf_counter() - start
    return summary
