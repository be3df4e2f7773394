"""Device names and what each device can do: one place for the CLI, the bench and the Ray engine.

``resolve_device("auto")`` picks CUDA, then Apple's MPS, then the CPU. A device the machine
lacks (``cuda`` on a CPU-only build, ``mps`` off a Mac, ``cuda:3`` with one GPU) or a name torch
does not know raises :class:`DeviceUnavailable`, a ``ValueError`` whose message is one line, so
the CLI reports it as a user mistake.
"""

from __future__ import annotations

import torch

__all__ = [
    "AUTO",
    "DeviceUnavailable",
    "available_accelerator",
    "resolve_device",
    "check_dtype_supported",
    "synchronize",
    "is_accelerator",
    "runs_on_cpu",
]

AUTO = "auto"
_GPU_ALIASES = ("gpu",)


class DeviceUnavailable(ValueError):
    """The requested device does not exist on this machine, or its name is not a torch device."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_accelerator() -> str | None:
    """The accelerator ``auto`` would pick: ``"cuda"``, ``"mps"``, or None when there is none."""
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return None


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """The torch device named ``name``, checked against this machine.

    Args:
        name: ``"auto"`` or None (CUDA, then MPS, then CPU), ``"gpu"`` (CUDA, then MPS; an error
            without either), or any torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``,
            ``"mps"``).

    Returns:
        the device.

    Raises:
        DeviceUnavailable: an unknown name, or a device this machine lacks.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == AUTO):
        return torch.device(available_accelerator() or "cpu")
    if isinstance(name, str) and name.strip().lower() in _GPU_ALIASES:
        accelerator = available_accelerator()
        if accelerator is None:
            raise DeviceUnavailable(f"no GPU on this machine ({_cuda_build_note()}); use --device cpu or auto")
        return torch.device(accelerator)
    try:
        device = torch.device(name.strip().lower() if isinstance(name, str) else name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceUnavailable(
            f"unknown device {str(name)!r}: expected auto, cpu, cuda, cuda:N, mps or gpu"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"{device} requested but this machine has no CUDA GPU ({_cuda_build_note()})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailable(f"{device} requested but this machine has {count} CUDA GPU(s)")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceUnavailable(f"{device} requested but Apple's MPS is not available here")
        return device
    module = getattr(torch, device.type, None)
    is_available = getattr(module, "is_available", None)
    if callable(is_available) and is_available():
        return device
    raise DeviceUnavailable(f"{device} requested but it is not available on this machine")


def _cuda_build_note() -> str:
    """Why CUDA is missing, in a few words."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    return f"torch {torch.__version__} with CUDA {torch.version.cuda} found no GPU"


def runs_on_cpu(name: str | torch.device | None) -> bool:
    """Whether ``name`` (as :func:`resolve_device` reads it) is the CPU here; False for a device
    this machine lacks (whoever uses it reports that)."""
    try:
        return resolve_device(name).type == "cpu"
    except DeviceUnavailable:
        return False


def is_accelerator(device: torch.device | str) -> bool:
    """Whether ``device`` is not the CPU (kernel launches cost; large batches pay)."""
    return torch.device(device).type != "cpu"


def check_dtype_supported(device: torch.device | str, dtype: torch.dtype | str) -> None:
    """Raise when ``dtype`` is not a sensible compute dtype on ``device``.

    float16 is for GPUs: on the CPU many of its kernels fall back to slow paths (use bfloat16).

    Raises:
        DeviceUnavailable: float16 on the CPU.
    """
    device = torch.device(device)
    if dtype in (torch.float16, "float16", "fp16", "half") and device.type == "cpu":
        raise DeviceUnavailable("float16 runs on GPUs (cuda, mps); on a CPU use bfloat16 or float32")


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
