"""``annotate``: detector boxes in, a labelled mask data set out; resumable; on :mod:`samkit.jobs`.

* :func:`plan_tasks` pairs the images named by the detections with the input files (the same
  input rules as ``samkit everything``);
* :func:`annotate_task` is the pure per-image function: read the image, embed it once, decode
  all its boxes in batches, encode the masks; :class:`AnnotateWork` builds it in a Ray actor;
* :class:`ResultStore` writes each image's result atomically to ``OUT/.samkit-annotate/<name>.json``
  together with its marker (the settings that made it), so a rerun with the same settings and
  detections skips it;
* the data set files (COCO, YOLO-seg, Label Studio) are written at the end from the stored
  results of every complete image.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..inputs import InputFile
from ..io import atomic_write_text, load_image
from ..jobs import ImageResult, ImageTask, JobSummary, Markers, build_model, collect_inputs, local_engine, ray_engine, run_tasks
from ..jobs.markers import read_json
from ..jobs.work import model_name
from ..modeling import Sam
from ..modeling.sam2 import Sam2
from ..predictor import SamPredictor
from .boxes import MULTIMASK_CHOICES, masks_for_boxes
from .detections import BadRow, Detection, DetectionSet, ImageRecord, clip_box, read_detections
from .outputs import COCO_FILE, FORMATS, LABELSTUDIO_FILE, AnnotatedImage, write_coco, write_labelstudio, write_yolo
from .records import instance_records

__all__ = ["ENGINES", "AnnotateSummary", "AnnotateTask", "AnnotateWork", "ResultStore", "annotate", "annotate_task", "plan_tasks"]

logger = logging.getLogger(__name__)

STATE_DIR = ".samkit-annotate"
SEGMENTATION_CHOICES = ("rle", "polygons")
ENGINES = ("local", "ray")

# What annotate returns: the job summary, with the detections skipped (bad_rows) and below_score.
AnnotateSummary = JobSummary


@dataclass(frozen=True)
class AnnotateTask:
    """One image to annotate: the file, its record in the detections, and its detections."""

    task: ImageTask
    image: ImageRecord
    detections: tuple[Detection, ...]

    @property
    def path(self) -> Path:
        """The image file."""
        return self.task.path

    @property
    def name(self) -> str:
        """The name of the image's stored result."""
        return self.task.name


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


@dataclass(frozen=True)
class AnnotateWork:
    """:func:`annotate_task` as an :class:`samkit.jobs.ImageWork` (built in each Ray actor).

    Attributes:
        model_factory: builds the model; must pickle.
        multimask, batch_size: as for :func:`annotate_task`.
    """

    model_factory: Callable[[], Sam | Sam2]
    multimask: str = "best"
    batch_size: int = 32

    def build(self) -> Callable[[AnnotateTask], AnnotatedImage]:
        """A predictor around a new model replica, bound into :func:`annotate_task`."""
        predictor = SamPredictor(build_model(self.model_factory))
        return functools.partial(annotate_task, predictor, multimask=self.multimask, batch_size=self.batch_size)


class ResultStore:
    """Per-image results under ``OUT/.samkit-annotate/``, each one file written atomically with its marker.

    Args:
        out_dir: output folder.
        settings: what the results depend on (detections digest, options, model).
    """

    def __init__(self, out_dir: Path, settings: dict[str, Any]) -> None:
        self.folder = out_dir / STATE_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.markers = Markers(settings)
        self.settings = self.markers.settings
        self.loaded: dict[AnnotateTask, AnnotatedImage] = {}

    def _path(self, item: AnnotateTask) -> Path:
        return self.folder / f"{item.task.name}.json"

    def load(self, item: AnnotateTask) -> AnnotatedImage | None:
        """The stored result of the image, if complete and made with these settings."""
        if item in self.loaded:
            return self.loaded[item]
        data = read_json(self._path(item))
        if not isinstance(data, dict) or not self.markers.matches(data.get("marker"), item.path, image_id=item.image.id):
            return None
        self.loaded[item] = AnnotatedImage.from_json(data["result"])
        return self.loaded[item]

    def is_complete(self, item: AnnotateTask) -> bool:
        """Whether a result made with these settings is stored."""
        return self.load(item) is not None

    def write(self, result: ImageResult) -> int:
        """Store one image's result (``result.output``: an :class:`AnnotatedImage`); returns its masks."""
        item: AnnotateTask = result.task
        annotated: AnnotatedImage = result.output
        marker = self.markers.marker(item.path, image_id=item.image.id)
        atomic_write_text(self._path(item), json.dumps({"marker": marker, "result": annotated.to_json()}))
        self.loaded[item] = annotated
        return len(annotated.records)


