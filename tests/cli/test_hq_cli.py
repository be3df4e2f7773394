"""The command line with HQ-SAM models: ``segment``, ``everything`` and ``embed --model hq_vit_tiny``,
``download hq_vit_b``, ``sam_model_registry``, and export-onnx's SAM 1-only option refused (HQ export
itself: tests/onnx/test_onnx_hq.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import samkit
from samkit.cli import main
from samkit.config import VARIANTS
from samkit.modeling.hq_sam import HQSam

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"


@pytest.fixture(scope="module")
def hq_tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, perturbed hq_vit_tiny checkpoint (official key names)."""
    torch.manual_seed(0)
    model = HQSam(VARIANTS["hq_vit_tiny"])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.02)
    path = tmp_path_factory.mktemp("hq_ckpt") / "sam_hq_vit_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def test_segment_with_hq_model(hq_tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mask.png"
    rc = main(
        ["segment", str(EXAMPLE), "--model", "hq_vit_tiny", "--checkpoint", str(hq_tiny_checkpoint),
         "--point", "225,150", "--out", str(out), "--json"]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["scores"]) == 1  # HQ-SAM: one mask per prompt
    predictor = samkit.SamPredictor(samkit.build_sam("hq_vit_tiny", hq_tiny_checkpoint))
    predictor.set_image(samkit.load_image(EXAMPLE))
    masks, scores, _ = predictor.predict(point_coords=np.array([[225, 150]]), point_labels=np.array([1]))
    assert abs(result["scores"][0] - float(scores[0])) < 1e-3
    written = np.asarray(Image.open(out)) > 0
    assert np.array_equal(written, masks[0])


def test_download_hq_checkpoint(http_file_server, tmp_path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """The HQ files have no published digest: they download unverified, with a warning."""
    payload = b"not really a checkpoint" * 100
    (http_file_server.root / "sam_hq_vit_b.pth").write_bytes(payload)
    monkeypatch.setenv("SAMKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAMKIT_DOWNLOAD_BASE", http_file_server.url)
    with caplog.at_level(logging.WARNING, logger="samkit.downloads"):
        assert main(["download", "hq_vit_b", "--no-progress"]) == 0
    cached = tmp_path / "home" / "checkpoints" / "sam_hq_vit_b.pth"
    assert cached.read_bytes() == payload
    assert "/sam_hq_vit_b.pth" in http_file_server.requests
    assert any("was not verified" in r.getMessage() for r in caplog.records)


def test_export_onnx_refuses_return_single_mask_for_hq_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export-onnx takes HQ models (tests/onnx/test_onnx_hq.py); its SAM 1-only option is one line, exit 2."""
    assert main(["export-onnx", "--model", "hq_vit_b", "--return-single-mask", "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samkit export-onnx: error:") and "--return-single-mask" in err and "\n" not in err


def test_embed_with_hq_model_loads_back(hq_tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``samkit embed`` files of an HQ model carry the HQ features: reloaded, they predict as set_image."""
    out = tmp_path / "emb"
    rc = main(["embed", str(EXAMPLE), "--out", str(out), "--model", "hq_vit_tiny", "--checkpoint", str(hq_tiny_checkpoint)])
    assert rc == 0
    entry = json.loads((out / "manifest.json").read_text())["images"][0]
    model = samkit.build_sam("hq_vit_tiny", hq_tiny_checkpoint)
    direct, loaded = samkit.SamPredictor(model), samkit.SamPredictor(model)
    direct.set_image(samkit.load_image(EXAMPLE))
    loaded.load_embedding(out / entry["output"])
    assert loaded.hq_features is not None and direct.hq_features is not None
    torch.testing.assert_close(loaded.hq_features, direct.hq_features, rtol=0, atol=1e-5)
    prompt = {"point_coords": np.array([[225, 150]]), "point_labels": np.array([1]), "return_logits": True}
    expected, _, _ = direct.predict(**prompt)
    actual, _, _ = loaded.predict(**prompt)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_segment_hq_token_only(hq_tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mask.png"
    args = ["segment", str(EXAMPLE), "--point", "225,150", "--out", str(out), "--json", "--hq-token-only"]
    assert main([*args, "--model", "vit_b"]) == 2  # a user error, before any model is loaded
    assert "--hq-token-only: only HQ-SAM models" in capsys.readouterr().err
    assert main([*args, "--model", "hq_vit_tiny", "--checkpoint", str(hq_tiny_checkpoint)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    predictor = samkit.SamPredictor(samkit.build_sam("hq_vit_tiny", hq_tiny_checkpoint))
    predictor.set_image(samkit.load_image(EXAMPLE))
    masks, scores, _ = predictor.predict(
        point_coords=np.array([[225, 150]]), point_labels=np.array([1]), hq_token_only=True
    )
    assert abs(result["scores"][0] - float(scores[0])) < 1e-3
    assert np.array_equal(np.asarray(Image.open(out)) > 0, masks[0])


def test_sam_model_registry_builds_hq_models(hq_tiny_checkpoint: Path) -> None:
    """``sam_model_registry`` (the official packages' entry point) knows the HQ and SAM 2.x names."""
    model = samkit.sam_model_registry["hq_vit_tiny"](checkpoint=hq_tiny_checkpoint)
    assert isinstance(model, HQSam)
    reference = samkit.build_sam("hq_vit_tiny", hq_tiny_checkpoint)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert {"hq_vit_b", "hq_vit_l", "hq_vit_h", "sam2.1_hiera_t", "sam2_hiera_b+", "vit_b", "default"} <= set(samkit.sam_model_registry)


def test_everything_with_hq_model(hq_tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``samkit everything --model hq_vit_tiny`` writes the generator's masks."""
    import csv

    from samkit.everything import SamAutomaticMaskGenerator

    image = samkit.load_image(EXAMPLE)[:120, :160]
    source = tmp_path / "in" / "small.png"
    source.parent.mkdir()
    Image.fromarray(image).save(source)
    options = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--box-nms-thresh", "1"]
    out = tmp_path / "out"
    assert main(["everything", str(source), "--out", str(out), "--model", "hq_vit_tiny", "--checkpoint", str(hq_tiny_checkpoint),
                 "--device", "cpu", "--no-progress", *options]) == 0
    rows = list(csv.DictReader((out / "small" / "metadata.csv").read_text().splitlines()))
    records = SamAutomaticMaskGenerator(
        samkit.build_sam("hq_vit_tiny", hq_tiny_checkpoint),
        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
    ).generate(image)
    assert len(rows) == len(records) == 4  # HQ: one mask per point
    assert sorted(int(r["area"]) for r in rows) == sorted(int(r["area"]) for r in records)
    assert sorted(float(r["predicted_iou"]) for r in rows) == pytest.approx(sorted(r["predicted_iou"] for r in records), abs=1e-4)
