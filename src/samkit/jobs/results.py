"""What the per-image work of a job gives back: one :class:`ImageResult` per task.

Every engine runs a command's per-image function through :func:`run_one`, so a failure becomes
the same one-line reason wherever the image was processed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..io import ImageReadError

__all__ = ["ImageResult", "TaskFailed", "run_one"]

logger = logging.getLogger(__name__)


class TaskFailed(Exception):
    """Raised by a per-image function for an image it cannot process; the message is the reason."""


@dataclass
class ImageResult:
    """The outcome of one task.

    Attributes:
        task: the task (an :class:`samkit.jobs.ImageTask`, or a command's task type).
        output: what the command's per-image function returned (None when it failed).
        error: one-line reason when the image failed, else None.
        seconds: time the per-image function took.
        worker: the process that did the work (its pid), for the logs.
    """

    task: Any
    output: Any = None
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""

    @property
    def ok(self) -> bool:
        """Whether the image was processed."""
        return self.error is None


def run_one(process: Callable[[Any], Any], task: Any, *, worker: str = "") -> ImageResult:
    """Run a per-image function on one task; the image's own failures become a failed result.

    An unreadable image (:class:`samkit.io.ImageReadError`), a :class:`TaskFailed`, and a
    ``RuntimeError`` or ``ValueError`` of the model on this image (e.g. out of memory on a huge
    image) fail the task; anything else (a bug, an interruption) propagates.
    """
    start = time.perf_counter()
    try:
        output = process(task)
    except (ImageReadError, TaskFailed) as exc:
        return ImageResult(task, error=str(exc), seconds=time.perf_counter() - start, worker=worker)
    except (RuntimeError, ValueError) as exc:
        logger.warning("%s: %s", getattr(task, "path", task), exc)
        return ImageResult(task, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start, worker=worker)
    return ImageResult(task, output=output, seconds=time.perf_counter() - start, worker=worker)
