"""``run_job``: one output file per image and a manifest (``samkit embed``), on :mod:`samkit.jobs`.

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
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_text
from ..jobs import ImageResult, ImageTask, JobSummary, local_engine, ray_engine, run_tasks
from ..jobs.markers import read_json
from ..modeling import Sam
from ..outputs import remove_stale_temp_files
from .layout import JOB_FILE_NAME, MANIFEST_NAME, job_tasks

__all__ = ["ENGINES", "JOB_KINDS", "run_job"]

logger = logging.getLogger(__name__)

JOB_KINDS = ("everything", "embed")
ENGINES = ("local", "ray")


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
        a :class:`samkit.jobs.JobSummary` (``command`` is ``kind``; ``outputs["manifest"]``).

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
    tasks = job_tasks(kind, list(inputs), recursive=recursive, exclude=[out_dir])
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)  # left by a run killed mid-write
    _claim(out, settings)
    for subdir in {str(Path(task.name).parent) for task in tasks}:
        (out / subdir).mkdir(parents=True, exist_ok=True)
    work = _work(kind, model_factory, generator_kwargs)
    if engine == "local":
        run = local_engine(work=work, threads=threads)
    else:
        run = ray_engine(work, workers=workers, address=ray_address, threads=threads)
    writer = FileWriter(out, kind)
    summary = JobSummary(kind, engine=engine)

    def failed(task: ImageTask, reason: str) -> None:
        writer.entries[task] = {"image": str(task.path), "output": None, "status": "failed", "error": reason}
        logger.warning("%s: %s", task.path, reason)

    try:
        run_tasks(tasks, run, writer, summary, progress=progress, on_failure=failed)
    finally:
        # Written last (also after an interruption), so it lists what is really on disk.
        summary.outputs["manifest"] = writer.write_manifest(settings, tasks)
    summary.seconds = time.perf_counter() - start
    return summary


def _work(kind: str, model_factory: Callable[[], Sam], generator_kwargs: dict[str, Any] | None) -> Any:
    """The per-image work of ``kind``, as an :class:`samkit.jobs.ImageWork`."""
    if kind == "everything":
        from ..everything.job import SegmentWork

        return SegmentWork(model_factory, generator_kwargs)
    from .embed import EmbedWork

    return EmbedWork(model_factory)


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


class FileWriter:
    """Writes one file per image (``task.name`` below ``out``) and, at the end, the manifest.

    An image is complete when its file exists (written atomically; ``job.json`` vouches for the
    settings of every file in the folder). Entries of the manifest carry each image's mask count
    (1 for an embedding), taken from the previous manifest for images done by an earlier run.
    """

    def __init__(self, out: Path, kind: str) -> None:
        self.out = out
        self.kind = kind
        self.entries: dict[ImageTask, dict[str, Any]] = {}
        manifest = read_json(out / MANIFEST_NAME)
        listed = manifest.get("images", []) if isinstance(manifest, dict) else []
        self.previous = {e["image"]: e for e in listed if isinstance(e, dict) and e.get("status") == "done" and "image" in e}

    def is_complete(self, task: ImageTask) -> bool:
        """Whether the image's file exists; if so, its manifest entry is recorded."""
        if not (self.out / task.name).is_file():
            return False
        previous = self.previous.get(str(task.path))
        if previous is not None and previous.get("output") == task.name and "count" in previous:
            count = previous["count"]
        elif self.kind == "everything":
            doc = read_json(self.out / task.name)
            count = len(doc.get("annotations", [])) if isinstance(doc, dict) else 0
        else:
            count = 1
        self.entries[task] = {"image": str(task.path), "output": task.name, "status": "done", "count": count}
        return True

    def write(self, result: ImageResult) -> int:
        """Write one image's file (embedding bytes, or compact JSON records); returns its count."""
        task = result.task
        if self.kind == "everything":  # compact JSON {"image", "height", "width", "annotations"}
            segmented = result.output
            doc = {"image": str(task.path), "height": segmented.height, "width": segmented.width,
                   "annotations": segmented.records}  # fmt: skip
            data, count = json.dumps(doc, separators=(",", ":")).encode("utf-8"), len(segmented.records)
        else:
            data, count = result.output, 1
        atomic_write_bytes(self.out / task.name, data)
        self.entries[task] = {"image": str(task.path), "output": task.name, "status": "done", "count": count}
        return count

    def write_manifest(self, settings: dict[str, Any], tasks: list[ImageTask]) -> Path:
        """``manifest.json``: every image in input order with its output, status, count or error."""
        images = [self.entries.get(t, {"image": str(t.path), "output": None, "status": "pending"}) for t in tasks]
        doc = {
            "format": "samkit-job-manifest-v1",
            "kind": self.kind,
            "settings": settings,
            "counts": {s: sum(1 for e in images if e["status"] == s) for s in ("done", "failed", "pending")},
            "images": images,
        }
        path = self.out / MANIFEST_NAME
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
        return path