def annotate(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    boxes: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: Sam | Sam2 | SamPredictor | None = None,
    model_factory: Callable[[], Sam | Sam2] | None = None,
    engine: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    threads: int | None = None,
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
) -> JobSummary:
    """Turn detector boxes into masks and write them as a labelled data set; resumable.

    Args:
        images: image files, folders and glob patterns (the rules of :mod:`samkit.inputs`).
        boxes: the detections: a COCO results file (with ``dataset``), a COCO data set with box
            annotations, or a folder of YOLO txt files (with ``classes``, default
            ``classes.txt`` in it); see :func:`samkit.annotation.detections.read_detections`.
        out: output folder.
        model: the SAM model (SAM 1, MobileSAM, HQ-SAM or SAM 2.x; or a predictor around it);
            for the local engine.
        model_factory: builds the model in each worker (``engine="ray"``; must pickle, e.g.
            ``functools.partial(build_sam, "vit_b", checkpoint)``); the local engine builds one
            with it when ``model`` is not given.
        engine: ``"local"`` (this process) or ``"ray"`` (``workers`` model replicas on Ray,
            ``pip install 'samkit[ray]'``; the files are the same as with the local engine).
        workers: Ray actors (model replicas); 1 for the local engine.
        ray_address: Ray cluster to join (None: the one this process is connected to, else a
            new local one).
        threads: torch threads (local) or per actor (Ray; default: its CPUs).
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
        progress: show progress over images (a bar on a terminal, else a line every ~10 s).
        on_bad_row: called with each skipped detection row (else they are logged as warnings).
        on_failure: called with (image path, reason) for each unreadable image (else logged).

    Returns:
        the counts (``done``, ``skipped``, ``failed``, ``masks``, ``bad_rows``, ``below_score``,
        ``work_seconds``: time in :func:`annotate_task`) and the files written (``outputs``).

    Raises:
        FileNotFoundError, ValueError: missing or malformed inputs, or a bad option.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if multimask not in MULTIMASK_CHOICES:
        raise ValueError(f"multimask: expected one of {', '.join(MULTIMASK_CHOICES)}, got {multimask!r}")
    if segmentation not in SEGMENTATION_CHOICES:
        raise ValueError(f"segmentation: expected one of {', '.join(SEGMENTATION_CHOICES)}, got {segmentation!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and workers != 1:
        raise ValueError("workers: the local engine runs one model in this process; use engine='ray' for more")
    predictor: SamPredictor | None = None
    if engine == "ray":
        if model_factory is None:
            raise ValueError("model_factory: needed with engine='ray' (each worker builds its model)")
        name = model_name(model_factory)
        run = ray_engine(AnnotateWork(model_factory, multimask, batch_size), workers=workers, address=ray_address, threads=threads)
    else:
        if model is None and model_factory is None:
            raise ValueError("model: needed (or model_factory)")
        if model is None:
            model = build_model(model_factory)  # type: ignore[arg-type]
        predictor = model if isinstance(model, SamPredictor) else SamPredictor(model)
        name = predictor.model.config.name
        run = local_engine(functools.partial(annotate_task, predictor, multimask=multimask, batch_size=batch_size), threads=threads)
    start = time.perf_counter()
    out_dir = Path(out)
    inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    tasks = collect_inputs(inputs, recursive=recursive, exclude=[out_dir])
    found = read_detections(
        boxes, [InputFile(t.path, t.file_name or t.path.name) for t in tasks], dataset=dataset, classes=classes, min_score=min_score
    )
    planned, unmatched = plan_tasks(found, tasks)
    summary = JobSummary("annotate", engine=engine, bad_rows=[*found.bad_rows, *unmatched], below_score=found.below_score)
    settings = {"detections": found.digest, "min_score": min_score, "multimask": multimask, "model": name, **(signature or {})}
    store = ResultStore(out_dir, settings)
    report = None if on_failure is None else (lambda item, reason: on_failure(str(item.path), reason))
    run_tasks(planned, run, store, summary, progress=progress, on_failure=report)
    results = [result for result in map(store.load, planned) if result is not None]  # complete images, input order
    for result in results:
        summary.bad_rows.extend(result.rejected)
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
            out_dir / LABELSTUDIO_FILE, results, found.categories, image_url_prefix=image_url_prefix, model_version=f"samkit-{name}"
        )
    summary.seconds = time.perf_counter() - start
    return summary
