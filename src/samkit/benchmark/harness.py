"""The benchmark harness: result rows, alternating timers, memory peaks, the shared context
of models, and the table / JSON output.

The reference side comes from a *baselines* module (``bench/baselines.py`` in the
repository) loaded by path, so that samkit itself never imports the official code.
Both sides get the same perturbed weights; each row runs them alternately (warm-up,
then ``rounds`` rounds), reports medians and the ratio reference/samkit, and checks
that the outputs agree in the same run, so a fast wrong result cannot pass.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..devices import synchronize
from ..hardware import machine_info

logger = logging.getLogger(__name__)


# Decoder construction of the segment-everything row's checkpoint (``construct_decoder_`` in
# bench/baselines.py): sharper masks and IoU predictions shifted up, so that with the default
# thresholds (0.88 / 0.95) a third of the masks pass the IoU filter and a share of those the
# stability filter.
EVERYTHING_CONSTRUCTION: dict[str, float] = {"iou_shift": 0.9, "sharpness": 150.0}


@dataclass
class BenchRow:
    """One line of the benchmark table."""

    name: str
    baseline: str
    baseline_s: float | None
    samkit_s: float | None
    ratio: float | None = None
    baseline_peak_mb: float | None = None
    samkit_peak_mb: float | None = None
    memory_ratio: float | None = None
    check: str = ""
    ok: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    round_ratios: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline_s and self.samkit_s:
            self.ratio = self.baseline_s / self.samkit_s
        if self.memory_ratio is None and self.baseline_peak_mb and self.samkit_peak_mb:
            self.memory_ratio = self.samkit_peak_mb / self.baseline_peak_mb


# ----------------------------------------------------------------- utilities
def load_baselines(path: str | os.PathLike[str] | None = None) -> ModuleType:
    """Load the reference-implementation adapters (``bench/baselines.py``) by path."""
    candidates = [Path(path)] if path else [Path.cwd() / "bench" / "baselines.py"]
    if not path:
        candidates.append(Path(__file__).resolve().parents[3] / "bench" / "baselines.py")  # the checkout of this file
    for candidate in candidates:
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location("samkit_bench_baselines", candidate)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError(
        "bench/baselines.py not found: run `samkit bench` from the samkit repository checkout "
        "or pass --baselines PATH"
    )


def benchmark_image(height: int = 546, width: int = 967, seed: int = 0) -> np.ndarray:
    """A deterministic structured test image (gradients, shapes, texture): (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / width * 160, yy / height * 160, (xx + yy) / (width + height) * 120], axis=-1)
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(20, width / 5), rng.uniform(20, height / 5)
        colour = rng.uniform(0, 255, size=3)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        image[inside] = colour
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def benchmark_prompts(height: int, width: int) -> list[dict[str, np.ndarray]]:
    """Point and box prompts spread over the image (for output checks)."""
    prompts: list[dict[str, np.ndarray]] = []
    for fy in (0.2, 0.4, 0.6, 0.8):
        for fx in (0.2, 0.4, 0.6, 0.8):
            prompts.append({"point_coords": np.array([[fx * width, fy * height]]), "point_labels": np.array([1])})
    for x0, y0, x1, y1 in ((0.1, 0.1, 0.5, 0.6), (0.4, 0.3, 0.9, 0.9), (0.2, 0.5, 0.6, 0.95), (0.05, 0.05, 0.95, 0.95)):
        prompts.append({"box": np.array([x0 * width, y0 * height, x1 * width, y1 * height])})
    return prompts


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# The device the running benchmark measures (set by run_benchmark): timing synchronizes it and
# peak_memory measures it, whatever other devices the machine has.
BENCH_DEVICE: ContextVar[str] = ContextVar("samkit_bench_device", default="cpu")


@contextmanager
def peak_memory(device: torch.device | str | None = None) -> Iterator[dict[str, float | None]]:
    """Peak memory growth (MB) of the block on ``device`` (default: the benchmark's device).

    CPU: resident memory, via Linux's resettable VmHWM. CUDA: the peak of allocated device
    memory on that GPU. MPS has no peak counter: ``peak_mb`` stays None (not measured).
    """
    device = torch.device(device if device is not None else BENCH_DEVICE.get())
    result: dict[str, float | None] = {"peak_mb": None}
    gc.collect()
    cuda = device.type == "cuda"
    if device.type == "mps":
        yield result
        return
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = _rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset the peak-RSS counter
        except OSError:
            base = None
    yield result
    if cuda:
        torch.cuda.synchronize(device)
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 - base
        return
    if base is None:
        return
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    result["peak_mb"] = int(line.split()[1]) / 1024 - base
    except OSError:
        pass


def sync_bench_device(device: torch.device | str | None = None) -> None:
    """Wait for ``device`` (default: the benchmark's device), so a timer sees finished work."""
    synchronize(device if device is not None else BENCH_DEVICE.get())


class Timings(dict[str, float]):
    """Median seconds per function name, with every timed round kept in ``rounds``."""

    def __init__(self, rounds: dict[str, list[float]]) -> None:
        super().__init__({name: statistics.median(values) for name, values in rounds.items()})
        self.rounds = rounds

    def ratios(self, baseline: str, candidate: str) -> list[float]:
        """Per-round speed-ups baseline / candidate, each from two runs next to each other in time.

        A slow spell of a shared machine hits both runs of a round, so the spread of these
        ratios shows how far the machine's drift moved the result.
        """
        return [b / c for b, c in zip(self.rounds[baseline], self.rounds[candidate]) if c > 0]


