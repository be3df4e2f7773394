"""A corrupt file that makes the decoder raise something unusual is reported and skipped; the rest is done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from image_mutants import png_with_corrupt_second_idat
from PIL import Image

import samkit
from samkit.everything import SamAutomaticMaskGenerator
from samkit.everything.job import run_everything

from .conftest import make_image
from .test_job import GEN, tiny_config


def test_broken_png_chunk_is_reported_skipped_and_the_rest_done(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = samkit.build_sam(tiny_config())
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_broken.png").write_bytes(png_with_corrupt_second_idat())
    Image.fromarray(make_image(40, 50, seed=1)).save(folder / "b_good.png")
    failures: list[tuple[str, str]] = []

    def on_failure(task: Any, reason: str) -> None:
        failures.append((task.path.name, reason))

    out = tmp_path / "out"
    generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **GEN)
    summary = run_everything(generator, [folder], out, fmt="coco", on_failure=on_failure)
    assert (summary.done, summary.failed) == (1, 1)
    assert len(failures) == 1 and failures[0][0] == "a_broken.png"
    assert "broken PNG file" in failures[0][1]
    data = json.loads((out / "annotations.json").read_text())
    assert [image["file_name"] for image in data["images"]] == ["b_good.png"]
