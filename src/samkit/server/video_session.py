"""One video of the web app: its file, its tracking state, the masks tracked so far.

A :class:`VideoSession` owns a private folder (the uploaded file, cached frame previews), a
:class:`~samkit.video.SamVideoPredictor` state on that file and one worker thread. Every model
call for the session (prompts, propagation, reset, removing an object) runs on that thread, one
at a time, so the predictor state is never touched concurrently; a propagation runs there in
the background and reports its progress in :attr:`VideoSession.job`.

The predictor keeps only the outputs it can still read (see ``samkit/video/state.py``), so the
session stores every mask it hands out: per frame and object a COCO RLE record
(:func:`~samkit.server.video_export.mask_record`, ~1-10 kB each), the masks the page shows while
scrubbing and what the export writes.

Frame previews (JPEG) come from a second decoder on the same file, so scrubbing works while a
propagation holds the worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import shutil
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image

from ..video import FrameSource, SamVideoPredictor, VideoFile, VideoState
from .errors import InvalidPrompt, NotFound, ServiceError
from .video_export import mask_record

__all__ = ["Conflict", "Direction", "TrackJob", "VideoSession"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Direction = Literal["forward", "backward", "both"]
JPEG_QUALITY = 90


class Conflict(ServiceError):
    """The session is tracking; the request would change what it tracks."""

    status = 409


@dataclass
class TrackJob:
    """Progress of the session's last propagation (read by the event loop, written by the worker).

    Attributes:
        status: "idle" (never tracked), "running", "done", "failed" or "stopped".
        direction: "forward", "backward" or "both".
        start_frame: the frame it started from.
        done: frames processed so far.
        total: frames it will process.
        error: why it failed.
        seconds: how long it ran.
    """

    status: Literal["idle", "running", "done", "failed", "stopped"] = "idle"
    direction: Direction = "both"
    start_frame: int | None = None
    done: int = 0
    total: int = 0
    error: str | None = None
    seconds: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event, repr=False)


class VideoSession:
    """An uploaded video with its tracker state and masks. Create it on its worker with :meth:`open`.

    Attributes:
        session_id: the id the API uses.
        folder: the private folder, deleted by :meth:`close`.
        video_path: the uploaded file inside it.
        file_name: the name the client gave the file (for exports).
        num_frames, width, height, fps: the video's.
        job: the last propagation's progress.
    """

    def __init__(
        self, session_id: str, folder: Path, video_path: Path, file_name: str, predictor: SamVideoPredictor
    ) -> None:
        self.session_id = session_id
        self.folder = folder
        self.video_path = video_path
        self.file_name = file_name
        self.predictor = predictor
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"samkit-video-{session_id[:6]}")
        self.state: VideoState | None = None
        self.num_frames = 0
        self.width = 0
        self.height = 0
        self.fps = 0.0
        self.job = TrackJob()
        self.closed = False
        self._records: dict[int, dict[Hashable, dict[str, Any]]] = {}  # frame -> object -> mask record
        self._records_lock = threading.Lock()
        self._preview: VideoFile | None = None
        self._preview_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def open(self, frames: FrameSource) -> None:
        """Start the predictor state on the decoded video (worker thread; encodes frame 0)."""
        self.num_frames, self.width, self.height = frames.num_frames, frames.video_width, frames.video_height
        self.fps = _frame_rate(self.video_path)
        self.state = self.predictor.init_state(frames)

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the session's worker thread (after the jobs queued before it)."""
        if self.closed:
            raise NotFound(f"video {self.session_id} was closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.worker, self._checked(work))
        except RuntimeError as exc:  # the executor shut down between the check and the submit
            if self.closed:
                raise NotFound(f"video {self.session_id} was closed") from None
            raise exc

    def _checked(self, work: Callable[[], T]) -> Callable[[], T]:
        def call() -> T:
            if self.closed:
                raise NotFound(f"video {self.session_id} was closed")
            return work()

        return call

    def close(self, *, wait: bool) -> None:
        """Stop tracking, release the decoders and delete the folder (on the worker, after its job).

        Args:
            wait: block until that is done (app shutdown); else return at once (eviction).
        """
        if self.closed:
            return
        self.closed = True
        self.job.stop.set()
        try:
            self.worker.submit(self._release)
        except RuntimeError:  # already shut down
            self._release()
        self.worker.shutdown(wait=wait, cancel_futures=False)

    def _release(self) -> None:
        try:
            if self.state is not None:
                self.state.close()
            with self._preview_lock:
                if self._preview is not None:
                    self._preview.close()
                    self._preview = None
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            logger.info("video session %s closed, %s deleted", self.session_id[:8], self.folder)

    # ------------------------------------------------------------------ reading
    def check_frame(self, frame: int) -> int:
        """``frame`` if the video has it, else InvalidPrompt (422) naming the range."""
        if not 0 <= frame < self.num_frames:
            raise InvalidPrompt(f"frame {frame} does not exist: the video has frames 0..{self.num_frames - 1}")
        return frame

    @property
    def object_ids(self) -> list[int]:
        """The objects prompted so far, in the order they were first prompted."""
        return [] if self.state is None else [int(obj) for obj in self.state.obj_ids]  # type: ignore[call-overload]

    def tracked_frames(self) -> list[int]:
        """Frames that have at least one stored mask, in order."""
        with self._records_lock:
            return sorted(frame for frame, objects in self._records.items() if objects)

    def frame_records(self, frame: int) -> dict[Hashable, dict[str, Any]]:
        """Stored mask records of one frame, object id -> record, in the session's object order."""
        with self._records_lock:
            held = dict(self._records.get(frame, {}))
        return {obj: held[obj] for obj in self.object_ids if obj in held}

    def all_records(self) -> dict[int, dict[Hashable, dict[str, Any]]]:
        """A snapshot of every stored record."""
        with self._records_lock:
            return {frame: dict(objects) for frame, objects in self._records.items()}

    def frame_jpeg(self, frame: int) -> bytes:
        """Frame ``frame`` as a JPEG (any thread; decoded once, then read from the folder)."""
        self.check_frame(frame)
        path = self.folder / "previews" / f"{frame:05d}.jpg"
        if path.is_file():
            return path.read_bytes()
        with self._preview_lock:
            if self.closed:
                raise NotFound(f"video {self.session_id} was closed")
            if self._preview is None:
                self._preview = VideoFile(self.video_path, cache_frames=1)
            rgb = self._preview.rgb(frame)  # (H, W, 3) uint8
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        data = buffer.getvalue()
        try:  # cached for the next visit; a session closed meanwhile has no folder any more
            path.parent.mkdir(exist_ok=True)
            partial = path.with_suffix(f".{threading.get_ident()}.part")
            partial.write_bytes(data)
            partial.replace(path)
        except OSError as exc:
            logger.debug("frame preview %d of %s not cached: %s", frame, self.session_id[:8], exc)
        return data

    # ------------------------------------------------------------------ writing (worker thread)
    def _store(self, frame: int, obj_ids: list[Hashable], masks: np.ndarray, only: Hashable | None = None) -> None:
        """Keep the masks of one frame; ``masks`` is (N_obj, H, W) bool in ``obj_ids`` order."""
        records = {obj: mask_record(mask) for obj, mask in zip(obj_ids, masks) if only is None or obj == only}
        with self._records_lock:
            self._records.setdefault(frame, {}).update(records)

    def require_idle(self) -> None:
        """Raise Conflict (409) while a propagation runs (checked again on the worker)."""
        if self.job.status == "running":
            raise Conflict("tracking is running on this video: wait for it to finish or stop it first")

    def prompt_sync(
        self,
        frame: int,
        obj_id: int,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        clear_old_points: bool,
    ) -> tuple[np.ndarray, float]:
        """Add clicks and/or a box for one object on one frame (worker thread).

        Args:
            points: (N, 2) x, y in video pixels, or None; labels: (N,) 1 / 0.
            box: (4,) x0, y0, x1, y1 or None.

        Returns:
            ((H, W) bool mask of that object on that frame, its object score logit; > 0: present).

        Raises:
            Conflict: a propagation is running. InvalidPrompt: prompts the predictor refuses.
        """
        self.require_idle()
        assert self.state is not None
        try:
            _, obj_ids, logits = self.predictor.add_new_points_or_box(
                self.state, frame, obj_id, points=points, labels=labels, box=box, clear_old_points=clear_old_points
            )  # logits: (N_obj, 1, H, W)
        except (ValueError, TypeError, IndexError) as exc:
            raise InvalidPrompt(str(exc)) from None
        masks = (logits[:, 0] > 0).cpu().numpy()  # (N_obj, H, W)
        self._store(frame, obj_ids, masks, only=obj_id)
        output = self.predictor.frame_output(self.state, frame, obj_id)
        score = float(output.object_score_logits.reshape(-1)[0]) if output is not None else 0.0
        return masks[obj_ids.index(obj_id)], score

    def remove_object_sync(self, obj_id: int) -> None:
        """Forget one object and its masks (worker thread). Raises NotFound, Conflict."""
        self.require_idle()
        assert self.state is not None
        try:
            self.predictor.remove_object(self.state, obj_id, strict=True, need_output=False)
        except KeyError:
            raise NotFound(f"video {self.session_id} has no object {obj_id} (objects: {self.object_ids})") from None
        with self._records_lock:
            for objects in self._records.values():
                objects.pop(obj_id, None)

    def reset_sync(self) -> None:
        """Forget every object, prompt and mask; the video stays open (worker thread)."""
        self.require_idle()
        assert self.state is not None
        self.predictor.reset_state(self.state)
        with self._records_lock:
            self._records.clear()
        self.job = TrackJob()

    def start_tracking(self, start_frame: int | None, direction: Direction) -> TrackJob:
        """Queue a propagation behind this call and return its progress record (worker thread).

        Args:
            start_frame: where to start; None: the earliest prompted frame.
            direction: "forward" (to the last frame), "backward" (to frame 0) or "both".

        Raises:
            Conflict: one is running already. InvalidPrompt: no object has a prompt yet.
        """
        self.require_idle()
        assert self.state is not None
        prompted = [f for obj in self.state.objects for f in (*obj.point_inputs, *obj.mask_inputs)]
        if not prompted:
            raise InvalidPrompt("no object has a prompt yet: click an object first")
        start = min(prompted) if start_frame is None else self.check_frame(start_frame)
        forward = self.num_frames - start if direction in ("forward", "both") else 0
        backward = (start + 1 if direction == "backward" else start) if direction != "forward" else 0
        job = TrackJob(status="running", direction=direction, start_frame=start, total=forward + backward)
        self.job = job
        self.worker.submit(self._track, job)
        return job

    def _track(self, job: TrackJob) -> None:
        """The propagation itself (worker thread); fills ``job`` and the stored masks."""
        assert self.state is not None
        began = time.perf_counter()
        legs = {"forward": [False], "backward": [True], "both": [False, True]}[job.direction]
        try:
            for reverse in legs:
                frames = self.predictor.propagate_in_video(self.state, start_frame_idx=job.start_frame, reverse=reverse)
                try:
                    for frame, obj_ids, logits in frames:
                        if job.stop.is_set():
                            job.status = "stopped"
                            return
                        if reverse and job.direction == "both" and frame == job.start_frame:
                            continue  # the forward leg tracked it
                        self._store(frame, obj_ids, (logits[:, 0] > 0).cpu().numpy())  # (N_obj, H, W)
                        job.done += 1
                finally:
                    frames.close()
            job.status = "done"
        except Exception as exc:  # noqa: BLE001 - reported to the client through the progress
            logger.exception("tracking failed on video %s", self.session_id[:8])
            job.error = f"{type(exc).__name__}: {exc}"
            job.status = "failed"
        finally:
            job.seconds = time.perf_counter() - began
            logger.info(
                "video %s: tracked %d/%d frames (%s) in %.1f s",
                self.session_id[:8], job.done, job.total, job.status, job.seconds,
            )


def _frame_rate(path: Path) -> float:
    """The container's frame rate (0.0 when it does not say)."""
    from ..everything.optional import require_cv2

    cv2 = require_cv2("reading a video file")
    capture = cv2.VideoCapture(str(path))
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()
    return fps if np.isfinite(fps) and fps > 0 else 0.0
