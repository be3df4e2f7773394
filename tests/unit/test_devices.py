"""samkit.devices: auto picks cuda, then mps, then cpu; missing or unknown devices are one-line errors."""

from __future__ import annotations

import pytest
import torch

from samkit.devices import DeviceUnavailable, check_dtype_supported, is_accelerator, resolve_device, synchronize


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Pretend this machine has ``cuda`` CUDA GPUs and MPS or not: ``machine(cuda=1, mps=False)``."""

    def set_machine(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_machine


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(1, True, "cuda"), (0, True, "mps"), (0, False, "cpu"), (2, False, "cuda")]
)
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda: int, mps: bool, expected: str) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(None) == torch.device(expected)
    assert resolve_device(" AUTO ") == torch.device(expected)


def test_gpu_alias(machine) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=0, mps=True)
    assert resolve_device("gpu") == torch.device("mps")
    machine(cuda=1, mps=True)
    assert resolve_device("gpu") == torch.device("cuda")
    machine(cuda=0, mps=False)
    with pytest.raises(DeviceUnavailable, match="no GPU on this machine"):
        resolve_device("gpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA"])
def test_cuda_missing_is_an_error(machine, name: str) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=0, mps=True)
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU") as info:
        resolve_device(name)
    assert "\n" not in str(info.value)


def test_cuda_index_beyond_the_gpus(machine) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceUnavailable, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")


def test_mps_missing_is_an_error(machine) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=1, mps=False)
    with pytest.raises(DeviceUnavailable, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["garbage", "cuda:x", "", "tpu9"])
def test_unknown_names(machine, name: str) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=0)
    with pytest.raises(DeviceUnavailable, match="unknown device|not available"):
        resolve_device(name)


def test_cpu_always_resolves(machine) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=0, mps=False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert not is_accelerator("cpu") and is_accelerator("cuda") and is_accelerator(torch.device("mps"))
    synchronize("cpu")  # a no-op that must not touch CUDA


def test_float16_only_off_the_cpu() -> None:
    for dtype in (torch.float16, "float16", "fp16", "half"):
        with pytest.raises(DeviceUnavailable, match="float16 runs on GPUs"):
            check_dtype_supported("cpu", dtype)
    for device in ("cuda", "mps"):
        check_dtype_supported(device, torch.float16)
    for dtype in (torch.float32, torch.bfloat16, "bfloat16", "auto"):
        check_dtype_supported("cpu", dtype)
