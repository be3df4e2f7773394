"""Embedding files: an image's encoder output saved to reuse without encoding again.

A safetensors file (no pickle) with the (1, C, h, w) ``features``, any per-family extra tensors
(HQ-SAM's ``hq_features``, SAM 2's ``high_res_features.0/1``) and metadata: the format tag,
the model name, the original and resized image sizes. :meth:`samkit.SamPredictor.save_embedding`
writes it and :meth:`~samkit.SamPredictor.load_embedding` reads it back; writers in another
process (the Ray engine) produce the same bytes through :meth:`~samkit.SamPredictor.embedding_bytes`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from torch import Tensor

__all__ = ["EMBEDDING_FORMAT", "StoredEmbedding", "embedding_file_bytes", "read_embedding_file"]

#: The "format" field of every embedding file samkit writes.
EMBEDDING_FORMAT = "samkit-embedding-v1"


@dataclass
class StoredEmbedding:
    """The content of an embedding file.

    Attributes:
        model: name of the model that computed it.
        original_size: (H, W) of the image.
        input_size: (h, w) of the image resized for the encoder.
        features: (1, C, h', w') float32 embedding.
        extra: the per-family tensors by name (``hq_features``, ``high_res_features.N``).
    """

    model: str
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    features: Tensor
    extra: dict[str, Tensor]


def embedding_file_bytes(
    model: str, original_size: tuple[int, int], input_size: tuple[int, int], features: Tensor, extra: dict[str, Tensor]
) -> bytes:
    """The bytes of an embedding file (tensors stored as contiguous float32 on the CPU)."""
    from safetensors.torch import save

    meta = {
        "format": EMBEDDING_FORMAT,
        "model": model,
        "original_size": json.dumps(original_size),
        "input_size": json.dumps(input_size),
    }
    tensors = {"features": features.float().cpu().contiguous()}
    tensors.update({name: t.float().cpu().contiguous() for name, t in extra.items()})
    return save(tensors, metadata=meta)


def read_embedding_file(path: str | os.PathLike[str]) -> StoredEmbedding:
    """Read an embedding file; one-line errors for a missing, unreadable or foreign file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, or not a samkit embedding.
    """
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise FileNotFoundError(f"embedding file not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read embedding {path}: {exc}") from exc
    if meta.get("format") != EMBEDDING_FORMAT or "features" not in tensors:
        raise ValueError(f"{path}: not a samkit embedding file")
    try:
        original_size = tuple(json.loads(meta["original_size"]))
        input_size = tuple(json.loads(meta["input_size"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a samkit embedding file (bad sizes: {exc})") from None
    features = tensors.pop("features")
    return StoredEmbedding(str(meta.get("model")), original_size, input_size, features, tensors)  # type: ignore[arg-type]
