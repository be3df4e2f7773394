"""``run_job``: list images, skip finished ones, run the rest on an engine, write the manifest.

Exactly-once contract: each image's output file is written atomically (write to a temporary
file, then rename) by this process only, so an output file exists only when it is complete and
no retried or duplicated worker call can write it twice. A rerun skips every image whose output
file exists. The manifest (every image -> output file, status, mask count) is written last,
also atomically; ``job.json`` records the job's settings so that a rerun into the same
directory with different settings is refused instead of mixing results.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samkit.io import atomic_write_bytes, atomic_write_text
from samkit.modeling import Sam
from samkit.outputs import remove_stale_temp_files
from samkit.progress import make_progress
from .scale_layout import JOB_FILE_NAME, MANIFEST_NAME, list_images, read_json, work_items
from .scale_work import ImageResult, WorkItem, output_bytes

__all__ = ["ENGINES", "JOB_KINDS", "JobSummary", "run_job"]

logger = logging.getLogger(__name__)

JOB_KINDS = ("everything", "embed")
ENGINES = ("local", "ray")


@dataclass
class JobSummary:
    """What a job did.

    Attributes:
        kind: ``"everything"`` or ``"embed"``.
        engine: ``"local"`` or ``"ray"``.
        total: images in the job.
        processed: images processed in this run.
        skipped: images already done by an earlier run.
        failed: images that failed in this run (listed in the manifest with the reason).
        seconds: wall time of this run (listing to manifest).
        out_dir: the output directory.
        manifest: path of the manifest.
        details: engine counters (Ray: actors, resubmitted images, GPU use).
    """

    kind: str
    engine: str
    total: int
    processed: int
    skipped: int
    failed: int
    seconds: float
    out_dir: Path
    manifest: Path
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Images processed in this run per second of wall time."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """One line for humans."""
        return (
            f"{self.kind} ({self.engine}): {self.total} images, {self.processed} processed, "
            f"{self.skipped} already done, {self.failed} failed in {self.seconds:.1f} s "
            f"({self.images_per_second:.2f} images/s); manifest: {self.manifest}"
        )


def run_job(
    kind: str,
    inputs: list[str],
    out_dir: str | Path,
    *,
    model_factory: Callable[[], Sam],
    engine: str = "local",
    ray_address: str | None = None,
    workers: int = 1,
    generator_kwargs: dict[str, Any] | None = None,
    threads: int | None = None,
    job_id: str | None = None,
    progress: bool = True,
    recursive: bool = False,
) -> JobSummary:
    """Run ``kind`` over every image in ``inputs``, writing one file per image under ``out_dir``.

    Outputs (paths relative to ``out_dir``):
        ``embeddings/<stem>-<hash>.safetensors`` (embed): what ``SamPredictor.save_embedding``
        writes, (1, C, h, w) features; read back with ``SamPredictor.load_embedding``.
        ``masks/<stem>-<hash>.json`` (everything): ``{"image", "height", "width",
        "annotations": [generator records with COCO-RLE "segmentation"]}``.
        ``manifest.json``: ``{"kind", "images": [{"image", "output", "status", "count",
        "error"}], ...}``, written last.

    Args:
        kind: ``"everything"`` or ``"embed"``.
        inputs: image files, folders and/or glob patterns (see :mod:`samkit.inputs`); a file
            that is not an image is reported as failed.
        out_dir: output directory (created).
        model_factory: builds the model; runs once per worker, so with ``engine="ray"`` it must
            pickle (a top-level function or ``functools.partial(build_sam, ...)``).
        engine: ``"local"`` (this process, no Ray needed) or ``"ray"``.
        ray_address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a
            local cluster unless this process is already connected.
        workers: model replicas (Ray actors); must be 1 with ``engine="local"``.
        generator_kwargs: ``SamAutomaticMaskGenerator`` arguments (everything only).
        threads: torch threads per worker (default: local leaves torch's setting, Ray uses the
            CPUs reserved per actor).
        job_id: identifies the model/settings (e.g. "vit_b:/path/ckpt"); a rerun into the same
            directory with a different id, kind or generator_kwargs is refused.
        progress: show a progress bar over images.
        recursive: also take the files of subfolders of the input folders (never those
            under ``out_dir``).

    Returns:
        a :class:`JobSummary`.

    Raises:
        ValueError: bad kind, engine, workers or generator_kwargs; or ``out_dir`` holds a
            different job.
        FileNotFoundError: an input does not exist.
        ImportError: ``engine="ray"`` without Ray installed.
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(JOB_KINDS)}; got {kind!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}; got {engine!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    if engine == "local" and workers != 1:
        raise ValueError("workers: the local engine runs one model in this process; use engine='ray' for more")
    if generator_kwargs and kind != "everything":
        raise ValueError("generator_kwargs: only for kind='everything'")
    settings = _settings(kind, generator_kwargs, job_id)
    start = time.perf_counter()
    out = Path(out_dir)
    images = list_images(list(inputs), recursive=recursive, exclude=[out_dir])
    items = work_items(kind, images)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)  # left by a run killed mid-write
    _claim(out, settings)
    for subdir in {str(Path(item.output).parent) for item in items}:
        (out / subdir).mkdir(parents=True, exist_ok=True)

    previous = _previous_entries(out)
    entries: dict[int, dict[str, Any]] = {}
    pending: list[WorkItem] = []
    for item in items:
        if (out / item.output).is_file():
            entries[item.index] = _done_entry(out, item, previous.get(item.image), kind)
        else:
            pending.append(item)
    skipped = len(entries)
    logger.info("%s: %d images, %d already done, %d to do", kind, len(items), skipped, len(pending))

    counters = {"processed": 0, "failed": 0}
    bar = _progress_bar(len(items), skipped, progress, kind)

    def sink(result: ImageResult) -> None:
        item = result.item
        if item.index in entries:  # never write an image twice
            logger.warning("duplicate result for %s ignored", item.image)
            return
        if result.ok:
            atomic_write_bytes(out / item.output, output_bytes(result))
            entries[item.index] = {"image": item.image, "output": item.output, "status": "done", "count": result.count}
            counters["processed"] += 1
        else:
            entries[item.index] = {"image": item.image, "output": None, "status": "failed", "error": result.error}
            counters["failed"] += 1
            logger.warning("%s: %s", item.image, result.error)
        if bar is not None:
            bar.update(1)

    processor_kwargs = {
        "kind": kind,
        "model_factory": model_factory,
        "generator_kwargs": generator_kwargs,
        "threads": threads,
    }
    details: dict[str, Any] = {}
    try:
        if pending:
            if engine == "local":
                from .scale_local_engine import run_local

                run_local(pending, processor_kwargs, sink)
            else:
                from samkit_legacy_unused import run_ray

                details = dict(run_ray(pending, processor_kwargs, sink, workers=workers, address=ray_address))
    finally:
        if bar is not None:
            bar.close()
        # Written last (also after an interruption), so it lists what is really on disk.
        manifest = _write_manifest(out, kind, settings, items, entries)
    return JobSummary(
        kind=kind,
        engine=engine,
        total=len(items),
        processed=counters["processed"],
        skipped=skipped,
        failed=counters["failed"],
        seconds=time.perf_counter() - start,
        out_dir=out,
        manifest=manifest,
        details=details,
    )


