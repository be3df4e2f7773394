"""Checkpoints: safe reading and strict loading into a model.

Where a file comes from (the table of official files, the cache, downloads) is
:mod:`samkit.downloads`; its public names are re-exported here, where they lived before.
``build.py`` calls :func:`~samkit.downloads.resolve_checkpoint`, :func:`read_state_dict` and
:func:`load_state_dict_strict`.

Safety rule this module keeps: checkpoints are read with ``torch.load(..., weights_only=True)``
or safetensors, so a file that carries pickled code is refused and nothing in it runs.

Every problem is raised as :class:`CheckpointError` with a one-line message.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoint_checks import non_finite_tensors, not_a_checkpoint_reason
from .checkpoint_errors import CheckpointError
from .downloads import (  # re-exported: samkit.weights was their home before the split
    CHECKPOINTS,
    CheckpointInfo,
    cache_dir,
    checkpoint_url,
    download_checkpoint,
    resolve_checkpoint,
    url_override_variable,
)

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CHECKPOINTS",
    "cache_dir",
    "checkpoint_url",
    "url_override_variable",
    "download_checkpoint",
    "resolve_checkpoint",
    "read_state_dict",
    "load_state_dict_strict",
    "infer_variant",
]

logger = logging.getLogger(__name__)

_SHOWN_KEYS = 5

# Encoder width / depth of the ViT variants, used to recognise a checkpoint.
_WIDTH_TO_VARIANT = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_DEPTH_TO_VARIANT = {12: "vit_b", 24: "vit_l", 32: "vit_h"}
_BLOCK_KEY = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


# --------------------------------------------------------------------------- reading


def _looks_like_safetensors(path: Path) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON object.
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _load_raw(path: Path) -> object:
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"cannot read {path}: the safetensors file is truncated or corrupt "
                f"({_first_line(e)}); delete it and download it again"
            ) from e
    reason = not_a_checkpoint_reason(path)
    if reason is not None:
        raise CheckpointError(f"cannot read {path}: {reason}")
    # Memory-map zip checkpoints so the weights are not held twice while loading.
    mmap = zipfile.is_zipfile(path)
    try:
        # torch warns about pickle protocols it did not write; the warning is folded into
        # samkit's one-line error (or logged when the file loads), never printed on its own.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        for warning in caught:
            logger.info("reading %s: %s", path, str(warning.message).splitlines()[0])
        return loaded
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"{path} contains pickled code or objects other than tensors; samkit refuses "
                "to unpickle code, so nothing in it was run (convert it to a plain state dict "
                "of tensors or to .safetensors)"
            ) from e
        raise CheckpointError(
            f"cannot read {path}: the file is truncated or corrupt ({_first_line(e)}); "
            "delete it and download it again"
        ) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, zip errors, ...
        raise CheckpointError(
            f"cannot read {path}: the file is truncated or corrupt ({_first_line(e)}); "
            "delete it and download it again"
        ) from e


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a state dict on the CPU, without running any code.

    ``.safetensors`` files (recognised by suffix or content) are read with safetensors;
    anything else with ``torch.load(weights_only=True)``. A dict that wraps the weights under
    ``"model"`` or ``"state_dict"`` (common in fine-tuned checkpoints) is unwrapped.

    Args:
        path: The checkpoint file.

    Returns:
        Mapping from parameter name to tensor.

    Raises:
        CheckpointError: Missing file, pickled code, truncated/corrupt file, or contents that
            are not a mapping of names to tensors.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    obj = _load_raw(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict of named tensors"
        )
    for wrapper in ("model", "state_dict"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            logger.debug("%s: using the state dict under %r", path, wrapper)
            obj = inner
            break
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        state_dict[key] = value
    if not state_dict:
        raise CheckpointError(f"{path} holds no tensors")
    return state_dict


# --------------------------------------------------------------------------- loading


def _encoder_facts(state_dict: Mapping[str, torch.Tensor]) -> tuple[bool, int | None, int | None]:
    """(has TinyViT layers, ViT width, ViT depth) as far as the keys tell."""
    tiny = any(k.startswith("image_encoder.layers.") for k in state_dict)
    width: int | None = None
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is not None and pos.ndim == 4:
        width = int(pos.shape[-1])  # (1, H/16, W/16, C)
    else:
        norm = state_dict.get("image_encoder.blocks.0.norm1.weight")
        if norm is not None and norm.ndim == 1:
            width = int(norm.shape[0])
    indices = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))}
    depth = max(indices) + 1 if indices else None
    return tiny, width, depth


def infer_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Recognise which SAM variant a state dict belongs to from its keys and shapes.

    ``image_encoder.layers.*`` keys mean TinyViT (``vit_t``). Otherwise the ViT width (last
    dim of ``image_encoder.pos_embed``: 768/1024/1280) and depth (number of
    ``image_encoder.blocks.<i>``: 12/24/32) name vit_b/vit_l/vit_h. An HQ output token
    (``mask_decoder.hf_token.weight``) makes them hq_vit_b/l/h, and ``vit_t`` hq_vit_tiny.

    Args:
        state_dict: Checkpoint tensors by name.

    Returns:
        The variant, or None when the evidence is missing or contradictory.
    """
    base = _sam1_variant(state_dict)
    if base is None or "mask_decoder.hf_token.weight" not in state_dict:
        return base
    return "hq_vit_tiny" if base == "vit_t" else "hq_" + base


