"""The commands built on ``samkit.jobs`` write, byte for byte, the files their code wrote before.

``tests/jobs/legacy`` holds the job code as it was before the one job framework; each test runs it
and today's code on the same model, images and options in this process and compares every file
under the two output folders (masks, overlays, CSV, COCO / YOLO / Label Studio files, manifests,
embeddings and the resume markers), then removes one image's result from both, reruns both and
compares again (resuming writes the same files as well).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from samkit import annotate
from samkit.everything import SamAutomaticMaskGenerator
from samkit.everything.job import run_everything
from samkit.modeling import Sam
from samkit.scale import run_job

from .conftest import generator_kwargs, tree, write_detections
from .legacy import annotation_job as legacy_annotation
from .legacy import everything_job as legacy_everything
from .legacy import scale_job as legacy_scale


def _same_embedding(new: Path, old: Path) -> None:
    """Same metadata, same tensors bit for bit (safetensors orders the metadata keys of its
    header differently from one call to the next, so the bytes of two saves may differ)."""
    with safe_open(str(new), "pt") as a, safe_open(str(old), "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        for key in b.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


def _same_trees(new: Path, old: Path) -> dict[str, bytes]:
    got, expected = tree(new), tree(old)
    assert sorted(got) == sorted(expected)
    for name in expected:
        if name.endswith(".safetensors"):
            _same_embedding(new / name, old / name)
        else:
            assert got[name] == expected[name], name
    return got


def test_everything_writes_the_files_it_wrote_before(tiny_model: Sam, image_dir: Path, tmp_path: Path) -> None:
    generator = SamAutomaticMaskGenerator(tiny_model, output_mode="coco_rle", **generator_kwargs())
    options: dict[str, Any] = {"fmt": "both", "overlay": True, "signature": {"model": "tiny"}, "recursive": True}
    old, new = tmp_path / "old", tmp_path / "new"
    before = legacy_everything.run_everything(generator, [image_dir], old, **options)
    after = run_everything(generator, [image_dir], new, **options)
    assert (after.done, after.skipped, after.failed, after.masks) == (before.done, before.skipped, before.failed, before.masks)
    assert (after.done, after.failed) == (3, 1) and after.masks > 3
    files = _same_trees(new, old)
    assert "annotations.json" in files and sum(name.endswith("/.done") for name in files) == 3
    assert sum(name.endswith("/overlay.png") for name in files) == 3 and any(name.endswith("/0.png") for name in files)
    for root in (old, new):  # one image unfinished, as after a kill: both redo it and only it
        next(root.glob("two*/.done")).unlink()
    before = legacy_everything.run_everything(generator, [image_dir], old, **options)
    after = run_everything(generator, [image_dir], new, **options)
    assert (after.done, after.skipped, after.failed) == (before.done, before.skipped, before.failed) == (1, 2, 1)
    _same_trees(new, old)


def test_run_job_writes_the_files_it_wrote_before(tiny_factory: Callable[[], Sam], image_dir: Path, tmp_path: Path) -> None:
    for kind, kwargs in (("embed", None), ("everything", generator_kwargs())):
        old, new = tmp_path / f"{kind}-old", tmp_path / f"{kind}-new"
        options: dict[str, Any] = {"model_factory": tiny_factory, "generator_kwargs": kwargs, "job_id": "tiny",
                                   "progress": False, "recursive": True}
        before = legacy_scale.run_job(kind, [str(image_dir)], old, **options)
        after = run_job(kind, [str(image_dir)], new, **options)
        assert (after.total, after.processed, after.failed) == (before.total, before.processed, before.failed) == (4, 3, 1)
        files = _same_trees(new, old)
        assert {"manifest.json", "job.json"} <= set(files) and len(files) == 5
        for root in (old, new):
            next(p for p in root.rglob("two-*") if p.is_file()).unlink()
        before = legacy_scale.run_job(kind, [str(image_dir)], old, **options)
        after = run_job(kind, [str(image_dir)], new, **options)
        assert (after.processed, after.skipped, after.failed) == (before.processed, before.skipped, before.failed) == (1, 2, 1)
        _same_trees(new, old)


def test_annotate_writes_the_files_it_wrote_before(tiny_model: Sam, image_dir: Path, tmp_path: Path) -> None:
    boxes = write_detections(image_dir, tmp_path / "boxes.json")
    old, new = tmp_path / "old", tmp_path / "new"
    for segmentation in ("rle", "polygons"):
        options: dict[str, Any] = {"model": tiny_model, "fmt": "all", "segmentation": segmentation, "recursive": True,
                                   "batch_size": 1, "signature": {"model": "tiny"}, "min_score": 0.55}
        before = legacy_annotation.annotate([image_dir], boxes, old, **options)
        after = annotate([image_dir], boxes, new, **options)
        assert (after.done, after.skipped, after.failed, after.masks) == (before.done, before.skipped, before.failed, before.masks)
        assert [r.line() for r in after.bad_rows] == [r.line() for r in before.bad_rows] and len(after.bad_rows) == 2
        assert after.below_score == before.below_score > 0
        files = _same_trees(new, old)
        assert {"annotations.json", "labelstudio_tasks.json", "classes.txt"} <= set(files)
        assert sum(name.startswith(".samkit-annotate/") for name in files) == 3
    for root in (old, new):
        next((root / ".samkit-annotate").glob("two*")).unlink()
    before = legacy_annotation.annotate([image_dir], boxes, old, **options)
    after = annotate([image_dir], boxes, new, **options)
    assert (after.done, after.skipped, after.failed) == (before.done, before.skipped, before.failed) == (1, 2, 1)
    _same_trees(new, old)
