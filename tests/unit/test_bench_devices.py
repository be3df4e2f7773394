"""``samkit bench`` and devices: a failed row is reported, not fatal; timing and memory follow the
chosen device; GPU rows are defined (they run only on a GPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import samkit.benchmark as benchmark
from samkit.benchmark import GPU_ROWS, ROWS, BenchRow, default_rows, peak_memory, run_benchmark, time_alternating
from samkit.cli import main


@pytest.fixture
def fake_baselines(tmp_path: Path) -> Path:
    """A baselines module that claims the official package is there (the rows below never use it)."""
    path = tmp_path / "baselines.py"
    path.write_text("def official_available():\n    return True\n")
    return path


def _boom(ctx: Any) -> list[BenchRow]:
    raise RuntimeError("expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16\nmore detail")


def _fine(ctx: Any) -> list[BenchRow]:
    timings = time_alternating({"official": lambda: None, "samkit": lambda: None}, rounds=1)
    return [BenchRow("fine row", "official", timings["official"] + 2.0, timings["samkit"] + 1.0, check="ok")]


@pytest.fixture
def rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ROWS, "boom", _boom)
    monkeypatch.setitem(ROWS, "fine", _fine)


@pytest.fixture
def cuda_that_must_not_be_touched(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A machine that has CUDA (as far as torch.cuda says) whose CUDA calls are recorded."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: calls.append(_n) or 0)
    return calls


def test_a_failed_row_is_reported_and_the_next_runs(rows, fake_baselines: Path) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    results = run_benchmark(("boom", "fine"), rounds=1, baselines=fake_baselines, on_row=lambda r: seen.append(r.name))
    assert [r.name for r in results] == ["boom", "fine row"] == seen
    failed = results[0]
    assert not failed.ok and failed.baseline_s is None and failed.samkit_s is None
    assert "RuntimeError: expected m1 and m2 to have the same dtype" in failed.check
    assert "\n" not in failed.check and failed.extra["device"] == "cpu"
    assert results[1].ok and results[1].ratio == pytest.approx(2.0, rel=0.01)


def test_bench_cli_writes_table_and_json_with_the_failed_row(  # type: ignore[no-untyped-def]
    rows, fake_baselines: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    status = main(["bench", "--rows", "boom,fine", "--rounds", "1", "--baselines", str(fake_baselines), "--json", str(out)])
    printed = capsys.readouterr()
    assert status == 1  # a failed row is a failed check: exit 1, after the table and the JSON
    assert "**FAILED**" in printed.out and "fine row" in printed.out
    assert "Traceback" not in printed.err
    doc = json.loads(out.read_text())
    assert [r["name"] for r in doc["rows"]] == ["boom", "fine row"]
    assert doc["rows"][0]["ok"] is False and "RuntimeError" in doc["rows"][0]["extra"]["error"]


def test_a_cpu_run_never_touches_cuda(rows, fake_baselines: Path, cuda_that_must_not_be_touched: list[str]) -> None:  # type: ignore[no-untyped-def]
    results = run_benchmark(("fine", "boom"), rounds=2, baselines=fake_baselines, device="cpu")
    assert [r.ok for r in results] == [True, False]
    with peak_memory("cpu") as peak:
        torch.zeros(1 << 20).add_(1)
    assert cuda_that_must_not_be_touched == []  # neither timing, nor memory, nor the failure's cleanup
    if Path("/proc/self/clear_refs").exists():
        assert peak["peak_mb"] is not None and peak["peak_mb"] >= 0  # resident memory, not CUDA's ~0


def test_peak_memory_and_sync_on_cuda_measure_cuda(cuda_that_must_not_be_touched: list[str]) -> None:
    calls = cuda_that_must_not_be_touched
    with peak_memory("cuda") as peak:
        pass
    assert calls == ["synchronize", "reset_peak_memory_stats", "memory_allocated", "synchronize", "max_memory_allocated"]
    assert peak["peak_mb"] == 0
    calls.clear()
    benchmark.harness.sync_bench_device("cuda")
    assert calls == ["synchronize"]


def test_mps_memory_is_not_measured() -> None:
    with peak_memory("mps") as peak:
        pass
    assert peak["peak_mb"] is None


def test_bench_device_the_machine_lacks_is_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cuda", "--rows", "set_image"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0] and "no CUDA GPU" in err[0]


def test_gpu_rows_are_defined() -> None:
    assert default_rows("cpu") == benchmark.DEFAULT_ROWS
    assert default_rows("cuda") == default_rows("cuda:1") == default_rows("mps") == GPU_ROWS
    assert set(GPU_ROWS) <= set(ROWS)
    for needed in ("set_image", "bf16", "set_image_vit_h", "bf16_vit_h", "batch8", "predict", "everything"):
        assert needed in GPU_ROWS
    assert ROWS["set_image_vit_h"].keywords == {"variant": "vit_h"}  # type: ignore[attr-defined]


def test_batch_row_without_set_image_batch_is_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from samkit.predictor import SamPredictor

    monkeypatch.delattr(SamPredictor, "set_image_batch", raising=False)
    (row,) = benchmark.row_set_image_batch(None)  # type: ignore[arg-type]
    assert row.ok and row.baseline_s is None and "not run" in row.check
