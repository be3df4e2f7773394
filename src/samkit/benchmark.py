"""Side-by-side benchmark of samkit against a reference implementation.

The reference side comes from a *baselines* module (``bench/baselines.py`` in the
repository) loaded by path, so that samkit itself never imports the official code.
Both sides get the same perturbed weights; each row runs them alternately (warm-up,
then ``rounds`` rounds), reports medians and the ratio reference/samkit, and checks
that the outputs agree in the same run, so a fast wrong result cannot pass.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import json
import logging
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .devices import synchronize
from .hardware import machine_info

logger = logging.getLogger(__name__)

__all__ = ["BenchRow", "ROWS", "GPU_ROWS", "default_rows", "run_benchmark", "format_table", "load_baselines", "benchmark_image"]

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
        candidates.append(Path(__file__).resolve().parents[2] / "bench" / "baselines.py")
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
_BENCH_DEVICE: ContextVar[str] = ContextVar("samkit_bench_device", default="cpu")


@contextmanager
def peak_memory(device: torch.device | str | None = None) -> Iterator[dict[str, float | None]]:
    """Peak memory growth (MB) of the block on ``device`` (default: the benchmark's device).

    CPU: resident memory, via Linux's resettable VmHWM. CUDA: the peak of allocated device
    memory on that GPU. MPS has no peak counter: ``peak_mb`` stays None (not measured).
    """
    device = torch.device(device if device is not None else _BENCH_DEVICE.get())
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


def _sync(device: torch.device | str | None = None) -> None:
    """Wait for ``device`` (default: the benchmark's device), so a timer sees finished work."""
    synchronize(device if device is not None else _BENCH_DEVICE.get())


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
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return Timings(times)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _agreement(logits_a: np.ndarray, logits_b: np.ndarray, tol: float = 1e-3) -> tuple[int, float]:
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
        from .build import build_sam
        from .predictor import SamPredictor

        suffix = ":constructed" if constructed else ""
        return self.get(
            f"samkit:{variant}:{dtype}{suffix}",
            lambda: SamPredictor(
                build_sam(variant, self.checkpoint(variant, constructed), device=self.device, dtype=dtype)
            ),
        )


# ----------------------------------------------------------------- rows
def row_set_image(ctx: BenchContext, variant: str = "vit_b") -> list[BenchRow]:
    """set_image in fp32: official against samkit."""
    off = ctx.official(variant)
    ours = ctx.samkit(variant)
    image = ctx.image
    medians = time_alternating(
        {"official": lambda: off.set_image(image), "samkit": lambda: ours.set_image(image)}, ctx.rounds
    )
    emb_off = off.features.float()
    emb_diff = float((emb_off - ours.features.float()).abs().max())
    emb_scale = float(emb_off.abs().max())
    return [
        BenchRow(
            f"set_image {variant} fp32",
            "official fp32",
            medians["official"],
            medians["samkit"],
            round_ratios=medians.ratios("official", "samkit"),
            check=f"embedding max|diff| {emb_diff:.1e} (scale {emb_scale:.2f})",
            ok=emb_diff <= 1e-4 * max(1.0, emb_scale),
        )
    ]


def row_set_image_bf16(ctx: BenchContext, variant: str = "vit_b") -> list[BenchRow]:
    """samkit's bf16 fast mode against official fp32 and the official model cast to bf16."""
    off = ctx.official(variant)
    ours = ctx.samkit(variant)
    ours_bf16 = ctx.samkit(variant, torch.bfloat16)
    off_bf16 = ctx.official(variant, torch.bfloat16)
    image = ctx.image
    medians = time_alternating(
        {
            "official": lambda: off.set_image(image),
            "samkit_bf16": lambda: ours_bf16.set_image(image),
            "official_bf16": lambda: off_bf16.set_image(image),
        },
        ctx.rounds,
    )
    if not ours.is_image_set:
        ours.set_image(image)
    ious: list[float] = []
    for prompt in benchmark_prompts(*image.shape[:2]):
        m32, _, _ = ours.predict(multimask_output=True, **prompt)
        m16, _, _ = ours_bf16.predict(multimask_output=True, **prompt)
        ious.extend(mask_iou(a, b) for a, b in zip(m32, m16))
    mean_iou = float(np.mean(ious))
    ctx.drop("official:" + variant + ":torch.bfloat16")
    return [
        BenchRow(
            f"set_image {variant} bf16 (fast mode)",
            "official fp32",
            medians["official"],
            medians["samkit_bf16"],
            round_ratios=medians.ratios("official", "samkit_bf16"),
            check=f"mask IoU vs samkit fp32: mean {mean_iou:.4f}, min {min(ious):.4f} over {len(ious)} masks",
            ok=mean_iou >= 0.99 and min(ious) >= 0.97,
            extra={"mean_mask_iou_vs_fp32": mean_iou, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        ),
        BenchRow(
            f"set_image {variant} bf16 vs official bf16",
            "official cast to bf16",
            medians["official_bf16"],
            medians["samkit_bf16"],
            round_ratios=medians.ratios("official_bf16", "samkit_bf16"),
            check="same weights, both bf16",
        ),
    ]


def row_predict(ctx: BenchContext, variant: str = "vit_b") -> list[BenchRow]:
    """predict with one point (multimask) and predict_torch with 64 point prompts."""
    off = ctx.official(variant)
    ours = ctx.samkit(variant)
    image = ctx.image
    if not ours.is_image_set:
        ours.set_image(image)
    if not off.is_image_set:
        off.set_image(image)
    h, w = image.shape[:2]
    point = {"point_coords": np.array([[w * 0.45, h * 0.55]]), "point_labels": np.array([1])}
    medians = time_alternating(
        {"official": lambda: off.predict(**point), "samkit": lambda: ours.predict(**point)},
        max(ctx.rounds * 10, 20),
        warmup=3,
    )
    lo, so, _ = off.predict(return_logits=True, **point)
    ls, ss, _ = ours.predict(return_logits=True, **point)
    strong, diff = _agreement(lo, ls)
    rows = [
        BenchRow(
            f"predict {variant} 1 point, multimask, {w}x{h}",
            "official",
            medians["official"],
            medians["samkit"],
            round_ratios=medians.ratios("official", "samkit"),
            check=f"logits max|diff| {diff:.1e}, {strong} mask pixels differ beyond |logit|>=1e-3",
            ok=strong == 0,
        )
    ]
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(0, w, 64), rng.uniform(0, h, 64)], axis=-1)[:, None, :]  # (64, 1, 2)
    coords_off = off.transform.apply_coords_torch(torch.as_tensor(pts, dtype=torch.float), (h, w)).to(ctx.device)
    coords_ours = ours.transform.apply_coords_torch(torch.as_tensor(pts, dtype=torch.float), (h, w)).to(ctx.device)
    labels = torch.ones(64, 1, dtype=torch.int64, device=ctx.device)
    medians = time_alternating(
        {
            "official": lambda: off.predict_torch(coords_off, labels, multimask_output=True),
            "samkit": lambda: ours.predict_torch(coords_ours, labels, multimask_output=True),
        },
        ctx.rounds,
    )
    with torch.inference_mode():
        lo_t = off.predict_torch(coords_off, labels, multimask_output=True, return_logits=True)[0].cpu().numpy()
        ls_t = ours.predict_torch(coords_ours, labels, multimask_output=True, return_logits=True)[0].cpu().numpy()
    strong, diff = _agreement(lo_t, ls_t)
    rows.append(
        BenchRow(
            f"predict_torch {variant} 64 point prompts",
            "official predict_torch",
            medians["official"],
            medians["samkit"],
            round_ratios=medians.ratios("official", "samkit"),
            check=f"logits max|diff| {diff:.1e}, {strong} mask pixels differ beyond |logit|>=1e-3",
            ok=strong == 0,
        )
    )
    return rows


def _set_image_peak_child(
    side: str, variant: str, checkpoint: str, baselines_path: str, image: np.ndarray, threads: int
) -> tuple[float, float | None, np.ndarray]:
    """In a fresh process: build one side's model, then time one set_image and its peak memory.

    A fresh process per side keeps the measurement honest: memory the allocator keeps after the
    other side's run would otherwise hide this side's peak (resident pages are reused).

    Returns:
        (seconds, peak MB above the resident size before set_image, (256, h, w) embedding).
    """
    torch.set_num_threads(threads)
    if side == "official":
        baselines = load_baselines(baselines_path)
        predictor = baselines.predictor(baselines.build_model(variant, checkpoint), variant)
    else:
        from .build import build_sam
        from .predictor import SamPredictor

        predictor = SamPredictor(build_sam(variant, checkpoint))
    with peak_memory("cpu") as peak:
        start = time.perf_counter()
        predictor.set_image(image)
        seconds = time.perf_counter() - start
    return seconds, peak["peak_mb"], predictor.features.float()[0].numpy()


def row_memory(ctx: BenchContext, variant: str = "vit_h") -> list[BenchRow]:
    """Peak memory (and time) of one set_image with the big model, fp32, each side in its own process."""
    ctx.drop("official:", "samkit:")
    image = ctx.image
    results: dict[str, tuple[float, float | None, np.ndarray]] = {}
    if ctx.device != "cpu":
        for side in ("official", "samkit"):
            predictor = ctx.official(variant) if side == "official" else ctx.samkit(variant)
            with peak_memory() as peak:
                start = time.perf_counter()
                predictor.set_image(image)
                _sync()
                seconds = time.perf_counter() - start
            results[side] = (seconds, peak["peak_mb"], predictor.features.float()[0].cpu().numpy())
            ctx.drop(side + ":")
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        checkpoint = ctx.checkpoint(variant)
        for side in ("official", "samkit"):
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results[side] = pool.submit(
                    _set_image_peak_child,
                    side,
                    variant,
                    checkpoint,
                    str(ctx.baselines.__file__),
                    image,
                    torch.get_num_threads(),
                ).result()
    diff = float(np.abs(results["official"][2] - results["samkit"][2]).max())
    scale = float(np.abs(results["official"][2]).max())
    return [
        BenchRow(
            f"set_image {variant} fp32 (peak memory)",
            "official fp32",
            results["official"][0],
            results["samkit"][0],
            baseline_peak_mb=results["official"][1],
            samkit_peak_mb=results["samkit"][1],
            check=f"embedding max|diff| {diff:.1e} (scale {scale:.2f}); one round, each side in a fresh process",
            ok=diff <= 1e-4 * max(1.0, scale),
        )
    ]


def row_everything(ctx: BenchContext, variant: str = "vit_b") -> list[BenchRow]:
    """Segment everything with the default settings (one round: the official takes minutes).

    Both generators load one checkpoint whose decoder is constructed for the benchmark image
    (:meth:`BenchContext.checkpoint`), so masks pass the default filters and the comparison
    covers filtering, NMS and encoding of real masks.
    """
    from .everything import SamAutomaticMaskGenerator

    ctx.drop("official:", "samkit:")  # one vit_b pair at a time
    off_model = ctx.official(variant, constructed=True).model
    ours_model = ctx.samkit(variant, constructed=True).model
    image = ctx.image
    off_gen = ctx.baselines.mask_generator(off_model)
    ours_gen = SamAutomaticMaskGenerator(ours_model)
    start = time.perf_counter()
    off_masks = off_gen.generate(image)
    t_off = time.perf_counter() - start
    start = time.perf_counter()
    ours_masks = ours_gen.generate(image)
    t_ours = time.perf_counter() - start
    stats = dict(ours_gen.last_stats)
    matched = _match_records(off_masks, ours_masks)
    rows = [
        BenchRow(
            f"everything {variant} defaults, {image.shape[1]}x{image.shape[0]}",
            "official generator",
            t_off,
            t_ours,
            check=(
                f"{len(off_masks)} vs {len(ours_masks)} masks, {matched} matched one-to-one with IoU>=0.99; "
                f"{stats['iou_passed']}/{stats['masks']} passed the IoU filter, {stats['pruned_early']} of them "
                f"pruned before upscaling, {stats['stability_passed']} passed stability; constructed decoder; one round"
            ),
            ok=len(off_masks) == len(ours_masks) == matched and len(off_masks) > 0,
            extra={"samkit_stats": stats},
        )
    ]
    ctx.drop("official:")
    ours_bf16 = ctx.samkit(variant, torch.bfloat16, constructed=True).model
    bf16_gen = SamAutomaticMaskGenerator(ours_bf16)
    start = time.perf_counter()
    bf16_masks = bf16_gen.generate(image)
    t_bf16 = time.perf_counter() - start
    rows.append(
        BenchRow(
            f"everything {variant} defaults, bf16",
            "official generator fp32",
            t_off,
            t_bf16,
            check=f"{len(bf16_masks)} masks (fp32: {len(ours_masks)}), {_match_records(ours_masks, bf16_masks, 0.9)} "
            f"matched to fp32 with IoU>=0.9; {bf16_gen.last_stats['iou_passed']} passed the IoU filter",
            extra={"samkit_stats": dict(bf16_gen.last_stats)},
        )
    )
    ctx.drop("samkit:")
    return rows


def _match_records(a: list[dict[str, Any]], b: list[dict[str, Any]], threshold: float = 0.99) -> int:
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


def row_vit_t(ctx: BenchContext) -> list[BenchRow]:
    """MobileSAM (vit_t) set_image and predict against the reference MobileSAM code."""
    if not ctx.baselines.mobilesam_available():
        return [BenchRow("vit_t", "reference MobileSAM", None, None, check="mobile_sam not installed", ok=False)]
    rows = []
    off = ctx.official("vit_t")
    ours = ctx.samkit("vit_t")
    image = ctx.image
    medians = time_alternating({"official": lambda: off.set_image(image), "samkit": lambda: ours.set_image(image)}, ctx.rounds)
    diff = float((off.features.float() - ours.features.float()).abs().max())
    rows.append(BenchRow("set_image vit_t fp32", "reference MobileSAM", medians["official"], medians["samkit"],
                         round_ratios=medians.ratios("official", "samkit"), check=f"embedding max|diff| {diff:.1e}", ok=diff <= 1e-3))
    h, w = image.shape[:2]
    point = {"point_coords": np.array([[w * 0.45, h * 0.55]]), "point_labels": np.array([1])}
    medians = time_alternating({"official": lambda: off.predict(**point), "samkit": lambda: ours.predict(**point)},
                               max(ctx.rounds * 10, 20), warmup=3)
    lo, _, _ = off.predict(return_logits=True, **point)
    ls, _, _ = ours.predict(return_logits=True, **point)
    strong, d = _agreement(lo, ls)
    rows.append(BenchRow("predict vit_t 1 point, multimask", "reference MobileSAM", medians["official"], medians["samkit"],
                         round_ratios=medians.ratios("official", "samkit"), check=f"logits max|diff| {d:.1e}, {strong} pixels differ", ok=strong == 0))
    ctx.drop("official:vit_t", "samkit:vit_t")
    return rows


def row_onnx(ctx: BenchContext, variant: str = "vit_b") -> list[BenchRow]:
    """ONNX Runtime encoder and predict latency (fp32 and int8) against samkit torch fp32."""
    try:
        from .onnx import OnnxPredictor, export_onnx
        from .onnx.providers import providers_for_device
    except ImportError as exc:
        return [BenchRow("onnx", "samkit torch", None, None, check=f"onnx extra not installed ({exc})", ok=False)]
    from .build import build_sam

    out = ctx.workdir / f"onnx_{variant}"
    export_onnx(build_sam(variant, ctx.checkpoint(variant)), out, quantize="int8")
    ours = ctx.samkit(variant)
    image = ctx.image
    h, w = image.shape[:2]
    point = {"point_coords": np.array([[w * 0.45, h * 0.55]]), "point_labels": np.array([1])}
    rows = []
    for label, kwargs in (("fp32", {}), ("int8", {"quantized": True})):
        ort = OnnxPredictor.from_dir(out, providers=ctx.onnx_providers or providers_for_device(ctx.device), **kwargs)
        medians = time_alternating({"samkit": lambda: ours.set_image(image), "ort": lambda: ort.set_image(image)}, ctx.rounds)
        m_t, _, _ = ours.predict(**point)
        m_o, _, _ = ort.predict(**point)
        iou = float(np.mean([mask_iou(a, b) for a, b in zip(m_t, m_o)]))
        rows.append(BenchRow(f"ORT {label} set_image {variant}", "samkit torch fp32", medians["samkit"], medians["ort"],
                             round_ratios=medians.ratios("samkit", "ort"), check=f"mask IoU vs torch {iou:.4f}", ok=iou >= (0.999 if label == "fp32" else 0.97)))
        medians = time_alternating({"samkit": lambda: ours.predict(**point), "ort": lambda: ort.predict(**point)},
                                   max(ctx.rounds * 10, 20), warmup=3)
        rows.append(BenchRow(f"ORT {label} predict {variant} 1 point", "samkit torch fp32", medians["samkit"], medians["ort"],
                             round_ratios=medians.ratios("samkit", "ort")))
    return rows


def row_set_image_batch(ctx: BenchContext, variant: str = "vit_b", batch: int = 8) -> list[BenchRow]:
    """``batch`` images through ``SamPredictor.set_image_batch`` against the official set_image per image.

    Reported as not run (not as a failure) while samkit has no ``set_image_batch``.
    """
    from .predictor import SamPredictor

    name = f"set_image_batch {variant} fp32, {batch} images"
    if not hasattr(SamPredictor, "set_image_batch"):
        return [BenchRow(name, "official set_image x8", None, None, check="not run: samkit has no set_image_batch")]
    off = ctx.official(variant)
    ours = ctx.samkit(variant)
    images = [ctx.image] * batch

    def official_loop() -> None:
        for image in images:
            off.set_image(image)

    medians = time_alternating({"official": official_loop, "samkit": lambda: ours.set_image_batch(images)}, ctx.rounds)
    return [
        BenchRow(
            name,
            f"official set_image x{batch}",
            medians["official"],
            medians["samkit"],
            round_ratios=medians.ratios("official", "samkit"),
            check="timing only",
        )
    ]


def _row_annotate(ctx: BenchContext) -> list[BenchRow]:
    """``samkit annotate``'s workload (in :mod:`samkit.annotation.bench`, imported when run)."""
    from .annotation.bench import row_annotate

    return row_annotate(ctx)


def row_model_family(ctx: BenchContext, variant: str) -> list[BenchRow]:
    """set_image and a 1-point multimask predict of another model family (HQ-SAM, SAM 2.1)
    against its official code (``bench/baselines.py``), on the same perturbed weights."""
    off = ctx.official(variant)
    ours = ctx.samkit(variant)
    image = ctx.image
    h, w = image.shape[:2]
    encode = time_alternating({"official": lambda: off.set_image(image), "samkit": lambda: ours.set_image(image)}, ctx.rounds)
    point = {"point_coords": np.array([[w * 0.45, h * 0.55]]), "point_labels": np.array([1])}
    decode = time_alternating(
        {"official": lambda: off.predict(**point), "samkit": lambda: ours.predict(**point)},
        max(ctx.rounds * 10, 20),
        warmup=3,
    )
    lo, _, _ = off.predict(return_logits=True, **point)
    ls, _, _ = ours.predict(return_logits=True, **point)
    strong, diff = _agreement(np.asarray(lo, dtype=np.float32), np.asarray(ls, dtype=np.float32))
    check = f"logits max|diff| {diff:.1e}, {strong} mask pixels differ beyond |logit|>=1e-3"
    ctx.drop(f"official:{variant}:", f"samkit:{variant}:")
    return [
        BenchRow(f"set_image {variant} fp32", "official fp32", encode["official"], encode["samkit"],
                 round_ratios=encode.ratios("official", "samkit"), check=check, ok=strong == 0),
        BenchRow(f"predict {variant} 1 point, multimask, {w}x{h}", "official", decode["official"], decode["samkit"],
                 round_ratios=decode.ratios("official", "samkit"), check=check, ok=strong == 0),
    ]


def row_hq(ctx: BenchContext) -> list[BenchRow]:
    """HQ-SAM (hq_vit_b) against segment-anything-hq."""
    return row_model_family(ctx, "hq_vit_b")


def row_sam2(ctx: BenchContext) -> list[BenchRow]:
    """SAM 2.1 (hiera_t and hiera_b+) against the official sam2 package."""
    return row_model_family(ctx, "sam2.1_hiera_t") + row_model_family(ctx, "sam2.1_hiera_b+")


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
    "set_image_vit_h": functools.partial(row_set_image, variant="vit_h"),
    "bf16_vit_h": functools.partial(row_set_image_bf16, variant="vit_h"),
    "batch8": row_set_image_batch,
    "annotate": _row_annotate,
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
    from .devices import resolve_device

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown benchmark row {unknown[0]!r}: expected some of {', '.join(ROWS)}")
    device = str(resolve_device(device))
    module = load_baselines(baselines)
    if not module.official_available():
        raise FileNotFoundError("the official segment-anything package is not installed: pip install -e '.[bench]'")
    results: list[BenchRow] = []
    token = _BENCH_DEVICE.set(device)
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
        _BENCH_DEVICE.reset(token)
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
