"""What the machine can do: CPU model and instruction-set flags, and the fastest accurate dtype.

Benchmark figures are meaningless without the machine they came from, and the reduced-precision
modes pay only where the hardware has matrix instructions for them: bf16 runs ~2.4x the fp32
matrix-product rate on a CPU with AVX-512 BF16, and falls back to slow paths (slower than fp32)
on one without. This module reads those facts once, so that ``dtype="auto"`` and every
``samkit bench`` table use the same ones.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the ONNX predictor reads flags without it
    import torch

__all__ = [
    "MachineInfo",
    "machine_info",
    "cpu_has_fast_bf16",
    "cpu_has_int8_dot_product",
    "auto_dtype",
    "RELEVANT_CPU_FLAGS",
]

logger = logging.getLogger(__name__)

# The /proc/cpuinfo flags that decide which kernels run fast (names as Linux spells them).
RELEVANT_CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
# Any one of these gives bf16 matrix products faster than fp32 ones.
_BF16_MATRIX_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# u8 x s8 dot-product instructions: x86 VNNI/AMX, ARM's SDOT/UDOT ("asimddp" in /proc/cpuinfo).
_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


@dataclass(frozen=True)
class MachineInfo:
    """The facts a benchmark figure needs beside it.

    Attributes:
        cpu: CPU model name (``/proc/cpuinfo``'s ``model name``, else ``platform.processor()``).
        cpu_flags: the :data:`RELEVANT_CPU_FLAGS` this CPU has, in that order.
        cpu_capability: ``torch.backends.cpu.get_cpu_capability()`` (the kernels torch dispatches to).
        threads: torch intra-op threads at the time of the reading.
        torch_version: ``torch.__version__``.
        python_version: ``platform.python_version()``.
        gpu: CUDA device name, or None.
    """

    cpu: str
    cpu_flags: tuple[str, ...]
    cpu_capability: str
    threads: int
    torch_version: str
    python_version: str
    gpu: str | None = None

    def header(self) -> str:
        """One line for the top of a table, e.g. ``AMD EPYC, flags avx2 avx512f ..., torch AVX512``."""
        flags = " ".join(self.cpu_flags) or "none of " + "/".join(RELEVANT_CPU_FLAGS)
        text = (
            f"CPU {self.cpu}; flags: {flags}; torch CPU capability {self.cpu_capability}; "
            f"{self.threads} threads; torch {self.torch_version}; Python {self.python_version}"
        )
        if self.gpu:
            text += f"; GPU {self.gpu}"
        return text

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "cpu": self.cpu,
            "cpu_flags": list(self.cpu_flags),
            "cpu_capability": self.cpu_capability,
            "threads": self.threads,
            "torch": self.torch_version,
            "python": self.python_version,
            "gpu": self.gpu,
        }


@functools.lru_cache(maxsize=1)
def _cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """CPU model name and the set of all its flags, from /proc/cpuinfo where there is one."""
    model = ""
    flags: frozenset[str] = frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86 / ARM spelling
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return model, flags


def machine_info() -> MachineInfo:
    """Read the machine's facts now (thread count and GPU as they are at the call)."""
    import torch

    model, flags = _cpu_model_and_flags()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return MachineInfo(
        cpu=model,
        cpu_flags=tuple(f for f in RELEVANT_CPU_FLAGS if f in flags),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        gpu=gpu,
    )


def cpu_has_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices faster than fp32 ones (AVX-512 BF16 or AMX)."""
    if flags is None:
        flags = _cpu_model_and_flags()[1]
    return bool(flags & _BF16_MATRIX_FLAGS)


def cpu_has_int8_dot_product(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU has u8 x s8 dot-product instructions (VNNI, AMX-INT8 or ARM dot product).

    Without them, onnxruntime's u8 x s8 kernels sum pairs of products in 16 bits and saturate;
    with them, signed weights run about twice as fast as unsigned ones (measured on a Zen 4 with
    AVX512-VNNI, one thread: 283 vs 140 GOP/s for a 4096x768x3072 MLP, dynamic activations).
    """
    if flags is None:
        flags = _cpu_model_and_flags()[1]
    return bool(flags & _INT8_DOT_FLAGS)


def auto_dtype(
    device: torch.device | str | None, *, cpu_flags: frozenset[str] | None = None
) -> tuple[torch.dtype, str]:
    """The fastest dtype the device runs accurately, and why it was chosen.

    bfloat16 on CUDA devices that support it and on CPUs with bf16 matrix instructions
    (AVX-512 BF16 or AMX); float32 everywhere else (without those instructions bf16 products
    fall back to slow paths; MPS is kept at float32). int8 is never chosen automatically.

    Args:
        device: the model's device (None means CPU).
        cpu_flags: CPU flags to decide from (default: this machine's), for tests.

    Returns:
        (dtype, reason) where reason is a short phrase for logs and the CLI.
    """
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA device supports bfloat16"
        return torch.float32, "CUDA device without bfloat16 support"
    if dev.type == "cpu":
        if cpu_has_fast_bf16(cpu_flags):
            return torch.bfloat16, "CPU has bf16 matrix instructions (AVX-512 BF16 or AMX)"
        return torch.float32, "CPU has no bf16 matrix instructions (AVX-512 BF16 or AMX)"
    return torch.float32, f"{dev.type} device: float32 is the accurate default"
