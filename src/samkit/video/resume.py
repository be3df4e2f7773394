"""Save a tracking session's memory and restore it, so that tracking can go on in another process.

Tracking a frame reads the outputs of the frames tracked before it (``state.py``). What a
session holds besides its prompts is exactly what :func:`export_memory` returns, as a flat
``{name: tensor}`` dictionary (safetensors-ready; no pickle anywhere):

* ``frontier``: () int64, the frame the last propagation processed (-1: none);
* ``num_objects``: () int64;
* ``objects.<i>.cond_frames``: (K,) int64, object i's prompted frames (checked on import: the
  prompts themselves are added again and their outputs recomputed, which is deterministic);
* ``objects.<i>.tracked``: (M, 2) int64 rows (frame, 1 if last tracked in reverse else 0);
* ``objects.<i>.non_cond_frames``: (N,) int64, the retained tracked frames, in insertion order;
* ``objects.<i>.non_cond.<frame>.<field>``: the ``FrameOutput`` fields of those frames as stored
  (``pred_masks`` float32 (1, 1, S/4, S/4), ``obj_ptr`` (1, C), ``object_score_logits`` (1, 1),
  ``maskmem_features`` bfloat16 (1, Cm, S/16, S/16)), so a restored session reads the very
  same bits.

:func:`import_memory` puts such a dictionary into a session whose prompts were added again and
committed (``SamVideoPredictor.import_memory`` does both); propagation then continues exactly
as it would have in the first session. Size: ~0.75 MB per retained output at image size 1024,
at most ``2 * reach + 1`` retained outputs per object and prompted frame plus as many around the
frontier (``state.py``).

:func:`memory_file_bytes` / :func:`read_memory_file` write and read the dictionary as one
safetensors file with string metadata of the caller's choosing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from .state import FrameOutput

if TYPE_CHECKING:  # pragma: no cover
    from .state import ObjectTrack, VideoState

__all__ = ["MEMORY_FIELDS", "export_memory", "import_memory", "memory_file_bytes", "read_memory_file"]

#: The ``FrameOutput`` fields saved per retained frame (``maskmem_features`` may be absent).
MEMORY_FIELDS = ("pred_masks", "obj_ptr", "object_score_logits", "maskmem_features")
_REQUIRED_FIELDS = MEMORY_FIELDS[:3]


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor that shares no memory with ``tensor`` (safetensors needs that)."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def export_memory(state: VideoState) -> dict[str, torch.Tensor]:
    """Everything the session holds besides its prompts, as CPU tensors (see the module docstring).

    Raises:
        ValueError: prompts were added since the last propagation (their memory is not encoded
            yet: propagate first).
    """
    tensors: dict[str, torch.Tensor] = {
        "frontier": torch.tensor(-1 if state.frontier is None else state.frontier, dtype=torch.int64),
        "num_objects": torch.tensor(len(state.objects), dtype=torch.int64),
    }
    for index, obj in enumerate(state.objects):
        if obj.temp_cond or obj.temp_non_cond:
            raise ValueError(f"object {obj.obj_id!r} has prompts added since the last propagation: propagate first")
        prefix = f"objects.{index}"
        tensors[f"{prefix}.cond_frames"] = torch.tensor(sorted(obj.cond), dtype=torch.int64)
        rows = [[t, int(reverse)] for t, reverse in obj.tracked.items()]
        tensors[f"{prefix}.tracked"] = torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)  # (M, 2)
        tensors[f"{prefix}.non_cond_frames"] = torch.tensor(list(obj.non_cond), dtype=torch.int64)
        for t, out in obj.non_cond.items():
            for name in MEMORY_FIELDS:
                value = getattr(out, name)
                if value is not None:
                    tensors[f"{prefix}.non_cond.{t}.{name}"] = _cpu_copy(value)
    return tensors


def _frames(tensors: dict[str, torch.Tensor], key: str) -> list[int]:
    value = tensors.get(key)
    if value is None or value.dtype != torch.int64 or value.dim() != 1:
        raise ValueError(f"saved memory: {key!r} is missing or not a 1-D int64 tensor")
    return [int(t) for t in value.tolist()]


def _frame_in(state: VideoState, frame_idx: int) -> int:
    if not 0 <= frame_idx < state.num_frames:
        raise ValueError(f"saved memory names frame {frame_idx}, the video has frames 0..{state.num_frames - 1}")
    return frame_idx


def _restored_object(
    state: VideoState, obj: ObjectTrack, prefix: str, tensors: dict[str, torch.Tensor]
) -> tuple[dict[int, FrameOutput], dict[int, bool]]:
    """One object's saved outputs and tracked frames, checked against its recomputed prompts."""
    cond_frames = _frames(tensors, f"{prefix}.cond_frames")
    if cond_frames != sorted(obj.cond):
        raise ValueError(
            f"saved memory of object {obj.obj_id!r} was tracked from prompts on frames {cond_frames}, "
            f"this session has them on {sorted(obj.cond)}"
        )
    tracked_rows = tensors.get(f"{prefix}.tracked")
    if tracked_rows is None or tracked_rows.dtype != torch.int64 or tracked_rows.dim() != 2 or tracked_rows.shape[1] != 2:
        raise ValueError(f"saved memory: {prefix}.tracked is missing or not an (M, 2) int64 tensor")
    tracked = {_frame_in(state, int(t)): bool(reverse) for t, reverse in tracked_rows.tolist()}
    reference = obj.cond[cond_frames[0]] if cond_frames else None
    non_cond: dict[int, FrameOutput] = {}
    for t in _frames(tensors, f"{prefix}.non_cond_frames"):
        _frame_in(state, t)
        values: dict[str, torch.Tensor | None] = {}
        for name in MEMORY_FIELDS:
            value = tensors.get(f"{prefix}.non_cond.{t}.{name}")
            if value is None and name in _REQUIRED_FIELDS:
                raise ValueError(f"saved memory: {prefix}.non_cond.{t}.{name} is missing")
            expected = None if reference is None else getattr(reference, name)
            if value is not None and expected is not None and value.shape != expected.shape:
                raise ValueError(
                    f"saved memory: {name} of frame {t} has shape {tuple(value.shape)}, this model makes "
                    f"{tuple(expected.shape)} (another model or image size?)"
                )
            values[name] = value
        storage, device = state.storage_device, state.device  # where the predictor keeps each field
        non_cond[t] = FrameOutput(
            pred_masks=values["pred_masks"].to(storage),  # type: ignore[union-attr]
            obj_ptr=values["obj_ptr"].to(device),  # type: ignore[union-attr]
            object_score_logits=values["object_score_logits"].to(device),  # type: ignore[union-attr]
            maskmem_features=None if values["maskmem_features"] is None else values["maskmem_features"].to(storage),
        )
    return non_cond, tracked