def time_alternating(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> Timings:
    """Seconds of each function, run alternately ``warmup`` + ``rounds`` times (medians, and every round)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            sync_bench_device()
            start = time.perf_counter()
            fn()
            sync_bench_device()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return Timings(times)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def logit_agreement(logits_a: np.ndarray, logits_b: np.ndarray, tol: float = 1e-3) -> tuple[int, float]:
    """(pixels whose sign differs where |logit| >= tol, max |difference|)."""
    differ = (logits_a > 0) != (logits_b > 0)
    strong = differ & (np.abs(logits_a) >= tol)
    return int(strong.sum()), float(np.abs(logits_a - logits_b).max())


# ----------------------------------------------------------------- context
class BenchContext:
    """Models and predictors shared by the rows (built lazily, released on demand)."""

    def __init__(self, baselines: ModuleType, workdir: Path, rounds: int, device: str) -> None:
        self.baselines = baselines
        self.workdir = workdir
        self.rounds = rounds
        self.device = device
        # ONNX Runtime providers of the onnx row (default: those for ``device``).
        self.onnx_providers: list[str] | None = None
        self.image = benchmark_image()
        self._checkpoints: dict[str, str] = {}
        self._cache: dict[str, Any] = {}

    def checkpoint(self, variant: str, constructed: bool = False) -> str:
        """Path of the perturbed official-format checkpoint of ``variant`` (written once).

        Args:
            variant: model variant.
            constructed: instead, the checkpoint whose decoder is constructed for the benchmark
                image (``baselines.make_checkpoint(construct_for=...)``): point-local, stable
                masks with predicted IoUs that straddle the default thresholds, so that a
                segment-everything comparison keeps a meaningful number of masks.
        """
        key = f"{variant}:constructed" if constructed else variant
        if key not in self._checkpoints:
            if constructed:
                path = self.workdir / f"{variant}_constructed.pth"
                logger.info("writing %s checkpoint with a decoder constructed for the benchmark image", variant)
                self._checkpoints[key] = self.baselines.make_checkpoint(
                    variant, path, seed=0, construct_for=self.image, **EVERYTHING_CONSTRUCTION
                )
            else:
                path = self.workdir / f"{variant}_perturbed.pth"
                logger.info("writing perturbed %s checkpoint", variant)
                self._checkpoints[key] = self.baselines.make_checkpoint(variant, path, seed=0)
        return self._checkpoints[key]

    def get(self, key: str, factory: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = factory()
        return self._cache[key]

    def drop(self, *prefixes: str) -> None:
        for key in [k for k in self._cache if k.startswith(prefixes)]:
            del self._cache[key]
        gc.collect()

    def official(self, variant: str, dtype: torch.dtype = torch.float32, *, constructed: bool = False) -> Any:
        """The official predictor of ``variant`` (see :meth:`checkpoint` for ``constructed``)."""

        def make() -> Any:
            checkpoint = self.checkpoint(variant, constructed)
            model = self.baselines.build_model(variant, checkpoint).to(self.device)
            if dtype != torch.float32:
                model = model.to(dtype)
                # The official preprocess hands the encoder a float32 image, which bf16 weights refuse;
                # cast it as a user of the cast model must.
                model.image_encoder.register_forward_pre_hook(lambda _m, args: (args[0].to(dtype), *args[1:]))
            return self.baselines.predictor(model, variant)

        suffix = ":constructed" if constructed else ""
        return self.get(f"official:{variant}:{dtype}{suffix}", make)

    def samkit(self, variant: str, dtype: torch.dtype = torch.float32, *, constructed: bool = False) -> Any:
        """samkit's predictor of ``variant`` (see :meth:`checkpoint` for ``constructed``)."""
        from ..build import build_sam
        from ..predictor import SamPredictor

        suffix = ":constructed" if constructed else ""
        return self.get(
            f"samkit:{variant}:{dtype}{suffix}",
            lambda: SamPredictor(
                build_sam(variant, self.checkpoint(variant, constructed), device=self.device, dtype=dtype)
            ),
        )


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on: CPU model and flags, torch's CPU capability, threads, GPU."""
    return machine_info().as_dict()


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.0f} MB"


def format_table(rows: list[BenchRow]) -> str:
    """Markdown table of the results, after a line naming the machine (CPU, flags, threads)."""
    lines = [
        f"Machine: {machine_info().header()}",
        "",
        "| row | baseline | baseline time | samkit time | speed-up | peak mem baseline / samkit | check |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio else "-"
        if r.ratio and len(r.round_ratios) > 1:
            ratio += f" ({min(r.round_ratios):.2f}-{max(r.round_ratios):.2f} per round)"
        mem = (
            f"{_fmt(r.baseline_peak_mb, 'mb')} / {_fmt(r.samkit_peak_mb, 'mb')} ({r.memory_ratio:.2f}x)"
            if r.memory_ratio
            else "-"
        )
        status = "" if r.ok else " **FAILED**"
        lines.append(
            f"| {r.name} | {r.baseline} | {_fmt(r.baseline_s)} | {_fmt(r.samkit_s)} | {ratio} | {mem} | {r.check}{status} |"
        )
    return "\n".join(lines)


def to_json(rows: list[BenchRow]) -> str:
    """JSON document with the machine description and every row."""
    return json.dumps({"machine": machine_description(), "rows": [asdict(r) for r in rows]}, indent=2)


def match_records(a: list[dict[str, Any]], b: list[dict[str, Any]], threshold: float = 0.99) -> int:
    """Greedy one-to-one matching of mask records by IoU; returns the number matched."""
    used: set[int] = set()
    matched = 0
    for rec in a:
        best, best_j = 0.0, -1
        for j, other in enumerate(b):
            if j in used:
                continue
            iou = mask_iou(np.asarray(rec["segmentation"]), np.asarray(other["segmentation"]))
            if iou > best:
                best, best_j = iou, j
        if best >= threshold:
            used.add(best_j)
            matched += 1
    return matched
