"""Scratch buffers shared by the blocks of one encoder forward, and products written into them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Workspace", "linear_into"]


class Workspace:
    """Large scratch tensors shared by the blocks of one encoder forward.

    Tensors above glibc's mmap threshold (32 MB at most) get fresh pages from the kernel on
    every allocation and give them back when freed: an encoder forward that allocated its
    qkv, MLP and attention-bias scratch anew in each block took ~650,000 page faults and
    ~1.5 s of system time. Asking the workspace instead allocates each kind of buffer once per
    forward; the values computed are the same.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialized tensor of ``shape`` with ``like``'s dtype and device, reused by name."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = like.new_empty(shape)
            self._buffers[name] = buffer
        return buffer

    @staticmethod
    def usable() -> bool:
        """Whether out= buffers may be used: not under autograd (out= does not record it) or tracing."""
        return not torch.is_grad_enabled() and not torch.jit.is_tracing()


def linear_into(workspace: Workspace | None, name: str, x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` for x (..., C_in), written into the workspace buffer ``name`` when given."""
    if workspace is None:
        return layer(x)
    flat = x.reshape(-1, x.shape[-1])  # (M, C_in)
    out = workspace.get(name, (flat.shape[0], layer.out_features), flat)  # (M, C_out)
    if layer.bias is None:
        torch.mm(flat, layer.weight.t(), out=out)
    else:
        torch.addmm(layer.bias, flat, layer.weight.t(), out=out)
    return out.view(*x.shape[:-1], layer.out_features)  # (..., C_out)
