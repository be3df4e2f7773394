"""The Ray engine of ``samkit.scale.run_job`` on a local 2-CPU cluster started by this module.

Checks that it writes the same files as the local engine, and that killing a worker mid-job
loses and duplicates no image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

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
        common = dict(model_factory=tiny_factory, generator_kwargs=kwargs, threads=1, progress=False)
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
