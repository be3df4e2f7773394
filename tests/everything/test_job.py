"""``run_everything`` and ``samkit everything``: outputs, COCO validity, resume, bad files."""

from __future__ import annotations

import csv
import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

import samkit
from samkit.config import (
    ImageEncoderConfig,
    MaskDecoderConfig,
    PromptEncoderConfig,
    SamConfig,
)
from samkit.everything import SamAutomaticMaskGenerator
from samkit.everything import job as job_module
from samkit.everything.job import collect_inputs, run_everything
from samkit.everything.rle import rle_to_mask
from samkit.jobs import local_engine

from .conftest import make_image

GEN = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


def tiny_config() -> SamConfig:
    return SamConfig(
        name="tiny_job",
        image_encoder=ImageEncoderConfig(
            img_size=256, embed_dim=32, depth=1, num_heads=2, window_size=4, global_attn_indexes=(0,), out_chans=32
        ),
        prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=16, input_image_size=256),
        mask_decoder=MaskDecoderConfig(
            transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32
        ),
    )


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    torch.manual_seed(0)
    return samkit.build_sam(tiny_config())


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (h, w) in enumerate([(60, 90), (80, 50), (64, 64)]):
        Image.fromarray(make_image(h, w, seed=i)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / ".hidden.png").write_bytes(b"ignored")
    return folder


def _generator(model: Any) -> SamAutomaticMaskGenerator:
    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **GEN)


