"""Per-image work: what a worker (this process or a Ray actor) does with one image.

Both engines run exactly this code, so their outputs are byte-identical for the same model and
thread count. Segment-everything goes through :func:`samkit.everything.job.segment_task`, the
same per-image function ``samkit everything`` runs locally; workers return its result and the
driver writes the files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .everything_job import ImageResult as SegmentResult
from .everything_job import ImageTask, segment_task
from samkit.io import ImageReadError
from samkit.modeling import Sam
from samkit.modeling.sam2 import Sam2

# Must match SamPredictor.save_embedding so that SamPredictor.load_embedding reads our files.
from samkit.predictor import EMBEDDING_FORMAT

__all__ = ["ImageProcessor", "ImageResult", "WorkItem", "embedding_bytes", "mask_file_bytes", "output_bytes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One image of a job.

    Attributes:
        index: position of the image in the job's input list.
        image: path of the image file (as listed).
        output: path of its output file (``run_job``) or folder (``samkit everything``),
            relative to the job's output directory.
    """

    index: int
    image: str
    output: str


@dataclass
class ImageResult:
    """What a worker returns for one image.

    Attributes:
        item: the work item.
        ok: True when the image was processed.
        data: embed: the output file's content (empty when not ok or for everything).
        segments: everything: what :func:`samkit.everything.job.segment_task` found (None when
            not ok or for embed).
        count: masks found (everything) or embeddings written (embed, 1).
        error: one-line reason when not ok.
        seconds: time spent on this image by the worker.
        worker: an id of the process that did the work.
    """

    item: WorkItem
    ok: bool
    data: bytes = b""
    segments: SegmentResult | None = None
    count: int = 0
    error: str | None = None
    seconds: float = 0.0
    worker: str = field(default="")


def embedding_bytes(predictor: Any) -> bytes:
    """The bytes :meth:`SamPredictor.save_embedding` would write for the current image.

    Args:
        predictor: a :class:`samkit.SamPredictor` with an image set.

    Returns:
        a safetensors file holding ``features`` (1, C, h, w) float32 and the image sizes.
    """
    from safetensors.torch import save

    meta = {
        "format": EMBEDDING_FORMAT,
        "model": predictor.model.config.name,
        "original_size": json.dumps(predictor.original_size),
        "input_size": json.dumps(predictor.input_size),
    }
    tensors = {"features": predictor.features.float().cpu().contiguous()}
    if predictor.hq_features is not None:  # HQ-SAM: the decoder needs them too
        tensors["hq_features"] = predictor.hq_features.float().cpu().contiguous()
    for i, level in enumerate(predictor.high_res_features or ()):  # SAM 2: the decoder's levels
        tensors[f"high_res_features.{i}"] = level.float().cpu().contiguous()
    return save(tensors, metadata=meta)


def mask_file_bytes(image: str, segments: SegmentResult) -> bytes:
    """The content of ``run_job``'s everything output file for one image.

    Args:
        image: the image path as listed in the job.
        segments: the image's :func:`samkit.everything.job.segment_task` result.

    Returns:
        compact JSON ``{"image", "height", "width", "annotations": [records, COCO RLE]}``.
    """
    doc = {"image": image, "height": segments.height, "width": segments.width, "annotations": segments.records}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def output_bytes(result: ImageResult) -> bytes:
    """The content of ``run_job``'s output file for a successful result (embed or everything)."""
    if result.segments is not None:
        return mask_file_bytes(result.item.image, result.segments)
    return result.data


class ImageProcessor:
    """Holds one model replica and turns image paths into :class:`ImageResult` s.

    Args:
        kind: ``"everything"`` or ``"embed"``.
        model_factory: builds the model (called once, in the process that does the work).
        generator_kwargs: arguments of :class:`samkit.everything.SamAutomaticMaskGenerator`
            (everything only; ``output_mode`` is always ``"coco_rle"``).
        threads: torch intra-op threads for this process (None: leave torch's default).
    """

    def __init__(
        self,
        kind: str,
        model_factory: Callable[[], Sam],
        generator_kwargs: dict[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        import os

        if threads is not None:
            torch.set_num_threads(int(threads))
        self.kind = kind
        self.worker = f"{os.getpid()}"
        model = model_factory()
        if not isinstance(model, (Sam, Sam2)):
            raise TypeError(f"model_factory: expected it to return a samkit Sam, got {type(model).__name__}")
        self.model = model
        if kind == "everything":
            from samkit.everything import SamAutomaticMaskGenerator

            kwargs = dict(generator_kwargs or {})
            kwargs["output_mode"] = "coco_rle"
            kwargs["progress"] = False
            self.generator: Any = SamAutomaticMaskGenerator(model, **kwargs)
            self.predictor: Any = self.generator.predictor
        else:
            from samkit.predictor import SamPredictor

            self.generator = None
            self.predictor = SamPredictor(model)

    def __call__(self, item: WorkItem) -> ImageResult:
        """Process one image; unreadable images and model errors become a failed result."""
        if self.kind == "everything":
            return self._segment(item)
        return self._embed(item)

    def _segment(self, item: WorkItem) -> ImageResult:
        """Segment everything in one image with :func:`samkit.everything.job.segment_task`."""
        task = ImageTask(path=Path(item.image), name=item.output)
        try:
            segments = segment_task(self.generator, task)
        except ImageReadError as exc:  # the same reason the local samkit everything reports
            return ImageResult(item, ok=False, error=str(exc), worker=self.worker)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory on one huge image
            logger.warning("%s: %s", item.image, exc)
            return ImageResult(item, ok=False, error=f"{type(exc).__name__}: {exc}", worker=self.worker)
        return ImageResult(
            item, ok=True, segments=segments, count=len(segments.records), seconds=segments.seconds, worker=self.worker
        )

    def _embed(self, item: WorkItem) -> ImageResult:
        """Encode one image; the result holds the embedding file's bytes."""
        from samkit.io import load_image

        start = time.perf_counter()
        try:
            image = load_image(item.image)  # (H, W, 3) uint8
        except (ImageReadError, OSError, ValueError) as exc:
            return ImageResult(item, ok=False, error=f"cannot read image: {exc}", worker=self.worker)
        try:
            with torch.inference_mode():
                self.predictor.set_image(image)
                data = embedding_bytes(self.predictor)
                self.predictor.reset_image()
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory on one huge image
            logger.warning("%s: %s", item.image, exc)
            return ImageResult(item, ok=False, error=f"{type(exc).__name__}: {exc}", worker=self.worker)
        return ImageResult(item, ok=True, data=data, count=1, seconds=time.perf_counter() - start, worker=self.worker)
