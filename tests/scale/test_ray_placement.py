"""The Ray engine on a fake resource layout (one GPU declared, none real): a layout that cannot
place every actor is refused at once instead of hanging, and ``--device cpu`` takes no GPU."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from samkit.modeling import Sam
from samkit.jobs import ImageResult, ImageTask, ray_engine
from samkit.jobs.placement import PlacementError
from samkit.scale.embed import EmbedWork

ray = pytest.importorskip("ray")  # the optional extra samkit[ray]


@pytest.fixture(scope="module")
def fake_gpu_cluster() -> Iterator[None]:
    """A local cluster that claims 2 CPUs, 1 GPU and a custom resource (no GPU is real)."""
    ray.init(num_cpus=2, num_gpus=1, resources={"fake_accelerator": 1}, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def _run_with_deadline(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()`` in a thread; fails the test if it has not returned after ``seconds`` (a hang)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: the job hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _tasks(image_dir: Path, n: int) -> list[ImageTask]:
    images = sorted(image_dir.rglob("*.png"))[:n]
    return [ImageTask(path=image, name=str(i)) for i, image in enumerate(images)]


def test_more_gpu_workers_than_gpus_fails_at_once(fake_gpu_cluster, tiny_factory: Callable[[], Sam], image_dir: Path) -> None:  # type: ignore[no-untyped-def]
    results: list[ImageResult] = []
    engine = ray_engine(EmbedWork(tiny_factory), workers=2)
    with pytest.raises(PlacementError, match="2 workers with a GPU each need 2 GPUs"):
        # auto on a cluster with GPUs: one GPU per actor, and only one GPU: before, the second
        # actor stayed pending with images queued on it, and the job never ended.
        _run_with_deadline(lambda: engine(_tasks(image_dir, 2), results.append), 30)
    assert results == []


def test_device_cpu_takes_no_gpu_and_finishes(fake_gpu_cluster, tiny_factory: Callable[[], Sam], image_dir: Path) -> None:  # type: ignore[no-untyped-def]
    results: list[ImageResult] = []
    engine = ray_engine(EmbedWork(tiny_factory), workers=2, device="cpu")
    stats = _run_with_deadline(lambda: engine(_tasks(image_dir, 2), results.append), 120)
    assert stats["gpu"] is False and stats["actors"] == 2
    assert stats["cpus_per_worker"] == 1.0 and stats["threads"] == 1  # each actor's share of the 2 CPUs
    assert sorted(r.task.name for r in results) == ["0", "1"] and all(r.ok for r in results), results
