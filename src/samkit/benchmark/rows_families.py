"""Rows of the other model families against their official code: HQ-SAM (segment-anything-hq)
and SAM 2.1 (sam2), on the same perturbed weights; and samkit annotate's workload."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .harness import BenchContext, BenchRow, logit_agreement, mask_iou, match_records, time_alternating

def row_annotate(ctx: BenchContext) -> list[BenchRow]:
    """``samkit annotate``'s workload (in :mod:`samkit.annotation.bench`, imported when run)."""
    from ..annotation.bench import row_annotate

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
    strong, diff = logit_agreement(np.asarray(lo, dtype=np.float32), np.asarray(ls, dtype=np.float32))
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


def _generate_timed(generator: Any, image: np.ndarray) -> tuple[float, list[dict[str, Any]]]:
    start = time.perf_counter()
    records = generator.generate(image)
    return time.perf_counter() - start, records


def row_sam2_everything_variant(ctx: BenchContext, variant: str) -> list[BenchRow]:
    """Segment everything with a SAM 2.1 model against ``SAM2AutomaticMaskGenerator``, one round.

    Two settings on the same perturbed weights: the official defaults (32x32 points, predicted
    IoU > 0.8, stability >= 0.95, box NMS 0.7), and the same with both score filters off, which
    keeps masks on random weights so that the mask sets can be compared one to one (box NMS
    still merges the image-wide masks random weights give).
    """
    from ..everything import SamAutomaticMaskGenerator

    off_model = ctx.official(variant).model
    ours_model = ctx.samkit(variant).model
    image = ctx.image
    rows = []
    settings: list[tuple[str, dict[str, Any]]] = [
        ("defaults", {}),
        ("filters off", {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}),
    ]
    for label, options in settings:
        t_off, off_masks = _generate_timed(ctx.baselines.mask_generator(off_model, variant, **options), image)
        ours_gen = SamAutomaticMaskGenerator(ours_model, **options)
        t_ours, ours_masks = _generate_timed(ours_gen, image)
        matched = match_records(off_masks, ours_masks)
        stats = dict(ours_gen.last_stats)
        rows.append(
            BenchRow(
                f"everything {variant} {label}, {image.shape[1]}x{image.shape[0]}",
                "official SAM2AutomaticMaskGenerator",
                t_off,
                t_ours,
                check=(
                    f"{len(off_masks)} vs {len(ours_masks)} masks, {matched} matched one-to-one with IoU>=0.99; "
                    f"{stats.get('iou_passed', '?')}/{stats.get('masks', '?')} passed the IoU filter; "
                    "perturbed random weights; one round"
                ),
                ok=len(off_masks) == len(ours_masks) == matched,
                extra={"samkit_stats": stats},
            )
        )
    ctx.drop(f"official:{variant}:", f"samkit:{variant}:")
    return rows


def row_sam2_everything(ctx: BenchContext) -> list[BenchRow]:
    """Segment everything, SAM 2.1 hiera_t and hiera_b+, against the official sam2 generator."""
    return row_sam2_everything_variant(ctx, "sam2.1_hiera_t") + row_sam2_everything_variant(ctx, "sam2.1_hiera_b+")


