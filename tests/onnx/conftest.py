"""Fixtures for the ONNX tests: tiny perturbed models exported once per session."""

from __future__ import annotations

import pytest
from onnx_support import Exported, perturbed_sam, tiny_config


@pytest.fixture(scope="session")
def tiny256(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Tiny 256-px model: fp32 + int8 pair, a single-mask decoder and a raw-input encoder."""
    from samkit.onnx import export_decoder, export_encoder, export_onnx

    sam = perturbed_sam(tiny_config(256), seed=0)
    out = tmp_path_factory.mktemp("onnx_tiny256")
    export_onnx(sam, out, quantize="int8")
    export_decoder(sam, out / "decoder.single.onnx", return_single_mask=True)
    export_encoder(sam, out / "encoder.raw.onnx", raw_input=True)
    return Exported(sam=sam, dir=out)


@pytest.fixture(scope="session")
def tiny1024(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Tiny model with the official 1024 / 64x64 / 256x256 interface sizes (fp32 graphs)."""
    from samkit.onnx import export_onnx

    sam = perturbed_sam(tiny_config(1024), seed=1)
    out = tmp_path_factory.mktemp("onnx_tiny1024")
    export_onnx(sam, out)
    return Exported(sam=sam, dir=out)
