"""ONNX Runtime providers chosen by device, and ``samkit bench --onnx-providers``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from samkit.benchmark import ROWS, BenchRow
from samkit.cli import main
from samkit.onnx.providers import parse_providers, providers_for_device


def test_providers_for_device() -> None:
    assert providers_for_device("cpu") == ["CPUExecutionProvider"]
    assert providers_for_device("cuda") == providers_for_device("cuda:1") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for_device("mps") == ["CoreMLExecutionProvider", "CPUExecutionProvider"]


def test_parse_providers() -> None:
    assert parse_providers("cuda, CPU") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert parse_providers("TensorrtExecutionProvider,cpu") == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    for bad in ("", " , ", "gpu"):
        with pytest.raises(ValueError):
            parse_providers(bad)


def test_bench_passes_the_providers_to_the_onnx_rows(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Any] = []

    def spy(ctx: Any) -> list[BenchRow]:
        seen.append(ctx.onnx_providers)
        return [BenchRow("spy", "-", 1.0, 1.0)]

    baselines = tmp_path / "baselines.py"
    baselines.write_text("def official_available():\n    return True\n")
    monkeypatch.setitem(ROWS, "spy", spy)
    assert main(["bench", "--rows", "spy", "--baselines", str(baselines), "--onnx-providers", "cuda,cpu"]) == 0
    assert main(["bench", "--rows", "spy", "--baselines", str(baselines)]) == 0
    assert seen == [["CUDAExecutionProvider", "CPUExecutionProvider"], None]  # None: those for --device
    capsys.readouterr()
    assert main(["bench", "--rows", "spy", "--baselines", str(baselines), "--onnx-providers", "warp"]) == 2
    assert "--onnx-providers: unknown ONNX Runtime provider 'warp'" in capsys.readouterr().err
