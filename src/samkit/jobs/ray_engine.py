"""The Ray engine: a pool of actors, each holding one model replica, fed from a work queue.

Plain Ray actors rather than Ray Data: Ray Data pulls in pyarrow and pandas and adds a
streaming executor whose start-up costs seconds per job on a 2-core machine; our unit of work
(one image -> one result) needs only a queue. The driver is the only writer: actors read the
images (in parallel) and return the command's per-image output, so a retried task can never
write twice.

A killed actor is restarted (``max_restarts``) and its in-flight calls are retried
(``max_task_retries``); an actor that stays dead is dropped and its images go back on the queue.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from .placement import plan_actors
from .results import ImageResult, run_one
from .runner import Engine
from .work import ImageWork

__all__ = ["RayWorker", "ray_engine"]

logger = logging.getLogger(__name__)

# Calls queued per actor: one running, one waiting, so an actor never idles between images.
IN_FLIGHT_PER_ACTOR = 2


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ImportError: Ray is not installed, with the install command.
    """
    try:
        import ray
    except ImportError:
        raise ImportError("engine='ray' needs Ray: pip install 'samkit[ray]'") from None
    return ray


def ray_engine(
    work: ImageWork,
    *,
    workers: int = 1,
    address: str | None = None,
    threads: int | None = None,
    cpus_per_worker: float | None = None,
    device: str | None = None,
    max_restarts: int = 3,
    max_attempts: int = 3,
) -> Engine:
    """An engine that runs ``work`` on ``workers`` Ray actors, one model replica each.

    Args:
        work: the per-image work; must pickle (its ``model_factory`` a top-level function, a
            ``functools.partial(build_sam, ...)`` or a dataclass instance).
        workers: actors (model replicas).
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None joins the cluster
            this process is connected to, else starts a local one.
        threads: torch threads per actor (default: the CPUs reserved per actor).
        cpus_per_worker: CPUs reserved per actor (default: the most whole CPUs per actor for
            which every actor fits on the cluster's nodes, at least 1; see
            :func:`samkit.jobs.placement.plan_actors`).
        device: the workers' model device (``auto``, ``cpu``, ``cuda``, ...); default: the
            ``device`` attribute of ``work.model_factory`` when it has one, else ``auto``. Actors
            take a GPU only for ``cuda``/``gpu``, or for ``auto`` on a cluster with GPUs; actors
            without one see no CUDA device.
        max_restarts: restarts of one actor after its process dies.
        max_attempts: actors an image may be sent to before it is reported failed.

    Returns:
        an :data:`samkit.jobs.Engine`. It reports an image whose workers kept dying as failed
        (retried by the next run) and returns the counters ``actors``, ``resubmitted``, ``gpu``,
        ``cpus_per_worker`` and ``threads``.

    Raises:
        ValueError: ``workers`` below 1 (at once); when run: ImportError without Ray, and
        :class:`samkit.jobs.placement.PlacementError` for GPUs asked of a cluster without them,
        or more actors than the cluster can place (they would wait forever), before any starts.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")

    def run(tasks: list[Any], sink: Callable[[ImageResult], None]) -> dict[str, Any]:
        ray = import_ray()
        from ray.exceptions import RayActorError

        started_here = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            started_here = True
        actors: list[Any] = []
        try:
            nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
            wanted = device if device is not None else getattr(work.model_factory, "device", None)
            plan = plan_actors(nodes, workers, wanted, cpus_per_worker=cpus_per_worker, threads=threads)
            use_gpu = plan.gpus_per_worker > 0
            actor_cls = ray.remote(RayWorker).options(
                num_cpus=plan.cpus_per_worker,
                num_gpus=plan.gpus_per_worker,
                max_restarts=max_restarts,
                max_task_retries=max_restarts,
            )
            actors = [actor_cls.remote(work, plan.threads, use_gpu) for _ in range(workers)]
            stats = {
                "actors": len(actors),
                "resubmitted": 0,
                "gpu": use_gpu,
                "cpus_per_worker": plan.cpus_per_worker,
                "threads": plan.threads,
            }
            _dispatch(ray, RayActorError, actors, tasks, sink, stats, max_attempts)
            return stats
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if started_here:
                ray.shutdown()

    run.engine_name = "ray"  # type: ignore[attr-defined]  # shown in JobSummary.line()
    return run


def _dispatch(
    ray: Any,
    actor_error: type[BaseException],
    actors: list[Any],
    tasks: list[Any],
    sink: Callable[[ImageResult], None],
    stats: dict[str, Any],
    max_attempts: int,
) -> None:
    """Feed ``tasks`` to ``actors`` and pass each result to ``sink`` exactly once, with the
    driver's own task object in it (not the copy the actor unpickled)."""
    queue: deque[int] = deque(range(len(tasks)))
    attempts = [0] * len(tasks)
    in_flight: dict[Any, tuple[int, int]] = {}  # ObjectRef -> (actor slot, task index)
    load = [0] * len(actors)
    alive = [True] * len(actors)

    def submit(slot: int) -> None:
        while queue and load[slot] < IN_FLIGHT_PER_ACTOR:
            index = queue.popleft()
            attempts[index] += 1
            in_flight[actors[slot].process.remote(tasks[index])] = (slot, index)
            load[slot] += 1

    for slot in range(len(actors)):
        submit(slot)
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        ref = ready[0]
        slot, index = in_flight.pop(ref)
        load[slot] -= 1
        try:
            result: ImageResult = ray.get(ref)
        except actor_error as exc:  # the actor is dead for good (restarts used up)
            alive[slot] = False
            if attempts[index] >= max_attempts or not any(alive):
                sink(ImageResult(tasks[index], error=f"worker died: {exc.__class__.__name__}"))
            else:
                logger.warning("worker %d died; sending %s to another worker", slot, getattr(tasks[index], "path", index))
                queue.appendleft(index)
                stats["resubmitted"] += 1
        else:
            sink(dataclasses.replace(result, task=tasks[index]))
        targets = [slot] if alive[slot] else [s for s in range(len(actors)) if alive[s]]
        for target in targets:
            submit(target)
    for index in queue:  # only left when every actor died
        sink(ImageResult(tasks[index], error="no live workers"))


class RayWorker:
    """Actor body: the per-image function of one :class:`ImageWork` (one model replica) per actor.

    Args:
        work: what to build.
        threads: torch intra-op threads of this process.
        use_gpu: whether Ray reserved a GPU for this actor.
    """

    def __init__(self, work: ImageWork, threads: int, use_gpu: bool = False) -> None:
        import os

        import torch

        from ..allocator import keep_freed_memory

        if not use_gpu:
            # No GPU was reserved for this actor: it must not use one (Ray may leave GPUs visible).
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.set_num_threads(int(threads))
        self.worker = str(os.getpid())
        self.function = work.build()
        if not use_gpu:
            keep_freed_memory()  # a CPU malloc trick; the actor process is ours alone

    def process(self, task: Any) -> ImageResult:
        """Process one image."""
        return run_one(self.function, task, worker=self.worker)