def write_bench_clip(folder: Path, frames: int, height: int = 540, width: int = 960, seed: int = 0) -> Path:
    """A synthetic clip of ``frames`` JPEG frames: a disc moving right and a box moving left and
    down over a gradient with noise (what the tracker follows in the video rows)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([40 + 150 * x / width, 60 + 120 * y / height, 90 + 0 * x], axis=-1)  # (H, W, 3)
    for t in range(frames):
        phase = (t % 64) / 64.0  # the shapes loop every 64 frames
        frame = background.copy()
        cx, cy = (0.25 + 0.4 * phase) * width, 0.5 * height
        frame[(x - cx) ** 2 + (y - cy) ** 2 < (0.15 * height) ** 2] = (220, 40, 40)
        bx, by = (0.75 - 0.3 * phase) * width, (0.3 + 0.2 * phase) * height
        frame[(np.abs(x - bx) < 0.08 * width) & (np.abs(y - by) < 0.12 * height)] = (30, 200, 60)
        frame += rng.normal(0.0, 4.0, size=frame.shape)
        Image.fromarray(np.clip(np.rint(frame), 0, 255).astype(np.uint8)).save(folder / f"{t:05d}.jpg", quality=92)
    return folder


def _track(predictor: Any, clip: Path, width: int, height: int) -> tuple[float, dict[int, np.ndarray]]:
    """One session: init, a click on each shape on frame 0, propagate. Returns (propagation
    seconds, {frame: (N_obj, H, W) bool masks})."""
    state = predictor.init_state(str(clip))
    predictor.add_new_points_or_box(state, 0, 1, points=np.array([[0.25 * width, 0.5 * height]], np.float32), labels=np.array([1], np.int32))
    predictor.add_new_points_or_box(state, 0, 2, points=np.array([[0.75 * width, 0.3 * height]], np.float32), labels=np.array([1], np.int32))
    masks: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    for frame_idx, _, logits in predictor.propagate_in_video(state):
        masks[frame_idx] = (logits[:, 0] > 0).cpu().numpy()
    seconds = time.perf_counter() - start
    if hasattr(state, "close"):
        state.close()
    return seconds, masks


def row_video_variant(ctx: BenchContext, variant: str = "sam2.1_hiera_t", frames: int = 64) -> list[BenchRow]:
    """Video propagation, samkit's SamVideoPredictor against the official SAM2VideoPredictor (fp32,
    CPU, the same perturbed weights, two objects clicked on frame 0, one round each): frames per
    second of the propagation and the peak memory of the whole session (init_state included)."""
    import torch

    from ..build_sam2 import build_sam_video
    from ..video import SamVideoPredictor
    from .harness import peak_memory

    ctx.drop("official:", "samkit:")
    height, width = 540, 960
    clip = write_bench_clip(ctx.workdir / f"clip_{frames}", frames, height, width)
    checkpoint = ctx.baselines.make_video_checkpoint(variant, ctx.workdir / f"{variant}_video.pt")
    results: dict[str, tuple[float, float | None, dict[int, np.ndarray]]] = {}
    for side in ("official", "samkit"):
        with peak_memory() as peak, torch.inference_mode():
            if side == "official":
                predictor = ctx.baselines.video_predictor(variant, checkpoint)
            else:
                predictor = SamVideoPredictor(build_sam_video(variant, checkpoint, device=ctx.device))
            seconds, masks = _track(predictor, clip, width, height)
            del predictor
        results[side] = (seconds, peak["peak_mb"], masks)
    off, ours = results["official"], results["samkit"]
    ious = [
        mask_iou(a, b)
        for f in sorted(off[2])
        for a, b in zip(off[2][f], ours[2].get(f, np.zeros_like(off[2][f])))
    ]
    worst = min(ious) if ious else 0.0
    return [
        BenchRow(
            f"video propagation {variant}, {frames} frames {width}x{height}, 2 objects",
            "official SAM2VideoPredictor",
            off[0],
            ours[0],
            baseline_peak_mb=off[1],
            samkit_peak_mb=ours[1],
            check=f"{len(ours[2])} vs {len(off[2])} frames; fps {frames / off[0]:.3f} vs {frames / ours[0]:.3f}; "
            f"worst per-frame mask IoU {worst:.4f}; one round each",
            ok=len(ours[2]) == len(off[2]) == frames and worst >= 0.99,
            extra={"frames": frames, "official_fps": frames / off[0], "samkit_fps": frames / ours[0]},
        )
    ]


def row_video(ctx: BenchContext) -> list[BenchRow]:
    """hiera_t video propagation over 64 frames against the official predictor."""
    return row_video_variant(ctx, "sam2.1_hiera_t", 64)


def row_video_memory(
    ctx: BenchContext,
    variant: str = "sam2.1_hiera_t",
    lengths: tuple[int, ...] = (64, 256),
    image_size: int | None = None,
    official: bool = False,
) -> list[BenchRow]:
    """Peak memory of a whole tracking session against the video's length (samkit's should not
    grow): one row per length, two objects clicked on frame 0 of a 960x540 clip, one round.

    Args:
        image_size: the model input (default the variant's 1024; 512 costs ~1/8 per frame and
            shows the same memory behaviour).
        official: also run the official ``SAM2VideoPredictor`` on each length (same weights and
            input size), whose memory grows with the frames it holds.
    """
    import torch

    from ..build_sam2 import build_sam_video, get_sam2_video_config
    from ..video import SamVideoPredictor
    from .harness import peak_memory

    ctx.drop("official:", "samkit:")
    checkpoint = ctx.baselines.make_video_checkpoint(variant, ctx.workdir / f"{variant}_video.pt")
    config = get_sam2_video_config(variant)
    if image_size is not None:
        config = config.with_image_size(image_size)
    size = f"{config.image_size} input"
    rows = []
    for frames in lengths:
        clip = write_bench_clip(ctx.workdir / f"clip_{frames}", frames)
        measured: dict[str, tuple[float, float | None, dict[int, np.ndarray]]] = {}
        for side in ("official", "samkit") if official else ("samkit",):
            with peak_memory() as peak, torch.inference_mode():
                if side == "official":
                    predictor = ctx.baselines.video_predictor(variant, checkpoint, image_size=image_size)
                else:
                    predictor = SamVideoPredictor(build_sam_video(config, checkpoint, device=ctx.device))
                seconds, masks = _track(predictor, clip, 960, 540)
                del predictor
            measured[side] = (seconds, peak["peak_mb"], masks)
        seconds, peak_mb, masks = measured["samkit"]
        check = f"{frames / seconds:.3f} frames/s; {len(masks)} frames"
        ok = len(masks) == frames
        if official:
            off_seconds, off_peak, off_masks = measured["official"]
            ious = [mask_iou(a, b) for f in sorted(off_masks) for a, b in zip(off_masks[f], masks.get(f, np.zeros_like(off_masks[f])))]
            worst = min(ious) if ious else 0.0
            check += f" (official {frames / off_seconds:.3f}); worst per-frame mask IoU {worst:.4f}"
            ok = ok and len(off_masks) == frames and worst >= 0.99
        rows.append(
            BenchRow(
                f"video memory {variant} ({size}), {frames} frames 960x540, 2 objects, whole session",
                "official SAM2VideoPredictor" if official else "-",
                measured["official"][0] if official else None,
                seconds,
                baseline_peak_mb=measured["official"][1] if official else None,
                samkit_peak_mb=peak_mb,
                check=check + "; peak memory: model build + session, above the process before it; one round",
                ok=ok,
                extra={"frames": frames, "image_size": config.image_size},
            )
        )
    return rows
