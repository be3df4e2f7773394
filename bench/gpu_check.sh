#!/usr/bin/env bash
# The prepared GPU check (issue #24): on a machine with a CUDA GPU, in under 10 minutes,
#   1. installs samkit and its bench extra (nothing else; offline: from a wheel folder),
#      time limits: install 1 min, tests 3.5 min, bench 5.5 min (the bench prints each row as
#      it finishes, so a bench cut off by its limit still leaves its rows in gpu_check.*),
#   2. runs the GPU test subset (bench/gpu_tests: parity on CUDA fp32, bf16/fp16 consistency,
#      the server's upload path, no float64 on the GPU),
#   3. runs `samkit bench --device cuda` (the GPU rows, each against the official code on the
#      same GPU; a row that fails is reported in the table, not fatal),
#   4. writes one JSON (gpu_check.json) and one markdown table (gpu_check.md) into OUT.
#
# Usage: bash bench/gpu_check.sh [OUT]            (OUT defaults to ./gpu_check_out)
# Environment:
#   SAMKIT_WHEELS=DIR      install from the wheels in DIR only (no index): for machines that
#                          cannot reach PyPI; fill DIR with `pip download` where pip works
#   SAMKIT_SKIP_INSTALL=1  use the samkit already installed in this Python
#   SAMKIT_GPU_ROWS=...    rows for samkit bench (default: its GPU rows); SAMKIT_GPU_ROUNDS (default 2)
#   PYTHON                 the interpreter (default python3)
# Exit status: 0 when every test passed and every bench row's check held, else 1.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_out}"
PYTHON="${PYTHON:-python3}"
ROUNDS="${SAMKIT_GPU_ROUNDS:-2}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False)" >&2
  exit 2
fi

if [ "${SAMKIT_SKIP_INSTALL:-0}" != "1" ]; then
  pip_args=(-m pip install -q -e ".[bench]")
  if [ -n "${SAMKIT_WHEELS:-}" ]; then
    pip_args+=(--no-index --find-links "$SAMKIT_WHEELS")
  fi
  # No build isolation: setuptools is already there, and an offline machine cannot fetch it.
  timeout 60 "$PYTHON" "${pip_args[@]}" --no-build-isolation || { echo "gpu_check: install failed" >&2; exit 2; }
fi

echo "== GPU test subset"
timeout 210 "$PYTHON" -m pytest -q -p no:cacheprovider bench/gpu_tests --junitxml "$OUT/gpu_tests.xml" 2>&1 \
  | tee "$OUT/gpu_tests.log"
tests_status=${PIPESTATUS[0]}

echo "== samkit bench --device cuda"
bench_args=(bench --device cuda --rounds "$ROUNDS" --json "$OUT/bench.json")
if [ -n "${SAMKIT_GPU_ROWS:-}" ]; then
  bench_args+=(--rows "$SAMKIT_GPU_ROWS")
fi
timeout 330 "$PYTHON" -m samkit "${bench_args[@]}" 2>&1 | tee "$OUT/bench.log"
bench_status=${PIPESTATUS[0]}

"$PYTHON" - "$OUT" "$tests_status" "$bench_status" <<'PY'
"""Fold the test results and the bench rows into gpu_check.json and gpu_check.md."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from samkit.benchmark import BenchRow, format_table

out, tests_status, bench_status = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tests = []
junit = out / "gpu_tests.xml"
if junit.exists():
    for case in ET.parse(junit).getroot().iter("testcase"):
        failure = case.find("failure")
        error = case.find("error")
        problem = failure if failure is not None else error
        tests.append({
            "name": case.get("name"),
            "seconds": float(case.get("time") or 0),
            "ok": problem is None,
            "message": None if problem is None else (problem.get("message") or "")[:300],
        })
bench_file = out / "bench.json"
bench = json.loads(bench_file.read_text()) if bench_file.exists() else None
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
report = {
    "gpu": gpu,
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "tests_exit_status": tests_status,
    "bench_exit_status": bench_status,
    "tests": tests,
    "bench": bench,
}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
lines = [f"# samkit GPU check: {gpu} (torch {torch.__version__}, CUDA {torch.version.cuda})", ""]
lines += ["| GPU test | result | seconds |", "|---|---|---|"]
for t in tests:
    lines.append(f"| {t['name']} | {'passed' if t['ok'] else 'FAILED: ' + (t['message'] or '')} | {t['seconds']:.1f} |")
if not tests:
    lines.append(f"| (no results) | pytest exit status {tests_status} | - |")
lines.append("")
if bench is not None:
    fields = set(BenchRow.__dataclass_fields__)
    rows = [BenchRow(**{k: v for k, v in r.items() if k in fields}) for r in bench["rows"]]
    lines.append(format_table(rows))
else:
    # Killed by the time limit or failed before the table: keep the rows it printed as it went.
    log = out / "bench.log"
    printed = [line.strip() for line in log.read_text().splitlines() if line.startswith("  ")] if log.exists() else []
    report["bench_rows_printed"] = printed
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    lines.append(f"samkit bench wrote no JSON (exit status {bench_status}); rows it printed:")
    lines += [""] + [f"- {line}" for line in printed]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
[ "$tests_status" = 0 ] && [ "$bench_status" = 0 ]
