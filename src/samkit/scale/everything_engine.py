"""``samkit everything`` on a Ray actor pool: an engine for :func:`samkit.everything.job.run_everything`.

The actors run the same per-image function as the local engine
(:func:`samkit.everything.job.segment_task`, through :class:`ImageProcessor`) and send back its
result; ``run_everything`` in the driver writes every file with its ``OutputWriter``, so the two
engines share the per-image work and the writing, and a retried image is written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..everything.job import Engine, ImageTask, Outcome, TaskFailure
from ..modeling import Sam
from .work import ImageResult, WorkItem

__all__ = ["ray_everything_engine"]


def ray_everything_engine(
    model_factory: Callable[[], Sam],
    generator_kwargs: dict[str, Any] | None = None,
    *,
    workers: int = 1,
    address: str | None = None,
    threads: int | None = None,
) -> Engine:
    """An engine that segments on ``workers`` Ray actors, one model replica each.

    Args:
        model_factory: builds the model in each actor; must pickle (a top-level function or
            ``functools.partial(build_sam, ...)``).
        generator_kwargs: :class:`samkit.SamAutomaticMaskGenerator` arguments (``output_mode`` is
            always ``"coco_rle"``).
        workers: actors (model replicas).
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None joins the cluster
            this process is connected to, else starts a local one.
        threads: torch threads per actor (default: the CPUs reserved per actor).

    Returns:
        an :data:`samkit.everything.job.Engine` for ``run_everything(None, ..., engine=...)``. It
        reports an unreadable image, a model error on one image, or an image whose workers kept
        dying, as a :class:`TaskFailure` (retried by the next run); it returns the Ray counters
        (``actors``, ``resubmitted``, ``gpu``, ``cpus_per_worker``).

    Raises:
        ValueError: ``workers`` below 1.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    processor_kwargs = {
        "kind": "everything",
        "model_factory": model_factory,
        "generator_kwargs": dict(generator_kwargs or {}),
        "threads": threads,
    }

    def run(tasks: list[ImageTask], sink: Callable[[Outcome], None]) -> dict[str, Any]:
        from .ray_engine import run_ray

        items = [WorkItem(index=i, image=str(task.path), output=task.name) for i, task in enumerate(tasks)]

        def on_result(result: ImageResult) -> None:
            task = tasks[result.item.index]
            if result.ok and result.segments is not None:
                sink(dataclasses.replace(result.segments, task=task))  # the driver's task, not a copy
            else:
                sink(TaskFailure(task, result.error or "failed"))

        return dict(run_ray(items, processor_kwargs, on_result, workers=workers, address=address))

    return run
