"""``annotate``: detector boxes in, a labelled mask data set out; resumable.

The work is split like segment-everything's job (:mod:`samkit.everything.job`):

* :func:`plan_tasks` pairs the images named by the detections with the input files (the same
  input rules as ``samkit everything``);
* :func:`annotate_task` is the pure per-image function: read the image, embed it once, decode
  all its boxes in batches, encode the masks;
* each image's result is written atomically to ``OUT/.samkit-annotate/<name>.json`` together
  with the settings that made it, so a rerun with the same settings and detections skips it;
* the data set files (COCO, YOLO-seg, Label Studio) are written at the end from the stored
  results of every complete image.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .everything_job import ImageTask, collect_inputs
from samkit.inputs import InputFile
from samkit.io import ImageReadError, atomic_write_text, load_image
from samkit.modeling import Sam
from samkit.predictor import SamPredictor
from samkit.annotation.boxes import MULTIMASK_CHOICES, masks_for_boxes
from samkit.annotation.detections import BadRow, Detection, DetectionSet, ImageRecord, clip_box, read_detections
from samkit.annotation.outputs import COCO_FILE, FORMATS, LABELSTUDIO_FILE, AnnotatedImage, write_coco, write_labelstudio, write_yolo
from samkit.annotation.records import instance_records

__all__ = ["AnnotateSummary", "AnnotateTask", "annotate", "annotate_task", "plan_tasks"]

logger = logging.getLogger(__name__)

STATE_DIR = ".samkit-annotate"
SEGMENTATION_CHOICES = ("rle", "polygons")


@dataclass(frozen=True)
class AnnotateTask:
    """One image to annotate: the file, its record in the detections, and its detections."""

    task: ImageTask
    image: ImageRecord
    detections: tuple[Detection, ...]


@dataclass
class AnnotateSummary:
    """Counts of an :func:`annotate` run.

    Attributes:
        done, skipped, failed: images annotated now, complete from an earlier run, unreadable.
        masks: masks made now.
        seconds: wall time of the run; decode_seconds: of it, the time in :func:`annotate_task`.
        bad_rows: detections skipped, with where they are and why (every run reports all).
        below_score: detections under the minimum score.
        failures: (image path, reason) of each unreadable image.
        outputs: the files written, by format.
    """

    done: int = 0
    skipped: int = 0
    failed: int = 0
    masks: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0
    bad_rows: list[BadRow] = field(default_factory=list)
    below_score: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)

    def line(self) -> str:
        """One-line human summary."""
        rate = self.masks / self.decode_seconds if self.decode_seconds > 0 else 0.0
        text = (
            f"{self.done} image(s) annotated, {self.skipped} already complete (skipped), {self.failed} failed; "
            f"{self.masks} mask(s) ({rate:.1f} boxes/s including reading and embedding images); "
            f"{len(self.bad_rows)} bad row(s) skipped"
        )
        if self.below_score:
            text += f", {self.below_score} below the minimum score"
        return text + f"; {self.seconds:.1f} s"


def plan_tasks(detections: DetectionSet, tasks: Sequence[ImageTask]) -> tuple[list[AnnotateTask], list[BadRow]]:
    """Pair each image of the detections with an input file.

    COCO ``file_name`` s are matched to the inputs' paths below their folders, else to the only
    input with that file name. An image of the data set with detections but no input file makes
    one bad row (its detections are skipped); one without detections and without a file is left
    out; input files the data set does not name are ignored (logged).

    Returns:
        the tasks, in input order, and the bad rows.
    """
    by_relative = {t.file_name or t.path.name: t for t in tasks}
    by_name: dict[str, list[ImageTask]] = {}
    for t in tasks:
        by_name.setdefault(t.path.name, []).append(t)
    by_source = {str(t.path): t for t in tasks}
    chosen: dict[ImageTask, ImageRecord] = {}
    bad: list[BadRow] = []
    for image_id, record in detections.images.items():
        found: ImageTask | None = None
        if image_id in detections.files:
            found = by_source.get(str(detections.files[image_id].path))
        elif record.file_name in by_relative:
            found = by_relative[record.file_name]
        else:
            named = by_name.get(record.file_name.rsplit("/", 1)[-1], [])
            found = named[0] if len(named) == 1 else None
        count = len(detections.detections.get(image_id, []))
        if found is None:
            if count:
                bad.append(BadRow(f"image id {image_id} ({record.file_name})", f"not among the inputs; its {count} detection(s) skipped"))
            continue
        chosen[found] = record
    planned = [AnnotateTask(t, chosen[t], tuple(detections.detections.get(chosen[t].id, []))) for t in tasks if t in chosen]
    ignored = len(tasks) - len(planned)
    if ignored:
        logger.info("%d input file(s) not named by the detections, ignored", ignored)
    return planned, bad


def annotate_task(predictor: SamPredictor, item: AnnotateTask, *, multimask: str = "best", batch_size: int = 32) -> AnnotatedImage:
    """Annotate one image: one embedding, every box decoded in batches of ``batch_size``.

    Boxes that overhang the image are clipped to it; boxes outside it are rejected (bad rows).

    Raises:
        samkit.io.ImageReadError: the file is not a readable image.
    """
    start = time.perf_counter()
    image = load_image(item.task.path)
    height, width = int(image.shape[0]), int(image.shape[1])
    kept: list[Detection] = []
    boxes: list[tuple[float, float, float, float]] = []
    rejected: list[BadRow] = []
    for det in item.detections:
        pixel_box = det.pixel_box(height, width)
        clipped = clip_box(pixel_box, height, width)
        if clipped is None:
            shown = ", ".join(f"{v:g}" for v in pixel_box)
            rejected.append(BadRow(det.where, f"box ({shown}) lies outside the {width}x{height} image"))
        else:
            kept.append(det)
            boxes.append(clipped)
    records: list[dict[str, Any]] = []
    if kept:
        predictor.set_image(image)
        for batch in masks_for_boxes(predictor, np.asarray(boxes), multimask=multimask, batch_size=batch_size):
            end = batch.start + len(batch.masks)
            records.extend(instance_records(batch.masks, batch.predicted_iou, kept[batch.start : end], boxes[batch.start : end]))
    return AnnotatedImage(
        image_id=item.image.id,
        file_name=item.image.file_name,
        source=str(item.task.path),
        height=height,
        width=width,
        records=records,
        rejected=rejected,
        seconds=time.perf_counter() - start,
    )


class _ResultStore:
    """Per-image results under ``OUT/.samkit-annotate/``, each one file written atomically with its settings."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]) -> None:
        self.folder = out_dir / STATE_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))

    def _path(self, item: AnnotateTask) -> Path:
        return self.folder / f"{item.task.name}.json"

    def _marker(self, item: AnnotateTask) -> dict[str, Any]:
        return {"source": str(item.task.path.resolve()), "image_id": item.image.id, "settings": self.settings}

    def load(self, item: AnnotateTask) -> AnnotatedImage | None:
        """The stored result of the image, if complete and made with these settings."""
        try:
            data = json.loads(self._path(item).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("marker") != self._marker(item):
            return None
        return AnnotatedImage.from_json(data["result"])

    def save(self, item: AnnotateTask, result: AnnotatedImage) -> None:
        atomic_write_text(self._path(item), json.dumps({"marker": self._marker(item), "result": result.to_json()}))


def annotate(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    boxes: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: Sam | SamPredictor,
    dataset: str | os.PathLike[str] | None = None,
    classes: str | os.PathLike[str] | None = None,
    fmt: str = "coco",
    min_score: float | None = None,
    multimask: str = "best",
    segmentation: str = "rle",
    batch_size: int = 32,
    recursive: bool = False,
    image_url_prefix: str = "/data/local-files/?d=",
    signature: dict[str, Any] | None = None,
    progress: bool = False,
    on_bad_row: Callable[[BadRow], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> AnnotateSummary:
    """Turn detector boxes into masks and write them as a labelled data set; resumable.

    Args:
        images: image files, folders and glob patterns (the rules of :mod:`samkit.inputs`).
        boxes: the detections: a COCO results file (with ``dataset``), a COCO data set with box
            annotations, or a folder of YOLO txt files (with ``classes``, default
            ``classes.txt`` in it); see :func:`samkit.annotation.detections.read_detections`.
        out: output folder.
        model: the SAM model (or a predictor around it).
        dataset: the COCO data set naming the images and categories of a results file.
        classes: the YOLO classes file.
        fmt: ``"coco"`` (``OUT/annotations.json``), ``"yolo"`` (``OUT/labels/*.txt`` +
            ``OUT/classes.txt``), ``"labelstudio"`` (``OUT/labelstudio_tasks.json``) or ``"all"``.
        min_score: skip detections scoring below it (and those without a score).
        multimask: ``"best"`` (of SAM's three masks, the highest predicted IoU) or ``"single"``.
        segmentation: COCO ``"rle"`` or ``"polygons"``.
        batch_size: boxes per decoder call.
        recursive: also read subfolders of input folders.
        image_url_prefix: Label Studio tasks name each image ``prefix + file_name``.
        signature: extra settings recorded with the results (e.g. the model name and checkpoint);
            a change makes a rerun redo every image.
        progress: show a progress bar over images.
        on_bad_row: called with each skipped detection row (else they are logged as warnings).
        on_failure: called with (image path, reason) for each unreadable image (else logged).

    Returns:
        the counts and the files written.

    Raises:
        FileNotFoundError, ValueError: missing or malformed inputs, or a bad option.
    """
    from tqdm.auto import tqdm

    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if multimask not in MULTIMASK_CHOICES:
        raise ValueError(f"multimask: expected one of {', '.join(MULTIMASK_CHOICES)}, got {multimask!r}")
    if segmentation not in SEGMENTATION_CHOICES:
        raise ValueError(f"segmentation: expected one of {', '.join(SEGMENTATION_CHOICES)}, got {segmentation!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    predictor = model if isinstance(model, SamPredictor) else SamPredictor(model)
    start = time.perf_counter()
    out_dir = Path(out)
    inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    tasks = collect_inputs(inputs, recursive=recursive, exclude=[out_dir])
    found = read_detections(
        boxes, [InputFile(t.path, t.file_name or t.path.name) for t in tasks], dataset=dataset, classes=classes, min_score=min_score
    )
    planned, unmatched = plan_tasks(found, tasks)
    summary = AnnotateSummary(bad_rows=[*found.bad_rows, *unmatched], below_score=found.below_score)
    settings = {
        "detections": found.digest,
        "min_score": min_score,
        "multimask": multimask,
        "model": predictor.model.config.name,
        **(signature or {}),
    }
    store = _ResultStore(out_dir, settings)
    results: list[AnnotatedImage] = []
    with tqdm(total=len(planned), disable=not progress, desc="images", unit="image") as bar:
        for item in planned:
            result = store.load(item)
            if result is not None:
                summary.skipped += 1
            else:
                try:
                    result = annotate_task(predictor, item, multimask=multimask, batch_size=batch_size)
                except ImageReadError as exc:
                    summary.failed += 1
                    summary.failures.append((str(item.task.path), str(exc)))
                    (on_failure or (lambda p, r: logger.warning("skipped %s: %s", p, r)))(str(item.task.path), str(exc))
                    bar.update(1)
                    continue
                store.save(item, result)
                summary.done += 1
                summary.masks += len(result.records)
                summary.decode_seconds += result.seconds
            summary.bad_rows.extend(result.rejected)
            results.append(result)
            bar.update(1)
    for row in summary.bad_rows:
        if on_bad_row is not None:
            on_bad_row(row)
        else:
            logger.warning("skipped detection %s", row.line())
    info = {"settings": store.settings}
    if fmt in ("coco", "all"):
        summary.outputs["coco"] = write_coco(out_dir / COCO_FILE, results, found.categories, polygons=segmentation == "polygons", info=info)
    if fmt in ("yolo", "all"):
        summary.outputs["yolo"] = write_yolo(out_dir, results, found.categories)
    if fmt in ("labelstudio", "all"):
        summary.outputs["labelstudio"] = write_labelstudio(
            out_dir / LABELSTUDIO_FILE, results, found.categories, image_url_prefix=image_url_prefix,
            model_version=f"samkit-{predictor.model.config.name}",
        )
    summary.seconds = time.perf_counter() - start
    return summary
