"""Where a job's files live: the input list, one output file per image, the manifest."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from samkit.inputs import expand_inputs
from .scale_work import WorkItem

__all__ = [
    "MANIFEST_NAME",
    "JOB_FILE_NAME",
    "list_images",
    "work_items",
    "read_json",
]

MANIFEST_NAME = "manifest.json"
JOB_FILE_NAME = "job.json"
_SUBDIR = {"everything": ("masks", ".json"), "embed": ("embeddings", ".safetensors")}


def list_images(
    inputs: list[str], *, recursive: bool = False, exclude: Sequence[str | os.PathLike[str]] = ()
) -> list[str]:
    """Expand files, folders and glob patterns into the files to process (see :mod:`samkit.inputs`).

    Args:
        inputs: image files, folders and/or glob patterns.
        recursive: also take the files of subfolders.
        exclude: folders never read from (the output folder).

    Returns:
        the paths in order, each once. Files are not filtered by suffix: one that is not an
        image fails when read, and is reported.

    Raises:
        FileNotFoundError: an input names nothing.
        ValueError: nothing to process.
    """
    images = [str(f.path) for f in expand_inputs(inputs, recursive=recursive, exclude=exclude)]
    if not images:
        hint = "" if recursive else " (images in subfolders? use --recursive / recursive=True)"
        raise ValueError(f"no files found in the inputs{hint}")
    return images


def output_name(kind: str, image: str) -> str:
    """The output file of ``image``, relative to the job directory.

    The name is the image's stem plus a short hash of its absolute path, so that images with
    the same name in different folders do not collide and the name is stable across runs.
    """
    subdir, suffix = _SUBDIR[kind]
    digest = hashlib.sha1(os.path.abspath(image).encode("utf-8")).hexdigest()[:10]
    return f"{subdir}/{Path(image).stem}-{digest}{suffix}"


def work_items(kind: str, images: list[str]) -> list[WorkItem]:
    """One :class:`WorkItem` per image, in order."""
    return [WorkItem(index=i, image=image, output=output_name(kind, image)) for i, image in enumerate(images)]


def read_json(path: Path) -> Any:
    """The JSON content of ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
