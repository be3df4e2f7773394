"""The web app's open videos: uploads saved privately, decoded, bounded in number (LRU).

:class:`VideoSessionStore` holds at most ``max_sessions`` :class:`~.video_session.VideoSession`
objects. Opening one more closes the least recently used first: its propagation stops, its
decoders close and its folder (the uploaded file, frame previews) is deleted. :meth:`close`
(app shutdown) closes every session and deletes the store's folder.

An upload is streamed to disk (never held in memory whole) under a private folder made with
``tempfile.mkdtemp`` (mode 0700), refused past ``max_video_bytes``; then it is decoded with
OpenCV (:class:`samkit.video.VideoFile`) and refused when it has more than ``max_frames``
frames or frames larger than ``max_frame_pixels``, before any model work. One upload is
decoded at a time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..video import SamVideoPredictor, VideoReadError, open_frames
from .errors import NotFound, PayloadTooLarge, ServiceError, Unavailable
from .video_session import VideoSession

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling.sam2_video import Sam2Video

__all__ = [
    "UnsupportedVideo",
    "VideoSessionStore",
    "DEFAULT_MAX_VIDEO_SESSIONS",
    "DEFAULT_MAX_VIDEO_BYTES",
    "DEFAULT_MAX_VIDEO_FRAMES",
    "VIDEO_SUFFIXES",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_VIDEO_SESSIONS = 2
DEFAULT_MAX_VIDEO_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_VIDEO_FRAMES = 1000
DEFAULT_MAX_FRAME_PIXELS = 3840 * 2160
#: Suffixes kept on the saved file (OpenCV's FFmpeg backend probes the content either way).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".ogv", ".gif")


class UnsupportedVideo(ServiceError):
    """The upload is not a video samkit can decode."""

    status = 415


class VideoSessionStore:
    """At most ``max_sessions`` open videos, least recently used evicted first.

    Use it from one asyncio event loop; model work runs on each session's worker thread.

    Args:
        model: the SAM 2.x video model, or None when this server has none (every call then
            raises :class:`~samkit.server.errors.Unavailable`, 501, with ``unavailable_reason``).
        max_sessions: videos open at once.
        max_video_bytes: largest upload.
        max_frames: most frames a video may have.
        max_frame_pixels: largest frame (W * H).
        unavailable_reason: why there is no video model (shown in the 501 and in health).
    """

    def __init__(
        self,
        model: Sam2Video | None,
        *,
        max_sessions: int = DEFAULT_MAX_VIDEO_SESSIONS,
        max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
        max_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
        unavailable_reason: str | None = None,
    ) -> None:
        for name, value in (
            ("max_sessions", max_sessions),
            ("max_video_bytes", max_video_bytes),
            ("max_frames", max_frames),
            ("max_frame_pixels", max_frame_pixels),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.predictor = SamVideoPredictor(model) if model is not None else None
        self.max_sessions = int(max_sessions)
        self.max_video_bytes = int(max_video_bytes)
        self.max_frames = int(max_frames)
        self.max_frame_pixels = int(max_frame_pixels)
        self.unavailable_reason = unavailable_reason or "video tracking needs a SAM 2.x model"
        self.sessions: OrderedDict[str, VideoSession] = OrderedDict()
        self.root: Path | None = None  # made on the first upload
        self._decoding: asyncio.Lock | None = None

    @property
    def available(self) -> bool:
        """Whether this server can track videos."""
        return self.predictor is not None

    def health(self) -> dict[str, Any]:
        """The figures ``/api/health`` adds: whether video works, and why not."""
        return {
            "video": self.available,
            "video_reason": None if self.available else self.unavailable_reason,
            "video_sessions": len(self.sessions),
            "max_video_sessions": self.max_sessions,
            "max_video_bytes": self.max_video_bytes,
            "max_video_frames": self.max_frames,
        }

    def _require_available(self) -> SamVideoPredictor:
        if self.predictor is None:
            raise Unavailable(f"video mode is off: {self.unavailable_reason}")
        return self.predictor

    # ------------------------------------------------------------------ sessions
    def get(self, session_id: str) -> VideoSession:
        """The open video ``session_id`` (now the most recently used).

        Raises:
            Unavailable: no video model. NotFound: unknown, closed or evicted id.
        """
        self._require_available()
        session = self.sessions.get(session_id)
        if session is None or session.closed:
            raise NotFound(
                f"unknown video {session_id!r}: never opened, or closed to make room for a newer one "
                f"(at most {self.max_sessions} videos stay open); open it again"
            )
        self.sessions.move_to_end(session_id)
        return session

    async def open(self, chunks: AsyncIterator[bytes], file_name: str) -> VideoSession:
        """Save an uploaded video, decode it and start a tracking session on it.

        Args:
            chunks: the file's bytes, in pieces.
            file_name: the client's name for it (its suffix is kept; only for display otherwise).

        Returns:
            The new session (the least recently used one was closed if the store was full).

        Raises:
            Unavailable, PayloadTooLarge (over the byte, frame or pixel limits),
            UnsupportedVideo (empty, or not a video OpenCV decodes).
        """
        predictor = self._require_available()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="samkit-videos-"))
        session_id = secrets.token_urlsafe(12)
        folder = Path(tempfile.mkdtemp(prefix=f"{session_id[:8]}-", dir=self.root))
        suffix = Path(file_name).suffix.lower()
        video_path = folder / f"video{suffix if suffix in VIDEO_SUFFIXES else ''}"
        shown = re.sub(r"[\x00-\x1f/\\]", "_", Path(file_name).name)[:200] or "video"
        session = VideoSession(session_id, folder, video_path, shown, predictor)
        try:
            await self._save(chunks, video_path)
            if self._decoding is None:
                self._decoding = asyncio.Lock()
            async with self._decoding:
                while len(self.sessions) >= self.max_sessions:
                    self._evict()
                await session.run(lambda: self._decode(session))
        except BaseException:
            session.close(wait=False)
            raise
        self.sessions[session_id] = session
        while len(self.sessions) > self.max_sessions:
            self._evict()
        logger.info(
            "video %s opened: %s, %d frames of %dx%d",
            session_id[:8], shown, session.num_frames, session.width, session.height,
        )
        return session

    async def _save(self, chunks: AsyncIterator[bytes], path: Path) -> None:
        size = 0
        with path.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_video_bytes:
                    raise PayloadTooLarge(
                        f"video upload exceeds the limit of {self.max_video_bytes} bytes "
                        f"(samkit serve --max-video-mb)"
                    )
                await asyncio.to_thread(out.write, chunk)
        if size == 0:
            raise UnsupportedVideo("empty upload: expected a video file")

    def _decode(self, session: VideoSession) -> None:
        """Open the saved file and check its size before any model work (worker thread)."""
        try:
            frames = open_frames(session.video_path, cache_frames=2)
        except VideoReadError as exc:
            detail = str(exc).replace(str(session.video_path), session.file_name)  # no server paths in answers
            raise UnsupportedVideo(
                f"not a video samkit can read (expected a file OpenCV decodes: mp4, avi, webm, ...): {detail}"
            ) from None
        except ImportError as exc:
            raise Unavailable(str(exc)) from None
        try:
            if frames.num_frames > self.max_frames:
                raise PayloadTooLarge(
                    f"video of {frames.num_frames} frames exceeds the limit of {self.max_frames} frames "
                    "(samkit serve --max-video-frames)"
                )
            pixels = frames.video_width * frames.video_height
            if pixels > self.max_frame_pixels:
                raise PayloadTooLarge(
                    f"video frames of {frames.video_width}x{frames.video_height} exceed the limit of "
                    f"{self.max_frame_pixels} pixels"
                )
            session.open(frames)
        except BaseException:
            frames.close()
            raise

    def _evict(self) -> None:
        session_id, session = self.sessions.popitem(last=False)
        logger.info("video %s closed to make room (at most %d open)", session_id[:8], self.max_sessions)
        session.close(wait=False)

    def remove(self, session_id: str) -> None:
        """Close one video now (its folder is deleted once its running job stops)."""
        session = self.get(session_id)
        del self.sessions[session_id]
        session.close(wait=False)

    def close(self) -> None:
        """Close every session, waiting for their workers, and delete the store's folder."""
        while self.sessions:
            _, session = self.sessions.popitem(last=False)
            session.close(wait=True)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __len__(self) -> int:
        return len(self.sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self.sessions
