"""The images of a job: one :class:`ImageTask` per input file, with a unique output name."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..inputs import expand_inputs

__all__ = ["ImageTask", "collect_inputs"]


@dataclass(frozen=True)
class ImageTask:
    """One input image, the name of its outputs, and the name it carries in data sets.

    Attributes:
        path: the file.
        name: a name unique within the job (the file's stem, plus a short hash of its path when
            two inputs share a stem); commands name per-image outputs after it.
        file_name: the image's path below the input folder it was found in (see
            :class:`samkit.inputs.InputFile`); empty means the file's name.
    """

    path: Path
    name: str
    file_name: str = ""


def collect_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> list[ImageTask]:
    """Expand image files, folders and glob patterns (see :mod:`samkit.inputs`) into tasks.

    Every file found is a candidate: files that turn out not to be images are reported and
    skipped when read.

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
