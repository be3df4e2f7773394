"""Segment-everything over many images with resumable, atomic outputs.

The work is split in three parts so that an engine other than the local loop (e.g. a cluster)
can run the middle one:

* :func:`collect_inputs` expands files, folders and globs into :class:`ImageTask` s;
* :func:`segment_task` is the pure per-image function: image path -> :class:`ImageResult`
  (JSON-ready records with COCO RLE masks);
* :class:`OutputWriter` writes one image's outputs, and a done-marker last, and assembles the
  COCO file from the per-image results on disk (so a resumed run keeps earlier images).

:func:`run_everything` ties them together. It hands the pending tasks to an :data:`Engine`, which
runs :func:`segment_task` somewhere and reports each image's outcome back to this process, the
only writer: :func:`local_engine` (the default) segments in this process, in order;
``samkit.scale.everything_engine.ray_everything_engine`` on a pool of Ray actors.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samkit.inputs import expand_inputs
from samkit.outputs import remove_stale_temp_files
from samkit.progress import make_progress
from samkit.io import (
    ImageReadError,
    atomic_write_text,
    load_image,
    save_image,
)
from samkit.pictures import draw_overlay, palette, save_mask_png
from samkit.everything.rle import rle_to_mask

__all__ = [
    "FORMATS",
    "Engine",
    "ImageResult",
    "ImageTask",
    "JobSummary",
    "Outcome",
    "OutputWriter",
    "TaskFailure",
    "collect_inputs",
    "local_engine",
    "run_everything",
    "segment_task",
]

logger = logging.getLogger(__name__)

FORMATS = ("png", "coco", "both")
COCO_FILE = "annotations.json"
_RESULT_FILE = "result.json"
_DONE_FILE = ".done"
_OVERLAY_CHUNK = 32
_METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
    "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


@dataclass(frozen=True)
class ImageTask:
    """One input image, the name of its output folder, and its COCO ``file_name``.

    ``file_name`` is the image's path below the input folder it was found in (see
    :class:`samkit.inputs.InputFile`); empty means the file's name.
    """

    path: Path
    name: str
    file_name: str = ""


@dataclass
class ImageResult:
    """What :func:`segment_task` found in one image.

    Attributes:
        task: the input.
        height, width: image size.
        records: generator records with ``segmentation`` as COCO RLE (string counts).
        seconds: time spent.
    """

    task: ImageTask
    height: int
    width: int
    records: list[dict[str, Any]]
    seconds: float


@dataclass(frozen=True)
class TaskFailure:
    """An image that could not be segmented, and why (one line)."""

    task: ImageTask
    reason: str


# What an engine reports for one image.
Outcome = ImageResult | TaskFailure

# An engine runs segment_task on every task and calls the sink once per task, in this process, in
# any order; it returns counters for JobSummary.details (or None).
Engine = Callable[[list[ImageTask], Callable[[Outcome], None]], dict[str, Any] | None]


@dataclass
class JobSummary:
    """Counts of a :func:`run_everything` run.

    Attributes:
        done, skipped, failed: images segmented now, complete from an earlier run, failed now.
        masks: masks found in the images segmented now.
        seconds: wall time of the run (listing inputs to COCO file; with Ray, starting the
            workers and loading their models too).
        failures: (image path, reason) of each failed image.
        coco_path: the COCO file (coco and both formats).
        details: the engine's counters (Ray: actors, resubmitted images, GPU use).
    """

    done: int = 0
    skipped: int = 0
    failed: int = 0
    masks: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    coco_path: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Images segmented in this run per second of wall time."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One-line human summary."""
        text = (
            # "failed" only for images not segmented; "already complete" only for earlier runs' work.
            f"{self.done} image(s) segmented, {self.skipped} already complete, {self.failed} failed (not segmented); "
            f"{self.masks} mask(s); {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        )
        if self.coco_path is not None:
            text += f"; COCO: {self.coco_path}"
        return text


# --------------------------------------------------------------------------- inputs


def collect_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> list[ImageTask]:
    """Expand image files, folders and glob patterns (see :mod:`samkit.inputs`) into tasks.

    Every file found is a candidate: files that turn out not to be images are reported and
    skipped when read. Output names are the file stems, made unique with a short hash of the
    path when two inputs share a stem.

    Args:
        inputs: files, folders and glob patterns.
        recursive: also take the files of subfolders.
        exclude: folders never read from (the output folder).

    Raises:
        FileNotFoundError: an input names nothing (no file, folder or glob match).
    """
    found = expand_inputs(inputs, recursive=recursive, exclude=exclude)
    stems: dict[str, int] = {}
    for entry in found:
        stems[entry.path.stem] = stems.get(entry.path.stem, 0) + 1
    tasks = []
    for entry in found:
        path = entry.path
        name = path.stem or "image"
        if stems[path.stem] > 1:
            digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
            name = f"{name}-{digest}"
        tasks.append(ImageTask(path=path, name=name, file_name=entry.relative))
    return tasks


# --------------------------------------------------------------------------- work


def segment_task(generator: Any, task: ImageTask, *, progress: bool = False) -> ImageResult:
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
    start = time.perf_counter()
    image = load_image(task.path)
    records = generator.generate(image, progress=progress)
    return ImageResult(
        task=task,
        height=int(image.shape[0]),
        width=int(image.shape[1]),
        records=records,
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- outputs


def _metadata_csv(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    buffer.write(_METADATA_HEADER + "\n")
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
        self.signature = json.loads(json.dumps(signature, sort_keys=True))
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def image_dir(self, task: ImageTask) -> Path:
        """Folder of one image's outputs."""
        return self.out_dir / task.name

    def _marker(self, task: ImageTask) -> dict[str, Any]:
        return {"source": str(task.path.resolve()), "format": self.fmt, "overlay": self.overlay, "settings": self.signature}

    def is_complete(self, task: ImageTask) -> bool:
        """Whether the image's outputs are complete and were made with these settings."""
        marker = self.image_dir(task) / _DONE_FILE
        try:
            return json.loads(marker.read_text(encoding="utf-8")) == self._marker(task)
        except (OSError, ValueError):
            return False

    def write(self, result: ImageResult) -> None:
        """Write one image's outputs; the done-marker last."""
        folder = self.image_dir(result.task)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / _DONE_FILE
        marker.unlink(missing_ok=True)
        records = result.records
        payload = {
            "file_name": result.task.file_name or result.task.path.name,
            "source": str(result.task.path),
            "height": result.height,
            "width": result.width,
            "annotations": records,
        }
        atomic_write_text(folder / _RESULT_FILE, json.dumps(payload))
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

    @staticmethod
    def _overlay(result: ImageResult) -> np.ndarray:
        """All masks in distinct colours over the image, large masks first (small ones stay visible)."""
        picture = load_image(result.task.path)
        records = result.records
        order = np.argsort([-rec["area"] for rec in records], kind="stable")
        colors = palette(len(records))
        for start in range(0, len(order), _OVERLAY_CHUNK):  # bounded memory for many masks
            chunk = order[start : start + _OVERLAY_CHUNK]
            masks = np.stack([rle_to_mask(records[i]["segmentation"]) for i in chunk])  # (k, H, W)
            picture = draw_overlay(picture, masks, colors=colors[chunk])
        return picture

    def write_coco(self, tasks: Sequence[ImageTask]) -> Path:
        """Assemble ``annotations.json`` from the complete images among ``tasks``."""
        images, annotations = [], []
        for task in tasks:
            if not self.is_complete(task):
                continue
            data = json.loads((self.image_dir(task) / _RESULT_FILE).read_text(encoding="utf-8"))
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


# --------------------------------------------------------------------------- engines


def local_engine(generator: Any, *, progress: bool = False) -> Engine:
    """The engine that segments in this process, one image after the other.

    Args:
        generator: a :class:`samkit.SamAutomaticMaskGenerator` with ``output_mode="coco_rle"``.
        progress: show a progress bar over prompt batches within each image.

    Returns:
        an :data:`Engine`: an unreadable image becomes a :class:`TaskFailure`; any other error
        stops the run.
    """

    def run(tasks: list[ImageTask], sink: Callable[[Outcome], None]) -> None:
        for task in tasks:
            try:
                result = segment_task(generator, task, progress=progress)
            except ImageReadError as exc:
                sink(TaskFailure(task, str(exc)))
            else:
                sink(result)

    return run


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
        engine: where :func:`segment_task` runs (default: ``local_engine(generator)``); e.g.
            ``samkit.scale.everything_engine.ray_everything_engine(...)``. Not called when
            every image is complete.
        recursive: also take the files of subfolders of the input folders.

    Returns:
        the counts, and the COCO file path for the coco formats.

    Raises:
        ValueError: neither ``generator`` nor ``engine`` given, or a bad ``fmt``.
    """
    if engine is None:
        if generator is None:
            raise ValueError("generator: needed unless an engine is given")
        # Per-image prompt-batch bars only on a terminal; elsewhere the image count's lines suffice.
        engine = local_engine(generator, progress=progress and sys.stderr.isatty())
    start = time.perf_counter()
    tasks = collect_inputs(inputs, recursive=recursive, exclude=[out_dir])
    remove_stale_temp_files(out_dir)  # left by a run killed mid-write
    writer = OutputWriter(out_dir, fmt, overlay=overlay, signature=signature or {})
    summary = JobSummary()
    pending = []
    for task in tasks:
        if writer.is_complete(task):
            summary.skipped += 1
        else:
            pending.append(task)

    handled: set[ImageTask] = set()

    with make_progress(len(pending), desc="samkit everything", unit="images", enabled=progress) as bar:

        def sink(outcome: Outcome) -> None:
            if outcome.task in handled:  # an engine that reports an image twice never writes it twice
                logger.warning("duplicate result for %s ignored", outcome.task.path)
                return
            handled.add(outcome.task)
            if isinstance(outcome, TaskFailure):
                summary.failed += 1
                summary.failures.append((str(outcome.task.path), outcome.reason))
                if on_failure is not None:  # the caller reports it (the CLI prints it once)
                    logger.info("skipped %s: %s", outcome.task.path, outcome.reason)
                    on_failure(outcome.task, outcome.reason)
                else:
                    logger.warning("skipped %s: %s", outcome.task.path, outcome.reason)
            else:
                writer.write(outcome)
                summary.done += 1
                summary.masks += len(outcome.records)
            bar.update(1)

        if pending:
            summary.details = dict(engine(pending, sink) or {})
    if fmt in ("coco", "both"):
        summary.coco_path = writer.write_coco(tasks)
    summary.seconds = time.perf_counter() - start
    return summary
