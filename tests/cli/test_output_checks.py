"""Output paths are checked before the model loads; killed runs' temp files are removed; segment's output details.

The real command line runs with ``build_sam`` swapped for a tiny random model, and the tests
count how often it was built: a refused output must be reported before any model is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from samkit import build as build_module
from samkit.cli import main
from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from samkit.outputs import OutputPathError, check_output_dir, check_output_file, remove_stale_temp_files

TINY = SamConfig(
    name="tiny_cli",
    image_encoder=ImageEncoderConfig(
        img_size=256, embed_dim=32, depth=1, num_heads=2, window_size=4, global_attn_indexes=(0,), out_chans=32
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=16, input_image_size=256),
    mask_decoder=MaskDecoderConfig(
        transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32
    ),
)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Swap build_sam for the tiny model; the list records every build."""
    built: list[str] = []
    real_build = build_module.build_sam

    def fake_build_sam(variant: Any, checkpoint: Any = None, **kwargs: Any) -> Any:
        built.append(str(variant))
        torch.manual_seed(0)
        return real_build(TINY)

    monkeypatch.setattr(build_module, "build_sam", fake_build_sam)
    monkeypatch.setenv("SAMKIT_HOME", "/nonexistent-samkit-home")  # a download attempt would fail loudly
    return built


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    pixels = np.full((48, 64, 3), 30, dtype=np.uint8)
    pixels[10:30, 12:40] = rng.integers(100, 255, size=3, dtype=np.uint8)
    path = tmp_path / "pic.png"
    Image.fromarray(pixels).save(path)
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------- the library checks


def test_check_output_dir_creates_and_refuses_paths_below_a_file(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="file.txt is a file"):
        check_output_dir(blocker / "sub")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_dir(blocker)
    assert not list(tmp_path.rglob(".samkit-write-check-*"))


def test_check_output_file(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "m.png") == tmp_path / "m.png"
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "m.png")
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path)


def test_remove_stale_temp_files_touches_only_atomic_temp_names(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / ".0.png.tmp-0123456789ab", tmp_path / "sub" / ".metadata.csv.tmp-a1b2c3d4e5f6"]
    kept = [tmp_path / "0.png", tmp_path / ".done", tmp_path / "x.tmp-0123456789ab", tmp_path / ".y.tmp-xyz"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert remove_stale_temp_files(tmp_path / "missing") == 0


# ---------------------------------------------------------------- the commands


@pytest.mark.parametrize("command", ["everything", "embed"])
def test_batch_out_below_a_file_is_one_line_before_the_model(
    command: str, builds: list[str], picture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    assert main([command, str(picture), "--out", str(blocker / "out"), "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"samkit {command}: error: --out:") and "blocker is a file" in line
    assert builds == []


def test_segment_missing_out_folder_is_reported_before_the_model(
    builds: list[str], picture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-folder" / "mask.png"
    assert main(["segment", str(picture), "--point", "20,20", "--out", str(missing)]) == 2
    line = _one_error_line(capsys)
    assert "no-such-folder" in line and "does not exist" in line and ".tmp-" not in line
    assert builds == []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--out", "mask.jpg"], "ending in .png"),
        (["--out", "mask"], "ending in .png"),
        (["--out", "mask.png", "--overlay", "over.xyz"], "--overlay"),
    ],
)
def test_segment_output_suffix_refused_before_the_model(
    extra: list[str], fragment: str, builds: list[str], picture: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["segment", str(picture), "--point", "20,20", *extra]) == 2
    assert fragment in _one_error_line(capsys)
    assert builds == [] and not list(tmp_path.glob("mask*"))


def test_segment_json_rounds_scores_and_lists_one_area_per_mask(
    builds: list[str], picture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.png"
    overlay = tmp_path / "o.jpg"
    assert main(["segment", str(picture), "--point", "20,20", "--out", str(out), "--overlay", str(overlay),
                 "--all-masks", "--json"]) == 0
    captured = capsys.readouterr()
    assert "loading" in captured.err and "encoding" in captured.err  # said before the slow steps
    raw = captured.out.strip().splitlines()[-1]
    result = json.loads(raw)
    assert len(result["scores"]) == 3
    for score in result["scores"]:
        assert round(score, 4) == score
        assert len(repr(score).lstrip("-").split(".")[-1]) <= 4, raw  # no float32 noise digits
    files = [Path(p) for p in result["written"] if Path(p).suffix == ".png"]
    assert len(files) == 3 == len(result["mask_area"])
    for path, area in zip(files, result["mask_area"]):
        assert int((np.asarray(Image.open(path)) > 0).sum()) == area
    with Image.open(overlay) as picture_written:
        assert picture_written.format == "JPEG"  # the overlay's format follows its suffix


def test_everything_rerun_removes_temp_files_of_a_killed_run(
    builds: list[str], picture: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["everything", str(picture), "--out", str(out), "--points-per-side", "2", "--pred-iou-thresh", "0",
            "--stability-score-thresh", "0", "--no-progress"]
    assert main(args) == 0
    stale = [out / ".annotations.json.tmp-00112233aabb", out / "pic" / ".0.png.tmp-00112233aabb"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
    assert main(args) == 0
    assert not any(path.exists() for path in stale)


def test_embed_rerun_removes_temp_files_of_a_killed_run(builds: list[str], picture: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    args = ["embed", str(picture), "--out", str(out), "--no-progress", "--checkpoint", str(picture)]
    assert main(args) == 0
    stale = out / "embeddings" / ".pic-0123.safetensors.tmp-00112233aabb"
    stale.write_bytes(b"half-written")
    assert main(args) == 0
    assert not stale.exists()


def test_segment_and_embed_report_a_broken_png_by_name(
    builds: list[str], picture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from image_mutants import png_with_corrupt_second_idat

    broken = tmp_path / "inputs" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(png_with_corrupt_second_idat())
    (broken.parent / "good.png").write_bytes(picture.read_bytes())
    assert main(["segment", str(broken), "--point", "1,1", "--out", str(tmp_path / "m.png")]) == 2
    line = _one_error_line(capsys)
    assert "broken.png" in line and "broken PNG file" in line
    assert builds == []  # the image is read before the model loads

    out = tmp_path / "emb"
    assert main(["embed", str(broken.parent), "--out", str(out), "--no-progress", "--checkpoint", str(picture)]) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    status = {Path(entry["image"]).name: entry["status"] for entry in manifest["images"]}
    assert status == {"broken.png": "failed", "good.png": "done"}
