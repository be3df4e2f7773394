"""``samkit bench``: timing helpers, the table, and one real row end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from samkit.benchmark import BenchRow, Timings, format_table, time_alternating, to_json
from samkit.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_time_alternating_runs_sides_in_turn_and_keeps_every_round() -> None:
    calls: list[str] = []
    timings = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=2)
    assert calls == ["a", "b"] * 5  # 2 warm-up rounds + 3 timed, alternating
    assert set(timings) == {"a", "b"} and all(len(v) == 3 for v in timings.rounds.values())
    assert timings["a"] == sorted(timings.rounds["a"])[1]  # the median of the timed rounds


def test_timings_pair_rounds() -> None:
    timings = Timings({"official": [10.0, 20.0, 12.0], "samkit": [5.0, 8.0, 6.0]})
    assert timings["official"] == 12.0 and timings["samkit"] == 6.0
    assert timings.ratios("official", "samkit") == [2.0, 2.5, 2.0]


def test_table_shows_round_spread_and_failures() -> None:
    rows = [
        BenchRow("fast row", "official", 2.0, 1.0, round_ratios=[1.9, 2.0, 2.2], check="ok"),
        BenchRow("single round", "official", 0.3, 0.1, round_ratios=[3.0]),
        BenchRow("broken", "official", 1.0, 1.0, check="outputs differ", ok=False),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].startswith("Machine: CPU ") and "torch CPU capability" in lines[0]
    table = lines[2:]
    assert "| 2.00x (1.90-2.20 per round) |" in table[2]
    assert "| 3.00x |" in table[3] and "per round" not in table[3]  # one round: no spread to show
    assert "**FAILED**" in table[4] and "**FAILED**" not in table[2]
    doc = json.loads(to_json(rows))
    assert doc["rows"][0]["round_ratios"] == [1.9, 2.0, 2.2] and doc["rows"][0]["ratio"] == 2.0


@pytest.mark.slow
def test_bench_cli_runs_a_real_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The MobileSAM row against the reference code: timed, checked, written as JSON."""
    pytest.importorskip("mobile_sam", reason="the reference MobileSAM package (test extra) is needed")
    monkeypatch.chdir(REPO)  # bench/baselines.py is found from the checkout
    out = tmp_path / "bench.json"
    assert main(["bench", "--rows", "vit_t", "--rounds", "2", "--threads", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| set_image vit_t fp32 | reference MobileSAM |" in printed
    doc = json.loads(out.read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == {"set_image vit_t fp32", "predict vit_t 1 point, multimask"}
    for row in rows.values():
        assert row["ok"], row["check"]
        assert row["baseline_s"] > 0 and row["samkit_s"] > 0
        assert len(row["round_ratios"]) >= 2
    assert rows["set_image vit_t fp32"]["check"].startswith("embedding max|diff|")
    assert doc["machine"]["threads"] == 2


def test_json_names_the_machine() -> None:
    """Figures from different machines are never compared blind: CPU flags and capability travel along."""
    doc = json.loads(to_json([BenchRow("row", "official", 2.0, 1.0)]))
    machine = doc["machine"]
    assert machine["cpu"] and machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(machine["cpu_flags"], list) and machine["threads"] == torch.get_num_threads()
