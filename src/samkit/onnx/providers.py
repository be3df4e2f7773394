"""ONNX Runtime execution providers by device name (no torch, no onnxruntime import)."""

from __future__ import annotations

__all__ = ["PROVIDER_NAMES", "providers_for_device", "parse_providers"]

# Short names accepted on the command line -> onnxruntime's provider names.
PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def providers_for_device(device: str) -> list[str]:
    """The providers, in order of preference, that run a model on ``device`` (CPU last as fallback).

    Args:
        device: a torch-style device name: ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

    Returns:
        onnxruntime provider names.
    """
    kind = device.strip().lower().split(":")[0]
    if kind == "cuda":
        return [PROVIDER_NAMES["cuda"], PROVIDER_NAMES["cpu"]]
    if kind == "mps":
        return [PROVIDER_NAMES["coreml"], PROVIDER_NAMES["cpu"]]
    return [PROVIDER_NAMES["cpu"]]


def parse_providers(text: str) -> list[str]:
    """``"cuda,cpu"`` or full names (``"CUDAExecutionProvider"``) -> provider names, in order.

    Raises:
        ValueError: an empty list, or a short name that is not known (full names ending in
            ``ExecutionProvider`` pass as they are).
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("expected a comma-separated list of ONNX Runtime providers, e.g. cuda,cpu")
    out = []
    for name in names:
        if name.endswith("ExecutionProvider"):
            out.append(name)
        elif name.lower() in PROVIDER_NAMES:
            out.append(PROVIDER_NAMES[name.lower()])
        else:
            raise ValueError(f"unknown ONNX Runtime provider {name!r}: use {', '.join(PROVIDER_NAMES)} or a full name")
    return out
