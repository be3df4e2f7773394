"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_model_args", "load_model", "model_device", "parse_floats", "existing_file"]

# HQ-SAM (one mask per prompt, sharper boundaries): every command but export-onnx takes them.
HQ_MODEL_CHOICES = ("hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny")
MODEL_CHOICES = ("vit_b", "vit_l", "vit_h", "vit_t") + HQ_MODEL_CHOICES
# SAM 2.1 and SAM 2.0 image models: commands that run them pass ``sam2=True`` to add_model_args.
SAM2_MODEL_CHOICES = tuple(f"{family}_hiera_{size}" for family in ("sam2.1", "sam2") for size in ("t", "s", "b+", "l"))
DTYPE_CHOICES = ("float32", "bfloat16", "float16", "auto")


def add_model_args(
    parser: argparse.ArgumentParser, *, default_model: str = "vit_b", sam2: bool = False, sam2_only: bool = False
) -> None:
    """Add --model, --checkpoint, --dtype, --device (``sam2``: SAM 2.x names too; ``sam2_only``: only those)."""
    group = parser.add_argument_group("model")
    choices = SAM2_MODEL_CHOICES if sam2_only else MODEL_CHOICES + SAM2_MODEL_CHOICES if sam2 else MODEL_CHOICES
    group.add_argument("--model", default=default_model, choices=choices, help=f"model variant (default {default_model})")
    group.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file (.pth/.pt/.safetensors); default: the official file, downloaded once into $SAMKIT_HOME",
    )
    group.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_CHOICES,
        help="float32 is exact; bfloat16 is the fast mode (~2-3x faster on CPUs with bf16 support); "
        "float16 on GPUs only; auto lets build_sam choose for the device",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps or gpu",
    )


def load_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Build the model named by the common options.

    Raises:
        samkit.cli.UserError: a device this machine lacks, or a dtype it cannot run.
    """
    from ..build import build_sam

    device = model_device(args)
    checkpoint = args.checkpoint
    if checkpoint is not None:
        checkpoint = existing_file(checkpoint, "--checkpoint")
    return build_sam(args.model, checkpoint, device=device, dtype=model_dtype(args, device))


def model_dtype(args: argparse.Namespace, device) -> str:  # type: ignore[no-untyped-def]
    """``--dtype``, with ``auto`` resolved for ``device`` and the choice said on stderr."""
    dtype: str = args.dtype
    if dtype == "auto":  # say what was chosen: the user asked the machine to decide
        from ..hardware import auto_dtype

        chosen, reason = auto_dtype(device)
        dtype = str(chosen).removeprefix("torch.")
        print(f"--dtype auto: {dtype} ({reason})", file=sys.stderr)
    return dtype


def model_device(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The torch device named by ``--device``, checked on this machine together with ``--dtype``.

    Raises:
        samkit.cli.UserError: an unknown device, one this machine lacks, or float16 on a CPU.
    """
    from ..devices import DeviceUnavailable, check_dtype_supported, resolve_device
    from . import UserError

    try:
        device = resolve_device(getattr(args, "device", None))
        check_dtype_supported(device, getattr(args, "dtype", "float32"))
    except DeviceUnavailable as exc:
        raise UserError(f"--device/--dtype: {exc}") from None
    return device


def existing_file(path: str | os.PathLike[str], option: str) -> Path:
    """The path, if it names an existing file; else a one-line user error."""
    from . import UserError

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{option}: no such file: {p}")
    if not p.is_file():
        raise UserError(f"{option}: not a file: {p}")
    return p


def parse_floats(text: str, option: str, counts: tuple[int, ...]) -> list[float]:
    """Parse "1,2,3" into floats, requiring one of ``counts`` values."""
    from . import UserError

    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"{option}: expected {' or '.join(map(str, counts))} comma-separated numbers, got {text!r}") from None
    if len(values) not in counts:
        raise UserError(f"{option}: expected {' or '.join(map(str, counts))} comma-separated numbers, got {text!r}")
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise UserError(f"{option}: values must be finite, got {text!r}")
    return values
