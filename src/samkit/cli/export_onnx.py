"""``samkit export-onnx``: write encoder.onnx and decoder.onnx for ONNX Runtime front ends."""

from __future__ import annotations

import argparse
import json
import logging
import time

from .common import HQ_MODEL_CHOICES, MODEL_CHOICES, SAM2_MODEL_CHOICES, existing_file

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``export-onnx`` subcommand."""
    parser = subparsers.add_parser(
        "export-onnx",
        help="export the model to ONNX (encoder.onnx + decoder.onnx)",
        description="Write encoder.onnx (input 'image': the normalized, zero-padded (1, 3, 1024, 1024) float32 "
        "image; with --raw-input the (h, w, 3) uint8 pixels of the image resized to longest side 1024) and "
        "decoder.onnx with the official SAM ONNX decoder interface (image_embeddings, point_coords, "
        "point_labels, mask_input, has_mask_input, orig_im_size -> masks, iou_predictions, low_res_masks). "
        "SAM 2 / 2.1 encoders (input: the image stretched to the square) also output high_res_feats_0/1 and "
        "HQ-SAM encoders hq_features, which their decoders take; SAM 2 decoders also return object_score_logits, "
        "HQ-SAM decoders take multimask_output and hq_token_only and return one mask. "
        "Graphs over 2 GB (vit_h encoder) keep their weights in NAME.onnx.data beside them. "
        "Use them with samkit.onnx.OnnxPredictor.from_dir(OUT) (no torch needed) or any front end of "
        "the official ONNX decoder.",
    )
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument(
        "--model", default="vit_b", choices=MODEL_CHOICES + SAM2_MODEL_CHOICES, help="model variant (default vit_b)"
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file (.pth/.pt/.safetensors); default: the official file, downloaded once into $SAMKIT_HOME",
    )
    parser.add_argument(
        "--quantize",
        default=None,
        choices=("int8",),
        help="also write encoder.int8.onnx: the encoder with int8 MatMuls (8-bit per-channel weights, "
        "activations quantized at run time); the decoder stays float32. "
        "OnnxPredictor.from_dir(OUT, quantized=True) opens encoder.int8.onnx + decoder.onnx",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17, >= 14)")
    parser.add_argument(
        "--raw-input",
        action="store_true",
        help="encoder input is the resized (h, w, 3) uint8 image; normalization and padding run in the graph "
        "(not for SAM 2 models)",
    )
    parser.add_argument(
        "--return-single-mask",
        action="store_true",
        help="decoder returns one mask chosen in the graph, like the official --return-single-mask export "
        "(default: all 4 mask tokens, so both multimask settings can be served; SAM 1 models only)",
    )
    parser.add_argument("--json", action="store_true", help="print the written paths as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export; returns the exit status."""
    from . import UserError

    if not 14 <= args.opset <= 21:
        raise UserError(f"--opset: expected 14..21, got {args.opset}")
    sam2 = args.model in SAM2_MODEL_CHOICES
    if args.raw_input and sam2:
        raise UserError(
            f"--raw-input: not available for SAM 2 models ({args.model}), whose input is the image stretched to the square"
        )
    if args.return_single_mask and (sam2 or args.model in HQ_MODEL_CHOICES):
        raise UserError(
            f"--return-single-mask: SAM 1 models only ({args.model} decoders choose their single mask themselves)"
        )
    checkpoint = existing_file(args.checkpoint, "--checkpoint") if args.checkpoint is not None else None
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("export-onnx needs the 'onnx' package: pip install 'samkit[onnx]'") from None
    if args.quantize:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError("--quantize needs onnxruntime: pip install 'samkit[onnx]'") from None

    from ..build import build_sam
    from ..onnx.export import export_onnx
    from ..outputs import check_output_dir

    check_output_dir(args.out, what="--out")  # before the model loads: one line, exit 2
    start = time.perf_counter()
    sam = build_sam(args.model, checkpoint, device="cpu", dtype="float32")
    paths = export_onnx(
        sam,
        args.out,
        opset=args.opset,
        raw_input=args.raw_input,
        quantize=args.quantize,
        return_single_mask=args.return_single_mask,
    )
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps({"model": args.model, "seconds": round(elapsed, 2), **{k: str(v) for k, v in paths.items()}}))
    else:
        for name, path in paths.items():
            print(f"{name}: {path}")
        print(f"exported {args.model} in {elapsed:.1f} s")
    return 0