def import_memory(state: VideoState, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`export_memory` returned into a session with the same prompts, committed.

    Checked first, then applied all at once: on a ValueError the session is unchanged.

    Raises:
        ValueError: the objects or their prompted frames differ from the saved session's, a
            tensor is missing or has another shape than this model's, or prompts are pending.
    """
    num_objects = tensors.get("num_objects")
    frontier = tensors.get("frontier")
    if num_objects is None or frontier is None or num_objects.dim() or frontier.dim():
        raise ValueError("saved memory: 'num_objects' or 'frontier' is missing")
    if int(num_objects) != len(state.objects):
        raise ValueError(f"saved memory holds {int(num_objects)} objects, this session has {len(state.objects)}")
    restored = []
    for index, obj in enumerate(state.objects):
        if obj.temp_cond or obj.temp_non_cond:
            raise ValueError(f"object {obj.obj_id!r} has uncommitted prompts: commit them before importing memory")
        restored.append(_restored_object(state, obj, f"objects.{index}", tensors))
    new_frontier = None if int(frontier) < 0 else _frame_in(state, int(frontier))
    for obj, (non_cond, tracked) in zip(state.objects, restored):
        obj.non_cond = non_cond
        obj.tracked = tracked
    state.frontier = new_frontier


def memory_file_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (CPU, contiguous) and ``metadata``."""
    from safetensors.torch import save

    ready = {name: t if t.device.type == "cpu" and t.is_contiguous() else _cpu_copy(t) for name, t in tensors.items()}
    return save(ready, metadata=metadata)


def read_memory_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a file :func:`memory_file_bytes` wrote.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable safetensors file (truncated, corrupt, another format).
    """
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error type for a bad header or size
        raise ValueError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return tensors, metadata
