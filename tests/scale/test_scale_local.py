"""The local engine of ``samkit.scale.run_job``: outputs, manifest, resume, errors (no Ray)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from samkit import SamPredictor
from samkit.everything import SamAutomaticMaskGenerator
from samkit.io import load_image
from samkit.modeling import Sam
from samkit.scale import run_job


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_embed_outputs_load_back_and_match_direct_encoding(tiny_factory, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "emb"
    summary = run_job("embed", [str(image_dir)], out, model_factory=tiny_factory, progress=False, recursive=True)
    assert (summary.total, summary.processed, summary.skipped, summary.failed) == (5, 5, 0, 0)
    assert summary.images_per_second > 0
    manifest = _manifest(out)
    images = [e["image"] for e in manifest["images"]]
    assert sorted(images) == sorted(str(p) for p in image_dir.rglob("*.*"))
    outputs = [e["output"] for e in manifest["images"]]
    assert len(set(outputs)) == 5  # same file name in two folders does not collide
    model = tiny_factory()
    direct, loaded = SamPredictor(model), SamPredictor(model)
    for entry in manifest["images"]:
        assert entry["status"] == "done" and entry["count"] == 1
        direct.set_image(load_image(entry["image"]))
        loaded.load_embedding(out / entry["output"])
        assert loaded.original_size == direct.original_size and loaded.input_size == direct.input_size
        torch.testing.assert_close(loaded.features, direct.features, rtol=0, atol=1e-5)


def test_rerun_skips_done_images_and_redoes_missing_ones(tiny_factory, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "emb"
    calls: list[int] = []

    def counting_factory() -> Sam:
        calls.append(1)
        return tiny_factory()

    run_job("embed", [str(image_dir)], out, model_factory=counting_factory, progress=False, recursive=True)
    entries = _manifest(out)["images"]
    removed = out / entries[2]["output"]
    removed.unlink()
    kept = out / entries[0]["output"]
    kept_stat = kept.stat().st_mtime_ns
    summary = run_job("embed", [str(image_dir)], out, model_factory=counting_factory, progress=False, recursive=True)
    assert (summary.processed, summary.skipped, summary.failed) == (1, 4, 0)
    assert removed.is_file() and kept.stat().st_mtime_ns == kept_stat
    assert _manifest(out)["counts"] == {"done": 5, "failed": 0, "pending": 0}
    # nothing left to do: the model is not even built
    summary = run_job("embed", [str(image_dir)], out, model_factory=counting_factory, progress=False, recursive=True)
    assert (summary.processed, summary.skipped) == (0, 5)
    assert len(calls) == 2


def test_everything_records_match_the_generator(tiny_factory, image_dir, tmp_path, generator_kwargs) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "masks"
    inputs = sorted(str(p) for p in (image_dir / "a").iterdir())
    summary = run_job(
        "everything", inputs, out, model_factory=tiny_factory, generator_kwargs=generator_kwargs, progress=False
    )
    assert (summary.processed, summary.failed) == (2, 0)
    generator = SamAutomaticMaskGenerator(tiny_factory(), output_mode="coco_rle", **generator_kwargs)
    total = 0
    for entry in _manifest(out)["images"]:
        doc = json.loads((out / entry["output"]).read_text())
        image = load_image(entry["image"])
        expected = json.loads(json.dumps(generator.generate(image)))
        assert doc["image"] == entry["image"] and (doc["height"], doc["width"]) == image.shape[:2]
        assert doc["annotations"] == expected
        assert entry["count"] == len(expected)
        total += len(expected)
    assert total > 0  # the comparison above saw real masks


def test_unreadable_image_is_reported_and_retried_next_run(tiny_factory, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = next(image_dir.rglob("*.png"))
    out = tmp_path / "emb"
    summary = run_job("embed", [str(bad), str(good)], out, model_factory=tiny_factory, progress=False)
    assert (summary.processed, summary.failed) == (1, 1)
    entry = _manifest(out)["images"][0]
    assert entry["status"] == "failed" and "cannot read image" in entry["error"]
    summary = run_job("embed", [str(bad), str(good)], out, model_factory=tiny_factory, progress=False)
    assert (summary.processed, summary.skipped, summary.failed) == (0, 1, 1)


def test_bad_arguments_raise(
    tiny_factory: Callable[[], Sam], image_dir: Path, tmp_path: Path, generator_kwargs: dict
) -> None:
    with pytest.raises(ValueError, match="kind"):
        run_job("segment", [str(image_dir)], tmp_path / "x", model_factory=tiny_factory)
    with pytest.raises(ValueError, match="engine"):
        run_job("embed", [str(image_dir)], tmp_path / "x", model_factory=tiny_factory, engine="spark")
    with pytest.raises(ValueError, match="workers"):
        run_job("embed", [str(image_dir)], tmp_path / "x", model_factory=tiny_factory, workers=2)
    with pytest.raises(FileNotFoundError, match="nope"):
        run_job("embed", [str(tmp_path / "nope.png")], tmp_path / "x", model_factory=tiny_factory)
    with pytest.raises(ValueError, match="output_mode"):
        run_job("everything", [str(image_dir)], tmp_path / "x", model_factory=tiny_factory,
                generator_kwargs={"output_mode": "binary_mask"})
    one = [str(next(image_dir.rglob("*.png")))]
    run_job("everything", one, tmp_path / "y", model_factory=tiny_factory, generator_kwargs=generator_kwargs,
            progress=False)
    with pytest.raises(ValueError, match="different job"):
        run_job("everything", one, tmp_path / "y", model_factory=tiny_factory,
                generator_kwargs={**generator_kwargs, "points_per_side": 8}, progress=False)


def test_embed_cli_runs_resumes_and_rejects_bad_options(tiny_factory, image_dir, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import samkit.cli.engine_options as engine_options
    from samkit.cli import main

    monkeypatch.setattr(engine_options, "model_factory", lambda args: (tiny_factory, "tiny"))
    out = tmp_path / "cli"
    assert main(["embed", str(image_dir / "a"), "--out", str(out), "--no-progress"]) == 0
    assert "2 image(s) embedded, 0 already complete" in capsys.readouterr().out
    assert main(["embed", str(image_dir / "a"), "--out", str(out), "--no-progress"]) == 0
    assert "0 image(s) embedded, 2 already complete" in capsys.readouterr().out
    assert len(list((out / "embeddings").iterdir())) == 2
    assert main(["embed", str(image_dir), "--out", str(out), "--workers", "2"]) == 2
    assert "need --engine ray" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    # image_dir holds only folders: nothing without --recursive, all five images with it
    assert main(["embed", str(image_dir), "--out", str(tmp_path / "flat"), "--no-progress"]) == 2
    assert "--recursive" in capsys.readouterr().err
    assert main(["embed", str(image_dir), "--out", str(out), "--no-progress", "--recursive"]) == 0
    assert "3 image(s) embedded, 2 already complete" in capsys.readouterr().out
