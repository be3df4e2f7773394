"""Side-by-side benchmark of samkit against the official implementations (``samkit bench``).

:mod:`.harness` holds the timers, the memory peaks, the shared context and the table;
:mod:`.rows_sam1` and :mod:`.rows_families` the rows; this module names the rows and runs them.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from .harness import (
    BENCH_DEVICE,
    BenchContext,
    BenchRow,
    Timings,
    benchmark_image,
    benchmark_prompts,
    format_table,
    load_baselines,
    mask_iou,
    peak_memory,
    time_alternating,
    to_json,
)
from .rows_families import row_annotate, row_hq, row_sam2, row_sam2_everything, row_video, row_video_memory
from .rows_sam1 import (
    row_everything,
    row_memory,
    row_onnx,
    row_predict,
    row_set_image,
    row_set_image_batch,
    row_set_image_bf16,
    row_vit_t,
)

__all__ = [
    "BenchContext",
    "BenchRow",
    "DEFAULT_ROWS",
    "GPU_ROWS",
    "ROWS",
    "Timings",
    "benchmark_image",
    "benchmark_prompts",
    "default_rows",
    "format_table",
    "load_baselines",
    "mask_iou",
    "peak_memory",
    "run_benchmark",
    "time_alternating",
    "to_json",
]

logger = logging.getLogger(__name__)

ROWS: dict[str, Callable[[BenchContext], list[BenchRow]]] = {
    "set_image": row_set_image,
    "bf16": row_set_image_bf16,
    "predict": row_predict,
    "memory": row_memory,
    "everything": row_everything,
    "vit_t": row_vit_t,
    "onnx": row_onnx,
    "hq": row_hq,
    "sam2": row_sam2,
    "sam2_everything": row_sam2_everything,
    "video": row_video,
    "video_memory": row_video_memory,
    "video_memory_512": functools.partial(row_video_memory, image_size=512, official=True),
    "set_image_vit_h": functools.partial(row_set_image, variant="vit_h"),
    "bf16_vit_h": functools.partial(row_set_image_bf16, variant="vit_h"),
    "batch8": row_set_image_batch,
    "annotate": row_annotate,
}
DEFAULT_ROWS = ("set_image", "bf16", "predict", "memory")
# The rows of a GPU run (``samkit bench --device cuda|mps`` without --rows): vit_b and vit_h
# set_image in fp32 and bf16, a batch of 8, predict latency and 64 prompts, segment everything
# with the defaults, and vit_h's peak memory, each against the official code on the same device.
GPU_ROWS = ("set_image", "bf16", "set_image_vit_h", "bf16_vit_h", "batch8", "predict", "everything", "memory")


def default_rows(device: str) -> tuple[str, ...]:
    """The rows ``samkit bench`` runs on ``device`` when none are named."""
    return DEFAULT_ROWS if torch.device(device).type == "cpu" else GPU_ROWS


def run_benchmark(
    rows: tuple[str, ...] = DEFAULT_ROWS,
    *,
    rounds: int = 3,
    baselines: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    on_row: Callable[[BenchRow], None] | None = None,
    onnx_providers: list[str] | None = None,
) -> list[BenchRow]:
    """Run the named rows on ``device`` and return their results.

    A row that raises (an out-of-memory error, an official model that cannot run in a dtype or
    on a device, ...) becomes a failed row naming the error, and the next row runs.

    Raises:
        ValueError: an unknown row, or a device this machine lacks
            (:class:`samkit.devices.DeviceUnavailable`).
        FileNotFoundError: the official package is missing.
    """
    from ..devices import resolve_device

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown benchmark row {unknown[0]!r}: expected some of {', '.join(ROWS)}")
    device = str(resolve_device(device))
    module = load_baselines(baselines)
    if not module.official_available():
        raise FileNotFoundError("the official segment-anything package is not installed: pip install -e '.[bench]'")
    results: list[BenchRow] = []
    token = BENCH_DEVICE.set(device)
    try:
        with tempfile.TemporaryDirectory(prefix="samkit-bench-") as tmp:
            ctx = BenchContext(module, Path(tmp), rounds, device)
            ctx.onnx_providers = onnx_providers
            for name in rows:
                logger.info("benchmark row %s", name)
                for row in _run_row(name, ctx):
                    results.append(row)
                    if on_row is not None:
                        on_row(row)
    finally:
        BENCH_DEVICE.reset(token)
    return results


def _run_row(name: str, ctx: BenchContext) -> list[BenchRow]:
    """The rows of ``ROWS[name]``, or one failed row naming the exception it raised."""
    try:
        return ROWS[name](ctx)
    except Exception as exc:  # noqa: BLE001 - any failure of one row is reported, and the next runs
        logger.error("benchmark row %s failed on %s:\n%s", name, ctx.device, traceback.format_exc())
        ctx.drop("official:", "samkit:")  # free what the row held (an OOM would repeat otherwise)
        if torch.device(ctx.device).type == "cuda":
            torch.cuda.empty_cache()
        message = (str(exc).strip().splitlines() or [""])[0][:200]
        return [
            BenchRow(
                name,
                "-",
                None,
                None,
                check=f"row failed on {ctx.device}: {type(exc).__name__}: {message}",
                ok=False,
                extra={"error": f"{type(exc).__name__}: {exc}", "device": ctx.device},
            )
        ]