def _settings(kind: str, generator_kwargs: dict[str, Any] | None, job_id: str | None) -> dict[str, Any]:
    """The settings that make outputs of two runs interchangeable."""
    try:
        kwargs = json.loads(json.dumps(generator_kwargs or {}, sort_keys=True))
    except TypeError:
        raise ValueError("generator_kwargs: values must be JSON-serializable (numbers, strings, lists)") from None
    if "output_mode" in kwargs and kwargs["output_mode"] != "coco_rle":
        raise ValueError("generator_kwargs: output_mode is always 'coco_rle' in jobs")
    kwargs.pop("output_mode", None)
    kwargs.pop("progress", None)
    return {"kind": kind, "generator_kwargs": kwargs, "job_id": job_id}


def _claim(out: Path, settings: dict[str, Any]) -> None:
    """Record the job's settings in ``out``; refuse a directory holding another job."""
    path = out / JOB_FILE_NAME
    existing = read_json(path)
    if existing is not None and existing != settings:
        raise ValueError(
            f"{out} holds results of a different job ({JOB_FILE_NAME}: {existing}); use another output directory"
        )
    if existing is None:
        atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _previous_entries(out: Path) -> dict[str, dict[str, Any]]:
    """The previous manifest's done entries by image path."""
    manifest = read_json(out / MANIFEST_NAME)
    if not isinstance(manifest, dict):
        return {}
    return {
        e["image"]: e
        for e in manifest.get("images", [])
        if isinstance(e, dict) and e.get("status") == "done" and "image" in e
    }


def _done_entry(out: Path, item: WorkItem, previous: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """The manifest entry of an image finished by an earlier run."""
    if previous is not None and previous.get("output") == item.output and "count" in previous:
        count = previous["count"]
    elif kind == "everything":
        doc = read_json(out / item.output)
        count = len(doc.get("annotations", [])) if isinstance(doc, dict) else 0
    else:
        count = 1
    return {"image": item.image, "output": item.output, "status": "done", "count": count}


def _write_manifest(
    out: Path, kind: str, settings: dict[str, Any], items: list[WorkItem], entries: dict[int, dict[str, Any]]
) -> Path:
    images = []
    for item in items:
        entry = entries.get(item.index)
        images.append(entry if entry is not None else {"image": item.image, "output": None, "status": "pending"})
    doc = {
        "format": "samkit-job-manifest-v1",
        "kind": kind,
        "settings": settings,
        "counts": {s: sum(1 for e in images if e["status"] == s) for s in ("done", "failed", "pending")},
        "images": images,
    }
    path = out / MANIFEST_NAME
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def _progress_bar(total: int, initial: int, enabled: bool, kind: str) -> Any:
    if not enabled:
        return None
    # A bar on a terminal; elsewhere (logs, CI, nohup) a line about every 10 s.
    return make_progress(total, initial=initial, unit="images", desc=f"samkit {kind}")