def _sam1_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """:func:`infer_variant` from the image encoder alone (vit_b/l/h, vit_t or None)."""
    tiny, width, depth = _encoder_facts(state_dict)
    if tiny:
        return "vit_t" if depth is None else None
    by_width = _WIDTH_TO_VARIANT.get(width) if width is not None else None
    by_depth = _DEPTH_TO_VARIANT.get(depth) if depth is not None else None
    if (width is not None and by_width is None) or (depth is not None and by_depth is None):
        return None  # an encoder, but not one of ours
    if by_width and by_depth and by_width != by_depth:
        return None
    return by_width or by_depth


def _describe_encoder(state_dict: Mapping[str, torch.Tensor]) -> str:
    hq = "mask_decoder.hf_token.weight" in state_dict
    return _describe_sam1_encoder(state_dict) + (" and an HQ output token" if hq else "")


def _describe_sam1_encoder(state_dict: Mapping[str, torch.Tensor]) -> str:
    tiny, width, depth = _encoder_facts(state_dict)
    if tiny:
        return "a TinyViT image encoder (image_encoder.layers.*)"
    parts = []
    if depth is not None:
        parts.append(f"{depth} blocks")
    if width is not None:
        parts.append(f"of width {width}" if parts else f"width {width}")
    return " ".join(parts) if parts else "no recognisable image encoder"


def _preview(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = f", ... (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return shown + more


def load_state_dict_strict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    variant: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state_dict`` into ``model``, every key and shape accounted for.

    Keys starting with any of ``ignore_prefixes`` are dropped silently (MobileSAM ships an
    unused classification head, ``image_encoder.head.*`` / ``image_encoder.norm_head.*``).
    Values are copied into the model's existing tensors, so the model keeps its dtype and
    device.

    Args:
        model: The freshly built model.
        state_dict: Checkpoint tensors by name.
        variant: The variant the model was built as (checked against the checkpoint).
        ignore_prefixes: Checkpoint key prefixes to drop.

    Raises:
        CheckpointError: The checkpoint is another variant, or keys are missing/unexpected,
            or shapes differ, or tensors hold NaN/inf (named); the message lists them.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    if variant in CHECKPOINTS:
        inferred = infer_variant(sd)
        if inferred is not None and inferred != variant:
            raise CheckpointError(
                f"checkpoint has {_describe_encoder(sd)}: it is {inferred}, not {variant}"
            )
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_preview(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_preview(mismatched)})")
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit the {variant} model: " + "; ".join(problems)
        )
    bad = non_finite_tensors(sd)
    if bad:
        raise CheckpointError(
            f"checkpoint holds NaN or infinite values in {', '.join(bad)}; refusing weights that would "
            "give wrong masks"
        )
    # strict=True and no assign=: load_state_dict copy_()s into the existing parameters,
    # which casts to the model's dtype and device.
    model.load_state_dict(sd, strict=True)
