"""The Ray engine: a pool of actors, each holding one model replica, fed from a work queue.

Plain Ray actors rather than Ray Data: Ray Data pulls in pyarrow and pandas and adds a
streaming executor whose start-up costs seconds per job on a 2-core machine; our unit of work
(one image -> one file) needs only a queue. The driver is the only writer: actors read the
images (in parallel) and return the output bytes, so a retried task can never write twice.

A killed actor is restarted (``max_restarts``) and its in-flight calls are retried
(``max_task_retries``); an actor that stays dead is dropped and its images go back on the queue.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from .placement import plan_actors
from .work import ImageProcessor, ImageResult, WorkItem

__all__ = ["run_ray", "RayStats"]

logger = logging.getLogger(__name__)

# Calls queued per actor: one running, one waiting, so an actor never idles between images.
_IN_FLIGHT_PER_ACTOR = 2


class RayStats(dict):  # type: ignore[type-arg]
    """Counters of a Ray run: ``actors``, ``resubmitted`` (images moved off a dead actor)."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("engine='ray' needs Ray: pip install 'samkit[ray]'") from None
    return ray


def run_ray(
    items: list[WorkItem],
    processor_kwargs: dict[str, Any],
    sink: Callable[[ImageResult], None],
    *,
    workers: int = 1,
    address: str | None = None,
    cpus_per_worker: float | None = None,
    device: str | None = None,
    max_restarts: int = 3,
    max_attempts: int = 3,
) -> RayStats:
    """Process ``items`` on a Ray actor pool, handing each result to ``sink`` as it arrives.

    Args:
        items: the images still to do.
        processor_kwargs: arguments of :class:`ImageProcessor`; ``model_factory`` must pickle.
        sink: called once per item (in completion order) in this process.
        workers: actors, i.e. model replicas.
        address: Ray cluster address (None: join the running cluster if this process is
            connected, else start a local one).
        cpus_per_worker: CPUs reserved per actor (default: the most whole CPUs per actor for
            which every actor fits on the cluster's nodes, at least 1; see
            :func:`samkit.scale.placement.plan_actors`). Torch threads per actor default to it.
        device: the workers' model device (``auto``, ``cpu``, ``cuda``, ...); default: the
            ``device`` attribute of ``processor_kwargs["model_factory"]`` when it has one, else
            ``auto``. Actors take a GPU only for ``cuda``/``gpu``, or for ``auto`` on a cluster
            with GPUs; actors without one see no CUDA device.
        max_restarts: restarts of one actor after its process dies.
        max_attempts: actors an image may be sent to before it is reported failed.

    Returns:
        run counters.

    Raises:
        samkit.scale.placement.PlacementError: GPUs asked for on a cluster without them, or
            more actors than the cluster can place (they would wait forever), before any starts.
    """
    ray = _import_ray()
    from ray.exceptions import RayActorError

    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        started_here = True
    actors: list[Any] = []
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        if device is None:
            device = getattr(processor_kwargs.get("model_factory"), "device", None)
        plan = plan_actors(
            nodes, workers, device, cpus_per_worker=cpus_per_worker, threads=processor_kwargs.get("threads")
        )
        use_gpu = plan.gpus_per_worker > 0
        kwargs = dict(processor_kwargs)
        kwargs["threads"] = plan.threads
        actor_cls = ray.remote(_RayWorker).options(
            num_cpus=plan.cpus_per_worker,
            num_gpus=plan.gpus_per_worker,
            max_restarts=max_restarts,
            max_task_retries=max_restarts,
        )
        actors = [actor_cls.remote(kwargs, use_gpu) for _ in range(workers)]
        stats = RayStats(
            actors=len(actors),
            resubmitted=0,
            gpu=use_gpu,
            cpus_per_worker=plan.cpus_per_worker,
            threads=plan.threads,
        )
        _dispatch(ray, RayActorError, actors, items, sink, stats, max_attempts)
        return stats
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


def _dispatch(
    ray: Any,
    actor_error: type[BaseException],
    actors: list[Any],
    items: list[WorkItem],
    sink: Callable[[ImageResult], None],
    stats: RayStats,
    max_attempts: int,
) -> None:
    """Feed ``items`` to ``actors`` and pass each result to ``sink`` exactly once."""
    queue: deque[WorkItem] = deque(items)
    attempts: dict[int, int] = {}
    in_flight: dict[Any, tuple[int, WorkItem]] = {}  # ObjectRef -> (actor slot, item)
    load = [0] * len(actors)
    alive = [True] * len(actors)

    def submit(slot: int) -> None:
        while queue and load[slot] < _IN_FLIGHT_PER_ACTOR:
            item = queue.popleft()
            attempts[item.index] = attempts.get(item.index, 0) + 1
            in_flight[actors[slot].process.remote(item)] = (slot, item)
            load[slot] += 1

    for slot in range(len(actors)):
        submit(slot)
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        ref = ready[0]
        slot, item = in_flight.pop(ref)
        load[slot] -= 1
        try:
            result: ImageResult = ray.get(ref)
        except actor_error as exc:  # the actor is dead for good (restarts used up)
            alive[slot] = False
            if attempts[item.index] >= max_attempts or not any(alive):
                sink(ImageResult(item, ok=False, error=f"worker died: {exc.__class__.__name__}"))
            else:
                logger.warning("worker %d died; sending %s to another worker", slot, item.image)
                queue.appendleft(item)
                stats["resubmitted"] += 1
        else:
            sink(result)
        targets = [slot] if alive[slot] else [s for s in range(len(actors)) if alive[s]]
        for target in targets:
            submit(target)
    for item in queue:  # only left when every actor died
        sink(ImageResult(item, ok=False, error="no live workers"))


class _RayWorker:
    """Actor body: one :class:`ImageProcessor` (one model replica) per actor process."""

    def __init__(self, processor_kwargs: dict[str, Any], use_gpu: bool = False) -> None:
        import os

        from ..allocator import keep_freed_memory

        if not use_gpu:
            # No GPU was reserved for this actor: it must not use one (Ray may leave GPUs visible).
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self.processor = ImageProcessor(**processor_kwargs)
        if self.processor.model.device.type == "cpu":
            keep_freed_memory()  # a CPU malloc trick; the actor process is ours alone

    def process(self, item: WorkItem) -> ImageResult:
        """Process one image."""
        return self.processor(item)
