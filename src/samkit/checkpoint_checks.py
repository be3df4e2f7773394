"""Checks on checkpoint files and their tensors that make refusals say the true reason.

:mod:`samkit.weights` calls these while reading and loading:

* :func:`not_a_checkpoint_reason`: before ``torch.load``, from the file's first bytes. A text
  file (a README, an HTML error page saved under a ``.pth`` name) otherwise reaches the pickle
  reader, which calls it "truncated or corrupt" or "pickled code", neither of which is true.
* :func:`non_finite_tensors`: before the weights are copied into a model. A NaN or infinite
  weight loads without complaint and gives quietly wrong masks.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["not_a_checkpoint_reason", "non_finite_tensors"]

_HEAD_BYTES = 512
_PICKLE_PROTO = 0x80  # first byte of every pickle of protocol >= 2 (torch's legacy format too)


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return bool(text) and printable >= 0.95 * len(text)


def not_a_checkpoint_reason(path: str | os.PathLike[str]) -> str | None:
    """Why the file cannot be a PyTorch checkpoint, judged from its first bytes; None if it may be one.

    PyTorch checkpoints are zip archives (``torch.save`` since 1.6) or pickles of protocol 2+
    (the legacy format); safetensors files are recognised before this is called.

    Args:
        path: The file.

    Returns:
        A phrase such as ``"it is empty"`` or ``"it is a text file (starts with 'hello')"``, or None.
    """
    file = Path(os.fspath(path))
    with file.open("rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        return "it is empty"
    if zipfile.is_zipfile(file) or head[:4] == b"PK\x03\x04" or head[0] == _PICKLE_PROTO:
        return None
    if _looks_like_text(head):
        start = head.decode("utf-8").strip().splitlines()[0][:40] if head.strip() else ""
        return f"it is a text file (it starts with {start!r}), not a PyTorch or safetensors checkpoint"
    return f"it is not a PyTorch or safetensors checkpoint (it starts with the bytes {head[:8].hex(' ')})"


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor], *, limit: int = 5) -> list[str]:
    """Names of floating-point tensors holding NaN or infinite values, in key order.

    Args:
        state_dict: Tensors by name.
        limit: Stop after this many names.

    Returns:
        Up to ``limit`` entries like ``"mask_decoder.iou_token.weight (3 NaN, 0 inf)"``.
    """
    found: list[str] = []
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point() and not tensor.is_complex():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nans = int(torch.isnan(tensor).sum())
        infs = int((~finite).sum()) - nans
        found.append(f"{name} ({nans} NaN, {infs} inf)")
        if len(found) >= max(1, limit):
            break
    return found

