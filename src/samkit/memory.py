"""How many bytes of tensor memory an object holds, counted the same way everywhere.

:func:`tensor_nbytes` walks tensors inside dataclasses, lists, tuples and dicts (the decoder's
per-image caches hold lists of per-layer projections), counting each underlying storage once
(views and shared tensors are not counted twice). The server's embedding cache bounds its
memory with it (through :meth:`samkit.SamPredictor.nbytes`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["tensor_nbytes"]


def tensor_nbytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj``.

    Args:
        obj: A tensor, or a dataclass / list / tuple / dict (nested to any depth) holding
            tensors; other values count 0.

    Returns:
        The summed ``nbytes`` of the storages, each counted once.
    """
    seen: set[tuple[str, int]] = set()
    visited: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            key = (str(item.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
            continue
        if id(item) in visited:
            continue
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            visited.add(id(item))
            stack.extend(getattr(item, field.name) for field in dataclasses.fields(item))
        elif isinstance(item, (list, tuple)):
            visited.add(id(item))
            stack.extend(item)
        elif isinstance(item, dict):
            visited.add(id(item))
            stack.extend(item.values())
    return total
