"""One full-size run: ``samkit export-onnx`` on a perturbed vit_b checkpoint, ORT vs torch.

int8 accuracy is tested on the tiny model (test_onnx_predictor); quantizing and running vit_b
too would double this test's ~1 minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx_support import (
    assert_logits_close,
    assert_masks_match,
    perturbed_sam,
    structured_image,
)

from samkit import SamPredictor, build_sam
from samkit.cli import main
from samkit.config import get_config
from samkit.onnx import DECODER_INPUTS, OnnxPredictor

PROMPTS = [
    {"point_coords": np.array([[400, 300]]), "point_labels": np.array([1])},
    {"point_coords": np.array([[100, 100], [500, 400]]), "point_labels": np.array([1, 0])},
    {"box": np.array([100, 80, 600, 500])},
    {"box": np.array([300, 200, 780, 590]), "point_coords": np.array([[500, 400]]), "point_labels": np.array([1])},
]


@pytest.mark.slow
def test_vit_b_export_matches_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "vit_b_perturbed.pth"
    torch.save(perturbed_sam(get_config("vit_b"), seed=3).state_dict(), checkpoint)
    out = tmp_path / "onnx"
    status = main(
        ["export-onnx", "--model", "vit_b", "--checkpoint", str(checkpoint), "--out", str(out), "--json"]
    )
    assert status == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["model"] == "vit_b"
    assert (Path(report["encoder"]).name, Path(report["decoder"]).name) == ("encoder.onnx", "decoder.onnx")
    decoder_inputs = [i.name for i in onnx.load(str(out / "decoder.onnx")).graph.input]
    assert decoder_inputs == list(DECODER_INPUTS)
    assert (out / "encoder.onnx").stat().st_size > 300e6 and not list(out.glob("*.data"))

    image = structured_image(600, 800, seed=5)
    theirs = SamPredictor(build_sam("vit_b", checkpoint))
    theirs.set_image(image)
    ours = OnnxPredictor.from_dir(out)
    ours.set_image(image)
    assert_logits_close(ours.get_image_embedding(), theirs.get_image_embedding().numpy(), what="vit_b embedding")
    for prompt in PROMPTS:
        for multimask in (True, False):
            ref = theirs.predict(**prompt, multimask_output=multimask, return_logits=True)
            got = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
            for a, b, name in zip(got, ref, ("masks", "scores", "low_res")):
                assert_logits_close(a, b, what=f"vit_b {sorted(prompt)} multimask={multimask} {name}")
            assert_masks_match(got[0] > 0, ref[0], what=f"vit_b {sorted(prompt)} binary")
