"""The local engine: one model replica in this process, images in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .scale_work import ImageProcessor, ImageResult, WorkItem

__all__ = ["run_local"]


def run_local(
    items: list[WorkItem],
    processor_kwargs: dict[str, Any],
    sink: Callable[[ImageResult], None],
) -> None:
    """Process ``items`` in this process, handing each result to ``sink`` as it is ready.

    Args:
        items: the images still to do.
        processor_kwargs: arguments of :class:`ImageProcessor` (kind, model_factory, ...).
        sink: called once per item, in order, with its result.
    """
    threads_before = torch.get_num_threads()
    try:
        processor = ImageProcessor(**processor_kwargs)
        for item in items:
            sink(processor(item))
    finally:
        torch.set_num_threads(threads_before)  # the processor may have changed it
