"""``samkit annotate`` on the command line: a run with a real (random-weight) MobileSAM checkpoint, user errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from samkit import build_sam
from samkit.cli import main
from samkit.config import VARIANTS


@pytest.fixture(scope="module")
def vit_t_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vit_t_random.pth"
    torch.save(build_sam(VARIANTS["vit_t"].with_overrides(name="vit_t_random")).state_dict(), path)
    return path


def test_cli_writes_every_format_and_reports_bad_rows(
    vit_t_checkpoint: Path, dataset: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = dict(dataset["coco"])
    coco["annotations"] = [*coco["annotations"], {"id": 99, "image_id": 11, "category_id": 42, "bbox": [1, 1, 5, 5]}]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(coco, indent=1))
    out = tmp_path / "out"
    argv = ["annotate", str(dataset["root"]), "-r", "--boxes", str(boxes), "--out", str(out), "--format", "labelstudio",
            "--model", "vit_t", "--checkpoint", str(vit_t_checkpoint), "--threads", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "3 image(s) annotated" in captured.out and "1 bad row(s)" in captured.out
    assert "unknown category id 42" in captured.err and "boxes.json line" in captured.err
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    assert [len(t["predictions"][0]["result"]) for t in tasks] == [2, 2, 2]
    assert not (out / "annotations.json").exists()
    rerun = [("coco" if arg == "labelstudio" else arg) for arg in argv]
    assert main(rerun) == 0  # rerun, another format: the stored masks are reused
    assert "0 image(s) annotated, 3 already complete" in capsys.readouterr().out
    written = json.loads((out / "annotations.json").read_text())
    assert len(written["annotations"]) == 6 and written["categories"] == coco["categories"]


@pytest.mark.parametrize(
    "extra, message",
    [(["--batch-size", "0"], "--batch-size"), (["--dataset", "missing.json"], "--dataset: no such file")],
)
def test_cli_user_errors_exit_2(extra: list[str], message: str, dataset: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["annotate", str(dataset["root"]), "--boxes", str(dataset["coco_path"]), "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
