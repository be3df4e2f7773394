"""Running a job's pending images on an engine and writing each result as it arrives.

Every batch command (``samkit everything``, ``embed``, ``annotate``) runs through
:func:`run_tasks`: it skips the images whose outputs are complete (the writer says which), hands
the rest to an :data:`Engine`, and passes each result that comes back to the writer, in this
process. This process is the only writer, so an image is written once even when an engine
retries it, and the files do not depend on the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..progress import make_progress
from .results import ImageResult
from .summary import JobSummary

__all__ = ["Engine", "ResultWriter", "run_tasks"]

logger = logging.getLogger(__name__)

# An engine runs the per-image work on every task and calls the sink once per task, in this
# process, in any order; it returns counters for JobSummary.details (or None).
Engine = Callable[[list[Any], Callable[[ImageResult], None]], "dict[str, Any] | None"]


class ResultWriter(Protocol):
    """Where a command's per-image results go."""

    def is_complete(self, task: Any) -> bool:
        """Whether the task's outputs are complete (its marker matches); it is then skipped."""
        ...

    def write(self, result: ImageResult) -> int:
        """Write a successful result's outputs atomically, its marker last; return how many
        masks (or embeddings) it holds."""
        ...


def run_tasks(
    tasks: Sequence[Any],
    engine: Engine,
    writer: ResultWriter,
    summary: JobSummary,
    *,
    progress: bool = False,
    on_failure: Callable[[Any, str], None] | None = None,
) -> JobSummary:
    """Process the tasks whose outputs are not complete, writing each result as it arrives.

    Args:
        tasks: every task of the job, in input order (each hashable, with a ``path``).
        engine: runs the per-image work (:func:`samkit.jobs.local_engine`,
            :func:`samkit.jobs.ray_engine`, or any :data:`Engine`); not called when nothing is
            pending.
        writer: says which tasks are complete and writes results.
        summary: counts go here (``total``, ``done``, ``skipped``, ``failed``, ``masks``,
            ``work_seconds``, ``failures``, ``details``).
        progress: show progress: a bar on a terminal, else a line about every 10 s.
        on_failure: called with each failed task and the reason (the log then has it at INFO;
            without it, a WARNING).

    Returns:
        ``summary``.
    """
    pending = []
    for task in tasks:
        if writer.is_complete(task):
            summary.skipped += 1
        else:
            pending.append(task)
    summary.total = len(tasks)
    handled: set[Any] = set()
    with make_progress(len(tasks), initial=summary.skipped, desc=f"samkit {summary.command}", unit="images",
                       enabled=progress) as bar:  # fmt: skip

        def sink(result: ImageResult) -> None:
            task = result.task
            if task in handled:  # an engine that reports an image twice never writes it twice
                logger.warning("duplicate result for %s ignored", task.path)
                return
            handled.add(task)
            if result.ok:
                summary.masks += writer.write(result)
                summary.done += 1
                summary.work_seconds += result.seconds
            else:
                reason = result.error or "failed"
                summary.failed += 1
                summary.failures.append((str(task.path), reason))
                if on_failure is not None:  # the caller reports it (the CLI prints it once)
                    logger.info("skipped %s: %s", task.path, reason)
                    on_failure(task, reason)
                else:
                    logger.warning("skipped %s: %s", task.path, reason)
            bar.update(1)

        if pending:
            summary.details = dict(engine(pending, sink) or {})
    return summary
