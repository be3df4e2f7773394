"""``samkit annotate --engine ray`` on a local 2-CPU Ray cluster writes the local engine's files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from samkit.modeling import Sam

from .conftest import tree, write_detections

ray = pytest.importorskip("ray")  # the optional extra samkit[ray]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def test_annotate_ray_writes_the_local_files(  # type: ignore[no-untyped-def]
    ray_cluster, tiny_factory: Callable[[], Sam], image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import samkit.build as build_module
    from samkit.cli import engine_options, main

    monkeypatch.setattr(build_module, "build_sam", lambda *args, **kwargs: tiny_factory())  # --engine local
    factories: list[str] = []

    def model_factory(args: Any) -> Any:
        factories.append(args.engine)
        return tiny_factory, "tiny"

    monkeypatch.setattr(engine_options, "model_factory", model_factory)  # --engine ray
    boxes = write_detections(image_dir, tmp_path / "boxes.json")
    local, remote = tmp_path / "local", tmp_path / "ray"
    options = [str(image_dir), "--boxes", str(boxes), "--recursive", "--format", "all", "--batch-size", "1",
               "--threads", "1", "--no-progress"]  # fmt: skip
    assert main(["annotate", *options, "--out", str(local)]) == 1  # b/bad.png is not an image
    local_run = capsys.readouterr()
    assert main(["annotate", *options, "--out", str(remote), "--engine", "ray", "--workers", "2"]) == 1
    ray_run = capsys.readouterr()
    assert factories == ["ray"] and " on ray" in ray_run.out  # the second run really went through Ray
    for run in (local_run, ray_run):
        assert "3 image(s) annotated, 0 already complete, 1 failed" in run.out and "2 bad row(s)" in run.out
    assert ray_run.err == local_run.err and "bad.png" in ray_run.err and "unknown category" in ray_run.err
    files = tree(remote)
    assert files == tree(local)
    assert {"annotations.json", "labelstudio_tasks.json", "classes.txt"} <= set(files)
    assert sum(name.startswith(".samkit-annotate/") for name in files) == 3
    # A rerun skips every finished image; the unreadable one is tried again.
    assert main(["annotate", *options, "--out", str(remote), "--engine", "ray"]) == 1
    assert "0 image(s) annotated, 3 already complete, 1 failed" in capsys.readouterr().out
    assert tree(remote) == files


def test_annotate_engine_options_are_checked(image_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from samkit.cli import main

    boxes = write_detections(image_dir, tmp_path / "boxes.json")
    base = ["annotate", str(image_dir), "--boxes", str(boxes), "--out", str(tmp_path / "o")]
    assert main([*base, "--workers", "2"]) == 2
    assert "need --engine ray" in capsys.readouterr().err
    assert main([*base, "--threads", "0"]) == 2
    assert not (tmp_path / "o").exists()
