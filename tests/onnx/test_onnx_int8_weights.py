"""The int8 encoder's weight sign follows the CPU: signed on VNNI-class CPUs, and a warning where it saturates."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx_support import Exported, mask_iou, structured_image

import samkit.onnx.predictor as onnx_predictor
from samkit.onnx import OnnxPredictor, quantize_int8


@pytest.fixture(scope="module")
def signed_and_unsigned(tiny256: Exported, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("int8_signs")
    return {
        weights: str(quantize_int8(tiny256.path("encoder.onnx"), out / f"encoder.{weights}.onnx", weight_type=weights))
        for weights in ("qint8", "quint8")
    }


def test_signed_weights_warn_on_an_x86_cpu_without_vnni(
    tiny256: Exported, signed_and_unsigned: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(onnx_predictor, "cpu_has_int8_dot_product", lambda: False)
    monkeypatch.setattr(onnx_predictor.platform, "machine", lambda: "x86_64")
    with caplog.at_level(logging.WARNING, logger="samkit.onnx.predictor"):
        OnnxPredictor(signed_and_unsigned["quint8"], str(tiny256.path("decoder.onnx")))
    assert not [r for r in caplog.records if "saturat" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="samkit.onnx.predictor"):
        OnnxPredictor(signed_and_unsigned["qint8"], str(tiny256.path("decoder.onnx")))
    assert [r for r in caplog.records if "saturat" in r.getMessage() and "quint8" in r.getMessage()]


def test_both_signs_give_fp32_masks_on_this_cpu(tiny256: Exported, signed_and_unsigned: dict[str, str]) -> None:
    """Whichever sign this machine's export picks must be accurate here; the other sign too where the CPU has VNNI."""
    image = structured_image(200, 256, seed=3)
    fp32 = OnnxPredictor.from_dir(tiny256.dir)
    fp32.set_image(image)
    reference, _, _ = fp32.predict(point_coords=[[120, 90]], point_labels=[1])
    signs = ["quint8"] + (["qint8"] if onnx_predictor.cpu_has_int8_dot_product() else [])
    for weights in signs:
        int8 = OnnxPredictor(signed_and_unsigned[weights], str(tiny256.path("decoder.onnx")))
        int8.set_image(image)
        masks, _, _ = int8.predict(point_coords=[[120, 90]], point_labels=[1])
        ious = [mask_iou(a, b) for a, b in zip(reference, masks)]
        assert min(ious) >= 0.95, (weights, ious)
        assert np.isfinite(ious).all()
