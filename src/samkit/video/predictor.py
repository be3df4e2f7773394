"""``SamVideoPredictor``: click objects on some frames of a video, track them through the rest.

The workflow and signatures are those of the official ``SAM2VideoPredictor`` (``sam2==1.1.0``)::

    predictor = SamVideoPredictor(build_sam_video("sam2.1_hiera_t"))
    state = predictor.init_state("frames/")                # a folder of JPEG/PNG frames or a video file
    _, obj_ids, masks = predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                                       points=[[210, 350]], labels=[1])
    for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
        ...                                                # masks: (N_obj, 1, H, W) logits; > 0 is the object

Every mask returned is a float32 tensor of logits (N_obj, 1, H, W) at the video's resolution,
objects in the order of ``obj_ids`` (the order they were first prompted); an object without a
result on a frame has the logit -1024 everywhere.

Prompts: points are (x, y) in video pixels (or in [0, 1] with ``normalize_coords=False``), labels
1 (foreground) / 0 (background); a box is (x0, y0, x1, y1); a mask is an (H, W) boolean array.
A prompt on a frame the object was never tracked on starts that object there (a conditioning
frame, segmented without memory, like SAM on an image); a prompt on a tracked frame corrects the
tracked mask (the new clicks are decoded together with the memory and the previous mask).
Prompts are encoded into memory when propagation starts, after the non-overlap rule between
objects has been applied, as in the official predictor.

What is kept, and what that costs, is described in ``state.py`` (frames are decoded on demand;
non-conditioning outputs are kept only within the window the tracker can read).

This module holds the session and its bookkeeping: which object and frame a prompt goes to,
when prompts are committed to memory, the order of a propagation, the retention rule applied.
The rest is in its own modules: ``prompt_inputs.py`` (clicks, boxes and masks -> model
inputs), ``frame_step.py`` (one object on one frame through the model, and what is stored of
it), ``outputs.py`` (the masks returned, at the video resolution), ``resume.py`` (a session's
memory saved and restored: ``export_memory`` / ``import_memory``, to go on in another process).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .frame_step import encode_prompted_memory, image_features, run_frame
from .frames import FrameSource, open_frames
from .outputs import NO_OBJ_SCORE, consolidated_video_masks, video_masks
from .prompt_inputs import mask_input, points_input
from .resume import export_memory, import_memory
from .state import FrameOutput, ObjectTrack, VideoState, memory_reach

if TYPE_CHECKING:  # pragma: no cover
    import os

    from ..modeling.sam2_video import Sam2Video

__all__ = ["NO_OBJ_SCORE", "SamVideoPredictor", "FrameMasks"]

logger = logging.getLogger(__name__)

# Prior logits fed back with correction clicks are clamped to this magnitude (as the official).
PRIOR_LOGIT_CLAMP = 32.0

#: (frame index, object ids, (N_obj, 1, H, W) float32 mask logits at the video resolution)
FrameMasks = tuple[int, list[Hashable], torch.Tensor]


class SamVideoPredictor:
    """Track objects through a video with a SAM 2.x video model.

    Args:
        model: a ``Sam2Video`` (``samkit.build_sam_video(name)``). Its flags ``fill_hole_area``,
            ``non_overlap_masks``, ``clear_non_cond_mem_around_input`` and
            ``add_all_frames_to_correct_as_cond`` play the roles they have in the official
            predictor.
        keep_all_frames: keep every tracked frame's output for the whole session as the official
            predictor does (~0.75 MB per frame and object at image size 1024), so that a
            correction or a propagation start anywhere sees exactly the official memory. By
            default only the outputs the tracker can still read are kept (see ``state.py``).
        cache_frames: decoded frames kept in memory (each 12 MB at image size 1024).
    """

    def __init__(self, model: Sam2Video, *, keep_all_frames: bool = False, cache_frames: int = 2) -> None:
        self.model = model.eval()
        self.keep_all_frames = keep_all_frames
        self.cache_frames = cache_frames
        self.reach = memory_reach(model)

    @property
    def image_size(self) -> int:
        """Side S of the square model input."""
        return int(self.model.image_size)

    # ------------------------------------------------------------------ session

    @torch.inference_mode()
    def init_state(
        self,
        video: str | os.PathLike[str] | FrameSource,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
    ) -> VideoState:
        """Open a video and start a session on it.

        Args:
            video: a folder of JPEG/PNG frames (ordered by the number in their names), a video
                file (decoded with OpenCV), or an open ``FrameSource``.
            offload_video_to_cpu: keep decoded frames on the CPU when the model is on an
                accelerator (they are moved per frame).
            offload_state_to_cpu: keep masks and memory features on the CPU (slower tracking on
                an accelerator, less accelerator memory).

        Returns:
            The session state, passed to every other method.

        Raises:
            VideoReadError: the video cannot be read (one-line message).
        """
        device = self.model.device
        cpu = torch.device("cpu")
        state = VideoState(
            frames=open_frames(video, cache_frames=self.cache_frames),
            device=device,
            storage_device=cpu if offload_state_to_cpu else device,
            frames_device=cpu if offload_video_to_cpu else device,
        )
        image_features(self.model, state, 0)  # warm-up: frame 0 is where most sessions start
        return state

    @torch.inference_mode()
    def reset_state(self, state: VideoState) -> None:
        """Forget every object, prompt and result (the video stays open)."""
        for obj in state.objects:
            obj.clear()
        state.objects.clear()
        state.frontier = None

    # ------------------------------------------------------------------ prompts

    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        state: VideoState,
        frame_idx: int,
        obj_id: Hashable,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> FrameMasks:
        """Add clicks and/or a box for one object on one frame.

        Args:
            state: the session.
            frame_idx: the frame.
            obj_id: any hashable id; a new id adds an object.
            points: (N, 2) (x, y) in video pixels, or in [0, 1] with ``normalize_coords=False``.
            labels: (N,) 1 = foreground, 0 = background.
            clear_old_points: replace this object's earlier clicks on this frame (else append).
            normalize_coords: ``points`` and ``box`` are in video pixels.
            box: (x0, y0, x1, y1), same coordinates; needs ``clear_old_points=True``.

        Returns:
            (frame_idx, obj_ids, (N_obj, 1, H, W) mask logits of every object on this frame).
        """
        frame_idx = state.check_frame(frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is None and box is None:
            raise ValueError("give points and labels, a box, or both")
        if box is not None and not clear_old_points:
            raise ValueError("a box replaces the frame's clicks: use clear_old_points=True (box first, then clicks)")
        coords, point_labels = points_input(
            points,
            labels,
            box,
            normalize_coords=normalize_coords,
            video_size=(state.video_height, state.video_width),
            image_size=self.image_size,
            device=state.device,
        )
        obj_idx, obj = self._object(state, obj_id)
        old = obj.point_inputs.get(frame_idx) if not clear_old_points else None
        if old is not None:
            coords = torch.cat([old["point_coords"], coords], dim=1)  # (1, N_old + N, 2)
            point_labels = torch.cat([old["point_labels"], point_labels], dim=1)  # (1, N_old + N)
        point_inputs = {"point_coords": coords, "point_labels": point_labels}
        obj.point_inputs[frame_idx] = point_inputs
        obj.mask_inputs.pop(frame_idx, None)
        return self._prompt_frame(state, obj, frame_idx, point_inputs=point_inputs)

    def add_new_points(self, *args: Any, **kwargs: Any) -> FrameMasks:
        """The official predictor's older name of :meth:`add_new_points_or_box`."""
        return self.add_new_points_or_box(*args, **kwargs)

    @torch.inference_mode()
    def add_new_mask(self, state: VideoState, frame_idx: int, obj_id: Hashable, mask: Any) -> FrameMasks:
        """Give one object's mask on one frame (replaces that frame's clicks for the object).

        Args:
            mask: (H, W) array-like, nonzero = object; any size (resized to the model input).

        Returns:
            (frame_idx, obj_ids, (N_obj, 1, H, W) mask logits of every object on this frame).
        """
        frame_idx = state.check_frame(frame_idx)
        prompt = mask_input(mask, self.image_size, state.device)  # (1, 1, S, S)
        _, obj = self._object(state, obj_id)
        obj.mask_inputs[frame_idx] = prompt
        obj.point_inputs.pop(frame_idx, None)
        return self._prompt_frame(state, obj, frame_idx, mask_inputs=prompt)

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self, state: VideoState, frame_idx: int, obj_id: Hashable, need_output: bool = True
    ) -> FrameMasks | None:
        """Remove one object's prompts on one frame.

        A conditioning frame that loses its prompts keeps its result as an ordinary tracked frame
        and is no longer marked tracked (a new prompt there starts the object afresh).

        Returns:
            (frame_idx, obj_ids, masks of every object on this frame), or None without
            ``need_output``.
        """
        frame_idx = state.check_frame(frame_idx)
        _, obj = self._object(state, obj_id)
        obj.point_inputs.pop(frame_idx, None)
        obj.mask_inputs.pop(frame_idx, None)
        obj.temp_cond.pop(frame_idx, None)
        obj.temp_non_cond.pop(frame_idx, None)
        out = obj.cond.pop(frame_idx, None)
        if out is not None:
            obj.non_cond[frame_idx] = out
            obj.tracked.pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in o.temp_cond for o in state.objects)
        masks = consolidated_video_masks(state, frame_idx, is_cond, self.model.non_overlap_masks)
        return frame_idx, state.obj_ids, masks

    @torch.inference_mode()
    def remove_object(
        self, state: VideoState, obj_id: Hashable, strict: bool = False, need_output: bool = True
    ) -> tuple[list[Hashable], list[tuple[int, torch.Tensor]]]:
        """Remove an object from the session.

        Args:
            strict: raise a KeyError when ``obj_id`` is unknown (else return quietly).
            need_output: also return the masks of the frames where the object had prompts.

        Returns:
            (remaining obj_ids, [(frame_idx, (N_obj, 1, H, W) masks) of the frames the removed
            object had prompts on]).
        """
        obj_idx = state.object_index(obj_id)
        if obj_idx is None:
            if strict:
                raise KeyError(f"cannot remove object {obj_id!r}: no such object (objects: {state.obj_ids})")
            return state.obj_ids, []
        if len(state.objects) == 1:
            self.reset_state(state)
            return state.obj_ids, []
        obj = state.objects[obj_idx]
        prompted = set(obj.point_inputs) | set(obj.mask_inputs)
        for frame_idx in prompted:
            self.clear_all_prompts_in_frame(state, frame_idx, obj_id, need_output=False)
        del state.objects[obj_idx]
        updated: list[tuple[int, torch.Tensor]] = []
        if need_output:
            for frame_idx in prompted:
                is_cond = any(frame_idx in o.temp_cond for o in state.objects)
                masks = consolidated_video_masks(state, frame_idx, is_cond, self.model.non_overlap_masks)
                updated.append((frame_idx, masks))
        return state.obj_ids, updated

    # ------------------------------------------------------------------ tracking

    @torch.inference_mode()
    def propagate_in_video(
        self,
        state: VideoState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[FrameMasks]:
        """Track every object from a frame forwards (or backwards), one frame at a time.

        Args:
            state: the session (every object needs a prompt somewhere).
            start_frame_idx: first frame; default the earliest prompted frame.
            max_frame_num_to_track: frames after the start to track; default all.
            reverse: track towards frame 0.

        Yields:
            (frame_idx, obj_ids, (N_obj, 1, H, W) mask logits at the video resolution).
        """
        self._commit_prompts(state)
        if start_frame_idx is None:
            start_frame_idx = min(t for obj in state.objects for t in obj.cond)
        start_frame_idx = state.check_frame(start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = state.num_frames
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order: Sequence[int] = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else []
        else:
            end = min(start_frame_idx + max_frame_num_to_track, state.num_frames - 1)
            order = range(start_frame_idx, end + 1)

        if order:
            for obj in state.objects:
                if order[0] not in obj.cond:
                    self._warn_if_dropped(obj, order[0], reverse, "tracking from")
        obj_ids = state.obj_ids
        for frame_idx in order:
            per_object = []
            for obj in state.objects:
                stored = obj.cond.get(frame_idx)
                if stored is not None:
                    pred_masks = stored.pred_masks.to(state.device)
                    if self.model.clear_non_cond_mem_around_input:
                        self._clear_memory_around(obj, frame_idx)
                else:
                    out, pred_masks = run_frame(
                        self.model,
                        state,
                        obj,
                        frame_idx,
                        is_init_cond_frame=False,
                        reverse=reverse,
                        run_mem_encoder=True,
                    )
                    obj.non_cond[frame_idx] = out
                obj.tracked[frame_idx] = reverse
                per_object.append(pred_masks)
            state.frontier = frame_idx
            self._prune(state)
            masks = per_object[0] if len(per_object) == 1 else torch.cat(per_object, dim=0)  # (N_obj, 1, h, w)
            yield frame_idx, obj_ids, video_masks(state, masks, self.model.non_overlap_masks)

    def frame_output(self, state: VideoState, frame_idx: int, obj_id: Hashable) -> FrameOutput | None:
        """One object's stored result on a frame (low-res logits, object score, pointer), if kept."""
        obj_idx = state.object_index(obj_id)
        return None if obj_idx is None else state.objects[obj_idx].output(state.check_frame(frame_idx))

    def export_memory(self, state: VideoState) -> dict[str, torch.Tensor]:
        """What the session holds besides its prompts, as CPU tensors (safetensors-ready).

        With the same prompts added to a new session, :meth:`import_memory` of this makes
        propagation continue from where this session stopped with the very same results (a
        tracking run that resumes after being killed). Layout and size: ``resume.py``.

        Raises:
            ValueError: prompts were added since the last propagation (propagate first).
        """
        return export_memory(state)

    @torch.inference_mode()
    def import_memory(self, state: VideoState, memory: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`export_memory`'s tensors into ``state``, which has the same prompts.

        Add the prompts of the saved session again first (same objects in the same order, same
        frames); this encodes them into memory as propagation would, then restores the tracked
        frames' outputs. Propagate next from the frame after ``state.frontier`` (in the saved
        direction).

        Raises:
            ValueError: the saved session had other objects or prompted frames, or another model
                or image size made it (the state keeps its prompts and nothing else changes).
        """
        self._commit_prompts(state)
        import_memory(state, memory)

    # ------------------------------------------------------------------ internals

    def _object(self, state: VideoState, obj_id: Hashable) -> tuple[int, ObjectTrack]:
        """The object with this id, added at the end when it is new."""
        obj_idx = state.object_index(obj_id)
        if obj_idx is None:
            hash(obj_id)  # a TypeError here rather than later
            state.objects.append(ObjectTrack(obj_id=obj_id))
            obj_idx = len(state.objects) - 1
        return obj_idx, state.objects[obj_idx]

    def _prompt_frame(
        self,
        state: VideoState,
        obj: ObjectTrack,
        frame_idx: int,
        point_inputs: dict[str, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
    ) -> FrameMasks:
        """Segment one object on a prompted frame and return every object's mask there."""
        is_init_cond_frame = frame_idx not in obj.tracked
        reverse = False if is_init_cond_frame else obj.tracked[frame_idx]
        is_cond = is_init_cond_frame or self.model.add_all_frames_to_correct_as_cond
        temp = obj.temp_cond if is_cond else obj.temp_non_cond
        prior = None
        if point_inputs is not None:
            previous = temp.get(frame_idx) or obj.cond.get(frame_idx) or obj.non_cond.get(frame_idx)
            if previous is not None and previous.pred_masks is not None:
                prior = torch.clamp(previous.pred_masks.to(state.device), -PRIOR_LOGIT_CLAMP, PRIOR_LOGIT_CLAMP)
        if not is_init_cond_frame:
            self._warn_if_dropped(obj, frame_idx, reverse, "a correction on")
        out, _ = run_frame(
            self.model,
            state,
            obj,
            frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            reverse=reverse,
            run_mem_encoder=False,  # encoded when propagation starts, after the non-overlap rule
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            prev_sam_mask_logits=prior,
        )
        temp[frame_idx] = out
        masks = consolidated_video_masks(state, frame_idx, is_cond, self.model.non_overlap_masks)
        return frame_idx, state.obj_ids, masks

    def _commit_prompts(self, state: VideoState) -> None:
        """Before propagation: encode new prompts into memory and move them into the stored outputs."""
        if not state.objects:
            raise ValueError("no object has a prompt yet: add points, a box or a mask first")
        for obj in state.objects:
            for is_cond in (False, True):
                temp, table = (obj.temp_cond, obj.cond) if is_cond else (obj.temp_non_cond, obj.non_cond)
                for frame_idx, out in temp.items():
                    if out.maskmem_features is None:
                        encode_prompted_memory(self.model, state, frame_idx, out)
                    table[frame_idx] = out
                    if self.model.clear_non_cond_mem_around_input:
                        self._clear_memory_around(obj, frame_idx)
                temp.clear()
            if not obj.cond:
                raise ValueError(f"object {obj.obj_id!r} has no prompt: add points, a box or a mask for it first")
            for frame_idx in obj.cond:
                obj.non_cond.pop(frame_idx, None)

    def _clear_memory_around(self, obj: ObjectTrack, frame_idx: int) -> None:
        """Drop the non-conditioning memory near a corrected frame (``clear_non_cond_mem_around_input``)."""
        span = self.model.memory_temporal_stride_for_eval * self.model.num_maskmem
        for t in range(frame_idx - span, frame_idx + span + 1):
            obj.non_cond.pop(t, None)

    def _warn_if_dropped(self, obj: ObjectTrack, frame_idx: int, reverse: bool, what: str) -> None:
        """Log when the outputs the tracker reads for ``frame_idx`` were dropped by the retention rule."""
        if self.keep_all_frames:
            return
        step = -1 if reverse else 1
        window = [frame_idx - step * k for k in range(0, self.reach + 1)]
        dropped = [t for t in window if t in obj.tracked and t not in obj.cond and t not in obj.non_cond]
        if dropped:
            logger.warning(
                "%s frame %d of object %r reads %d tracked frames whose outputs were not kept "
                "(keep_all_frames=False): it sees less memory than the official predictor would",
                what, frame_idx, obj.obj_id, len(dropped),
            )

    def _prune(self, state: VideoState) -> None:
        """Apply the retention rule of ``state.py`` (unless every output is kept)."""
        if self.keep_all_frames:
            return
        for obj in state.objects:
            obj.prune(self.reach, state.frontier)
