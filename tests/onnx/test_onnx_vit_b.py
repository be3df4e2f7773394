"""Full size: ``samkit export-onnx --quantize int8`` on a perturbed vit_b checkpoint.

The float32 graphs must match torch; the int8 pair (``encoder.int8.onnx`` + ``decoder.onnx``)
must give masks with IoU >= 0.97 against the float32 graphs on every test prompt (the figure
is printed in the terminal summary). One export serves both tests (~2 minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx_support import (
    assert_logits_close,
    assert_masks_match,
    mask_iou,
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
INT8_MIN_IOU = 0.97


@dataclass(frozen=True)
class VitBExport:
    """The perturbed checkpoint, the CLI's JSON report and the export directory."""

    checkpoint: Path
    report: dict[str, str]
    out: Path
    image: np.ndarray


@pytest.fixture(scope="module")
def vit_b(tmp_path_factory: pytest.TempPathFactory) -> VitBExport:
    root = tmp_path_factory.mktemp("onnx_vit_b")
    checkpoint = root / "vit_b_perturbed.pth"
    torch.save(perturbed_sam(get_config("vit_b"), seed=3).state_dict(), checkpoint)
    out = root / "onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(
            ["export-onnx", "--model", "vit_b", "--checkpoint", str(checkpoint), "--out", str(out),
             "--quantize", "int8", "--json"]
        )
    assert status == 0
    report = json.loads(stdout.getvalue().strip().splitlines()[-1])
    return VitBExport(checkpoint, report, out, structured_image(600, 800, seed=5))


@pytest.fixture(scope="module")
def fp32_onnx(vit_b: VitBExport) -> OnnxPredictor:
    predictor = OnnxPredictor.from_dir(vit_b.out)
    predictor.set_image(vit_b.image)
    return predictor


@pytest.mark.slow
def test_vit_b_export_matches_torch(vit_b: VitBExport, fp32_onnx: OnnxPredictor) -> None:
    report, out = vit_b.report, vit_b.out
    assert report["model"] == "vit_b"
    names = {key: Path(value).name for key, value in report.items() if key not in ("model", "seconds")}
    assert names == {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "encoder_int8": "encoder.int8.onnx"}
    decoder_inputs = [i.name for i in onnx.load(str(out / "decoder.onnx")).graph.input]
    assert decoder_inputs == list(DECODER_INPUTS)
    assert (out / "encoder.onnx").stat().st_size > 300e6 and not list(out.glob("*.data"))

    theirs = SamPredictor(build_sam("vit_b", vit_b.checkpoint))
    theirs.set_image(vit_b.image)
    ours = fp32_onnx
    assert_logits_close(ours.get_image_embedding(), theirs.get_image_embedding().numpy(), what="vit_b embedding")
    for prompt in PROMPTS:
        for multimask in (True, False):
            ref = theirs.predict(**prompt, multimask_output=multimask, return_logits=True)
            got = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
            for a, b, name in zip(got, ref, ("masks", "scores", "low_res")):
                assert_logits_close(a, b, what=f"vit_b {sorted(prompt)} multimask={multimask} {name}")
            assert_masks_match(got[0] > 0, ref[0], what=f"vit_b {sorted(prompt)} binary")


@pytest.mark.slow
def test_vit_b_int8_masks_agree_with_fp32(
    vit_b: VitBExport, fp32_onnx: OnnxPredictor, report_figure: Callable[[str], None]
) -> None:
    out = vit_b.out
    # A real int8 encoder: every weight MatMul (4 per block) is MatMulInteger, and the file is < 1/3.
    graph = onnx.load(str(out / "encoder.int8.onnx")).graph
    weights = {t.name for t in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    assert Counter(n.op_type for n in graph.node)["MatMulInteger"] == 4 * 12
    fp32_size, int8_size = (out / "encoder.onnx").stat().st_size, (out / "encoder.int8.onnx").stat().st_size
    assert int8_size < fp32_size / 3
    assert not (out / "decoder.int8.onnx").exists(), "the decoder stays float32"

    int8 = OnnxPredictor.from_dir(out, quantized=True)
    int8.set_image(vit_b.image)
    per_prompt = []
    for prompt in PROMPTS:
        ious = []
        for multimask in (True, False):
            ref, _, _ = fp32_onnx.predict(**prompt, multimask_output=multimask)
            got, _, _ = int8.predict(**prompt, multimask_output=multimask)
            ious.extend(mask_iou(a, b) for a, b in zip(got, ref))
        per_prompt.append(ious)
    flat = [iou for ious in per_prompt for iou in ious]
    figure = (
        f"vit_b int8 vs fp32 mask IoU: min {min(flat):.4f}, mean {np.mean(flat):.4f} over {len(flat)} masks; "
        f"per prompt (3 multimask + 1 single): {[[round(x, 4) for x in ious] for ious in per_prompt]}; "
        f"encoder {int8_size / 1e6:.0f} MB int8 / {fp32_size / 1e6:.0f} MB fp32"
    )
    report_figure(figure)
    assert min(flat) >= INT8_MIN_IOU, figure
