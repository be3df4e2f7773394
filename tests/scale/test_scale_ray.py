"""The Ray engine (:func:`samkit.jobs.ray_engine`) on a local 2-CPU cluster started by this module:
``samkit.scale.run_job`` and ``samkit everything --engine ray``.

Checks that they write the same files as the local engines, and that killing a worker mid-job
loses and duplicates no image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from samkit.everything import SamAutomaticMaskGenerator
from samkit.everything.job import run_everything
from samkit.modeling import Sam
from samkit.scale import run_job

ray = pytest.importorskip("ray")  # the optional extra samkit[ray]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the whole module (start-up takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def _three(image_dir: Path) -> list[str]:
    """Three of the test images (enough to spread over two workers, fast on 2 cores)."""
    return sorted(str(p) for p in image_dir.rglob("*.png"))[:3]


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.parent != out}


def _assert_same_outputs(out: Path, reference: Path) -> None:
    """Same files with the same content; embeddings equal up to float rounding.

    Actor processes may pick a different CPU kernel than the test process, so float32
    features can differ in the last bits; everything records must be identical.
    """
    from safetensors import safe_open

    got, expected = _files(out), _files(reference)
    assert sorted(got) == sorted(expected) and len(expected) == 3
    for name in expected:
        if name.endswith(".safetensors"):
            with safe_open(str(out / name), "pt") as a, safe_open(str(reference / name), "pt") as b:
                assert a.metadata() == b.metadata()
                torch.testing.assert_close(a.get_tensor("features"), b.get_tensor("features"), rtol=1e-5, atol=1e-6)
        else:
            assert json.loads(got[name]) == json.loads(expected[name])


def _crash_once(base: Callable[[], Sam], flag: str) -> Callable[[], Sam]:
    """A factory whose model kills its process on the first image of the whole job.

    The flag file is created atomically by the first caller only; the restarted actor (and
    every other actor) finds it and runs normally. Nested, so Ray pickles it by value.
    """

    def factory() -> Sam:
        model = base()
        encode = model.encode_image

        def encode_image(x):  # type: ignore[no-untyped-def]
            try:
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return encode(x)
            os._exit(1)  # the worker process dies mid-job, without cleanup

        model.encode_image = encode_image  # type: ignore[method-assign]
        return model

    return factory


def test_ray_outputs_equal_local_outputs(ray_cluster, tiny_factory, image_dir, tmp_path, generator_kwargs) -> None:  # type: ignore[no-untyped-def]
    for kind, kwargs in (("embed", None), ("everything", generator_kwargs)):
        local, remote = tmp_path / f"{kind}-local", tmp_path / f"{kind}-ray"
        common = {"model_factory": tiny_factory, "generator_kwargs": kwargs, "threads": 1, "progress": False}
        run_job(kind, _three(image_dir), local, **common)
        summary = run_job(kind, _three(image_dir), remote, engine="ray", workers=2, **common)
        assert (summary.processed, summary.failed) == (3, 0)
        assert summary.details["actors"] == 2
        _assert_same_outputs(remote, local)
        assert (remote / "manifest.json").read_text() == (local / "manifest.json").read_text()


def test_killed_worker_is_retried_without_lost_or_duplicated_images(ray_cluster, tiny_factory, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    flag = tmp_path / "crashed"
    out = tmp_path / "out"
    summary = run_job(
        "embed",
        _three(image_dir),
        out,
        model_factory=_crash_once(tiny_factory, str(flag)),
        engine="ray",
        workers=2,
        threads=1,
        progress=False,
    )
    assert flag.exists()  # a worker really died
    assert (summary.total, summary.processed, summary.failed) == (3, 3, 0)
    manifest = json.loads((out / "manifest.json").read_text())
    images = [e["image"] for e in manifest["images"]]
    assert len(images) == len(set(images)) == 3
    assert all(e["status"] == "done" for e in manifest["images"])
    reference = tmp_path / "reference"
    run_job("embed", _three(image_dir), reference, model_factory=tiny_factory, threads=1, progress=False)
    _assert_same_outputs(out, reference)
    assert not any(p.name.startswith(".") for p in (out / "embeddings").iterdir())  # no temp files left


def _tree(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (relative path -> content)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_everything_cli_ray_writes_the_local_files(ray_cluster, tiny_factory, image_dir, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``samkit everything --engine ray`` = ``--engine local``: same PNGs, metadata, COCO, overlays, markers."""
    import samkit.build as build_module
    from samkit.cli import main
    from samkit.cli import engine_options

    monkeypatch.setattr(build_module, "build_sam", lambda *args, **kwargs: tiny_factory())  # --engine local
    factories: list[str] = []

    def model_factory(args):  # type: ignore[no-untyped-def]
        factories.append(args.engine)
        return tiny_factory, "tiny"

    monkeypatch.setattr(engine_options, "model_factory", model_factory)  # --engine ray
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    inputs = [*_three(image_dir), str(bad)]  # two of the three are called one.png
    local, remote = tmp_path / "local", tmp_path / "ray"
    options = ["--format", "both", "--overlay", "--points-per-side", "4", "--pred-iou-thresh", "0",
               "--stability-score-thresh", "0", "--threads", "1", "--no-progress"]  # fmt: skip
    assert main(["everything", *inputs, "--out", str(local), *options]) == 1  # the bad file
    local_run = capsys.readouterr()
    assert main(["everything", *inputs, "--out", str(remote), "--engine", "ray", "--workers", "2", *options]) == 1
    ray_run = capsys.readouterr()
    assert factories == ["ray"]  # the second run really went through Ray
    for run in (local_run, ray_run):
        assert "3 image(s) segmented, 0 already complete, 1 failed (not segmented)" in run.out and "images/s" in run.out
    assert ray_run.err == local_run.err and "failed, not segmented" in ray_run.err and "bad.png" in ray_run.err
    files = _tree(remote)
    assert files == _tree(local)
    assert "annotations.json" in files and sum(name.endswith("/overlay.png") for name in files) == 3
    assert sum(name.endswith("/metadata.csv") for name in files) == 3 and len(files) > 3 * 5
    # A rerun skips every finished image without starting workers; bad options fail before Ray.
    assert main(["everything", *_three(image_dir), "--out", str(remote), "--engine", "ray", *options]) == 0
    assert "0 image(s) segmented, 3 already complete" in capsys.readouterr().out
    assert main(["everything", str(bad), "--out", str(remote), "--engine", "ray", "--points-per-side", "0"]) == 2
    assert "points_per_side" in capsys.readouterr().err


