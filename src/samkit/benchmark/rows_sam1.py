"""Rows of SAM 1 and MobileSAM against the official segment-anything / MobileSAM code:
set_image (fp32, bf16, a batch), predict, peak memory, segment everything, ONNX Runtime."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .harness import (
    BenchContext,
    BenchRow,
    benchmark_prompts,
    load_baselines,
    logit_agreement,
    mask_iou,
    match_records,
    peak_memory,
    sync_bench_device,
    time_alternating,
)

logger = logging.getLogger(__name__)

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
    strong, diff = logit_agreement(lo, ls)
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
    strong, diff = logit_agreement(lo_t, ls_t)
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
        from ..build import build_sam
        from ..predictor import SamPredictor

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
                sync_bench_device()
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
    from ..everything import SamAutomaticMaskGenerator

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
    matched = match_records(off_masks, ours_masks)
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
            check=f"{len(bf16_masks)} masks (fp32: {len(ours_masks)}), {match_records(ours_masks, bf16_masks, 0.9)} "
            f"matched to fp32 with IoU>=0.9; {bf16_gen.last_stats['iou_passed']} passed the IoU filter",
            extra={"samkit_stats": dict(bf16_gen.last_stats)},
        )
    )
    ctx.drop("samkit:")
    return rows




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
    strong, d = logit_agreement(lo, ls)
    rows.append(BenchRow("predict vit_t 1 point, multimask", "reference MobileSAM", medians["official"], medians["samkit"],
                         round_ratios=medians.ratios("official", "samkit"), check=f"logits max|diff| {d:.1e}, {strong} pixels differ", ok=strong == 0))
    ctx.drop("official:vit_t", "samkit:vit_t")
    return rows


def row_onnx(ctx: BenchContext, variant: str = "vit_b") -> list[BenchRow]:
    """ONNX Runtime encoder and predict latency (fp32 and int8) against samkit torch fp32."""
    try:
        from ..onnx import OnnxPredictor, export_onnx
        from .onnx.providers import providers_for_device
    except ImportError as exc:
        return [BenchRow("onnx", "samkit torch", None, None, check=f"onnx extra not installed ({exc})", ok=False)]
    from ..build import build_sam

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
    from ..predictor import SamPredictor

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
    from ..annotation.bench import row_annotate

    return row_annotate(ctx)
