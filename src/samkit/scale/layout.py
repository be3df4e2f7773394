"""Where :func:`samkit.scale.run_job`'s files live: one output file per image, the manifest."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..inputs import expand_inputs
from ..jobs import ImageTask

__all__ = ["JOB_FILE_NAME", "MANIFEST_NAME", "job_tasks", "output_name"]

MANIFEST_NAME = "manifest.json"
JOB_FILE_NAME = "job.json"
_SUBDIR = {"everything": ("masks", ".json"), "embed": ("embeddings", ".safetensors")}


def output_name(kind: str, image: str) -> str:
    """The output file of ``image``, relative to the job directory.

    The name is the image's stem plus a short hash of its absolute path, so that images with
    the same name in different folders do not collide and the name is stable across runs.
    """
    subdir, suffix = _SUBDIR[kind]
    digest = hashlib.sha1(os.path.abspath(image).encode("utf-8")).hexdigest()[:10]
    return f"{subdir}/{Path(image).stem}-{digest}{suffix}"


def job_tasks(
    kind: str, inputs: list[str], *, recursive: bool = False, exclude: Sequence[str | os.PathLike[str]] = ()
) -> list[ImageTask]:
    """Expand files, folders and glob patterns into the job's tasks (see :mod:`samkit.inputs`).

    Each task's ``name`` is its output file (:func:`output_name`). Files are not filtered by
    suffix: one that is not an image fails when read, and is reported.

    Raises:
        FileNotFoundError: an input names nothing.
        ValueError: nothing to process.
    """
    found = expand_inputs(inputs, recursive=recursive, exclude=exclude)
    if not found:
        hint = "" if recursive else " (images in subfolders? use --recursive / recursive=True)"
        raise ValueError(f"no files found in the inputs{hint}")
    return [ImageTask(path=f.path, name=output_name(kind, str(f.path)), file_name=f.relative) for f in found]