def test_everything_killed_worker_is_retried_without_lost_or_duplicated_images(  # type: ignore[no-untyped-def]
    ray_cluster, tiny_factory, image_dir, tmp_path, generator_kwargs
) -> None:
    from samkit.everything.job import SegmentWork
    from samkit.jobs import ray_engine

    flag = tmp_path / "crashed"
    out = tmp_path / "out"
    crashing = ray_engine(SegmentWork(_crash_once(tiny_factory, str(flag)), generator_kwargs), workers=2, threads=1)
    summary = run_everything(None, _three(image_dir), out, fmt="both", engine=crashing)
    assert flag.exists()  # a worker really died
    assert (summary.done, summary.skipped, summary.failed) == (3, 0, 0)
    assert summary.details["actors"] == 2 and summary.images_per_second > 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the actors: same kernels, same float rounding
    try:
        generator = SamAutomaticMaskGenerator(tiny_factory(), output_mode="coco_rle", **generator_kwargs)
        run_everything(generator, _three(image_dir), tmp_path / "reference", fmt="both")
    finally:
        torch.set_num_threads(threads)
    files = _tree(out)
    assert files == _tree(tmp_path / "reference")  # nothing lost, nothing written twice or half
    assert not any(".tmp-" in name for name in files)
    coco = json.loads(files["annotations.json"])
    assert len(coco["images"]) == 3 and len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"]) > 0

    def no_work(tasks, sink):  # type: ignore[no-untyped-def]
        raise AssertionError(f"a rerun should have nothing to do, got {tasks}")

    summary = run_everything(None, _three(image_dir), out, fmt="both", engine=no_work)
    assert (summary.done, summary.skipped) == (0, 3)


@pytest.mark.parametrize("family", ["hq_sam", "sam2"])
def test_ray_runs_hq_and_sam2_models(ray_cluster, image_dir, tmp_path, generator_kwargs, family) -> None:  # type: ignore[no-untyped-def]
    """HQ-SAM and SAM 2.1 models (tiny, random weights) on Ray write what the local engine writes."""
    import functools
    import sys

    from samkit import build_sam

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
    from support import TINY_HQ_CONFIG, TINY_SAM2_CONFIG, make_tiny_hq_model, make_tiny_sam2_model

    if family == "sam2":
        config, model = TINY_SAM2_CONFIG, make_tiny_sam2_model(3)
        checkpoint = tmp_path / "tiny_sam2.pt"
        torch.save({"model": model.state_dict()}, checkpoint)  # SAM 2's released form
    else:
        config, model = TINY_HQ_CONFIG, make_tiny_hq_model(3)
        checkpoint = tmp_path / "tiny_hq.pth"
        torch.save(model.state_dict(), checkpoint)
    factory = functools.partial(build_sam, config, checkpoint, device="cpu")  # only samkit names: Ray pickles it
    for kind, kwargs in (("embed", None), ("everything", generator_kwargs)):
        local, remote = tmp_path / f"{kind}-local", tmp_path / f"{kind}-ray"
        common = {"model_factory": factory, "generator_kwargs": kwargs, "threads": 1, "progress": False}
        run_job(kind, _three(image_dir), local, **common)
        summary = run_job(kind, _three(image_dir), remote, engine="ray", workers=2, **common)
        assert (summary.processed, summary.failed) == (3, 0)
        _assert_same_outputs(remote, local)
