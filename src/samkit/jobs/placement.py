"""Where the Ray actors go: GPUs only when the device asks for them, never more actors than fit.

An actor that Ray cannot place stays pending, and the images already queued on it wait with it:
the job would hang. :func:`plan_actors` therefore decides, before any actor starts, how many
CPUs (and whether a GPU) each actor reserves, from the cluster's nodes, and refuses a layout
that does not fit with a one-line :class:`PlacementError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ActorPlan", "PlacementError", "plan_actors", "wants_gpu"]

_GPU_NAMES = ("cuda", "gpu")


class PlacementError(ValueError):
    """The requested actors cannot all be placed on the cluster."""


@dataclass(frozen=True)
class ActorPlan:
    """Resources of each of ``workers`` identical actors.

    Attributes:
        workers: number of actors.
        gpus_per_worker: 1 when each actor takes a GPU, else 0.
        cpus_per_worker: CPUs Ray reserves per actor.
        threads: torch intra-op threads per actor (its CPU share, or the caller's choice).
    """

    workers: int
    gpus_per_worker: int
    cpus_per_worker: float
    threads: int


def wants_gpu(device: str | None, cluster_gpus: float) -> bool:
    """Whether actors should take a GPU for ``device``.

    ``cuda``, ``cuda:N`` and ``gpu`` do; ``cpu`` and ``mps`` do not (Ray knows no MPS);
    ``auto`` or None do when the cluster has GPUs.

    Raises:
        PlacementError: a GPU device on a cluster without GPUs.
    """
    name = (device or "auto").strip().lower()
    if name == "auto":
        return cluster_gpus >= 1
    if name.split(":")[0] in _GPU_NAMES:
        if cluster_gpus < 1:
            raise PlacementError(f"--device {device} asks for GPUs, but the Ray cluster has none")
        return True
    return False


def _fits(nodes: Sequence[Mapping[str, float]], cpus: float, gpus: int) -> int:
    """How many actors of ``cpus`` CPUs and ``gpus`` GPUs fit on ``nodes`` together."""
    total = 0
    for node in nodes:
        fit = math.floor(node.get("CPU", 0.0) / cpus + 1e-9) if cpus > 0 else math.inf
        if gpus:
            fit = min(fit, math.floor(node.get("GPU", 0.0) / gpus + 1e-9))
        total += int(fit) if fit != math.inf else 1 << 30
    return total


def plan_actors(
    nodes: Sequence[Mapping[str, float]],
    workers: int,
    device: str | None = "auto",
    *,
    cpus_per_worker: float | None = None,
    threads: int | None = None,
) -> ActorPlan:
    """The resources of each actor, checked against the cluster.

    Args:
        nodes: each alive node's total resources (``{"CPU": 16, "GPU": 2, ...}``, as Ray's
            ``ray.nodes()[i]["Resources"]``).
        workers: actors wanted.
        device: the model's device as given to the workers (``auto``, ``cpu``, ``cuda``, ...).
        cpus_per_worker: CPUs per actor; default: the largest whole number of CPUs for which
            ``workers`` actors fit on the nodes (at least 1).
        threads: torch threads per actor; default: ``cpus_per_worker``, at least 1.

    Returns:
        the plan.

    Raises:
        PlacementError: GPUs asked for on a cluster without them, or more actors than fit.
    """
    if workers < 1:
        raise PlacementError(f"workers: expected at least 1, got {workers}")
    cluster_gpus = sum(node.get("GPU", 0.0) for node in nodes)
    gpus = 1 if wants_gpu(device, cluster_gpus) else 0
    if gpus and _fits(nodes, 0.0, gpus) < workers:
        raise PlacementError(
            f"{workers} workers with a GPU each need {workers} GPUs, but the Ray cluster has "
            f"{int(cluster_gpus)}: use --workers {int(cluster_gpus)} or fewer, or --device cpu"
        )
    if cpus_per_worker is None:
        largest = max((int(node.get("CPU", 0.0)) for node in nodes), default=0)
        cpus_per_worker = 1.0
        for cpus in range(largest, 0, -1):
            if _fits(nodes, float(cpus), gpus) >= workers:
                cpus_per_worker = float(cpus)
                break
    placeable = _fits(nodes, cpus_per_worker, gpus)
    if placeable < workers:
        total_cpus = sum(node.get("CPU", 0.0) for node in nodes)
        raise PlacementError(
            f"{workers} workers of {cpus_per_worker:g} CPU(s){' and 1 GPU' if gpus else ''} each do not fit on the "
            f"Ray cluster ({total_cpus:g} CPUs{f', {int(cluster_gpus)} GPUs' if cluster_gpus else ''}): "
            f"at most {placeable} fit; use --workers {max(placeable, 1)} or fewer"
        )
    return ActorPlan(
        workers=workers,
        gpus_per_worker=gpus,
        cpus_per_worker=cpus_per_worker,
        threads=threads if threads is not None else max(1, int(cpus_per_worker)),
    )
