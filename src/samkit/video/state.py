"""What a video tracking session holds: prompts, per-object outputs, and the retention rule.

One ``VideoState`` per video (``SamVideoPredictor.init_state``). Objects are kept in the order
they were first prompted; that order is the model-side object index and the order of the
object axis of every mask the predictor returns.

Per object and frame the state keeps a ``FrameOutput``: the low-res mask logits, the object
pointer, the object score and, once the memory encoder has run, the memory features rounded to
bfloat16 (the official predictor stores them so; keeping the rounding keeps samkit's later frames
identical to the official ones). Frame images are never stored (see ``frames.py``).

Retention (``SamVideoPredictor(keep_all_frames=False)``, the default): the official predictor
keeps every tracked frame's output for the whole session. The tracker can only read a
non-conditioning output that lies within ``reach`` frames of the frame it is processing
(``reach = max(max_obj_ptrs_in_encoder - 1, 1 + r * (num_maskmem - 2))``, 15 for the released
SAM 2.x configs: 6 frames of memory features, 15 object pointers). samkit therefore keeps

* every conditioning-frame output (frames with prompts; the user decides how many), and
* the non-conditioning outputs within ``reach`` frames of a conditioning frame (what a reverse
  pass from that frame, or a correction next to it, reads), and
* the non-conditioning outputs within ``reach`` frames of the last frame a propagation
  processed (what continuing from there, or correcting there, reads),

so at most ``(2 * reach + 1) * (conditioning frames + 1)`` outputs per object, ~0.75 MB each
at image_size 1024, whatever the video length. A step is exact (identical to the official) when
every output it reads stayed within ``reach`` of a prompted frame or of the then-last propagated
frame since it was computed. That covers: prompts on some frames, propagating forwards and/or
backwards from them (in one pass or several legs), correcting on a prompted frame, near one, or
near where the last propagation stopped, and propagating again from there or from the prompted
frames. Returning to a frame whose neighbourhood was dropped (e.g. a correction in the middle
of a long video after a later pass ran elsewhere, or a pass started there) sees fewer memories
than the official predictor (a warning is logged); ``keep_all_frames=True`` keeps every output as
the official does (memory then grows by ~0.75 MB per frame and object).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .frames import FrameSource

__all__ = ["FrameOutput", "ObjectTrack", "VideoState", "memory_reach"]


@dataclass
class FrameOutput:
    """One object's result on one frame, as later frames need it.

    Attributes:
        pred_masks: (1, 1, S/4, S/4) float32 low-res mask logits (after hole filling).
        obj_ptr: (1, C) float32 object pointer.
        object_score_logits: (1, 1) float32; > 0 means the object is visible.
        maskmem_features: (1, Cm, S/16, S/16) bfloat16 memory features, or None while the
            memory encoder has not run on this output (prompted frames before propagation).
    """

    pred_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor
    maskmem_features: torch.Tensor | None = None


@dataclass
class ObjectTrack:
    """Prompts and outputs of one object.

    Attributes:
        obj_id: the caller's id for the object.
        point_inputs: frame -> {"point_coords": (1, N, 2) float32 in model pixels,
            "point_labels": (1, N) int32}.
        mask_inputs: frame -> (1, 1, S, S) float32 binary mask prompt.
        cond: outputs of conditioning (prompted) frames, in the order they were added.
        non_cond: outputs of tracked, non-conditioning frames (within the retention window).
        temp_cond, temp_non_cond: outputs of frames prompted since the last propagation; they
            move to ``cond`` / ``non_cond`` (with their memory encoded) when propagation starts.
        tracked: frame -> whether it was last tracked in reverse; a prompt on a tracked frame
            is a correction that uses the memory, on an untracked frame a fresh segmentation.
    """

    obj_id: Hashable
    point_inputs: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    mask_inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)
    temp_cond: dict[int, FrameOutput] = field(default_factory=dict)
    temp_non_cond: dict[int, FrameOutput] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)

    def output(self, frame_idx: int) -> FrameOutput | None:
        """The newest output on ``frame_idx``: a pending prompt result first, then the stored one."""
        for table in (self.temp_cond, self.temp_non_cond, self.cond, self.non_cond):
            out = table.get(frame_idx)
            if out is not None:
                return out
        return None

    def clear(self) -> None:
        """Forget every prompt and output (the object id stays)."""
        for table in (
            self.point_inputs,
            self.mask_inputs,
            self.cond,
            self.non_cond,
            self.temp_cond,
            self.temp_non_cond,
            self.tracked,
        ):
            table.clear()

    def prune(self, reach: int, frontier: int | None) -> int:
        """Drop non-conditioning outputs no later step can read (see the module docstring).

        Args:
            reach: how far (in frames) the tracker reads past outputs.
            frontier: the frame a propagation processed last, or None.

        Returns:
            The number of outputs dropped.
        """
        anchors = list(self.cond) + ([frontier] if frontier is not None else [])
        stale = [t for t in self.non_cond if all(abs(t - a) > reach for a in anchors)]
        for t in stale:
            del self.non_cond[t]
        return len(stale)


@dataclass
class FeatureCache:
    """The image features of the most recently encoded frame (one frame, as the official)."""

    frame_idx: int | None = None
    backbone_out: dict[str, Any] | None = None


@dataclass
class VideoState:
    """A tracking session on one video. Create it with ``SamVideoPredictor.init_state``.

    Attributes:
        frames: the lazily decoded frames.
        device: where the model runs.
        storage_device: where outputs are kept (the CPU with ``offload_state_to_cpu``).
        frames_device: where decoded frames are cached (the CPU with ``offload_video_to_cpu``).
        objects: per-object prompts and outputs, in model-side index order.
        features: the image features of the last encoded frame.
        maskmem_pos_enc: the memory positional encoding, the same for every frame and object.
        frontier: the frame the last propagation processed, or None.
    """

    frames: FrameSource
    device: torch.device
    storage_device: torch.device
    frames_device: torch.device
    objects: list[ObjectTrack] = field(default_factory=list)
    features: FeatureCache = field(default_factory=FeatureCache)
    maskmem_pos_enc: list[torch.Tensor] | None = None
    frontier: int | None = None

    @property
    def num_frames(self) -> int:
        """T, the number of frames in the video."""
        return self.frames.num_frames

    @property
    def video_height(self) -> int:
        return self.frames.video_height

    @property
    def video_width(self) -> int:
        return self.frames.video_width

    @property
    def obj_ids(self) -> list[Hashable]:
        """Object ids in model-side order (the object axis of returned masks)."""
        return [obj.obj_id for obj in self.objects]

    def object_index(self, obj_id: Hashable) -> int | None:
        """The model-side index of ``obj_id``, or None when it is unknown."""
        for index, obj in enumerate(self.objects):
            if obj.obj_id == obj_id:
                return index
        return None

    def stored_outputs(self) -> int:
        """How many per-frame outputs the state holds, over all objects (for memory checks)."""
        return sum(
            len(o.cond) + len(o.non_cond) + len(o.temp_cond) + len(o.temp_non_cond) for o in self.objects
        )

    def close(self) -> None:
        """Release the video decoder, the frame cache and the cached image features."""
        self.frames.close()
        self.features = FeatureCache()

    def check_frame(self, frame_idx: int) -> int:
        """``frame_idx`` as an int, or an IndexError naming the valid range."""
        if isinstance(frame_idx, bool) or not hasattr(frame_idx, "__index__"):
            raise TypeError(f"frame_idx: expected an int, got {type(frame_idx).__name__}")
        frame_idx = int(frame_idx)
        if not 0 <= frame_idx < self.num_frames:
            raise IndexError(f"frame {frame_idx} does not exist: the video has frames 0..{self.num_frames - 1}")
        return frame_idx


class MemoryView(Mapping[int, dict[str, Any]]):
    """One output table seen as the model's ``track_step`` reads it (official key names).

    The model casts the bfloat16 memory features to its own dtype and device when it reads
    them, which is what the official predictor feeds back.
    """

    def __init__(self, table: Mapping[int, FrameOutput], maskmem_pos_enc: list[torch.Tensor] | None) -> None:
        self._table = table
        self._pos = maskmem_pos_enc

    def __getitem__(self, frame_idx: int) -> dict[str, Any]:
        out = self._table[frame_idx]
        return {
            "maskmem_features": out.maskmem_features,
            "maskmem_pos_enc": self._pos,
            "pred_masks": out.pred_masks,
            "obj_ptr": out.obj_ptr,
            "object_score_logits": out.object_score_logits,
        }

    def __iter__(self) -> Iterator[int]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def memory_reach(model: Any) -> int:
    """How many frames away the tracker reads past non-conditioning outputs.

    Memory features come from ``num_maskmem - 1`` earlier frames, the farthest
    ``1 + r * (num_maskmem - 2)`` frames back for a temporal stride r; object pointers from up to
    ``max_obj_ptrs_in_encoder - 1`` frames back.
    """
    stride = int(getattr(model, "memory_temporal_stride_for_eval", 1))
    num_maskmem = int(model.num_maskmem)
    reach = 1 + stride * (num_maskmem - 2) if num_maskmem >= 2 else num_maskmem - 1
    if getattr(model, "use_obj_ptrs_in_encoder", True):
        reach = max(reach, int(model.max_obj_ptrs_in_encoder) - 1)
    return max(reach, 1)
