"""The model options --device and --dtype: auto by default, one-line errors (exit 2) for a
device the machine lacks, float16 only off the CPU, and --dtype auto passed to build_sam."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch

import samkit.build
from samkit.cli import UserError, main
from samkit.cli.common import add_model_args, load_model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without CUDA or MPS, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def captured_build(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace build_sam by a recorder: the CLI's arguments are checked, nothing is built."""
    calls: list[dict[str, Any]] = []

    def fake_build_sam(variant: Any, checkpoint: Any = None, **kwargs: Any) -> str:
        calls.append({"variant": variant, "checkpoint": checkpoint, **kwargs})
        return "model"

    monkeypatch.setattr(samkit.build, "build_sam", fake_build_sam)
    return calls


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("device", "message"),
    [("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("gpu", "no GPU"), ("mps", "MPS"), ("garbage", "unknown device")],
)
def test_missing_device_is_one_line_and_exit_2(  # type: ignore[no-untyped-def]
    cpu_only, captured_build, tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    status = main(["segment", str(EXAMPLE), "--point", "225,150", "--out", str(tmp_path / "m.png"), "--device", device])
    err = capsys.readouterr().err
    assert status == 2
    error_lines = [line for line in err.splitlines() if "error" in line]
    assert len(error_lines) == 1, err  # the error is one line (progress lines may precede it)
    assert message in error_lines[0] and "--device" in error_lines[0]
    assert "Traceback" not in err
    assert captured_build == []  # failed before any model was built
    assert not (tmp_path / "m.png").exists()


def test_float16_on_cpu_is_a_user_error(cpu_only, captured_build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match="float16 runs on GPUs"):
        load_model(_args("--dtype", "float16", "--device", "cpu"))
    with pytest.raises(UserError, match="float16 runs on GPUs"):
        load_model(_args("--dtype", "float16"))  # auto resolves to the CPU here
    assert captured_build == []


def test_auto_is_the_default_device(cpu_only, captured_build, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    assert _args().device == "auto"
    load_model(_args())
    assert captured_build[-1]["device"] == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    load_model(_args("--dtype", "float16"))
    assert captured_build[-1]["device"] == torch.device("mps") and captured_build[-1]["dtype"] == "float16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    load_model(_args())
    assert captured_build[-1]["device"] == torch.device("cuda")


def test_dtype_auto_is_resolved_for_the_device_and_said(cpu_only, captured_build, capsys) -> None:  # type: ignore[no-untyped-def]
    from samkit.hardware import auto_dtype

    load_model(_args("--dtype", "auto", "--model", "vit_t"))
    (call,) = captured_build
    chosen = str(auto_dtype("cpu")[0]).removeprefix("torch.")
    assert (call["variant"], call["checkpoint"], call["device"], call["dtype"]) == ("vit_t", None, torch.device("cpu"), chosen)
    assert f"--dtype auto: {chosen} (" in capsys.readouterr().err


def test_dtype_choices_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    out = capsys.readouterr().out
    assert "float16" in out and "auto" in out and "mps" in out


@pytest.mark.parametrize(("device", "expected"), [("cpu", 1), ("cuda", 0), ("auto", 0), ("garbage", 0)])
def test_malloc_tuning_only_on_cpu_runs(  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], device: str, expected: int
) -> None:
    import samkit.allocator
    import samkit.cli.bench

    calls: list[bool] = []
    monkeypatch.setattr(samkit.allocator, "keep_freed_memory", lambda: calls.append(True) or True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(samkit.cli.bench, "run", lambda args: 0)  # the command itself does nothing
    assert main(["bench", "--device", device]) == 0
    capsys.readouterr()
    assert len(calls) == expected