def test_outputs_coco_and_bad_files(tiny_model: Any, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    failures: list[str] = []
    summary = run_everything(
        _generator(tiny_model), [images], out, fmt="both", overlay=True, on_failure=lambda t, r: failures.append(t.path.name)
    )
    assert (summary.done, summary.skipped, summary.failed) == (3, 0, 2)
    assert sorted(failures) == ["broken.jpg", "notes.txt"]
    assert summary.masks > 3
    coco = COCO(str(summary.coco_path))  # pycocotools accepts the file
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == summary.masks
    assert coco.getCatIds() == [1]
    for i in range(3):
        folder = out / f"img{i}"
        rows = list(csv.DictReader((folder / "metadata.csv").read_text().splitlines()))
        pngs = sorted(folder.glob("[0-9]*.png"), key=lambda p: int(p.stem))
        assert len(rows) == len(pngs) > 0
        image_id = next(k for k, v in coco.imgs.items() if v["file_name"] == f"img{i}.png")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(rows)
        for row, png, ann in zip(rows, pngs, anns):
            mask = np.asarray(Image.open(png)) > 0
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            assert int(row["area"]) == ann["area"] == int(mask.sum())
            assert [int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h")] == ann["bbox"]
            assert isinstance(ann["segmentation"]["counts"], str) and ann["score"] == ann["predicted_iou"]
        overlay = np.asarray(Image.open(folder / "overlay.png"))
        assert overlay.shape == (*mask.shape, 3)
        assert (overlay != np.asarray(Image.open(images / f"img{i}.png"))).any()
    # Nothing half-written is left behind.
    assert not list(out.rglob(".*.tmp-*"))


def test_resume_after_a_kill(tiny_model: Any, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real_write = job_module.OutputWriter.write
    calls = {"n": 0}

    def dying_write(self: Any, result: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # die in the middle of the second image's outputs
            folder = self.image_dir(result.task)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "0.png").write_bytes(b"partial")
            raise KeyboardInterrupt
        return real_write(self, result)

    monkeypatch.setattr(job_module.OutputWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_everything(_generator(tiny_model), [images], out, fmt="both")
    monkeypatch.setattr(job_module.OutputWriter, "write", real_write)
    assert (out / "img0" / ".done").exists() and not (out / "img1" / ".done").exists()

    segmented: list[str] = []
    real_segment = job_module.segment_task

    def counting_segment(generator: Any, task: Any, **kwargs: Any) -> Any:
        segmented.append(task.name)
        return real_segment(generator, task, **kwargs)

    monkeypatch.setattr(job_module, "segment_task", counting_segment)
    summary = run_everything(_generator(tiny_model), [images], out, fmt="both")
    assert segmented == ["broken", "img1", "img2", "notes"]  # img0 was complete; unreadable files are retried
    assert (summary.done, summary.skipped, summary.failed) == (2, 1, 2)
    data = json.loads(summary.coco_path.read_text())
    assert sorted(im["file_name"] for im in data["images"]) == ["img0.png", "img1.png", "img2.png"]
    ids = [a["id"] for a in data["annotations"]]
    assert len(ids) == len(set(ids))
    for i in range(3):
        rows = list(csv.DictReader((out / f"img{i}" / "metadata.csv").open()))
        pngs = list((out / f"img{i}").glob("[0-9]*.png"))
        assert len(pngs) == len(rows)  # the partial file was replaced, no stale masks
        for png in pngs:
            Image.open(png).load()
    # A third run has nothing to do; changed settings redo everything.
    assert run_everything(_generator(tiny_model), [images], out, fmt="both").skipped == 3
    assert run_everything(_generator(tiny_model), [images], out, fmt="both", signature={"x": 1}).done == 3


def test_collect_inputs(images: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(make_image(20, 20, seed=9)).save(other / "img0.jpg")
    tasks = collect_inputs([images / "img0.png", str(images / "img*.png"), other])
    names = [t.name for t in tasks]
    assert len(tasks) == 4 and len(set(names)) == 4  # duplicates dropped, same stems disambiguated
    assert "img1" in names and "img2" in names
    with pytest.raises(FileNotFoundError, match="matches no file"):
        collect_inputs([str(tmp_path / "*.tif")])
    with pytest.raises(FileNotFoundError, match="no such file"):
        collect_inputs([tmp_path / "missing.png"])


def test_cli(
    tiny_model: Any, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, caplog: Any
) -> None:
    """The real command line, with the model builder swapped for the tiny random model."""
    from samkit import build as build_module
    from samkit.cli import main

    built: list[tuple[Any, ...]] = []

    def fake_build_sam(variant: Any, checkpoint: Any = None, **kwargs: Any) -> Any:
        built.append((variant, checkpoint, kwargs.get("dtype")))
        return tiny_model

    monkeypatch.setattr(build_module, "build_sam", fake_build_sam)
    out = tmp_path / "cli"
    args = ["everything", str(images), "--out", str(out), "--format", "coco", "--points-per-side", "2",
            "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--no-progress"]
    assert main(args) == 1  # two unreadable files
    captured = capsys.readouterr()
    assert "failed, not segmented" in captured.err and "notes.txt" in captured.err and "broken.jpg" in captured.err
    # Reported once: the CLI prints each failure; the job's log has it below WARNING.
    assert sum("notes.txt" in line for line in captured.err.splitlines()) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "notes.txt" in r.getMessage()]
    assert "3 image(s) segmented" in captured.out and "2 failed" in captured.out
    assert built == [("vit_b", None, "float32")]
    COCO(str(out / "annotations.json"))
    assert main(["everything", str(images / "img0.png"), *args[2:]]) == 0  # complete now: skipped
    assert "0 image(s) segmented, 1 already complete" in capsys.readouterr().out
    assert main(["everything", str(tmp_path / "nope.png"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["everything", str(images), "--out", str(out), "--points-per-side", "0"]) == 2
    assert "points_per_side" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["everything", str(empty), "--out", str(tmp_path / "from-empty"), "--no-progress"]) == 0
    assert "hold no files" in capsys.readouterr().err


def _nested_images(root: Path) -> Path:
    for i, name in enumerate(["top.png", "train/a.png", "val/a.png"]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_image(40, 56, seed=i)).save(root / name)
    return root


def test_recursive_inputs_never_read_the_output_folder(tiny_model: Any, tmp_path: Path) -> None:
    """--recursive reads subfolders; an output folder inside the input folder is not read back."""
    root = _nested_images(tmp_path / "data")
    out = root / "masks"
    flat = run_everything(_generator(tiny_model), [root], out, fmt="png", overlay=True)
    assert (flat.done, flat.failed) == (1, 0)  # without recursion: top.png only
    deep = run_everything(_generator(tiny_model), [root], out, fmt="png", overlay=True, recursive=True)
    assert (deep.done, deep.skipped, deep.failed) == (2, 1, 0)  # the two a.png, not the masks/ PNGs
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(names) == 3 and names[-1] == "top" and all(n.startswith("a-") for n in names[:2])
    again = run_everything(_generator(tiny_model), [root], out, fmt="png", overlay=True, recursive=True)
    assert (again.done, again.skipped, again.failed) == (0, 3, 0)


def test_coco_file_names_are_relative_to_the_input_folder(tiny_model: Any, tmp_path: Path) -> None:
    """train/a.png and val/a.png stay apart in the COCO file."""
    root = _nested_images(tmp_path / "data")
    run_everything(_generator(tiny_model), [root], root / "coco", fmt="coco", recursive=True)
    images = json.loads((root / "coco" / "annotations.json").read_text())["images"]
    assert sorted(i["file_name"] for i in images) == ["top.png", "train/a.png", "val/a.png"]


def test_overlay_colours_distinct(tiny_model: Any, tmp_path: Path) -> None:
    image = make_image(40, 40, seed=3)
    Image.fromarray(image).save(tmp_path / "a.png")
    summary = run_everything(_generator(tiny_model), [tmp_path / "a.png"], tmp_path / "o", fmt="png", overlay=True)
    assert summary.done == 1
    data = json.loads((tmp_path / "o" / "a" / "result.json").read_text())
    assert all(rle_to_mask(a["segmentation"]).shape == (40, 40) for a in data["annotations"])


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_engine_contract(tiny_model: Any, images: Path, tmp_path: Path) -> None:
    """Any engine gives the default engine's files; an image reported twice is written once."""
    reference = run_everything(_generator(tiny_model), [images], tmp_path / "ref", fmt="both", overlay=True)
    engine_calls: list[list[str]] = []

    def twice(tasks: list[Any], sink: Any) -> dict[str, Any]:
        engine_calls.append([t.name for t in tasks])
        outcomes: list[Any] = []
        local_engine(functools.partial(job_module.segment_task, _generator(tiny_model)))(list(reversed(tasks)), outcomes.append)  # any order
        for outcome in outcomes + outcomes:  # e.g. a retried worker call
            sink(outcome)
        return {"calls": len(engine_calls)}

    summary = run_everything(None, [images], tmp_path / "out", fmt="both", overlay=True, engine=twice)
    assert (reference.done, reference.failed) == (3, 2)
    assert (summary.done, summary.failed, summary.masks) == (reference.done, reference.failed, reference.masks)
    assert summary.details == {"calls": 1} and summary.images_per_second > 0
    assert "images/s" in summary.line()
    assert _tree(tmp_path / "out") == _tree(tmp_path / "ref")
    # Nothing pending (the two unreadable files aside): the engine only sees those.
    run_everything(None, [images], tmp_path / "out", fmt="both", overlay=True, engine=twice)
    assert engine_calls[-1] == ["broken", "notes"]
    with pytest.raises(ValueError, match="generator"):
        run_everything(None, [images], tmp_path / "x")


def test_cli_engine_options(images: Path, tmp_path: Path, capsys: Any) -> None:
    from samkit.cli import main

    out = str(tmp_path / "o")
    assert main(["everything", str(images), "--out", out, "--workers", "2"]) == 2
    assert "need --engine ray" in capsys.readouterr().err
    assert main(["everything", str(images), "--out", out, "--ray-address", "auto"]) == 2
    with pytest.raises(SystemExit):  # argparse: not a choice
        main(["everything", str(images), "--out", out, "--engine", "spark"])
    assert main(["everything", str(images), "--out", out, "--threads", "0"]) == 2
    assert not (tmp_path / "o").exists()
