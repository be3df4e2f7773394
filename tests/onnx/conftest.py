"""Fixtures for the ONNX tests: tiny perturbed models exported once per session."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable

import pytest
import torch
from onnx_support import CliExport, Exported, perturbed_sam, perturbed_variant, tiny_config

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


def _cli_export(
    name: str, seed: int, checkpoint_state: Callable[[torch.nn.Module], object], root: pytest.TempPathFactory, *options: str
) -> CliExport:
    """Perturb ``name``, save it as an official-format checkpoint, export it with ``samkit export-onnx``."""
    from samkit.cli import main

    model = perturbed_variant(name, seed)
    out = root.mktemp(f"onnx_{name}")
    checkpoint = out / "model.pt"
    torch.save(checkpoint_state(model), checkpoint)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        args = ["export-onnx", "--model", name, "--checkpoint", str(checkpoint), "--out", str(out / "graphs")]
        status = main([*args, "--json", *options])
    assert status == 0, f"samkit export-onnx --model {name} failed"
    return CliExport(model=model, checkpoint=checkpoint, dir=out / "graphs", report=json.loads(stdout.getvalue()))


@pytest.fixture(scope="session")
def sam2_cli(tmp_path_factory: pytest.TempPathFactory) -> CliExport:
    """sam2.1_hiera_t with perturbed weights, exported by ``samkit export-onnx`` from a ``{"model": sd}`` file."""
    return _cli_export("sam2.1_hiera_t", 3, lambda m: {"model": m.state_dict()}, tmp_path_factory)


@pytest.fixture(scope="session")
def hq_cli(tmp_path_factory: pytest.TempPathFactory) -> CliExport:
    """hq_vit_tiny with perturbed weights, exported by ``samkit export-onnx --raw-input`` from a plain
    state-dict file (the float-input encoder path is the SAM 2 tests' and SAM 1's)."""
    return _cli_export("hq_vit_tiny", 4, lambda m: m.state_dict(), tmp_path_factory, "--raw-input")
