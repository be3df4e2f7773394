"""The local engine: the per-image function in this process, images in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .results import ImageResult, run_one
from .runner import Engine

__all__ = ["local_engine"]


def local_engine(process: Callable[[Any], Any] | None = None, *, work: Any = None, threads: int | None = None) -> Engine:
    """An engine that runs ``process`` (or ``work.build()``, built when the engine runs) here.

    Args:
        process: the per-image function (task -> output), bound to a model this process has.
        work: an :class:`samkit.jobs.ImageWork`, for callers that have a factory, not a model;
            its model is built only when there is something to do.
        threads: torch intra-op threads while the engine runs (restored after; None: leave them).

    Returns:
        an :data:`samkit.jobs.Engine`; each task's failure becomes a failed :class:`ImageResult`
        (:func:`samkit.jobs.run_one`).

    Raises:
        ValueError: neither or both of ``process`` and ``work``.
    """
    if (process is None) == (work is None):
        raise ValueError("local_engine: give process or work")

    def run(tasks: list[Any], sink: Callable[[ImageResult], None]) -> None:
        import torch

        threads_before = torch.get_num_threads()
        try:
            if threads is not None:
                torch.set_num_threads(int(threads))
            function = process if process is not None else work.build()
            for task in tasks:
                sink(run_one(function, task))
        finally:
            torch.set_num_threads(threads_before)  # callers may run in-process (tests, notebooks)

    run.engine_name = "local"  # type: ignore[attr-defined]  # shown in JobSummary.line()
    return run
