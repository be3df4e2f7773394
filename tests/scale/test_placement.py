"""Actor placement: GPUs only when the device asks for them, never more actors than fit."""

from __future__ import annotations

import pytest

from samkit.jobs.placement import PlacementError, plan_actors, wants_gpu

ONE_CPU_NODE = [{"CPU": 2.0}]
GPU_NODE = [{"CPU": 16.0, "GPU": 2.0}]
TWO_NODES = [{"CPU": 8.0}, {"CPU": 8.0}]


def test_cpu_cluster_splits_its_cpus() -> None:
    plan = plan_actors(ONE_CPU_NODE, 2, "auto")
    assert (plan.gpus_per_worker, plan.cpus_per_worker, plan.threads) == (0, 1.0, 1)
    plan = plan_actors(ONE_CPU_NODE, 1, None)
    assert (plan.cpus_per_worker, plan.threads) == (2.0, 2)


def test_more_workers_than_cpus_is_an_error_not_a_hang() -> None:
    with pytest.raises(PlacementError, match="3 workers of 1 CPU.*at most 2 fit; use --workers 2"):
        plan_actors(ONE_CPU_NODE, 3, "cpu")


def test_gpus_only_when_the_device_asks() -> None:
    assert plan_actors(GPU_NODE, 2, "auto").gpus_per_worker == 1
    assert plan_actors(GPU_NODE, 2, "cuda").gpus_per_worker == 1
    assert plan_actors(GPU_NODE, 1, "cuda:1").gpus_per_worker == 1
    for device in ("cpu", "mps"):
        plan = plan_actors(GPU_NODE, 4, device)
        assert plan.gpus_per_worker == 0 and plan.cpus_per_worker == 4.0 and plan.threads == 4


def test_threads_follow_the_cpu_share_on_gpus_too() -> None:
    plan = plan_actors(GPU_NODE, 2, "cuda")
    assert plan.cpus_per_worker == 8.0 and plan.threads == 8
    assert plan_actors(GPU_NODE, 2, "cuda", threads=3).threads == 3


def test_more_gpu_workers_than_gpus_is_an_error() -> None:
    with pytest.raises(PlacementError, match="3 workers with a GPU each need 3 GPUs.*has 2"):
        plan_actors(GPU_NODE, 3, "auto")


def test_gpu_device_without_gpus_is_an_error() -> None:
    with pytest.raises(PlacementError, match="asks for GPUs, but the Ray cluster has none"):
        plan_actors(ONE_CPU_NODE, 1, "cuda")
    with pytest.raises(PlacementError):
        wants_gpu("gpu", 0)


def test_cpus_per_worker_fits_node_by_node() -> None:
    # 16 CPUs in total, but 5 per actor would fit only one actor per 8-CPU node.
    plan = plan_actors(TWO_NODES, 3, "cpu")
    assert plan.cpus_per_worker == 4.0
    with pytest.raises(PlacementError, match="at most 2 fit"):
        plan_actors(TWO_NODES, 3, "cpu", cpus_per_worker=5.0)
