"""Fixtures for the ONNX tests: tiny perturbed models exported once per session."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from onnx_support import Exported, perturbed_sam, tiny_config

_FIGURES: list[str] = []


@pytest.fixture
def report_figure() -> Callable[[str], None]:
    """Record a measured figure (one line); all are printed in the terminal summary."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the ONNX tests recorded (e.g. int8 against float32 mask IoU)."""
    if _FIGURES:
        terminalreporter.section("ONNX figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def tiny256(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Tiny 256-px model: fp32 + int8 encoders, an int8 decoder, a single-mask decoder, a raw-input encoder."""
    from samkit.onnx import export_decoder, export_encoder, export_onnx, quantize_int8

    sam = perturbed_sam(tiny_config(256), seed=0)
    out = tmp_path_factory.mktemp("onnx_tiny256")
    paths = export_onnx(sam, out, quantize="int8")
    assert sorted(paths) == ["decoder", "encoder", "encoder_int8"], "the export quantizes the encoder only"
    quantize_int8(out / "decoder.onnx", out / "decoder.int8.onnx")  # not exported; quantize_int8 takes it
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
