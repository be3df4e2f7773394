"""``samkit segment --model sam2.1_hiera_t``: the CLI runs a SAM 2.1 model end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import samkit
from samkit.build_sam2 import get_sam2_config
from samkit.cli import main
from samkit.everything import SamAutomaticMaskGenerator
from samkit.modeling.sam2 import Sam2

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"


def test_segment_with_sam21(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = Sam2(get_sam2_config("sam2.1_hiera_t"))
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    out = tmp_path / "mask.png"
    rc = main(
        ["segment", str(EXAMPLE), "--model", "sam2.1_hiera_t", "--checkpoint", str(checkpoint),
         "--point", "225,150", "--out", str(out), "--json", "--device", "cpu"]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = np.asarray(Image.open(out)) > 0

    predictor = samkit.SamPredictor(samkit.build_sam("sam2.1_hiera_t", checkpoint))
    predictor.set_image(samkit.load_image(EXAMPLE))
    masks, scores, _ = predictor.predict(point_coords=np.array([[225, 150]]), point_labels=np.array([1]))
    np.testing.assert_allclose(result["scores"], scores, rtol=0, atol=1e-4)  # printed with 4 decimals
    np.testing.assert_array_equal(written, masks[int(np.argmax(scores))])


@pytest.mark.parametrize("name", ["sam2.1_hiera_t", "sam2_hiera_b+"])
def test_annotate_and_label_studio_take_the_sam2_names(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """annotate and label-studio take the SAM 2.x names like every other command with --model (the
    runs: tests/annotation, tests/labelstudio): the parse gets past --model to the next user error
    (exit 2, one line); a name that is no model is still refused as a usage error."""
    for argv, message in (
        (["annotate", "in.png", "--boxes", "boxes.json", "--out", "unused", "--checkpoint", "missing.pt"], "--checkpoint: no such file"),
        (["label-studio", "--label-studio-url", "http://127.0.0.1:1", "--api-key", "k", "--cache-images", "0"], "--cache-images"),
    ):
        assert main([*argv, "--model", name]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--model", name.replace("hiera", "hieraX")])
        assert exit_info.value.code == 2
        assert "invalid choice: " in capsys.readouterr().err


def test_everything_with_sam21(tmp_path: Path) -> None:
    """``samkit everything --model sam2.1_hiera_t`` writes the generator's masks."""
    torch.manual_seed(1)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": Sam2(get_sam2_config("sam2.1_hiera_t")).state_dict()}, checkpoint)
    image = samkit.load_image(EXAMPLE)[:120, :160]
    source = tmp_path / "in" / "small.png"
    source.parent.mkdir()
    Image.fromarray(image).save(source)
    options = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--box-nms-thresh", "1"]
    out = tmp_path / "out"
    rc = main(["everything", str(source), "--out", str(out), "--model", "sam2.1_hiera_t", "--checkpoint", str(checkpoint),
               "--device", "cpu", "--no-progress", *options])
    assert rc == 0
    rows = list(csv.DictReader((out / "small" / "metadata.csv").read_text().splitlines()))
    generator = SamAutomaticMaskGenerator(
        samkit.build_sam("sam2.1_hiera_t", checkpoint),
        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
    )
    expected = generator.generate(image)
    assert len(rows) == len(expected) == 12
    assert sorted(int(r["area"]) for r in rows) == sorted(int(r["area"]) for r in expected)


def test_embed_with_sam21(tmp_path: Path) -> None:
    """``samkit embed --model sam2.1_hiera_t`` writes files that load_embedding reads back whole."""
    torch.manual_seed(2)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": Sam2(get_sam2_config("sam2.1_hiera_t")).state_dict()}, checkpoint)
    image = samkit.load_image(EXAMPLE)[:100, :140]
    source = tmp_path / "in" / "small.png"
    source.parent.mkdir()
    Image.fromarray(image).save(source)
    out = tmp_path / "out"
    rc = main(["embed", str(source), "--out", str(out), "--model", "sam2.1_hiera_t", "--checkpoint", str(checkpoint),
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    (embedding,) = list(out.rglob("*.safetensors"))
    model = samkit.build_sam("sam2.1_hiera_t", checkpoint)
    loaded, direct = samkit.SamPredictor(model), samkit.SamPredictor(model)
    loaded.load_embedding(embedding)
    direct.set_image(image)
    assert loaded.high_res_features is not None and len(loaded.high_res_features) == 2
    prompt = {"point_coords": np.array([[70, 50]]), "point_labels": np.array([1]), "return_logits": True}
    for a, b in zip(loaded.predict(**prompt), direct.predict(**prompt)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
