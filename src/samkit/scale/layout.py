"""Where a job's files live: the input list, one output file per image, the manifest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .work import WorkItem

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST_NAME",
    "JOB_FILE_NAME",
    "list_images",
    "work_items",
    "read_json",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MANIFEST_NAME = "manifest.json"
JOB_FILE_NAME = "job.json"
_SUBDIR = {"everything": ("masks", ".json"), "embed": ("embeddings", ".safetensors")}


def list_images(inputs: list[str]) -> list[str]:
    """Expand directories (recursively, sorted) into image files; keep files as given.

    Args:
        inputs: image files and/or directories.

    Returns:
        image paths in order, each once (first occurrence wins).

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: nothing to process.
    """
    images: list[str] = []
    seen: set[str] = set()
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(
                str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.exists():
            found = [str(path)]
        else:
            raise FileNotFoundError(f"no such image file or directory: {entry}")
        for image in found:
            key = os.path.abspath(image)
            if key not in seen:
                seen.add(key)
                images.append(image)
    if not images:
        raise ValueError("no images found in the inputs")
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
